import Foundation

/// What a model directory or safetensors file holds, for `moekit show`.
public struct CheckpointInspection: Sendable {
    public struct TensorEntry: Sendable, Codable {
        public var name: String
        public var dtype: String
        public var shape: [Int]
        public var file: String
        /// The values as f32 (only when asked for).
        public var values: [Float]?
    }

    public var path: String
    public var config: MiniCPMConfig?
    public var parameters: MiniCPMLayout.ParameterCounts?
    public var tensors: [TensorEntry]
    public var metadata: [String: String]?
    /// The weights' file format.
    public var format: ModelCheckpoint.Format
    /// Tensors the config does not explain.
    public var unexpected: [String]

    /// Inspects a model directory (config.json is checked against the tensors) or a single weight
    /// file (`.safetensors` or a PyTorch `.bin`). With `includeValues`, every tensor's values are
    /// decoded to f32.
    public init(path: String, includeValues: Bool = false) throws(CheckpointError) {
        self.path = path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { throw .missingFile(path: path) }
        let checkpoint: ModelCheckpoint
        if isDirectory.boolValue {
            checkpoint = try ModelCheckpoint(directory: path)
            let config = try MiniCPMConfig(path: path + "/config.json")
            let layout = MiniCPMLayout(config: config)
            unexpected = try layout.check(checkpoint).map(checkpoint.storedName)
            self.config = config
            parameters = layout.parameterCounts
        } else {
            checkpoint = try ModelCheckpoint(file: path)
            unexpected = []
        }
        format = checkpoint.format
        metadata = checkpoint.metadata
        var entries: [TensorEntry] = []
        for info in checkpoint.tensors {
            let values = includeValues ? try checkpoint.floatTensor(info.name).values : nil
            entries.append(TensorEntry(name: checkpoint.storedName(info.name), dtype: info.dtype.rawValue, shape: info.shape,
                                       file: URL(fileURLWithPath: info.file).lastPathComponent, values: values))
        }
        tensors = entries
    }

    /// Total bytes per storage dtype.
    public var bytesByDType: [String: Int] {
        var result: [String: Int] = [:]
        for tensor in tensors {
            let size = SafetensorsDType(rawValue: tensor.dtype)?.size ?? 0
            result[tensor.dtype, default: 0] += tensor.shape.reduce(1, *) * size
        }
        return result
    }

    /// A JSON object describing the checkpoint (values included when they were read).
    public func json() -> JSONValue {
        var object: [String: JSONValue] = ["path": .string(path), "format": .string(format.rawValue)]
        if let config { object["config"] = .object(config.jsonObject()) }
        if let parameters {
            object["parameters"] = .object([
                "total": .integer(Int64(parameters.total)),
                "non_embedding": .integer(Int64(parameters.nonEmbedding)),
                "active_per_token": .integer(Int64(parameters.activePerToken)),
            ])
        }
        if let metadata { object["metadata"] = .object(metadata.mapValues { .string($0) }) }
        object["unexpected"] = .array(unexpected.map { .string($0) })
        object["tensors"] = .array(tensors.map { tensor in
            var entry: [String: JSONValue] = [
                "name": .string(tensor.name), "dtype": .string(tensor.dtype),
                "shape": .array(tensor.shape.map { .integer(Int64($0)) }), "file": .string(tensor.file),
            ]
            if let values = tensor.values {
                entry["values"] = .array(values.map { $0.isFinite ? .number(Double($0)) : .string($0.isNaN ? "nan" : ($0 > 0 ? "inf" : "-inf")) })
            }
            return .object(entry)
        })
        return .object(object)
    }
}
