import Foundation

/// A tensor to be written: its name, storage type and shape.
public struct TensorSpec: Sendable, Equatable {
    public var name: String
    public var dtype: SafetensorsDType
    public var shape: [Int]

    public init(name: String, dtype: SafetensorsDType, shape: [Int]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
    }

    public var elementCount: Int { shape.reduce(1, *) }
    public var byteCount: Int { elementCount * dtype.size }
}

/// Writes a safetensors file tensor by tensor, so a checkpoint larger than memory streams through.
///
/// The header (every name, dtype, shape and offset) is written first, padded with spaces to a
/// multiple of 8 bytes, with `__metadata__` `{"format": "pt"}` as PyTorch's savers write it.
/// Tensors are stored in name order; `tensorsInWriteOrder` tells the order in which `append`
/// expects their bytes. The file appears under its name only when `finish()` succeeds.
public final class SafetensorsWriter {
    public let path: String
    public let tensorsInWriteOrder: [TensorSpec]
    private let file: AtomicFileWriter
    private var current = 0
    private var writtenInCurrent = 0

    public init(path: String, tensors: [TensorSpec], metadata: [String: String] = ["format": "pt"]) throws(SafetensorsError) {
        self.path = path
        let ordered = tensors.sorted { $0.name < $1.name }
        for (a, b) in zip(ordered, ordered.dropFirst()) where a.name == b.name {
            throw .invalidWrite(file: path, reason: "tensor '\(a.name)' listed twice")
        }
        for spec in ordered where spec.name == "__metadata__" {
            throw .invalidWrite(file: path, reason: "'__metadata__' is reserved and cannot name a tensor")
        }
        tensorsInWriteOrder = ordered
        do {
            file = try AtomicFileWriter(destination: path)
            try file.write(Self.header(for: ordered, metadata: metadata))
        } catch {
            throw .file(error)
        }
        skipEmptyTensors()
    }

    /// The header bytes: length prefix plus JSON padded with spaces to a multiple of 8.
    static func header(for ordered: [TensorSpec], metadata: [String: String]) -> Data {
        var object: [String: JSONValue] = [:]
        if !metadata.isEmpty { object["__metadata__"] = .object(metadata.mapValues { .string($0) }) }
        var offset = 0
        for spec in ordered {
            object[spec.name] = .object([
                "dtype": .string(spec.dtype.rawValue),
                "shape": .array(spec.shape.map { .integer(Int64($0)) }),
                "data_offsets": .array([.integer(Int64(offset)), .integer(Int64(offset + spec.byteCount))]),
            ])
            offset += spec.byteCount
        }
        var json = JSONValue.object(object).serialized(pretty: false)
        let padding = (8 - json.count % 8) % 8
        json.append(contentsOf: [UInt8](repeating: UInt8(ascii: " "), count: padding))
        var result = Data()
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { result.append(contentsOf: $0) }
        result.append(json)
        return result
    }

    /// The tensor whose bytes come next, `nil` when all are written.
    public var nextTensor: TensorSpec? { current < tensorsInWriteOrder.count ? tensorsInWriteOrder[current] : nil }

    /// Appends bytes of the tensor `nextTensor` (little-endian, in its dtype). A tensor may be
    /// appended in several pieces; the writer moves on when it has all its bytes.
    public func append(_ bytes: UnsafeRawBufferPointer) throws(SafetensorsError) {
        var remaining = bytes
        while !remaining.isEmpty {
            guard let spec = nextTensor else { throw .invalidWrite(file: path, reason: "more bytes than the header declares") }
            let take = min(remaining.count, spec.byteCount - writtenInCurrent)
            do { try file.write(UnsafeRawBufferPointer(rebasing: remaining[..<take])) } catch { throw .file(error) }
            writtenInCurrent += take
            remaining = UnsafeRawBufferPointer(rebasing: remaining[take...])
            if writtenInCurrent == spec.byteCount {
                current += 1
                writtenInCurrent = 0
                skipEmptyTensors()
            }
        }
    }

    /// Appends f32 values for `nextTensor`, converted to its dtype.
    public func append(floats: UnsafeBufferPointer<Float>) throws(SafetensorsError) {
        // Zero values are no bytes: a no-op even after the last tensor (empty tensors are skipped).
        guard !floats.isEmpty else { return }
        guard let spec = nextTensor else { throw .invalidWrite(file: path, reason: "more bytes than the header declares") }
        do {
            try TensorEncoding.withEncoded(floats, as: spec.dtype, file: path) { raw in try append(raw) }
        } catch let error as SafetensorsError { throw error } catch { throw .file(.writeFailed(path: path, reason: "\(error)")) }
    }

    private func skipEmptyTensors() {
        while let spec = nextTensor, spec.byteCount == 0 { current += 1 }
    }

    /// Checks every tensor was written in full and renames the file into place.
    public func finish() throws(SafetensorsError) {
        if let spec = nextTensor {
            throw .invalidWrite(file: path, reason: "tensor '\(spec.name)' incomplete: \(writtenInCurrent) of \(spec.byteCount) bytes written")
        }
        do { try file.commit() } catch { throw .file(error) }
    }

    /// Writes whole f32 tensors, each stored in the given dtype.
    public static func write(_ tensors: [(name: String, tensor: Tensor, dtype: SafetensorsDType)], to path: String,
                             metadata: [String: String] = ["format": "pt"]) throws(SafetensorsError) {
        let byName = Dictionary(tensors.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let writer = try SafetensorsWriter(path: path, tensors: tensors.map { TensorSpec(name: $0.name, dtype: $0.dtype, shape: $0.tensor.shape) }, metadata: metadata)
        for spec in writer.tensorsInWriteOrder {
            guard let entry = byName[spec.name] else { continue }
            do {
                try entry.tensor.values.withUnsafeBufferPointer { (values) in try writer.append(floats: values) }
            } catch let error as SafetensorsError { throw error } catch { throw .file(.writeFailed(path: path, reason: "\(error)")) }
        }
        try writer.finish()
    }
}

/// f32 → storage dtype encoding, chunked so large tensors need no second full-size buffer.
enum TensorEncoding {
    static func withEncoded(_ floats: UnsafeBufferPointer<Float>, as dtype: SafetensorsDType, file: String,
                            _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard floats.count > 0 else { return }
        switch dtype {
        case .float32:
            // Little-endian hosts store f32 as the file does.
            try body(UnsafeRawBufferPointer(floats))
        case .bfloat16, .float16:
            let chunk = 1 << 20
            var scratch = [UInt8](repeating: 0, count: 2 * min(chunk, floats.count))
            var start = 0
            while start < floats.count {
                let n = min(chunk, floats.count - start)
                try scratch.withUnsafeMutableBytes { (raw: UnsafeMutableRawBufferPointer) in
                    HalfPrecision.encode(dtype == .bfloat16 ? .bfloat16 : .float16, from: floats.baseAddress! + start, count: n, into: raw.baseAddress!)
                    try body(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(raw)[..<(2 * n)]))
                }
                start += n
            }
        default:
            throw SafetensorsError.invalidWrite(file: file, reason: "MoEKit writes F32, F16 and BF16 weights, not \(dtype.rawValue)")
        }
    }
}
