import Foundation

/// One tensor's entry in a safetensors header.
public struct SafetensorsTensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: SafetensorsDType
    public let shape: [Int]
    /// Byte range inside the data buffer (which starts after the header).
    let dataOffsets: Range<Int>

    public var elementCount: Int { shape.reduce(1, *) }
    public var byteCount: Int { dataOffsets.count }
}

/// A memory-mapped safetensors file, validated as the reference implementation validates it.
///
/// Layout: an 8-byte little-endian header length `n`, `n` bytes of UTF-8 JSON, then the data
/// buffer. Checked on open: `n` ≤ 100 MB and inside the file; the header is a JSON object;
/// `__metadata__`, if present, maps strings to strings; every tensor has a known dtype, a shape of
/// non-negative integers and `data_offsets` `[begin, end]` with `end − begin = product(shape) ×
/// element size`; the ranges, sorted by begin, tile the data buffer exactly from 0 to the end of
/// the file. All arithmetic is overflow-checked.
public final class SafetensorsFile: @unchecked Sendable {
    public static let maximumHeaderLength: UInt64 = 100_000_000

    public let path: String
    public let metadata: [String: String]?
    /// Tensors in file order (by data offset).
    public let tensors: [SafetensorsTensorInfo]
    private let tensorIndex: [String: Int]
    private let mapping: MappedFile
    private let dataStart: Int

    public convenience init(url: URL) throws(SafetensorsError) {
        try self.init(path: url.path)
    }

    public init(path: String) throws(SafetensorsError) {
        self.path = path
        mapping = try MappedFile(path: path)
        let fileSize = mapping.size
        guard fileSize >= 8 else { throw .fileTooSmall(file: path, size: fileSize) }
        let lengthBytes = mapping.bytes(0 ..< 8)
        let headerLength = UInt64(littleEndian: lengthBytes.loadUnaligned(as: UInt64.self))
        guard headerLength <= Self.maximumHeaderLength else { throw .headerTooLarge(file: path, length: headerLength) }
        guard 8 + Int(headerLength) <= fileSize else { throw .headerOutOfBounds(file: path, length: headerLength, fileSize: fileSize) }
        let headerEnd = 8 + Int(headerLength)
        let headerBytes = mapping.bytes(8 ..< headerEnd)
        guard String(validating: headerBytes, as: UTF8.self) != nil else { throw .headerNotUTF8(file: path) }
        guard headerBytes.first == UInt8(ascii: "{") else {
            throw .headerNotJSONObject(file: path, reason: "does not start with '{'")
        }
        guard case .object(let header)? = JSONValue.parse(Data(headerBytes)) else {
            throw .headerNotJSONObject(file: path, reason: "invalid JSON")
        }

        var metadata: [String: String]?
        var entries: [SafetensorsTensorInfo] = []
        for (key, value) in header {
            if key == "__metadata__" {
                guard case .object(let fields) = value else { throw .invalidMetadata(file: path, reason: "is not an object") }
                var strings: [String: String] = [:]
                for (field, fieldValue) in fields {
                    guard case .string(let text) = fieldValue else {
                        throw .invalidMetadata(file: path, reason: "value of '\(field)' is not a string")
                    }
                    strings[field] = text
                }
                metadata = strings
                continue
            }
            entries.append(try Self.parseEntry(name: key, value: value, file: path))
        }

        // The data buffer must be tiled exactly: sorted by start, each range begins where the last ended.
        entries.sort { ($0.dataOffsets.lowerBound, $0.dataOffsets.upperBound, $0.name) < ($1.dataOffsets.lowerBound, $1.dataOffsets.upperBound, $1.name) }
        var covered = 0
        for entry in entries {
            guard entry.dataOffsets.lowerBound == covered else {
                throw .dataNotContiguous(file: path, tensor: entry.name, expectedStart: covered, actualStart: entry.dataOffsets.lowerBound)
            }
            covered = entry.dataOffsets.upperBound
        }
        let dataBytes = fileSize - headerEnd
        guard covered == dataBytes else { throw .dataLengthMismatch(file: path, coveredBytes: covered, dataBytes: dataBytes) }

        self.metadata = metadata
        self.tensors = entries
        self.dataStart = headerEnd
        var index: [String: Int] = [:]
        for (position, entry) in entries.enumerated() { index[entry.name] = position }
        self.tensorIndex = index
    }

    private static func parseEntry(name: String, value: JSONValue, file: String) throws(SafetensorsError) -> SafetensorsTensorInfo {
        guard case .object(let fields) = value else { throw .invalidTensorEntry(file: file, tensor: name, reason: "entry is not an object") }
        guard let dtypeName = fields["dtype"]?.stringValue else { throw .invalidTensorEntry(file: file, tensor: name, reason: "missing or non-string 'dtype'") }
        guard let dtype = SafetensorsDType(rawValue: dtypeName) else { throw .unknownDType(file: file, tensor: name, dtype: dtypeName) }
        guard let shapeValues = fields["shape"]?.arrayValue else { throw .invalidTensorEntry(file: file, tensor: name, reason: "missing or non-array 'shape'") }
        var shape: [Int] = []
        var elementCount = 1
        for dimensionValue in shapeValues {
            guard case .integer(let dimension) = dimensionValue, dimension >= 0 else {
                throw .invalidTensorEntry(file: file, tensor: name, reason: "shape entries must be non-negative integers")
            }
            let (product, overflow) = elementCount.multipliedReportingOverflow(by: Int(dimension))
            guard !overflow else { throw .arithmeticOverflow(file: file, tensor: name) }
            elementCount = product
            shape.append(Int(dimension))
        }
        guard let offsets = fields["data_offsets"]?.arrayValue, offsets.count == 2,
              case .integer(let begin) = offsets[0], case .integer(let end) = offsets[1] else {
            throw .invalidTensorEntry(file: file, tensor: name, reason: "'data_offsets' must be two integers [begin, end]")
        }
        guard begin >= 0, end >= begin else {
            throw .invalidTensorEntry(file: file, tensor: name, reason: "data_offsets [\(begin), \(end)] is not an increasing range")
        }
        let (expectedBytes, overflow) = elementCount.multipliedReportingOverflow(by: dtype.size)
        guard !overflow else { throw .arithmeticOverflow(file: file, tensor: name) }
        guard Int(end - begin) == expectedBytes else {
            throw .sizeMismatch(file: file, tensor: name, expectedBytes: expectedBytes, actualBytes: Int(end - begin))
        }
        return SafetensorsTensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: Int(begin) ..< Int(end))
    }

    /// Tensor names in file order.
    public var names: [String] { tensors.map(\.name) }

    public func info(_ name: String) throws(SafetensorsError) -> SafetensorsTensorInfo {
        guard let position = tensorIndex[name] else { throw .tensorNotFound(file: path, tensor: name) }
        return tensors[position]
    }

    public func contains(_ name: String) -> Bool { tensorIndex[name] != nil }

    /// The raw little-endian bytes of a tensor, straight from the memory map.
    public func bytes(_ name: String) throws(SafetensorsError) -> UnsafeRawBufferPointer {
        let entry = try info(name)
        return mapping.bytes(dataStart + entry.dataOffsets.lowerBound ..< dataStart + entry.dataOffsets.upperBound)
    }

    /// Drops the tensor's pages from the resident set (after a streaming pass has used them).
    public func release(_ name: String) {
        guard let entry = try? info(name) else { return }
        mapping.release(dataStart + entry.dataOffsets.lowerBound ..< dataStart + entry.dataOffsets.upperBound)
    }

    /// The tensor converted to f32 (from any dtype but the 8-bit floats; integers and bools by value).
    public func floatTensor(_ name: String) throws(SafetensorsError) -> Tensor {
        let entry = try info(name)
        guard entry.dtype.isConvertibleToFloat else { throw .unsupportedDType(file: path, tensor: name, dtype: entry.dtype.rawValue) }
        let raw = try bytes(name)
        var values = [Float](repeating: 0, count: entry.elementCount)
        values.withUnsafeMutableBufferPointer { out in
            SafetensorsFile.decode(raw, dtype: entry.dtype, into: out)
        }
        return Tensor(shape: entry.shape, values: values)
    }

    /// Decodes little-endian elements of `dtype` into f32.
    static func decode(_ raw: UnsafeRawBufferPointer, dtype: SafetensorsDType, into out: UnsafeMutableBufferPointer<Float>) {
        let count = out.count
        guard count > 0, let source = raw.baseAddress else { return }
        switch dtype {
        case .float32:
            for i in 0 ..< count { out[i] = Float(bitPattern: UInt32(littleEndian: source.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
        case .bfloat16: HalfPrecision.decode(.bfloat16, from: source, count: count, into: out.baseAddress!)
        case .float16: HalfPrecision.decode(.float16, from: source, count: count, into: out.baseAddress!)
        case .float64:
            for i in 0 ..< count { out[i] = Float(Double(bitPattern: UInt64(littleEndian: source.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)))) }
        case .bool, .uint8:
            for i in 0 ..< count { out[i] = Float(source.load(fromByteOffset: i, as: UInt8.self)) }
        case .int8:
            for i in 0 ..< count { out[i] = Float(source.load(fromByteOffset: i, as: Int8.self)) }
        case .int16:
            for i in 0 ..< count { out[i] = Float(Int16(littleEndian: source.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self))) }
        case .uint16:
            for i in 0 ..< count { out[i] = Float(UInt16(littleEndian: source.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
        case .int32:
            for i in 0 ..< count { out[i] = Float(Int32(littleEndian: source.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self))) }
        case .uint32:
            for i in 0 ..< count { out[i] = Float(UInt32(littleEndian: source.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
        case .int64:
            for i in 0 ..< count { out[i] = Float(Int64(littleEndian: source.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self))) }
        case .uint64:
            for i in 0 ..< count { out[i] = Float(UInt64(littleEndian: source.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self))) }
        case .float8E4M3, .float8E5M2:
            break  // rejected by the caller
        }
    }
}
