import Foundation

/// Problems with a model directory: its files, its `config.json`, or its tensors against the config.
public enum CheckpointError: Error, LocalizedError, Equatable, Sendable {
    case missingFile(path: String)
    case notADirectory(path: String)
    case noWeights(directory: String)
    case invalidJSON(path: String, reason: String)
    case missingField(path: String, field: String)
    case invalidField(path: String, field: String, reason: String)
    case missingTensor(directory: String, tensor: String)
    case shapeMismatch(directory: String, tensor: String, expected: [Int], actual: [Int])
    case shardMissingTensor(path: String, tensor: String)
    case safetensors(SafetensorsError)
    case pytorch(PyTorchCheckpointError)
    /// An input path that cannot be read as a file (a directory, FIFO, device, too large…).
    case inputFile(InputFileError)
    /// Creating, writing or replacing an output failed.
    case file(FileError)
    /// The config's `moekit_router` cannot be used (the router's own error names the field).
    case router(RouterConfigurationError)

    public var errorDescription: String? {
        switch self {
        case let .missingFile(path): return "\(path): no such file"
        case let .notADirectory(path): return "\(path): not a model directory"
        case let .noWeights(directory):
            return "\(directory): no weights (model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json)"
        case let .invalidJSON(path, reason): return "\(path): invalid JSON: \(reason)"
        case let .missingField(path, field): return "\(path): missing field '\(field)'"
        case let .invalidField(path, field, reason): return "\(path): field '\(field)' \(reason)"
        case let .missingTensor(directory, tensor): return "\(directory): missing tensor '\(tensor)'"
        case let .shapeMismatch(directory, tensor, expected, actual):
            return "\(directory): tensor '\(tensor)' has shape \(actual), config.json implies \(expected)"
        case let .shardMissingTensor(path, tensor): return "\(path): index names tensor '\(tensor)' but the shard does not hold it"
        case let .safetensors(error): return error.errorDescription
        case let .pytorch(error): return error.errorDescription
        case let .inputFile(error): return error.errorDescription
        case let .file(error): return error.errorDescription
        case let .router(error): return error.errorDescription
        }
    }
}
