import Foundation

/// Why `moekit export` cannot write a model in the asked-for architecture.
public enum ExportError: Error, LocalizedError, Equatable, Sendable {
    case checkpoint(CheckpointError)
    /// Writing a shard of the output failed.
    case safetensors(SafetensorsError)
    /// Creating, copying into or renaming the output directory failed.
    case file(FileError)
    /// A routing setting of the model's `moekit_router` that the target architecture cannot express.
    case inexpressibleRouter(path: String, setting: String, format: String, reason: String)
    /// A dense model asked for as an MoE architecture, or the other way round.
    case wrongKind(directory: String, format: String, reason: String)
    /// Tensors the config does not explain, which the target's loaders would reject or ignore.
    case unexplainedTensors(directory: String, tensors: [String])
    case write(directory: String, reason: String)

    public var errorDescription: String? {
        switch self {
        case let .checkpoint(error): return error.errorDescription
        case let .safetensors(error): return error.errorDescription
        case let .file(error): return error.errorDescription
        case let .inexpressibleRouter(path, setting, format, reason):
            return "\(path): router setting '\(setting)' cannot be exported as \(format): \(reason)"
        case let .wrongKind(directory, format, reason): return "\(directory): cannot export as \(format): \(reason)"
        case let .unexplainedTensors(directory, tensors):
            let shown = tensors.prefix(5).map { "'\($0)'" }.joined(separator: ", ")
            return "\(directory): tensor\(tensors.count == 1 ? "" : "s") \(shown)\(tensors.count > 5 ? " and \(tensors.count - 5) more" : "") not explained by config.json; the export would not carry \(tensors.count == 1 ? "it" : "them")"
        case let .write(directory, reason): return "\(directory): \(reason)"
        }
    }
}
