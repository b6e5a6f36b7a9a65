import Foundation

/// Problems with a `tokenizer.json` (each naming the file and the JSON field) or with the text
/// handed to a tokenizer.
public enum TokenizerError: Error, LocalizedError, Equatable, Sendable {
    case missingFile(path: String)
    case invalidJSON(path: String, reason: String)
    case missingField(path: String, field: String)
    case invalidField(path: String, field: String, reason: String)
    /// A component MoEKit does not implement (WordPiece, a ByteLevel pre-tokenizer, BPE dropout…):
    /// refused rather than tokenised differently from Hugging Face `tokenizers`.
    case unsupported(path: String, field: String, what: String)
    /// BPE met a character neither in the vocabulary nor covered by byte fallback, and the
    /// `unk_token` it should become is not in the vocabulary (HF fails the same way).
    case unknownTokenNotInVocabulary(path: String, token: String)
    case unreadableText(path: String, reason: String)

    public var errorDescription: String? {
        switch self {
        case let .missingFile(path): return "\(path): no such file (a tokenizer.json is needed to tokenise text)"
        case let .invalidJSON(path, reason): return "\(path): invalid JSON: \(reason)"
        case let .missingField(path, field): return "\(path): missing field '\(field)'"
        case let .invalidField(path, field, reason): return "\(path): field '\(field)' \(reason)"
        case let .unsupported(path, field, what): return "\(path): field '\(field)': \(what) is not supported"
        case let .unknownTokenNotInVocabulary(path, token):
            return "\(path): text needs the unknown token '\(token)' (model.unk_token), which is not in model.vocab"
        case let .unreadableText(path, reason): return "\(path): \(reason)"
        }
    }
}
