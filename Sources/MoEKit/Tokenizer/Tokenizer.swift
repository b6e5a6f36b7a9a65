import Foundation

/// What to add around a text's tokens.
public enum SpecialTokensPolicy: String, Sendable, Equatable, CaseIterable {
    /// What the tokenizer's post-processor adds (`<s>` for MiniCPM/Llama): `tokenizers`'
    /// `encode(text, add_special_tokens=True)`.
    case postProcessor
    /// Nothing: `add_special_tokens=False`.
    case none
    /// Only the tokens the post-processor's template puts before the sequence (the BOS).
    case beginningOfSequence
}

/// Token ids and their token strings (`tokenizers`' `Encoding.ids` and `.tokens`).
public struct Encoding: Equatable, Sendable {
    public var ids: [Int]
    public var tokens: [String]
}

/// A Hugging Face `tokenizer.json` tokenizer (BPE, the SentencePiece-converted kind MiniCPM and
/// Llama ship) that encodes and decodes token for token as `tokenizers` does.
///
/// Encoding runs `tokenizers`' pipeline: added tokens are found in the raw text (`AddedVocabulary`);
/// each piece between them is normalised (e.g. Prepend "▁" then Replace " " → "▁"), searched for
/// normalised added tokens, pre-tokenised (e.g. Metaspace) into words, and each word is BPE-encoded
/// (`BPEModel`); the post-processor's template then adds `<s>`. Decoding maps ids to token strings,
/// drops special tokens if asked, and runs the decoder chain (Replace "▁" → " ", ByteFallback,
/// Fuse, Strip one leading space).
public struct Tokenizer: Sendable {
    /// The `tokenizer.json` it was read from.
    public let path: String
    let model: BPEModel
    let addedVocabulary: AddedVocabulary
    let normalizer: NormalizerDefinition?
    let preTokenizer: PreTokenizerDefinition?
    let template: TemplateDefinition?
    let decoder: DecoderDefinition?

    /// Reads a `tokenizer.json`.
    public init(contentsOf path: String) throws(TokenizerError) {
        try self.init(TokenizerDefinition.read(path), path: path)
    }

    /// Reads `MODEL_DIR/tokenizer.json`.
    public init(modelDirectory: String) throws(TokenizerError) {
        try self.init(contentsOf: URL(fileURLWithPath: modelDirectory).appendingPathComponent("tokenizer.json").path)
    }

    init(_ definition: TokenizerDefinition, path: String) throws(TokenizerError) {
        self.path = path
        model = try BPEModel(definition.model, path: path)
        addedVocabulary = try AddedVocabulary(definition.addedTokens, model: model, normalizer: definition.normalizer, path: path)
        normalizer = definition.normalizer
        preTokenizer = definition.preTokenizer
        template = definition.postProcessor
        decoder = definition.decoder
        if let growth = decoder?.worstCaseGrowth, growth > Double(NormalizerDefinition.maximumGrowth) {
            throw .invalidField(path: path, field: "decoder",
                                reason: "can grow a token \(growth)× (Replace steps whose content is longer than their pattern); at most \(NormalizerDefinition.maximumGrowth)× is accepted")
        }
    }

    /// One more than the largest id of the vocabulary and added tokens.
    public var vocabularySize: Int {
        max(Int(model.idToToken.keys.max() ?? -1), addedVocabulary.contentById.keys.max() ?? -1) + 1
    }

    /// The token string of an id (an added token's content first, then the BPE vocabulary).
    public func token(forId id: Int) -> String? {
        if let content = addedVocabulary.contentById[id] { return content }
        guard let id32 = Int32(exactly: id) else { return nil }
        return model.idToToken[id32]
    }

    public func id(forToken token: String) -> Int? {
        addedVocabulary.idByContent[token] ?? model.tokenToId[token].map(Int.init)
    }

    /// What the post-processor puts before a sequence (`[1]` for `<s>`); empty without one.
    var beginningOfSequenceIds: [Int] { template?.prefix.ids ?? [] }

    // MARK: Encoding

    /// The ids of `text`.
    public func encode(_ text: String, specialTokens: SpecialTokensPolicy = .postProcessor) throws(TokenizerError) -> [Int] {
        var workspace = BPEWorkspace()
        var tokens: [String]? = nil
        return try encode(text, specialTokens: specialTokens, workspace: &workspace, tokens: &tokens)
    }

    /// The ids and token strings of `text` (an added token's string is the text it matched).
    public func encodeWithTokens(_ text: String, specialTokens: SpecialTokensPolicy = .postProcessor) throws(TokenizerError) -> Encoding {
        var workspace = BPEWorkspace()
        var tokens: [String]? = []
        let ids = try encode(text, specialTokens: specialTokens, workspace: &workspace, tokens: &tokens)
        return Encoding(ids: ids, tokens: tokens ?? [])
    }

    /// The ids of each text; words repeated across texts are BPE-encoded once.
    public func encode(_ texts: [String], specialTokens: SpecialTokensPolicy = .postProcessor) throws(TokenizerError) -> [[Int]] {
        var workspace = BPEWorkspace()
        var tokens: [String]? = nil
        var result: [[Int]] = []
        result.reserveCapacity(texts.count)
        for text in texts { result.append(try encode(text, specialTokens: specialTokens, workspace: &workspace, tokens: &tokens)) }
        return result
    }

    /// The error for a normaliser whose output outgrows `NormalizerDefinition.lengthLimit(forInput:)`.
    static func normalizerGrowth(path: String, inputBytes: Int) -> TokenizerError {
        .invalidField(path: path, field: "normalizer",
                      reason: "grows \(inputBytes) bytes of text beyond \(NormalizerDefinition.lengthLimit(forInput: inputBytes)) bytes (\(NormalizerDefinition.maximumGrowth)× the input); refusing it")
    }

    func encode(_ text: String, specialTokens: SpecialTokensPolicy, workspace: inout BPEWorkspace, tokens: inout [String]?) throws(TokenizerError) -> [Int] {
        var ids: [Int] = []
        if specialTokens != .none, let prefix = template?.prefix {
            ids += prefix.ids
            tokens? += prefix.tokens
        }
        if specialTokens == .beginningOfSequence && ids.isEmpty {
            throw .invalidField(path: path, field: "post_processor", reason: "puts no beginning-of-sequence token before the text, so there is none to add")
        }
        let bytes = Array(text.utf8)
        for split in addedVocabulary.rawMatcher.splits(bytes) {
            if let id = split.id {
                ids.append(id)
                tokens?.append(String(decoding: bytes[split.range], as: UTF8.self))
                continue
            }
            guard !split.range.isEmpty else { continue }
            let segment = Array(bytes[split.range])
            let normalized: [UInt8]
            if let normalizer {
                guard let result = normalizer.normalize(segment) else { throw Self.normalizerGrowth(path: path, inputBytes: segment.count) }
                normalized = result
            } else {
                normalized = segment
            }
            for piece in addedVocabulary.normalizedMatcher.splits(normalized) {
                if let id = piece.id {
                    ids.append(id)
                    tokens?.append(String(decoding: normalized[piece.range], as: UTF8.self))
                    continue
                }
                guard !piece.range.isEmpty else { continue }
                let pieceBytes = piece.range == normalized.indices ? normalized : Array(normalized[piece.range])
                let atStart = split.range.lowerBound == 0 && piece.range.lowerBound == 0
                if let preTokenizer {
                    for word in preTokenizer.split(pieceBytes, atStart: atStart) { try tokenize(word, into: &ids, workspace: &workspace, tokens: &tokens) }
                } else {
                    try tokenize(pieceBytes, into: &ids, workspace: &workspace, tokens: &tokens)
                }
            }
        }
        if specialTokens == .postProcessor, let suffix = template?.suffix {
            ids += suffix.ids
            tokens? += suffix.tokens
        }
        return ids
    }

    private func tokenize(_ word: [UInt8], into ids: inout [Int], workspace: inout BPEWorkspace, tokens: inout [String]?) throws(TokenizerError) {
        let start = ids.count
        try model.tokenize(word, into: &ids, workspace: &workspace)
        if tokens != nil {
            for id in ids[start...] { tokens?.append(model.idToToken[Int32(id)] ?? "") }
        }
    }

    // MARK: Decoding

    /// The text of `ids`: token strings (unknown ids skipped, special tokens too when
    /// `skipSpecialTokens`) through the decoder chain — `tokenizers`' `decode`.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = true) -> String {
        var tokens: [String] = []
        tokens.reserveCapacity(ids.count)
        for id in ids {
            guard let token = token(forId: id) else { continue }
            if skipSpecialTokens && addedVocabulary.specialContents.contains(token) { continue }
            tokens.append(token)
        }
        guard let decoder else { return tokens.joined(separator: " ") }
        return decoder.decodeChain(tokens).joined()
    }
}
