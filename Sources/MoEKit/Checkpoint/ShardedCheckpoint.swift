import Foundation

/// `model.safetensors.index.json`: which shard holds each tensor, as Hugging Face writes it (its
/// `pytorch_model.bin.index.json` has the same layout and is read by the same parser).
public struct SafetensorsIndex: Sendable, Equatable {
    public static let fileName = "model.safetensors.index.json"

    /// Sum of the tensors' byte sizes (`metadata.total_size`).
    var totalSize: Int
    /// Tensor name → shard file name (`weight_map`).
    var weightMap: [String: String]

    public init(totalSize: Int, weightMap: [String: String]) {
        self.totalSize = totalSize
        self.weightMap = weightMap
    }

    /// Reads `model.safetensors.index.json`; errors name the file and the field.
    public init(path: String) throws(CheckpointError) {
        let data: Data
        do { data = try InputFile.read(path, limit: InputFile.jsonLimit) } catch { throw error == .missing(path: path) ? .missingFile(path: path) : .inputFile(error) }
        guard let root = JSONValue.parse(data), case .object = root else { throw .invalidJSON(path: path, reason: "not a JSON object") }
        do {
            self = try JSONValueDecoder.decode(SafetensorsIndex.self, from: root)
        } catch let DecodingError.dataCorrupted(context) {
            throw .invalidField(path: path, field: context.codingPath.map(\.stringValue).joined(separator: "."), reason: context.debugDescription)
        } catch {
            throw .invalidJSON(path: path, reason: "\(error)")
        }
    }

    public func serialized() -> Data { jsonValue.serialized() }

    var jsonValue: JSONValue {
        .object([
            CodingKeys.metadata.rawValue: .object([MetadataKeys.totalSize.rawValue: .integer(Int64(totalSize))]),
            CodingKeys.weightMap.rawValue: .object(weightMap.mapValues { .string($0) }),
        ])
    }

    /// `model-0000i-of-0000n.safetensors` (1-based, five digits as Hugging Face pads them).
    static func shardName(_ index: Int, of count: Int) -> String {
        func pad(_ value: Int) -> String { let s = String(value); return String(repeating: "0", count: max(0, 5 - s.count)) + s }
        return "model-\(pad(index))-of-\(pad(count)).safetensors"
    }

    /// Splits tensors, in order, into shards of at most `maximumShardBytes` each (a tensor larger
    /// than the limit gets a shard of its own, as Hugging Face does).
    static func planShards(_ tensors: [TensorSpec], maximumShardBytes: Int) -> [[TensorSpec]] {
        var shards: [[TensorSpec]] = []
        var current: [TensorSpec] = []
        var currentBytes = 0
        for spec in tensors {
            if !current.isEmpty && currentBytes + spec.byteCount > maximumShardBytes {
                shards.append(current)
                current = []
                currentBytes = 0
            }
            current.append(spec)
            currentBytes += spec.byteCount
        }
        if !current.isEmpty || shards.isEmpty { shards.append(current) }
        return shards
    }
}

/// The index as Hugging Face writes it: `{"metadata": {"total_size": N}, "weight_map": {tensor: shard}}`.
/// `metadata.total_size` is optional (0 when absent); every shard must be a file name in the directory.
extension SafetensorsIndex: Codable {
    enum CodingKeys: String, CodingKey {
        case metadata
        case weightMap = "weight_map"
    }

    enum MetadataKeys: String, CodingKey {
        case totalSize = "total_size"
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let map: [String: JSONValue]
        do { map = try container.decode([String: JSONValue].self, forKey: .weightMap) } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: [CodingKeys.weightMap], debugDescription: "missing or not an object"))
        }
        var weightMap: [String: String] = [:]
        for (name, shard) in map {
            guard let shardName = shard.stringValue, !shardName.contains("/") else {
                throw DecodingError.dataCorrupted(.init(codingPath: [CodingKeys.weightMap, JSONKey(name)], debugDescription: "not a shard file name"))
            }
            weightMap[name] = shardName
        }
        let metadata = try? container.nestedContainer(keyedBy: MetadataKeys.self, forKey: .metadata)
        let totalSize = (try? metadata?.decode(Int64.self, forKey: .totalSize)) ?? 0
        self.init(totalSize: Int(totalSize), weightMap: weightMap)
    }

    public func encode(to encoder: Encoder) throws { try jsonValue.encode(to: encoder) }
}

/// Writes a checkpoint as shards plus `model.safetensors.index.json`, tensor by tensor.
///
/// Tensors are taken in name order (`tensorsInWriteOrder`) and packed into shards of at most
/// `maximumShardBytes`. With `alwaysIndex == false` and a single shard, writes a plain
/// `model.safetensors` without an index, as Hugging Face does.
public final class ShardedSafetensorsWriter {
    public static let defaultShardSize = 5_000_000_000

    public let directory: String
    public let tensorsInWriteOrder: [TensorSpec]
    public let shardFiles: [String]
    private let shards: [[TensorSpec]]
    private let writeIndex: Bool
    private var shardIndex = 0
    private var writer: SafetensorsWriter?
    private var finishedShards: [String] = []
    /// Bytes of tensor data written so far (for progress reports).
    public private(set) var tensorBytesWritten = 0

    public init(directory: String, tensors: [TensorSpec], maximumShardBytes: Int = defaultShardSize, alwaysIndex: Bool = true) throws(SafetensorsError) {
        self.directory = directory
        let ordered = tensors.sorted { $0.name < $1.name }
        tensorsInWriteOrder = ordered
        let planned = SafetensorsIndex.planShards(ordered, maximumShardBytes: maximumShardBytes)
        shards = planned
        writeIndex = alwaysIndex || planned.count > 1
        shardFiles = writeIndex ? (1 ... planned.count).map { SafetensorsIndex.shardName($0, of: planned.count) } : ["model.safetensors"]
        try openShard()
    }

    private func openShard() throws(SafetensorsError) {
        writer = try SafetensorsWriter(path: directory + "/" + shardFiles[shardIndex], tensors: shards[shardIndex])
    }

    /// The tensor whose values come next, `nil` when all are written. Empty tensors (no bytes) are
    /// never asked for: they are written with their shard's header.
    public var nextTensor: TensorSpec? {
        if let spec = writer?.nextTensor { return spec }
        for shard in shards.dropFirst(shardIndex + 1) {
            if let spec = shard.first(where: { $0.byteCount > 0 }) { return spec }
        }
        return nil
    }

    private func advanceIfShardComplete() throws(SafetensorsError) {
        while let current = writer, current.nextTensor == nil, shardIndex + 1 < shards.count {
            try current.finish()
            finishedShards.append(shardFiles[shardIndex])
            shardIndex += 1
            try openShard()
        }
    }

    /// Appends f32 values for `nextTensor` (whole or in pieces), converted to its dtype.
    public func append(floats: UnsafeBufferPointer<Float>) throws(SafetensorsError) {
        try advanceIfShardComplete()
        guard let writer else { throw .invalidWrite(file: directory, reason: "writer already finished") }
        let elementSize = writer.nextTensor?.dtype.size ?? 0
        try writer.append(floats: floats)
        tensorBytesWritten += floats.count * elementSize
    }

    /// Appends raw bytes (already in the tensor's dtype) for `nextTensor`.
    public func append(_ bytes: UnsafeRawBufferPointer) throws(SafetensorsError) {
        try advanceIfShardComplete()
        guard let writer else { throw .invalidWrite(file: directory, reason: "writer already finished") }
        try writer.append(bytes)
        tensorBytesWritten += bytes.count
    }

    /// Finishes the last shard and writes the index.
    public func finish() throws(SafetensorsError) {
        try advanceIfShardComplete()
        guard let writer else { throw .invalidWrite(file: directory, reason: "writer already finished") }
        try writer.finish()
        self.writer = nil
        guard writeIndex else { return }
        var weightMap: [String: String] = [:]
        for (index, shard) in shards.enumerated() {
            for spec in shard { weightMap[spec.name] = shardFiles[index] }
        }
        let index = SafetensorsIndex(totalSize: tensorsInWriteOrder.reduce(0) { $0 + $1.byteCount }, weightMap: weightMap)
        do { try AtomicFileWriter.write(index.serialized(), to: directory + "/" + SafetensorsIndex.fileName) } catch { throw .file(error) }
    }
}

extension ShardedSafetensorsWriter {
    /// Appends the checkpoint tensor `name` as `nextTensor`, stored as `dtype`: its raw bytes when
    /// the dtype is kept (bit-exact), otherwise decoded to f32 and re-encoded in 1 M-element
    /// chunks. The source pages are released afterwards.
    public func appendTensor(_ name: String, from checkpoint: ModelCheckpoint, as dtype: SafetensorsDType,
                             reporter: ProgressReporter? = nil) throws {
        let info = try checkpoint.info(name)
        guard info.dtype == dtype else {
            try appendTensor(name, from: checkpoint, reporter: reporter) { _ in }
            return
        }
        defer { checkpoint.release(name) }
        try checkpoint.withBytes(name) { raw in
            let chunkBytes = 64 << 20
            var start = 0
            while start < raw.count {
                let end = min(raw.count, start + chunkBytes)
                try append(UnsafeRawBufferPointer(rebasing: raw[start ..< end]))
                reporter?.update(bytesDone: tensorBytesWritten)
                start = end
            }
        }
    }

    /// Appends the checkpoint tensor `name` as `nextTensor`, decoded to f32 in 1 M-element chunks,
    /// each passed to `transform` to change in place (e.g. `moekit export`'s folds) and then
    /// encoded to the tensor's storage dtype. The source pages are released afterwards.
    public func appendTensor(_ name: String, from checkpoint: ModelCheckpoint, reporter: ProgressReporter? = nil,
                             transform: (UnsafeMutableBufferPointer<Float>) throws -> Void) throws {
        let info = try checkpoint.info(name)
        defer { checkpoint.release(name) }
        guard info.dtype.isConvertibleToFloat else { throw checkpoint.unsupportedDType(name) }
        try checkpoint.withBytes(name) { raw in
            let chunk = 1 << 20
            let count = info.elementCount
            var buffer = [Float](repeating: 0, count: min(chunk, max(count, 1)))
            var start = 0
            while start < count {
                let n = min(chunk, count - start)
                try buffer.withUnsafeMutableBufferPointer { (values) in
                    let slice = UnsafeMutableBufferPointer(rebasing: values[..<n])
                    SafetensorsFile.decode(UnsafeRawBufferPointer(rebasing: raw[start * info.dtype.size ..< (start + n) * info.dtype.size]),
                                           dtype: info.dtype, into: slice)
                    try transform(slice)
                    try append(floats: UnsafeBufferPointer(slice))
                }
                start += n
                reporter?.update(bytesDone: tensorBytesWritten)
            }
        }
    }
}
