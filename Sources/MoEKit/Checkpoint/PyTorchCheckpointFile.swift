import Foundation

/// One tensor of a PyTorch checkpoint: a strided view of a storage record.
public struct PyTorchTensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: SafetensorsDType
    public let shape: [Int]
    /// Element strides (PyTorch's `tensor.stride()`).
    let strides: [Int]
    /// The first element's index in the storage (`tensor.storage_offset()`).
    let storageOffset: Int
    /// The zip record holding the storage, `<archive>/data/<key>`.
    let storageRecord: String
    /// Whether the elements lie in row-major order from the offset (read straight from the map).
    let isContiguous: Bool
    /// The storage record's bytes in the file.
    let storageRange: Range<Int>

    public var elementCount: Int { shape.reduce(1, *) }
    public var byteCount: Int { elementCount * dtype.size }

    /// The file bytes of a contiguous tensor.
    var contiguousRange: Range<Int> {
        let start = storageRange.lowerBound + storageOffset * dtype.size
        return start ..< start + byteCount
    }
}

/// A `pytorch_model.bin` in the zip format `torch.save` has written since PyTorch 1.6, read
/// without running its pickle.
///
/// Layout: a stored zip whose records sit under one archive name, `<archive>/data.pkl` (the
/// pickled state dict), `<archive>/data/<key>` (each storage's raw bytes), `<archive>/byteorder`
/// (`little`) and `<archive>/version`. `data.pkl` is read by `RestrictedUnpickler`, which refuses
/// any global but the state-dict ones; every tensor is then checked on open: its storage type is
/// one MoEKit reads, its storage record holds exactly `numel × element size` bytes, and
/// `offset + Σ (sizeᵢ − 1)·strideᵢ` lies inside the storage (overflow-checked). Contiguous tensors
/// are read straight from the memory map like safetensors; other views (transposes, slices) are
/// gathered into row-major order when read.
public final class PyTorchCheckpointFile: @unchecked Sendable {
    public let path: String
    /// The records' common prefix (PyTorch uses the file's stem, e.g. `pytorch_model`).
    public let archiveName: String
    /// The `version` record (serialization format version), when present.
    public let formatVersion: String?
    /// Tensors in the order the state dict lists them.
    public let tensors: [PyTorchTensorInfo]
    private let tensorIndex: [String: Int]
    private let mapping: MappedFile

    public init(path: String) throws(PyTorchCheckpointError) {
        self.path = path
        do { mapping = try MappedFile(path: path) } catch {
            if case let .cannotOpen(_, reason) = error { throw .notZipArchive(file: path, reason: "cannot open: \(reason)") }
            throw .notZipArchive(file: path, reason: error.errorDescription ?? "\(error)")
        }
        if mapping.size >= 2, mapping.bytes(0 ..< 1).first == 0x80, mapping.bytes(1 ..< 2).first.map({ $0 <= 5 }) == true {
            throw .legacyFormat(file: path)
        }
        let archive = try ZipArchive(mapping: mapping)
        guard let first = archive.entries.first, let slash = first.name.firstIndex(of: "/") else {
            throw .missingRecord(file: path, record: "<archive>/data.pkl")
        }
        let prefix = String(first.name[..<slash])
        archiveName = prefix

        if archive.entry(prefix + "/byteorder") != nil {
            let raw = try archive.checkedData(prefix + "/byteorder")
            let order = String(decoding: raw, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard order == "little" else { throw .unsupportedByteOrder(file: path, byteOrder: order) }
        }
        if archive.entry(prefix + "/version") != nil {
            formatVersion = String(decoding: try archive.checkedData(prefix + "/version"), as: UTF8.self)
                .trimmingCharacters(in: .whitespacesAndNewlines)
        } else {
            formatVersion = nil
        }

        let stateDict = try RestrictedUnpickler.loadStateDict(try archive.checkedData(prefix + "/data.pkl"), file: path)
        var tensors: [PyTorchTensorInfo] = []
        var index: [String: Int] = [:]
        var storageRanges: [String: Range<Int>] = [:]
        for (name, tensor) in stateDict {
            let record = prefix + "/data/" + tensor.storage.key
            let range: Range<Int>
            if let known = storageRanges[record] { range = known } else {
                range = try archive.dataRange(record)
                storageRanges[record] = range
            }
            let info = try Self.validate(tensor, name: name, record: record, storageRange: range, file: path)
            index[name] = tensors.count
            tensors.append(info)
        }
        self.tensors = tensors
        tensorIndex = index
    }

    /// Checks one tensor view against its storage and returns its description.
    static func validate(_ tensor: PickleTensor, name: String, record: String, storageRange: Range<Int>,
                         file: String) throws(PyTorchCheckpointError) -> PyTorchTensorInfo {
        let storage = tensor.storage
        guard let dtype = storage.dtype else { throw .unsupportedStorage(file: file, tensor: name, storageType: storage.typeName) }
        let (storageBytes, bytesOverflow) = storage.elementCount.multipliedReportingOverflow(by: dtype.size)
        guard !bytesOverflow, storageBytes == storageRange.count else {
            throw .storageSizeMismatch(file: file, record: record, expectedBytes: bytesOverflow ? Int.max : storageBytes, actualBytes: storageRange.count)
        }
        guard tensor.shape.count == tensor.strides.count else {
            throw .invalidTensor(file: file, tensor: name, reason: "\(tensor.shape.count) sizes but \(tensor.strides.count) strides")
        }
        guard tensor.shape.allSatisfy({ $0 >= 0 }), tensor.strides.allSatisfy({ $0 >= 0 }), tensor.storageOffset >= 0 else {
            throw .invalidTensor(file: file, tensor: name, reason: "negative size, stride or offset (size \(tensor.shape), stride \(tensor.strides), offset \(tensor.storageOffset))")
        }
        var elementCount = 1
        var lastIndex = tensor.storageOffset
        for (size, stride) in zip(tensor.shape, tensor.strides) {
            let (count, countOverflow) = elementCount.multipliedReportingOverflow(by: size)
            guard !countOverflow else { throw .invalidTensor(file: file, tensor: name, reason: "element count overflows") }
            elementCount = count
            guard size > 0 else { continue }
            let (reach, reachOverflow) = (size - 1).multipliedReportingOverflow(by: stride)
            let (sum, sumOverflow) = lastIndex.addingReportingOverflow(reach)
            guard !reachOverflow, !sumOverflow else { throw .invalidTensor(file: file, tensor: name, reason: "strides overflow") }
            lastIndex = sum
        }
        if elementCount > 0 {
            guard lastIndex < storage.elementCount else {
                throw .storageTooSmall(file: file, tensor: name, neededElements: lastIndex + 1, storageElements: storage.elementCount)
            }
        } else if tensor.storageOffset > storage.elementCount {
            throw .storageTooSmall(file: file, tensor: name, neededElements: tensor.storageOffset, storageElements: storage.elementCount)
        }
        var expectedStride = 1
        var contiguous = true
        for (size, stride) in zip(tensor.shape, tensor.strides).reversed() {
            if size > 1 && stride != expectedStride { contiguous = false }
            expectedStride = expectedStride.multipliedReportingOverflow(by: size).partialValue  // exact while elements exist
        }
        return PyTorchTensorInfo(name: name, dtype: dtype, shape: tensor.shape, strides: tensor.strides, storageOffset: tensor.storageOffset,
                                 storageRecord: record, isContiguous: contiguous || elementCount == 0, storageRange: storageRange)
    }

    /// Tensor names in state-dict order.
    public var names: [String] { tensors.map(\.name) }

    public func contains(_ name: String) -> Bool { tensorIndex[name] != nil }

    public func info(_ name: String) throws(PyTorchCheckpointError) -> PyTorchTensorInfo {
        guard let position = tensorIndex[name] else { throw .tensorNotFound(file: path, tensor: name) }
        return tensors[position]
    }

    /// Calls `body` with the tensor's little-endian bytes in row-major order: a slice of the
    /// memory map for a contiguous tensor, a gathered copy (valid only during the call) otherwise.
    public func withBytes<Result>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> Result) throws -> Result {
        let entry = try info(name)
        if entry.isContiguous { return try body(entry.byteCount == 0 ? UnsafeRawBufferPointer(start: nil, count: 0) : mapping.bytes(entry.contiguousRange)) }
        var gathered = [UInt8](repeating: 0, count: entry.byteCount)
        gathered.withUnsafeMutableBytes { destination in
            Self.gather(mapping.bytes(entry.storageRange), elementSize: entry.dtype.size, shape: entry.shape,
                        strides: entry.strides, offset: entry.storageOffset, into: destination)
        }
        return try gathered.withUnsafeBytes { try body($0) }
    }

    /// The tensor's bytes inside the memory map when it is stored contiguously (valid while this
    /// file lives); `nil` for views that need gathering.
    public func mappedBytes(_ name: String) throws(PyTorchCheckpointError) -> UnsafeRawBufferPointer? {
        let entry = try info(name)
        guard entry.isContiguous, entry.byteCount > 0 else { return nil }
        return mapping.bytes(entry.contiguousRange)
    }

    /// The tensor converted to f32 (from any dtype but the 8-bit floats; integers and bools by value).
    public func floatTensor(_ name: String) throws(PyTorchCheckpointError) -> Tensor {
        let entry = try info(name)
        guard entry.dtype.isConvertibleToFloat else { throw .unsupportedDType(file: path, tensor: name, dtype: entry.dtype.rawValue) }
        var values = [Float](repeating: 0, count: entry.elementCount)
        do {
            try withBytes(name) { raw in
                values.withUnsafeMutableBufferPointer { SafetensorsFile.decode(raw, dtype: entry.dtype, into: $0) }
            }
        } catch let error as PyTorchCheckpointError {
            throw error
        } catch {
            throw .invalidTensor(file: path, tensor: name, reason: "\(error)")
        }
        return Tensor(shape: entry.shape, values: values)
    }

    /// Drops the tensor's storage pages from the resident set (after a streaming pass has used them).
    public func release(_ name: String) {
        guard let entry = try? info(name) else { return }
        mapping.release(entry.isContiguous ? entry.contiguousRange : entry.storageRange)
    }

    /// Copies the strided view (`offset`, `shape`, `strides` in elements of `elementSize` bytes)
    /// of `storage` into `destination` in row-major order. Runs along a stride-1 last dimension
    /// are copied whole.
    static func gather(_ storage: UnsafeRawBufferPointer, elementSize: Int, shape: [Int], strides: [Int], offset: Int,
                       into destination: UnsafeMutableRawBufferPointer) {
        let count = shape.reduce(1, *)
        guard count > 0, let source = storage.baseAddress, let output = destination.baseAddress else { return }
        guard let last = shape.indices.last else {
            output.copyMemory(from: source + offset * elementSize, byteCount: elementSize)
            return
        }
        let runLength = shape[last], runStride = strides[last]
        var index = [Int](repeating: 0, count: last)  // the multi-index over all but the last dimension
        var written = 0
        while written < count {
            var start = offset
            for dimension in 0 ..< last { start += index[dimension] * strides[dimension] }
            if runStride == 1 {
                (output + written * elementSize).copyMemory(from: source + start * elementSize, byteCount: runLength * elementSize)
            } else {
                for i in 0 ..< runLength {
                    (output + (written + i) * elementSize).copyMemory(from: source + (start + i * runStride) * elementSize, byteCount: elementSize)
                }
            }
            written += runLength
            var dimension = last - 1
            while dimension >= 0 {
                index[dimension] += 1
                if index[dimension] < shape[dimension] { break }
                index[dimension] = 0
                dimension -= 1
            }
        }
    }

    /// Whether the file starts as a zip archive does (`PK\u{3}\u{4}`), i.e. could be a PyTorch checkpoint.
    public static func looksLikePyTorchCheckpoint(path: String) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? handle.close() }
        let head = (try? handle.read(upToCount: 4)) ?? Data()
        return head == Data([0x50, 0x4B, 0x03, 0x04]) || head.first == 0x80
    }
}
