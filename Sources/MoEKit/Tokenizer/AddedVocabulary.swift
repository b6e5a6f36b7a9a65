/// The `added_tokens` of a tokenizer (`<s>`, `</s>`, chat markers…), found in the text before BPE
/// runs, as `tokenizers`' `AddedVocabulary` finds them:
///
/// - tokens with `normalized: false` are matched in the raw text; the pieces between them are then
///   normalised one by one and searched for the `normalized: true` tokens, whose patterns are their
///   contents passed through the same normaliser;
/// - matching is leftmost-longest and non-overlapping; a match that fails `single_word` (a word
///   character touches it) is dropped but still consumes its span;
/// - `lstrip`/`rstrip` widen a match over the whitespace before/after it (never over an earlier
///   match).
struct AddedVocabulary: Sendable {
    struct Token: Sendable {
        var id: Int
        var pattern: [UInt8]
        var singleWord: Bool
        var leftStrip: Bool
        var rightStrip: Bool
    }

    /// A split of a piece of text: a byte range and, for an added token, its id.
    struct Split: Equatable {
        var range: Range<Int>
        var id: Int?
    }

    let rawMatcher: Matcher
    let normalizedMatcher: Matcher
    /// id → content, for decoding.
    let contentById: [Int: String]
    let idByContent: [String: Int]
    let specialContents: Set<String>

    init(_ tokens: [AddedTokenDefinition], model: BPEModel, normalizer: NormalizerDefinition?, path: String) throws(TokenizerError) {
        var contentById: [Int: String] = [:]
        var idByContent: [String: Int] = [:]
        var special: Set<String> = []
        var specialOrder: [Token] = [], plainOrder: [Token] = []
        var normalizedSpecial: [Token] = [], normalizedPlain: [Token] = []
        for (index, token) in tokens.enumerated() where !token.content.isEmpty {
            let field = "added_tokens[\(index)]"
            if let modelId = model.tokenToId[token.content], Int(modelId) != token.id {
                throw .invalidField(path: path, field: field, reason: "gives '\(token.content)' id \(token.id), but model.vocab has it as \(modelId)")
            }
            if model.tokenToId[token.content] == nil, let other = model.idToToken[Int32(token.id)] {
                throw .invalidField(path: path, field: field, reason: "gives '\(token.content)' id \(token.id), which model.vocab uses for '\(other)'")
            }
            if let other = contentById[token.id], other != token.content {
                throw .invalidField(path: path, field: field, reason: "gives '\(token.content)' id \(token.id), already used for added token '\(other)'")
            }
            if idByContent[token.content] != nil { continue }  // a repeated content keeps its first entry
            contentById[token.id] = token.content
            idByContent[token.content] = token.id
            if token.special { special.insert(token.content) }
            var pattern = Array(token.content.utf8)
            if token.normalized, let normalizer {
                guard let normalized = normalizer.normalize(pattern) else { throw Tokenizer.normalizerGrowth(path: path, inputBytes: pattern.count) }
                pattern = normalized
            }
            let entry = Token(id: token.id, pattern: pattern, singleWord: token.singleWord, leftStrip: token.leftStrip, rightStrip: token.rightStrip)
            switch (token.normalized, token.special) {
            case (false, true): specialOrder.append(entry)
            case (false, false): plainOrder.append(entry)
            case (true, true): normalizedSpecial.append(entry)
            case (true, false): normalizedPlain.append(entry)
            }
        }
        // Special tokens are registered before the others (tokenizers' order, which decides ties).
        rawMatcher = Matcher(specialOrder + plainOrder)
        normalizedMatcher = Matcher(normalizedSpecial + normalizedPlain)
        self.contentById = contentById
        self.idByContent = idByContent
        specialContents = special
    }

    /// Leftmost-longest matching of a set of byte patterns (tokenizers uses Aho-Corasick with
    /// `MatchKind::LeftmostLongest`; added tokens are few, so candidates are indexed by first byte).
    struct Matcher: Sendable {
        let tokens: [Token]
        /// first byte → indices into `tokens`, longest pattern first (stable: earlier wins ties).
        private let candidates: [[Int]]

        var isEmpty: Bool { tokens.isEmpty }

        init(_ tokens: [Token]) {
            let tokens = tokens.filter { !$0.pattern.isEmpty }
            var candidates = [[Int]](repeating: [], count: 256)
            for (index, token) in tokens.enumerated() { candidates[Int(token.pattern[0])].append(index) }
            for byte in 0 ..< 256 where candidates[byte].count > 1 {
                // indices are already in registration order, so a stable sort by length keeps ties in it
                let sorted = candidates[byte].enumerated().sorted { a, b in
                    let (lengthA, lengthB) = (tokens[a.element].pattern.count, tokens[b.element].pattern.count)
                    return lengthA != lengthB ? lengthA > lengthB : a.offset < b.offset
                }
                candidates[byte] = sorted.map(\.element)
            }
            self.tokens = tokens
            self.candidates = candidates
        }

        /// The splits of `text`, covering all of it (`tokenizers`' `find_matches`).
        func splits(_ text: [UInt8]) -> [Split] {
            guard !text.isEmpty else { return [Split(range: 0 ..< 0, id: nil)] }
            var splits: [Split] = []
            var startOffset = 0
            var position = 0
            while position < text.count {
                var found: Token? = nil
                for index in candidates[Int(text[position])] where UTF8Bytes.matches(tokens[index].pattern, in: text, at: position) {
                    found = tokens[index]
                    break
                }
                guard let token = found else { position += 1; continue }
                var start = position
                var stop = position + token.pattern.count
                position = stop  // the search resumes after the match, even if it is dropped
                if token.singleWord {
                    let spaceBefore = start == 0 || !UTF8Bytes.isWordCharacter(UTF8Bytes.scalar(in: text, endingAt: start).scalar)
                    let spaceAfter = stop == text.count || !UTF8Bytes.isWordCharacter(UTF8Bytes.scalar(in: text, at: stop).scalar)
                    guard spaceBefore && spaceAfter else { continue }
                }
                if token.leftStrip {
                    var newStart = start
                    while newStart > 0 {
                        let (scalar, scalarStart) = UTF8Bytes.scalar(in: text, endingAt: newStart)
                        guard UTF8Bytes.isWhitespace(scalar) else { break }
                        newStart = scalarStart
                    }
                    start = max(newStart, startOffset)
                }
                if token.rightStrip {
                    while stop < text.count {
                        let (scalar, length) = UTF8Bytes.scalar(in: text, at: stop)
                        guard UTF8Bytes.isWhitespace(scalar) else { break }
                        stop += length
                    }
                }
                if startOffset < start { splits.append(Split(range: startOffset ..< start, id: nil)) }
                splits.append(Split(range: start ..< stop, id: token.id))
                startOffset = stop
            }
            if startOffset != text.count { splits.append(Split(range: startOffset ..< text.count, id: nil)) }
            return splits
        }
    }
}
