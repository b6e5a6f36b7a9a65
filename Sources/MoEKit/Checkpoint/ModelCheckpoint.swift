import Foundation

/// One tensor of a model checkpoint, whatever its file format.
public struct CheckpointTensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: SafetensorsDType
    public let shape: [Int]
    /// The weight file holding it.
    public let file: String

    public var elementCount: Int { shape.reduce(1, *) }
    public var byteCount: Int { elementCount * dtype.size }
}

/// The weights of a Hugging Face model directory, in either format Hugging Face writes:
///
/// - safetensors: `model.safetensors`, or shards listed by `model.safetensors.index.json`;
/// - PyTorch: `pytorch_model.bin`, or shards (`pytorch_model-0000i-of-0000n.bin`) listed by
///   `pytorch_model.bin.index.json`, read by `PyTorchCheckpointFile` without running the pickle.
///
/// Safetensors wins when a directory has both, as in `transformers`. Every weight file is
/// memory-mapped and validated on open; an index must name exactly the tensors its shards hold.
/// Tensors are read on demand, so opening costs nothing like the checkpoint's size. Every command
/// and loader that takes a model directory opens it through here.
public final class ModelCheckpoint: @unchecked Sendable {
    public enum Format: String, Sendable {
        case safetensors
        case pytorch
    }

    public static let safetensorsFileName = "model.safetensors"
    public static let pytorchFileName = "pytorch_model.bin"
    public static let pytorchIndexFileName = "pytorch_model.bin.index.json"

    /// The model directory (or the single file `init(file:)` opened).
    public let directory: String
    public let format: Format
    /// Weight file paths in name order.
    public let files: [String]
    /// The safetensors `__metadata__` of the first file (`nil` for PyTorch checkpoints).
    public let metadata: [String: String]?
    /// The architecture whose tensor names the files use (`model_type` of the directory's
    /// config.json). Every name this type takes and returns is MiniCPM's (`MiniCPMTensorNames`);
    /// a Mixtral's `block_sparse_moe` names are translated on the way (`ModelArchitecture`).
    let storedArchitecture: ModelArchitecture
    /// Tensor name (MiniCPM's) → its weight file.
    private let fileForTensor: [String: WeightFile]

    /// Opens the weights of a model directory (see the type's description for what is looked for).
    /// With `translatingNames` (the default) names are MiniCPM's whatever architecture the
    /// directory's config.json declares; without, they are the names stored in the files.
    public init(directory: String, translatingNames: Bool = true) throws(CheckpointError) {
        self.directory = directory
        let architecture = translatingNames ? ModelArchitecture.declared(byDirectory: directory) : .minicpm
        storedArchitecture = architecture
        let manager = FileManager.default
        var isDirectory: ObjCBool = false
        guard manager.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw manager.fileExists(atPath: directory) ? .notADirectory(path: directory) : .missingFile(path: directory)
        }
        guard let (format, indexed) = Self.weightLayout(directory: directory) else { throw .noWeights(directory: directory) }
        self.format = format
        var files: [WeightFile] = []
        var fileForTensor: [String: WeightFile] = [:]
        if indexed {
            let indexPath = directory + "/" + (format == .safetensors ? SafetensorsIndex.fileName : Self.pytorchIndexFileName)
            let index = try SafetensorsIndex(path: indexPath)
            var opened: [String: WeightFile] = [:]
            for shardName in Set(index.weightMap.values).sorted() {
                let shard = try WeightFile(path: directory + "/" + shardName, format: format)
                opened[shardName] = shard
                files.append(shard)
            }
            for (tensor, shardName) in index.weightMap {
                guard let shard = opened[shardName], shard.contains(tensor) else {
                    throw .shardMissingTensor(path: directory + "/" + shardName, tensor: tensor)
                }
                fileForTensor[tensor] = shard
            }
            for shard in files {
                for name in shard.names where fileForTensor[name] == nil {
                    throw .invalidField(path: indexPath, field: "weight_map", reason: "does not list tensor '\(name)' of \(shard.path)")
                }
            }
        } else {
            let file = try WeightFile(path: directory + "/" + (format == .safetensors ? Self.safetensorsFileName : Self.pytorchFileName), format: format)
            files = [file]
            for name in file.names { fileForTensor[name] = file }
        }
        self.files = files.map(\.path)
        metadata = files.first?.metadata
        self.fileForTensor = Dictionary(fileForTensor.map { (architecture.miniCPMName($0.key), $0.value) }, uniquingKeysWith: { a, _ in a })
        if architecture == .qwen2MoE || architecture == .glm4MoE {
            // MoEKit has no shared expert: Qwen2-MoE is read only when its shared expert adds exactly 0.
            for name in fileForTensor.keys.sorted() where ModelArchitecture.isSharedExpertTensor(name) {
                guard let file = fileForTensor[name] else { continue }
                if try file.floatTensor(name).values.contains(where: { $0 != 0 }) {
                    throw .invalidField(path: file.path, field: name, reason: "is not zero; MoEKit has no shared experts (it reads the all-zero shared expert `export --format qwen2_moe` writes)")
                }
                file.release(name)
            }
        }
    }

    /// Opens one weight file: a PyTorch checkpoint when it starts as a zip (or a legacy pickle)
    /// does, safetensors otherwise.
    public init(file path: String) throws(CheckpointError) {
        guard FileManager.default.fileExists(atPath: path) else { throw .missingFile(path: path) }
        directory = path
        storedArchitecture = .minicpm
        format = PyTorchCheckpointFile.looksLikePyTorchCheckpoint(path: path) ? .pytorch : .safetensors
        let file = try WeightFile(path: path, format: format)
        files = [path]
        metadata = file.metadata
        var fileForTensor: [String: WeightFile] = [:]
        for name in file.names { fileForTensor[name] = file }
        self.fileForTensor = fileForTensor
    }

    /// The format and whether an index lists shards, for the weights `init(directory:)` would
    /// open; `nil` when the directory has none.
    static func weightLayout(directory: String) -> (format: Format, indexed: Bool)? {
        let manager = FileManager.default
        if manager.fileExists(atPath: directory + "/" + SafetensorsIndex.fileName) { return (.safetensors, true) }
        if manager.fileExists(atPath: directory + "/" + safetensorsFileName) { return (.safetensors, false) }
        if manager.fileExists(atPath: directory + "/" + pytorchIndexFileName) { return (.pytorch, true) }
        if manager.fileExists(atPath: directory + "/" + pytorchFileName) { return (.pytorch, false) }
        return nil
    }

    /// Whether a file name in a model directory is (part of) its weights: safetensors files and
    /// index, `pytorch_model*.bin` and its index.
    public static func isWeightFile(_ name: String) -> Bool {
        name.hasSuffix(".safetensors") || name == SafetensorsIndex.fileName
            || (name.hasPrefix("pytorch_model") && (name.hasSuffix(".bin") || name.hasSuffix(".bin.index.json")))
    }

    /// All tensor names, sorted.
    public var names: [String] { fileForTensor.keys.sorted() }

    /// Every tensor's description, sorted by name.
    public var tensors: [CheckpointTensorInfo] { names.compactMap { try? info($0) } }

    public func contains(_ name: String) -> Bool { fileForTensor[name] != nil }

    private func file(for name: String) throws(CheckpointError) -> WeightFile {
        guard let file = fileForTensor[name] else { throw .missingTensor(directory: directory, tensor: storedName(name)) }
        return file
    }

    /// The name a tensor has in the files.
    public func storedName(_ name: String) -> String { storedArchitecture.storedName(name) }

    public func info(_ name: String) throws(CheckpointError) -> CheckpointTensorInfo {
        let stored = try file(for: name).info(storedName(name))
        return CheckpointTensorInfo(name: name, dtype: stored.dtype, shape: stored.shape, file: stored.file)
    }

    /// The tensor converted to f32.
    public func floatTensor(_ name: String) throws(CheckpointError) -> Tensor {
        try file(for: name).floatTensor(storedName(name))
    }

    /// Calls `body` with the tensor's raw little-endian bytes in its dtype, row-major: straight
    /// from the memory map (safetensors, contiguous PyTorch tensors) or a gathered copy (PyTorch
    /// views such as transposes). The buffer is valid only during the call.
    public func withBytes<Result>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> Result) throws -> Result {
        try file(for: name).withBytes(storedName(name), body)
    }

    /// The tensor's raw little-endian bytes in its dtype, in place in the read-only memory map and
    /// valid as long as this checkpoint lives; `nil` when the tensor is a PyTorch view that must be
    /// gathered (read it with `withBytes` or `floatTensor` instead).
    public func mappedBytes(_ name: String) throws(CheckpointError) -> UnsafeRawBufferPointer? {
        let file = try file(for: name), stored = storedName(name)
        switch file {
        case .safetensors(let safetensors):
            do { return try safetensors.bytes(stored) } catch { throw .safetensors(error) }
        case .pytorch(let pytorch):
            do { return try pytorch.mappedBytes(stored) } catch { throw .pytorch(error) }
        }
    }

    /// Lets the kernel drop a tensor's pages after use (streaming passes).
    public func release(_ name: String) {
        fileForTensor[name]?.release(storedName(name))
    }

    /// The error for a tensor whose dtype cannot be converted to f32, in its file format's domain.
    public func unsupportedDType(_ name: String) -> CheckpointError {
        let stored = storedName(name)
        guard let file = fileForTensor[name], let info = try? file.info(stored) else { return .missingTensor(directory: directory, tensor: stored) }
        switch file {
        case .safetensors: return .safetensors(.unsupportedDType(file: file.path, tensor: stored, dtype: info.dtype.rawValue))
        case .pytorch: return .pytorch(.unsupportedDType(file: file.path, tensor: stored, dtype: info.dtype.rawValue))
        }
    }

    /// The storage dtype most tensors use (what `torch_dtype` should say).
    public var dominantDType: SafetensorsDType? {
        var bytesByType: [SafetensorsDType: Int] = [:]
        for tensor in tensors { bytesByType[tensor.dtype, default: 0] += tensor.byteCount }
        return bytesByType.max { ($0.value, $0.key.rawValue) < ($1.value, $1.key.rawValue) }?.key
    }
}

/// One weight file of either format, with its errors mapped into `CheckpointError`.
enum WeightFile {
    case safetensors(SafetensorsFile)
    case pytorch(PyTorchCheckpointFile)

    init(path: String, format: ModelCheckpoint.Format) throws(CheckpointError) {
        switch format {
        case .safetensors:
            do { self = .safetensors(try SafetensorsFile(path: path)) } catch { throw .safetensors(error) }
        case .pytorch:
            do { self = .pytorch(try PyTorchCheckpointFile(path: path)) } catch { throw .pytorch(error) }
        }
    }

    var path: String {
        switch self {
        case .safetensors(let file): return file.path
        case .pytorch(let file): return file.path
        }
    }

    var metadata: [String: String]? {
        if case .safetensors(let file) = self { return file.metadata }
        return nil
    }

    var names: [String] {
        switch self {
        case .safetensors(let file): return file.names
        case .pytorch(let file): return file.names
        }
    }

    func contains(_ name: String) -> Bool {
        switch self {
        case .safetensors(let file): return file.contains(name)
        case .pytorch(let file): return file.contains(name)
        }
    }

    func info(_ name: String) throws(CheckpointError) -> CheckpointTensorInfo {
        switch self {
        case .safetensors(let file):
            do {
                let entry = try file.info(name)
                return CheckpointTensorInfo(name: name, dtype: entry.dtype, shape: entry.shape, file: file.path)
            } catch { throw .safetensors(error) }
        case .pytorch(let file):
            do {
                let entry = try file.info(name)
                return CheckpointTensorInfo(name: name, dtype: entry.dtype, shape: entry.shape, file: file.path)
            } catch { throw .pytorch(error) }
        }
    }

    func floatTensor(_ name: String) throws(CheckpointError) -> Tensor {
        switch self {
        case .safetensors(let file):
            do { return try file.floatTensor(name) } catch { throw .safetensors(error) }
        case .pytorch(let file):
            do { return try file.floatTensor(name) } catch { throw .pytorch(error) }
        }
    }

    func withBytes<Result>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> Result) throws -> Result {
        switch self {
        case .safetensors(let file):
            let raw: UnsafeRawBufferPointer
            do { raw = try file.bytes(name) } catch { throw CheckpointError.safetensors(error) }
            return try body(raw)
        case .pytorch(let file):
            do {
                return try file.withBytes(name, body)
            } catch let error as PyTorchCheckpointError {
                throw CheckpointError.pytorch(error)
            }
        }
    }

    func release(_ name: String) {
        switch self {
        case .safetensors(let file): file.release(name)
        case .pytorch(let file): file.release(name)
        }
    }
}
