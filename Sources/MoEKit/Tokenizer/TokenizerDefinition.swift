import Foundation

/// The parts of a Hugging Face `tokenizer.json` that MoEKit implements, as typed values: the kind
/// SentencePiece models converted for Llama/MiniCPM use (BPE with byte fallback, a "▁" normaliser or
/// Metaspace pre-tokeniser, a `<s>` template, a Replace/ByteFallback/Fuse/Strip decoder).
///
/// Anything else is refused when the file is read (`TokenizerError.unsupported`, naming the field)
/// instead of being tokenised differently from `tokenizers`.
struct TokenizerDefinition: Equatable, Sendable {
    var addedTokens: [AddedTokenDefinition]
    var normalizer: NormalizerDefinition? = nil
    var preTokenizer: PreTokenizerDefinition? = nil
    var model: BPEDefinition
    var postProcessor: TemplateDefinition? = nil
    var decoder: DecoderDefinition? = nil
}

/// An entry of `added_tokens`: matched in the text before BPE runs (see `AddedVocabulary`).
struct AddedTokenDefinition: Equatable, Sendable {
    var id: Int
    var content: String
    var singleWord = false
    var leftStrip = false
    var rightStrip = false
    /// Matched against normalised text (its pattern normalised too) rather than the raw input.
    var normalized = true
    /// Skipped by `decode(skipSpecialTokens: true)`.
    var special = false
}

indirect enum NormalizerDefinition: Equatable, Sendable {
    case sequence([NormalizerDefinition])
    /// Prepends the string to non-empty text.
    case prepend(String)
    /// Replaces every non-overlapping occurrence of a literal string, left to right.
    case replace(pattern: String, content: String)
    case unicode(UnicodeNormalizationForm)
}

enum UnicodeNormalizationForm: String, Equatable, Sendable {
    case nfc = "NFC", nfd = "NFD", nfkc = "NFKC", nfkd = "NFKD"
}

/// Metaspace's `prepend_scheme`: when "▁" is put in front of a piece that does not start with it.
enum PrependScheme: String, Equatable, Sendable {
    /// Every piece.
    case always
    /// Only the piece at the very start of the input (offset 0 in the original text).
    case first
    case never
}

indirect enum PreTokenizerDefinition: Equatable, Sendable {
    case sequence([PreTokenizerDefinition])
    /// Spaces become `replacement`, which is prepended per `prependScheme`; with `split`, the text
    /// is cut before every `replacement` (each piece starts with its "▁").
    case metaspace(replacement: Unicode.Scalar, prependScheme: PrependScheme, split: Bool)
}

struct BPEDefinition: Equatable, Sendable {
    /// `model.vocab` in file order.
    var vocabulary: [(token: String, id: Int)]
    /// `model.merges` in rank order (rank = index).
    var merges: [(left: String, right: String)]
    var unknownToken: String?
    var fuseUnknown = false
    var byteFallback = false
    var ignoreMerges = false

    static func == (a: BPEDefinition, b: BPEDefinition) -> Bool {
        a.vocabulary.elementsEqual(b.vocabulary, by: ==) && a.merges.elementsEqual(b.merges, by: ==)
            && a.unknownToken == b.unknownToken && a.fuseUnknown == b.fuseUnknown
            && a.byteFallback == b.byteFallback && a.ignoreMerges == b.ignoreMerges
    }
}

/// `TemplateProcessing`'s single-sequence template, e.g. `<s> $A`.
struct TemplateDefinition: Equatable, Sendable {
    enum Piece: Equatable, Sendable {
        case specialToken(String)
        case sequence
    }
    struct SpecialToken: Equatable, Sendable {
        var ids: [Int]
        var tokens: [String]
    }
    var single: [Piece]
    /// `special_tokens`: template name → the ids (and token strings) it stands for.
    var specialTokens: [String: SpecialToken]

    /// What the template puts before the sequence (`<s>`) and after it.
    var prefix: SpecialToken { tokens(of: single.prefix { $0 != .sequence }) }
    var suffix: SpecialToken {
        guard let index = single.firstIndex(of: .sequence) else { return SpecialToken(ids: [], tokens: []) }
        return tokens(of: single[(index + 1)...])
    }
    private func tokens(of pieces: some Sequence<Piece>) -> SpecialToken {
        var result = SpecialToken(ids: [], tokens: [])
        for case .specialToken(let name) in pieces {
            result.ids += specialTokens[name]?.ids ?? []
            result.tokens += specialTokens[name]?.tokens ?? []
        }
        return result
    }
}

indirect enum DecoderDefinition: Equatable, Sendable {
    case sequence([DecoderDefinition])
    case replace(pattern: String, content: String)
    /// `<0xNN>` tokens become bytes; a run of them that is not valid UTF-8 gives one U+FFFD per byte.
    case byteFallback
    case fuse
    /// Removes up to `start` leading and `stop` trailing `content` characters from every token.
    case strip(content: Unicode.Scalar, start: Int, stop: Int)
    case metaspace(replacement: Unicode.Scalar, prependScheme: PrependScheme)
}

// MARK: - Reading tokenizer.json

extension TokenizerDefinition {
    /// Reads and validates `path` (a `tokenizer.json`).
    static func read(_ path: String) throws(TokenizerError) -> TokenizerDefinition {
        let data: Data
        do { data = try InputFile.read(path, limit: InputFile.jsonLimit) } catch {
            if case .missing = error { throw .missingFile(path: path) }
            throw .unreadableText(path: path, reason: error.reason)
        }
        return try parse(data, path: path)
    }

    static func parse(_ data: Data, path: String) throws(TokenizerError) -> TokenizerDefinition {
        guard let value = JSONValue.parse(data) else {
            throw .invalidJSON(path: path, reason: "not a valid JSON document")
        }
        let root = TokenizerJSONField(path: path, field: "", value: value)
        guard case .object = value else { throw .invalidJSON(path: path, reason: "the document must be an object") }
        for key in ["truncation", "padding"] {
            if let member = root.optional(key) { throw member.unsupported("\(key) (it must be null)") }
        }
        var addedTokens: [AddedTokenDefinition] = []
        for entry in try root.optional("added_tokens")?.array() ?? [] {
            addedTokens.append(try AddedTokenDefinition(entry))
        }
        var definition = TokenizerDefinition(addedTokens: addedTokens, model: try BPEDefinition(root.required("model")))
        if let field = root.optional("normalizer") { definition.normalizer = try NormalizerDefinition(field) }
        if let field = root.optional("pre_tokenizer") { definition.preTokenizer = try PreTokenizerDefinition(field) }
        if let field = root.optional("post_processor") { definition.postProcessor = try TemplateDefinition(field) }
        if let field = root.optional("decoder") { definition.decoder = try DecoderDefinition(field) }
        return definition
    }
}

extension AddedTokenDefinition {
    init(_ field: TokenizerJSONField) throws(TokenizerError) {
        _ = try field.object()
        id = try field.required("id").integer()
        content = try field.required("content").string()
        singleWord = try field.optionalBool("single_word", default: false)
        leftStrip = try field.optionalBool("lstrip", default: false)
        rightStrip = try field.optionalBool("rstrip", default: false)
        special = try field.optionalBool("special", default: false)
        normalized = try field.optionalBool("normalized", default: !special)
    }
}

/// `{"String": "…"}` (a literal); `{"Regex": "…"}` is refused.
private func literalPattern(_ field: TokenizerJSONField) throws(TokenizerError) -> String {
    let pattern = try field.required("pattern")
    if let literal = pattern.optional("String") {
        let text = try literal.string()
        guard !text.isEmpty else { throw literal.invalid("must not be empty") }
        return text
    }
    if pattern.optional("Regex") != nil { throw pattern.unsupported("a Regex pattern") }
    throw pattern.invalid("must be {\"String\": …}")
}

extension NormalizerDefinition {
    init(_ field: TokenizerJSONField) throws(TokenizerError) {
        let type = try field.typeName()
        switch type {
        case "Sequence":
            var normalizers: [NormalizerDefinition] = []
            for element in try field.required("normalizers").array() { normalizers.append(try NormalizerDefinition(element)) }
            self = .sequence(normalizers)
        case "Prepend":
            self = .prepend(try field.required("prepend").string())
        case "Replace":
            self = .replace(pattern: try literalPattern(field), content: try field.required("content").string())
        case "NFC", "NFD", "NFKC", "NFKD":
            self = .unicode(UnicodeNormalizationForm(rawValue: type) ?? .nfc)
        default:
            throw field.unsupported("normalizer type '\(type)'")
        }
    }
}

/// Metaspace's prepend scheme, reading both `prepend_scheme` and the older `add_prefix_space` as
/// `tokenizers` does (`add_prefix_space: false` must come with `prepend_scheme: "never"`).
private func metaspaceScheme(_ field: TokenizerJSONField) throws(TokenizerError) -> PrependScheme {
    var scheme = PrependScheme.always
    if let declared = field.optional("prepend_scheme") {
        guard let parsed = PrependScheme(rawValue: try declared.string()) else {
            throw declared.invalid("must be \"first\", \"always\" or \"never\"")
        }
        scheme = parsed
    }
    if let addPrefixSpace = field.optional("add_prefix_space"), try addPrefixSpace.bool() == false {
        guard scheme == .never else { throw addPrefixSpace.invalid("false does not match prepend_scheme \"\(scheme.rawValue)\"") }
    }
    return scheme
}

extension PreTokenizerDefinition {
    init(_ field: TokenizerJSONField) throws(TokenizerError) {
        let type = try field.typeName()
        switch type {
        case "Sequence":
            var preTokenizers: [PreTokenizerDefinition] = []
            for element in try field.required("pretokenizers").array() { preTokenizers.append(try PreTokenizerDefinition(element)) }
            self = .sequence(preTokenizers)
        case "Metaspace":
            self = .metaspace(replacement: try field.required("replacement").scalar(),
                              prependScheme: try metaspaceScheme(field),
                              split: try field.optionalBool("split", default: true))
        default:
            throw field.unsupported("pre-tokenizer type '\(type)'")
        }
    }
}

extension BPEDefinition {
    init(_ field: TokenizerJSONField) throws(TokenizerError) {
        let type = try field.optional("type")?.string() ?? "BPE"
        guard type == "BPE" else { throw field.unsupported("model type '\(type)' (only BPE is implemented)") }
        if let dropout = field.optional("dropout") {
            guard dropout.value.doubleValue == 0 else { throw dropout.unsupported("BPE dropout (it must be null)") }
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let affix = field.optional(key), try !affix.string().isEmpty { throw affix.unsupported("a \(key)") }
        }
        let vocabularyField = try field.required("vocab")
        var vocabulary: [(token: String, id: Int)] = []
        guard case .object(let entries) = vocabularyField.value else { throw vocabularyField.invalid("must be an object") }
        vocabulary.reserveCapacity(entries.count)
        for (token, idValue) in entries {
            let id = try TokenizerJSONField(path: vocabularyField.path, field: "\(vocabularyField.field).\(token)", value: idValue).integer()
            vocabulary.append((token, id))
        }
        vocabulary.sort { $0.id < $1.id }  // JSONValue's object loses file order; id order is stable
        self.vocabulary = vocabulary
        var merges: [(left: String, right: String)] = []
        for merge in try field.optional("merges")?.array() ?? [] {
            switch merge.value {
            case .string(let text):
                // "a b": exactly one space (tokenizers splits on ' ' and wants two parts)
                let parts = text.split(separator: " ", omittingEmptySubsequences: false)
                guard parts.count == 2 else { throw merge.invalid("must be \"left right\" with one space") }
                merges.append((String(parts[0]), String(parts[1])))
            case .array(let parts):
                guard parts.count == 2, case .string(let left) = parts[0], case .string(let right) = parts[1] else {
                    throw merge.invalid("must be [left, right], two strings")
                }
                merges.append((left, right))
            default:
                throw merge.invalid("must be \"left right\" or [left, right]")
            }
        }
        self.merges = merges
        unknownToken = try field.optional("unk_token")?.string()
        fuseUnknown = try field.optionalBool("fuse_unk", default: false)
        byteFallback = try field.optionalBool("byte_fallback", default: false)
        ignoreMerges = try field.optionalBool("ignore_merges", default: false)
    }
}

extension TemplateDefinition {
    init(_ field: TokenizerJSONField) throws(TokenizerError) {
        let type = try field.typeName()
        guard type == "TemplateProcessing" else { throw field.unsupported("post-processor type '\(type)'") }
        let singleField = try field.required("single")
        var single: [Piece] = []
        switch singleField.value {
        case .string(let text):  // the "<s> $A" shorthand
            for word in text.split(whereSeparator: \.isWhitespace) {
                var name = String(word)  // "name" or "name:type_id"
                if let colon = name.lastIndex(of: ":"), !name[name.index(after: colon)...].isEmpty,
                   name[name.index(after: colon)...].allSatisfy(\.isASCII), Int(name[name.index(after: colon)...]) != nil {
                    name = String(name[..<colon])
                }
                switch name {
                case "$", "$A", "$0": single.append(.sequence)
                case _ where name.hasPrefix("$"): throw singleField.invalid("uses '\(word)'; a single template takes only $A")
                default: single.append(.specialToken(name))
                }
            }
        case .array:
            for piece in try singleField.array() {
                if let special = piece.optional("SpecialToken") {
                    single.append(.specialToken(try special.required("id").string()))
                } else if let sequence = piece.optional("Sequence") {
                    let id = try sequence.required("id").string()
                    guard id == "A" else { throw sequence.invalid("is sequence '\(id)'; a single template takes only A") }
                    single.append(.sequence)
                } else {
                    throw piece.invalid("must be {\"SpecialToken\": …} or {\"Sequence\": …}")
                }
            }
        default:
            throw singleField.invalid("must be a template string or an array of pieces")
        }
        guard single.filter({ $0 == .sequence }).count == 1 else { throw singleField.invalid("must contain the sequence $A exactly once") }
        var specialTokens: [String: SpecialToken] = [:]
        if let specialField = field.optional("special_tokens") {
            for (name, _) in try specialField.object() {
                guard let entry = specialField.child(name) else { continue }
                var special = SpecialToken(ids: [], tokens: [])
                for id in try entry.required("ids").array() { special.ids.append(try id.integer()) }
                for token in try entry.required("tokens").array() { special.tokens.append(try token.string()) }
                guard special.ids.count == special.tokens.count else { throw entry.invalid("must have as many ids as tokens") }
                specialTokens[name] = special
            }
        }
        for case .specialToken(let name) in single where specialTokens[name] == nil {
            throw singleField.invalid("uses special token '\(name)', missing from post_processor.special_tokens")
        }
        self.init(single: single, specialTokens: specialTokens)
    }
}

extension DecoderDefinition {
    init(_ field: TokenizerJSONField) throws(TokenizerError) {
        let type = try field.typeName()
        switch type {
        case "Sequence":
            var decoders: [DecoderDefinition] = []
            for element in try field.required("decoders").array() { decoders.append(try DecoderDefinition(element)) }
            self = .sequence(decoders)
        case "Replace":
            self = .replace(pattern: try literalPattern(field), content: try field.required("content").string())
        case "ByteFallback": self = .byteFallback
        case "Fuse": self = .fuse
        case "Strip":
            self = .strip(content: try field.required("content").scalar(),
                          start: try field.required("start").integer(), stop: try field.required("stop").integer())
        case "Metaspace":
            self = .metaspace(replacement: try field.required("replacement").scalar(), prependScheme: try metaspaceScheme(field))
        default:
            throw field.unsupported("decoder type '\(type)'")
        }
    }
}
