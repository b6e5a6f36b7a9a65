import Foundation

/// Errors in a model's inputs: token ids, sequence lengths, token files.
public enum ModelError: Error, LocalizedError, Equatable, Sendable {
    case emptyInput(source: String)
    case emptySequence(source: String, sequence: Int)
    case tokenOutOfRange(source: String, sequence: Int, position: Int, token: Int, vocabularySize: Int)
    case sequenceTooLong(source: String, sequence: Int, length: Int, maximum: Int)
    case unreadableTokenFile(path: String, reason: String)
    case invalidToken(path: String, line: Int, text: String)
    case missingRouter(source: String)

    public var errorDescription: String? {
        switch self {
        case let .emptyInput(source): return "\(source): no tokens"
        case let .emptySequence(source, sequence): return "\(source): sequence \(sequence) is empty"
        case let .tokenOutOfRange(source, sequence, position, token, vocabularySize):
            return "\(source): sequence \(sequence), position \(position): token id \(token) is outside the vocabulary [0, \(vocabularySize))"
        case let .sequenceTooLong(source, sequence, length, maximum):
            return "\(source): sequence \(sequence) has \(length) tokens, more than max_position_embeddings (\(maximum))"
        case let .unreadableTokenFile(path, reason): return "\(path): \(reason)"
        case let .invalidToken(path, line, text): return "\(path): line \(line): '\(text)' is not a token id"
        case let .missingRouter(source): return "\(source): a MoE model needs a router (training needs a ConfigurableRouter)"
        }
    }
}
