import Foundation

/// UTF-8 byte helpers shared by the normalisers, pre-tokenisers, added-token matcher and decoders.
/// Every byte array handled here is valid UTF-8, so a byte-wise match of a valid UTF-8 pattern
/// always falls on character boundaries.
enum UTF8Bytes {
    /// Replaces every non-overlapping occurrence of `pattern` (non-empty), scanning left to right,
    /// as `tokenizers`' Replace does with an escaped literal regex.
    /// Nil when the result would exceed `limit` bytes.
    static func replacing(_ pattern: [UInt8], with replacement: [UInt8], in text: [UInt8], limit: Int = .max) -> [UInt8]? {
        guard !pattern.isEmpty, text.count >= pattern.count else { return text }
        let first = pattern[0]
        var result: [UInt8] = []
        var copied = 0
        var index = 0
        let last = text.count - pattern.count
        result.reserveCapacity(text.count)
        while index <= last {
            if text[index] == first && matches(pattern, in: text, at: index) {
                result.append(contentsOf: text[copied ..< index])
                result.append(contentsOf: replacement)
                if result.count > limit { return nil }
                index += pattern.count
                copied = index
            } else {
                index += 1
            }
        }
        if copied == 0 { return text }
        result.append(contentsOf: text[copied...])
        return result.count > limit ? nil : result
    }

    @inline(__always) static func matches(_ pattern: [UInt8], in text: [UInt8], at index: Int) -> Bool {
        guard index + pattern.count <= text.count else { return false }
        for offset in 0 ..< pattern.count where text[index + offset] != pattern[offset] { return false }
        return true
    }

    /// The scalar starting at `index` and its byte length.
    static func scalar(in text: [UInt8], at index: Int) -> (scalar: Unicode.Scalar, length: Int) {
        let lead = text[index]
        let length = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4
        var value = UInt32(lead) & (length == 1 ? 0x7F : length == 2 ? 0x1F : length == 3 ? 0x0F : 0x07)
        for position in index + 1 ..< min(index + length, text.count) { value = value << 6 | UInt32(text[position] & 0x3F) }
        return (Unicode.Scalar(value) ?? "\u{FFFD}", length)
    }

    /// The scalar ending just before `end`, and its start.
    static func scalar(in text: [UInt8], endingAt end: Int) -> (scalar: Unicode.Scalar, start: Int) {
        var start = end - 1
        while start > 0 && text[start] & 0xC0 == 0x80 { start -= 1 }
        return (scalar(in: text, at: start).scalar, start)
    }

    /// Regex `\w` (Unicode): Alphabetic, marks, decimal digits, connector punctuation, join controls.
    static func isWordCharacter(_ scalar: Unicode.Scalar) -> Bool {
        let properties = scalar.properties
        if properties.isAlphabetic || properties.isJoinControl { return true }
        switch properties.generalCategory {
        case .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber, .connectorPunctuation: return true
        default: return false
        }
    }

    /// Regex `\s` (Unicode White_Space).
    static func isWhitespace(_ scalar: Unicode.Scalar) -> Bool { scalar.properties.isWhitespace }
}

extension NormalizerDefinition {
    /// How much longer than its input a normalised text may be: `maximumGrowth` × the input plus
    /// `maximumGrowthSlack` bytes. Real normalisers grow text a few times at most (NFKD expands one
    /// character to at most 18, "▁" replaces a space with 3 bytes); a chain of Replace steps that
    /// doubles the text 40 times would otherwise run until memory runs out.
    static let maximumGrowth = 64
    static let maximumGrowthSlack = 4096

    /// The byte limit for the normalised form of `count` bytes.
    static func lengthLimit(forInput count: Int) -> Int {
        count > (Int.max - maximumGrowthSlack) / maximumGrowth ? Int.max : count * maximumGrowth + maximumGrowthSlack
    }

    /// The normalised form of `text` (what `tokenizers`' normalizer makes of one piece of input),
    /// or nil when it grows beyond `lengthLimit(forInput:)` (checked after every step).
    func normalize(_ text: [UInt8]) -> [UInt8]? {
        normalize(text, limit: Self.lengthLimit(forInput: text.count))
    }

    private func normalize(_ text: [UInt8], limit: Int) -> [UInt8]? {
        let result: [UInt8]?
        switch self {
        case .sequence(let normalizers):
            var text = text
            for normalizer in normalizers {
                guard let next = normalizer.normalize(text, limit: limit) else { return nil }
                text = next
            }
            return text
        case .prepend(let prefix):
            result = text.isEmpty ? text : Array(prefix.utf8) + text
        case .replace(let pattern, let content):
            return UTF8Bytes.replacing(Array(pattern.utf8), with: Array(content.utf8), in: text, limit: limit)
        case .unicode(let form):
            let string = String(decoding: text, as: UTF8.self)
            let normalized: String
            switch form {
            case .nfc: normalized = string.precomposedStringWithCanonicalMapping
            case .nfd: normalized = string.decomposedStringWithCanonicalMapping
            case .nfkc: normalized = string.precomposedStringWithCompatibilityMapping
            case .nfkd: normalized = string.decomposedStringWithCompatibilityMapping
            }
            result = Array(normalized.utf8)
        }
        guard let result, result.count <= limit else { return nil }
        return result
    }
}

extension PreTokenizerDefinition {
    /// Splits one normalised piece into the words BPE sees (empty words dropped).
    /// `atStart`: the piece begins at offset 0 of the original text (for `prepend_scheme: first`).
    func split(_ piece: [UInt8], atStart: Bool) -> [[UInt8]] {
        switch self {
        case .sequence(let preTokenizers):
            var pieces: [(text: [UInt8], atStart: Bool)] = [(piece, atStart)]
            for preTokenizer in preTokenizers {
                var next: [(text: [UInt8], atStart: Bool)] = []
                for (text, first) in pieces {
                    for (index, word) in preTokenizer.split(text, atStart: first).enumerated() { next.append((word, first && index == 0)) }
                }
                pieces = next
            }
            return pieces.map(\.text)
        case .metaspace(let replacement, let scheme, let split):
            let marker = Array(String(Character(replacement)).utf8)
            var text = UTF8Bytes.replacing([UInt8(ascii: " ")], with: marker, in: piece) ?? piece
            let prepend: Bool
            switch scheme {
            case .always: prepend = true
            case .first: prepend = atStart
            case .never: prepend = false
            }
            if prepend && !text.isEmpty && !UTF8Bytes.matches(marker, in: text, at: 0) { text = marker + text }
            guard split else { return text.isEmpty ? [] : [text] }
            // Cut before every marker (each marker opens the word after it: "MergedWithNext").
            var words: [[UInt8]] = []
            var start = 0
            var index = 0
            while index < text.count {
                if text[index] == marker[0] && UTF8Bytes.matches(marker, in: text, at: index) {
                    if index > start { words.append(Array(text[start ..< index])) }
                    start = index
                    index += marker.count
                } else {
                    index += 1
                }
            }
            if text.count > start { words.append(Array(text[start...])) }
            return words
        }
    }
}
