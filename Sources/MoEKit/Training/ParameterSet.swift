import Foundation

/// A model's trainable parameters as f32 tensors, keyed by their checkpoint names
/// (`model.layers.0.mlp.experts.3.w1.weight`) in the layout's order.
///
/// Training works on names, not on Swift properties: gradients, AdamW moments and saved checkpoints
/// all use the same keys, so what is trained is exactly what is saved. The shapes are PyTorch's
/// `[out, in]` for every projection.
public struct ParameterSet: Sendable, Equatable {
    public let config: MiniCPMConfig
    /// Parameter names in `MiniCPMLayout` order (embedding, layers, final norm, untied head).
    public let names: [String]
    public var tensors: [String: Tensor]

    /// Loads every layout tensor of a model directory (safetensors or PyTorch `.bin`) in f32.
    public init(directory: String) throws {
        let config = try MiniCPMConfig(path: directory + "/config.json")
        let checkpoint = try ModelCheckpoint(directory: directory)
        _ = try MiniCPMLayout(config: config).check(checkpoint)
        try self.init(config: config) { name in
            defer { checkpoint.release(name) }
            return try checkpoint.floatTensor(name)
        }
    }

    /// Builds the set from `load(name)` for every layout entry (shapes checked).
    public init(config: MiniCPMConfig, load: (String) throws -> Tensor) throws {
        try config.validate()
        self.config = config
        var names: [String] = []
        var tensors: [String: Tensor] = [:]
        for entry in MiniCPMLayout(config: config).entries {
            let tensor = try load(entry.name)
            guard tensor.shape == entry.shape else {
                throw CheckpointError.shapeMismatch(directory: "<parameters>", tensor: entry.name, expected: entry.shape, actual: tensor.shape)
            }
            names.append(entry.name)
            tensors[entry.name] = tensor
        }
        self.names = names
        self.tensors = tensors
    }

    /// The tensor named `name` (a layout name; a missing one is a programming error).
    public subscript(name: String) -> Tensor {
        get {
            guard let tensor = tensors[name] else { preconditionFailure("no parameter named \(name)") }
            return tensor
        }
        set {
            precondition(tensors[name]?.shape == newValue.shape, "parameter \(name) cannot change shape")
            tensors[name] = newValue
        }
    }

    /// The total number of scalar parameters.
    public var elementCount: Int { names.reduce(0) { $0 + tensors[$1]!.count } }

    /// An inference model over the current values (copies the weights).
    public func makeModel(source: String = "<training>") throws -> MiniCPMModel {
        try MiniCPMModel(config: config, source: source) { name in
            guard let tensor = tensors[name] else { throw CheckpointError.missingTensor(directory: source, tensor: name) }
            return tensor
        }
    }

    /// Zeros of every parameter's shape (gradient or moment buffers).
    public func zeros() -> ParameterSet {
        var copy = self
        for name in names { copy.tensors[name] = Tensor(shape: tensors[name]!.shape) }
        return copy
    }
}
