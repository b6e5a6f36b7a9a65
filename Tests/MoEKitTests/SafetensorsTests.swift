import Foundation
import Testing
@testable import MoEKit

/// A safetensors file assembled byte by byte: `u64 LE header length ‖ header ‖ data`.
/// `declaredLength` overrides the length prefix (to build lying headers).
func handBuiltSafetensors(header: String, data: [UInt8] = [], declaredLength: UInt64? = nil) -> [UInt8] {
    handBuiltSafetensors(headerBytes: Array(header.utf8), data: data, declaredLength: declaredLength)
}

func handBuiltSafetensors(headerBytes: [UInt8], data: [UInt8] = [], declaredLength: UInt64? = nil) -> [UInt8] {
    var bytes: [UInt8] = []
    withUnsafeBytes(of: (declaredLength ?? UInt64(headerBytes.count)).littleEndian) { bytes.append(contentsOf: $0) }
    return bytes + headerBytes + data
}

/// Little-endian bytes of fixed-width values.
func littleEndianBytes<T: FixedWidthInteger>(_ values: [T]) -> [UInt8] {
    values.flatMap { value in withUnsafeBytes(of: value.littleEndian) { Array($0) } }
}

func writeBytes(_ bytes: [UInt8], to path: String) {
    _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
}

/// Every entry of a directory, hidden temporary files included.
func directoryEntries(_ path: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
}

/// Bit patterns, so NaNs compare equal to themselves.
func bitPatterns(_ values: [Float]) -> [UInt32] { values.map(\.bitPattern) }

/// Round trips: what `SafetensorsWriter` writes, `SafetensorsFile` reads back with the same values
/// (after the storage dtype's rounding).
@Suite struct SafetensorsRoundTripTests {
    static let specialValues: [Float] = [0, -0.0, 1, -1, .infinity, -.infinity, .nan, 65504, 1e-3, -3.140625, 0x1p-24]

    /// f32 is stored bit-exactly; f16 and bf16 store exactly `HalfPrecision`'s rounding of each value.
    @Test(arguments: [SafetensorsDType.float32, .float16, .bfloat16])
    func writtenValuesReadBackEqualAfterConversion(dtype: SafetensorsDType) throws {
        let directory = TemporaryDirectory()
        let path = directory.file("round-trip.safetensors")
        let matrix = randomTensor([7, 5], seed: 11)
        let special = Tensor(shape: [Self.specialValues.count], values: Self.specialValues)
        let scalar = Tensor(shape: [], values: [2.5])
        let empty = Tensor(shape: [0, 3], values: [])
        try SafetensorsWriter.write([("b.matrix", matrix, dtype), ("a.special", special, dtype), ("c.scalar", scalar, dtype), ("d.empty", empty, dtype)], to: path)

        let file = try SafetensorsFile(path: path)
        #expect(file.names.sorted() == ["a.special", "b.matrix", "c.scalar", "d.empty"])
        for (name, original) in [("b.matrix", matrix), ("a.special", special), ("c.scalar", scalar), ("d.empty", empty)] {
            let info = try file.info(name)
            #expect(info.dtype == dtype)
            #expect(info.shape == original.shape)
            let read = try file.floatTensor(name)
            let expected: [Float] = original.values.map { value in
                switch dtype {
                case .float16: return HalfPrecision.float(fromFloat16: HalfPrecision.float16Bits(from: value))
                case .bfloat16: return HalfPrecision.float(fromBFloat16: HalfPrecision.bfloat16Bits(from: value))
                default: return value
                }
            }
            #expect(read.shape == original.shape)
            #expect(bitPatterns(read.values) == bitPatterns(expected), "\(name) as \(dtype)")
        }
        #expect(directoryEntries(directory.path) == ["round-trip.safetensors"])
    }

    /// The header is padded with spaces to a multiple of 8 bytes and carries `{"format": "pt"}`;
    /// tensors are stored in name order whatever order they are given in, so equal inputs give equal bytes.
    @Test func headerIsPaddedToEightBytesWithPyTorchMetadataAndStableOrder() throws {
        let directory = TemporaryDirectory()
        let tensors: [(name: String, tensor: Tensor, dtype: SafetensorsDType)] = [
            ("z", randomTensor([3], seed: 1), .float32), ("a", randomTensor([2, 2], seed: 2), .bfloat16), ("m", randomTensor([1], seed: 3), .float16),
        ]
        // Lengths of the header JSON differ with the name, so one of these needs padding.
        for (index, suffix) in ["", "x", "xy", "xyz"].enumerated() {
            let path = directory.file("padded\(index).safetensors")
            try SafetensorsWriter.write(tensors.map { ($0.name + suffix, $0.tensor, $0.dtype) }, to: path)
            let bytes = try #require(FileManager.default.contents(atPath: path))
            let length = bytes.prefix(8).withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
            #expect(length % 8 == 0)
            let header = bytes.subdata(in: 8 ..< 8 + Int(length))
            let text = try #require(String(data: header, encoding: .utf8))
            #expect(text.first == "{")
            #expect(text.trimmingCharacters(in: .whitespaces).last == "}")
            #expect(!text.contains("\n"))
            let file = try SafetensorsFile(path: path)
            #expect(file.metadata == ["format": "pt"])
            #expect(file.names == ["a", "m", "z"].map { $0 + suffix })
        }
        let reordered = directory.file("reordered.safetensors")
        try SafetensorsWriter.write(tensors.reversed(), to: reordered)
        #expect(FileManager.default.contents(atPath: reordered) == FileManager.default.contents(atPath: directory.file("padded0.safetensors")))
    }

    /// A file with no tensors (header `{}`) and a file whose header ends in spaces are valid.
    @Test func emptyAndSpacePaddedHeadersAreValid() throws {
        let directory = TemporaryDirectory()
        let empty = directory.file("empty.safetensors")
        writeBytes(handBuiltSafetensors(header: "{}      "), to: empty)
        let file = try SafetensorsFile(path: empty)
        #expect(file.tensors.isEmpty)
        #expect(file.metadata == nil)
    }
}

/// The integer, f64 and bool dtypes of files other tools write are read by value; the two
/// 8-bit floats are refused with an error naming the dtype.
@Suite struct SafetensorsForeignDTypeTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let dtype: String
        let data: [UInt8]
        let expected: [Float]
        var testDescription: String { dtype }
    }

    static let cases: [Case] = [
        Case(dtype: "I8", data: [0x80, 0xFF, 0x00, 0x7F], expected: [-128, -1, 0, 127]),
        Case(dtype: "U8", data: [0, 1, 200, 255], expected: [0, 1, 200, 255]),
        Case(dtype: "BOOL", data: [1, 0, 0, 1], expected: [1, 0, 0, 1]),
        Case(dtype: "I16", data: littleEndianBytes([Int16.min, -300, 0, Int16.max]), expected: [-32768, -300, 0, 32767]),
        Case(dtype: "U16", data: littleEndianBytes([UInt16(0), 1, 40000, .max]), expected: [0, 1, 40000, 65535]),
        Case(dtype: "I32", data: littleEndianBytes([Int32.min, -7, 123_456, 16_777_216]), expected: [-2_147_483_648, -7, 123_456, 16_777_216]),
        Case(dtype: "U32", data: littleEndianBytes([UInt32(0), 5, 3_000_000_000, 1 << 24]), expected: [0, 5, 3_000_000_000, 16_777_216]),
        Case(dtype: "I64", data: littleEndianBytes([Int64(-5), 1 << 40, 0, -(1 << 62)]), expected: [-5, 1_099_511_627_776, 0, -4_611_686_018_427_387_904]),
        Case(dtype: "U64", data: littleEndianBytes([UInt64(9), 1 << 63, 0, 1]), expected: [9, 9_223_372_036_854_775_808, 0, 1]),
        Case(dtype: "F64", data: littleEndianBytes([1.5, -2.25, 1e300, 0.1].map(\.bitPattern)), expected: [1.5, -2.25, .infinity, 0.1]),
    ]

    /// Hand-built bytes of each dtype decode to the values they encode.
    @Test(arguments: cases)
    func handBuiltFilesOfEachDTypeReadWithTheRightValues(_ testCase: Case) throws {
        let directory = TemporaryDirectory()
        let path = directory.file("\(testCase.dtype).safetensors")
        let header = #"{"t":{"dtype":"\#(testCase.dtype)","shape":[2,2],"data_offsets":[0,\#(testCase.data.count)]}}"#
        writeBytes(handBuiltSafetensors(header: header, data: testCase.data), to: path)
        let file = try SafetensorsFile(path: path)
        let tensor = try file.floatTensor("t")
        #expect(tensor.shape == [2, 2])
        #expect(tensor.values == testCase.expected)
        #expect(try file.info("t").dtype.rawValue == testCase.dtype)
    }

    /// F8_E4M3 and F8_E5M2 files open (the header is valid) but converting them fails with
    /// `unsupportedDType`, whose message names the dtype, the tensor and the file.
    @Test(arguments: ["F8_E4M3", "F8_E5M2"])
    func eightBitFloatsAreRejectedNamingTheDType(dtype: String) throws {
        let directory = TemporaryDirectory()
        let path = directory.file("f8.safetensors")
        writeBytes(handBuiltSafetensors(header: #"{"w":{"dtype":"\#(dtype)","shape":[3],"data_offsets":[0,3]}}"#, data: [1, 2, 3]), to: path)
        let file = try SafetensorsFile(path: path)
        let error = #expect(throws: SafetensorsError.self) { try file.floatTensor("w") }
        #expect(error == .unsupportedDType(file: path, tensor: "w", dtype: dtype))
        let message = error?.errorDescription ?? ""
        #expect(message.contains(dtype) && message.contains(path) && message.contains("'w'"))
        #expect(throws: CheckpointError.safetensors(.unsupportedDType(file: path, tensor: "w", dtype: dtype))) {
            try CheckpointInspection(path: path, includeValues: true)
        }
    }
}

/// The reader validates as the reference implementation does: one malformed file per rule, each
/// rejected with its own `SafetensorsError` case (and never a crash).
@Suite struct SafetensorsValidationTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let rule: String
        let bytes: [UInt8]
        let expected: @Sendable (String) -> SafetensorsError
        var testDescription: String { rule }
    }

    static let f32Pair = #""dtype":"F32","shape":[2]"#

    static let cases: [Case] = [
        Case(rule: "empty file", bytes: [], expected: { .fileTooSmall(file: $0, size: 0) }),
        Case(rule: "file shorter than the 8-byte length", bytes: [4, 0, 0, 0, 0], expected: { .fileTooSmall(file: $0, size: 5) }),
        Case(rule: "header length over 100 MB", bytes: handBuiltSafetensors(header: "{}", declaredLength: 100_000_001),
             expected: { .headerTooLarge(file: $0, length: 100_000_001) }),
        Case(rule: "header length past the end of the file", bytes: handBuiltSafetensors(header: "{}", declaredLength: 1000),
             expected: { .headerOutOfBounds(file: $0, length: 1000, fileSize: 10) }),
        Case(rule: "header length u64 max", bytes: handBuiltSafetensors(header: "{}", declaredLength: .max),
             expected: { .headerTooLarge(file: $0, length: .max) }),
        Case(rule: "file truncated inside the header",
             bytes: Array(handBuiltSafetensors(header: #"{"t":{\#(f32Pair),"data_offsets":[0,8]}}"#, data: Array(repeating: 0, count: 8)).prefix(30)),
             expected: { .headerOutOfBounds(file: $0, length: UInt64(#"{"t":{\#(f32Pair),"data_offsets":[0,8]}}"#.utf8.count), fileSize: 30) }),
        Case(rule: "file truncated inside the data",
             bytes: Array(handBuiltSafetensors(header: #"{"t":{\#(f32Pair),"data_offsets":[0,8]}}"#, data: Array(repeating: 0, count: 8)).dropLast(3)),
             expected: { .dataLengthMismatch(file: $0, coveredBytes: 8, dataBytes: 5) }),
        Case(rule: "header not UTF-8", bytes: handBuiltSafetensors(headerBytes: Array(#"{"a":""#.utf8) + [0xFF, 0xFE] + Array(#""}"#.utf8)),
             expected: { .headerNotUTF8(file: $0) }),
        Case(rule: "header not JSON", bytes: handBuiltSafetensors(header: #"{"t": {"dtype": "#),
             expected: { .headerNotJSONObject(file: $0, reason: "invalid JSON") }),
        Case(rule: "header a JSON array", bytes: handBuiltSafetensors(header: "[1, 2]"),
             expected: { .headerNotJSONObject(file: $0, reason: "does not start with '{'") }),
        Case(rule: "header a JSON string", bytes: handBuiltSafetensors(header: #""{}""#),
             expected: { .headerNotJSONObject(file: $0, reason: "does not start with '{'") }),
        Case(rule: "empty header", bytes: handBuiltSafetensors(header: ""),
             expected: { .headerNotJSONObject(file: $0, reason: "does not start with '{'") }),
        Case(rule: "deeply nested header", bytes: handBuiltSafetensors(header: "{\"a\":" + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000) + "}"),
             expected: { .headerNotJSONObject(file: $0, reason: "invalid JSON") }),
        Case(rule: "__metadata__ not an object", bytes: handBuiltSafetensors(header: #"{"__metadata__":["pt"]}"#),
             expected: { .invalidMetadata(file: $0, reason: "is not an object") }),
        Case(rule: "__metadata__ value not a string", bytes: handBuiltSafetensors(header: #"{"__metadata__":{"format":1}}"#),
             expected: { .invalidMetadata(file: $0, reason: "value of 'format' is not a string") }),
        Case(rule: "__metadata__ value an object", bytes: handBuiltSafetensors(header: #"{"__metadata__":{"format":{"a":"b"}}}"#),
             expected: { .invalidMetadata(file: $0, reason: "value of 'format' is not a string") }),
        Case(rule: "tensor entry not an object", bytes: handBuiltSafetensors(header: #"{"t":[0,8]}"#),
             expected: { .invalidTensorEntry(file: $0, tensor: "t", reason: "entry is not an object") }),
        Case(rule: "missing dtype", bytes: handBuiltSafetensors(header: #"{"t":{"shape":[2],"data_offsets":[0,8]}}"#, data: Array(repeating: 0, count: 8)),
             expected: { .invalidTensorEntry(file: $0, tensor: "t", reason: "missing or non-string 'dtype'") }),
        Case(rule: "unknown dtype", bytes: handBuiltSafetensors(header: #"{"t":{"dtype":"F128","shape":[2],"data_offsets":[0,8]}}"#, data: Array(repeating: 0, count: 8)),
             expected: { .unknownDType(file: $0, tensor: "t", dtype: "F128") }),
        Case(rule: "lower-case dtype", bytes: handBuiltSafetensors(header: #"{"t":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}}"#, data: Array(repeating: 0, count: 8)),
             expected: { .unknownDType(file: $0, tensor: "t", dtype: "f32") }),
        Case(rule: "missing shape", bytes: handBuiltSafetensors(header: #"{"t":{"dtype":"F32","data_offsets":[0,8]}}"#, data: Array(repeating: 0, count: 8)),
             expected: { .invalidTensorEntry(file: $0, tensor: "t", reason: "missing or non-array 'shape'") }),
        Case(rule: "negative shape", bytes: handBuiltSafetensors(header: #"{"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, data: Array(repeating: 0, count: 8)),
             expected: { .invalidTensorEntry(file: $0, tensor: "t", reason: "shape entries must be non-negative integers") }),
        Case(rule: "fractional shape", bytes: handBuiltSafetensors(header: #"{"t":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}}"#, data: Array(repeating: 0, count: 8)),
             expected: { .invalidTensorEntry(file: $0, tensor: "t", reason: "shape entries must be non-negative integers") }),
        Case(rule: "float-spelled shape", bytes: handBuiltSafetensors(header: #"{"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}"#, data: Array(repeating: 0, count: 8)),
             expected: { .invalidTensorEntry(file: $0, tensor: "t", reason: "shape entries must be non-negative integers") }),
        Case(rule: "string shape", bytes: handBuiltSafetensors(header: #"{"t":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}}"#, data: Array(repeating: 0, count: 8)),
             expected: { .invalidTensorEntry(file: $0, tensor: "t", reason: "shape entries must be non-negative integers") }),
        Case(rule: "missing data_offsets", bytes: handBuiltSafetensors(header: #"{"t":{\#(f32Pair)}}"#, data: Array(repeating: 0, count: 8)),
             expected: { .invalidTensorEntry(file: $0, tensor: "t", reason: "'data_offsets' must be two integers [begin, end]") }),
        Case(rule: "three data_offsets", bytes: handBuiltSafetensors(header: #"{"t":{\#(f32Pair),"data_offsets":[0,8,8]}}"#, data: Array(repeating: 0, count: 8)),
             expected: { .invalidTensorEntry(file: $0, tensor: "t", reason: "'data_offsets' must be two integers [begin, end]") }),
        Case(rule: "fractional data_offsets", bytes: handBuiltSafetensors(header: #"{"t":{\#(f32Pair),"data_offsets":[0,7.5]}}"#, data: Array(repeating: 0, count: 8)),
             expected: { .invalidTensorEntry(file: $0, tensor: "t", reason: "'data_offsets' must be two integers [begin, end]") }),
        Case(rule: "decreasing data_offsets", bytes: handBuiltSafetensors(header: #"{"t":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#, data: Array(repeating: 0, count: 8)),
             expected: { .invalidTensorEntry(file: $0, tensor: "t", reason: "data_offsets [8, 0] is not an increasing range") }),
        Case(rule: "negative data_offsets", bytes: handBuiltSafetensors(header: #"{"t":{\#(f32Pair),"data_offsets":[-8,0]}}"#, data: Array(repeating: 0, count: 8)),
             expected: { .invalidTensorEntry(file: $0, tensor: "t", reason: "data_offsets [-8, 0] is not an increasing range") }),
        Case(rule: "byte length not numel × size", bytes: handBuiltSafetensors(header: #"{"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: Array(repeating: 0, count: 8)),
             expected: { .sizeMismatch(file: $0, tensor: "t", expectedBytes: 12, actualBytes: 8) }),
        Case(rule: "gap between tensors",
             bytes: handBuiltSafetensors(header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#, data: Array(repeating: 0, count: 12)),
             expected: { .dataNotContiguous(file: $0, tensor: "b", expectedStart: 4, actualStart: 8) }),
        Case(rule: "gap before the first tensor",
             bytes: handBuiltSafetensors(header: #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: Array(repeating: 0, count: 8)),
             expected: { .dataNotContiguous(file: $0, tensor: "a", expectedStart: 0, actualStart: 4) }),
        Case(rule: "overlapping tensors",
             bytes: handBuiltSafetensors(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, data: Array(repeating: 0, count: 12)),
             expected: { .dataNotContiguous(file: $0, tensor: "b", expectedStart: 8, actualStart: 4) }),
        Case(rule: "two tensors on the same bytes",
             bytes: handBuiltSafetensors(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}"#, data: Array(repeating: 0, count: 8)),
             expected: { .dataNotContiguous(file: $0, tensor: "b", expectedStart: 8, actualStart: 0) }),
        Case(rule: "trailing bytes", bytes: handBuiltSafetensors(header: #"{"t":{\#(f32Pair),"data_offsets":[0,8]}}"#, data: Array(repeating: 0, count: 12)),
             expected: { .dataLengthMismatch(file: $0, coveredBytes: 8, dataBytes: 12) }),
        Case(rule: "data past the end of the file", bytes: handBuiltSafetensors(header: #"{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, data: Array(repeating: 0, count: 8)),
             expected: { .dataLengthMismatch(file: $0, coveredBytes: 16, dataBytes: 8) }),
        Case(rule: "shape product overflows", bytes: handBuiltSafetensors(header: #"{"t":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#),
             expected: { .arithmeticOverflow(file: $0, tensor: "t") }),
        Case(rule: "shape product times element size overflows", bytes: handBuiltSafetensors(header: #"{"t":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]}}"#),
             expected: { .arithmeticOverflow(file: $0, tensor: "t") }),
        Case(rule: "shape product overflows past a zero", bytes: handBuiltSafetensors(header: #"{"t":{"dtype":"U8","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}}"#),
             expected: { .arithmeticOverflow(file: $0, tensor: "t") }),
    ]

    /// Each malformed file is rejected with exactly the error its rule names, message naming the file.
    @Test(arguments: cases)
    func malformedFileIsRejectedWithItsError(_ testCase: Case) throws {
        let directory = TemporaryDirectory()
        let path = directory.file("bad.safetensors")
        writeBytes(testCase.bytes, to: path)
        let error = #expect(throws: SafetensorsError.self) { try SafetensorsFile(path: path) }
        #expect(error == testCase.expected(path))
        #expect(error?.errorDescription?.contains(path) == true)
    }

    /// A missing file and a directory are `cannotOpen` errors naming the path.
    @Test func missingFilesAndDirectoriesCannotBeOpened() throws {
        let directory = TemporaryDirectory()
        let missing = directory.file("missing.safetensors")
        let error = #expect(throws: SafetensorsError.self) { try SafetensorsFile(path: missing) }
        #expect(error == .cannotOpen(file: missing, reason: "No such file or directory"))
        let notFile = #expect(throws: SafetensorsError.self) { try SafetensorsFile(path: directory.path) }
        #expect(notFile == .cannotOpen(file: directory.path, reason: "not a regular file"))
    }

    /// Asking for a tensor the file does not hold is `tensorNotFound` naming it.
    @Test func unknownTensorNameIsReported() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("one.safetensors")
        try SafetensorsWriter.write([("a", Tensor(shape: [1], values: [1]), .float32)], to: path)
        let file = try SafetensorsFile(path: path)
        #expect(throws: SafetensorsError.tensorNotFound(file: path, tensor: "b")) { try file.floatTensor("b") }
    }
}

/// The writer refuses bad requests, and a failed write leaves nothing behind (no file, no temporary).
@Suite struct SafetensorsWriterFailureTests {
    /// Two tensors with one name are refused before anything is created.
    @Test func duplicateNamesAreRefusedWithoutCreatingAFile() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("dup.safetensors")
        let specs = [TensorSpec(name: "w", dtype: .float32, shape: [2]), TensorSpec(name: "w", dtype: .float16, shape: [3])]
        #expect(throws: SafetensorsError.invalidWrite(file: path, reason: "tensor 'w' listed twice")) {
            try SafetensorsWriter(path: path, tensors: specs)
        }
        #expect(throws: SafetensorsError.self) {
            try SafetensorsWriter.write([("w", Tensor(shape: [1], values: [1]), .float32), ("w", Tensor(shape: [1], values: [2]), .float32)], to: path)
        }
        #expect(throws: SafetensorsError.self) { try SafetensorsWriter(path: path, tensors: [TensorSpec(name: "__metadata__", dtype: .float32, shape: [1])]) }
        #expect(directoryEntries(directory.path).isEmpty)
    }

    /// `finish()` before every byte is appended throws naming the incomplete tensor; the writer,
    /// dropped, removes its temporary file and the destination never appears.
    @Test func incompleteWriteIsRefusedAndLeavesNoFile() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("partial.safetensors")
        do {
            let writer = try SafetensorsWriter(path: path, tensors: [TensorSpec(name: "a", dtype: .float32, shape: [4]), TensorSpec(name: "b", dtype: .float32, shape: [2])])
            #expect(directoryEntries(directory.path).count == 1)  // the temporary file, hidden
            #expect(directoryEntries(directory.path).allSatisfy { $0.hasPrefix(".partial.safetensors.tmp-") })
            let values: [Float] = [1, 2, 3]
            try values.withUnsafeBufferPointer { try writer.append(floats: $0) }
            #expect(writer.nextTensor?.name == "a")
            #expect(throws: SafetensorsError.invalidWrite(file: path, reason: "tensor 'a' incomplete: 12 of 16 bytes written")) { try writer.finish() }
        }
        #expect(directoryEntries(directory.path).isEmpty)
    }

    /// More bytes than the header declares are refused; so are dtypes the writer cannot encode from f32.
    @Test func excessBytesAndUnencodableDTypesAreRefused() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("excess.safetensors")
        do {
            let writer = try SafetensorsWriter(path: path, tensors: [TensorSpec(name: "a", dtype: .float32, shape: [1])])
            let values: [Float] = [1, 2]
            #expect(throws: SafetensorsError.invalidWrite(file: path, reason: "more bytes than the header declares")) {
                try values.withUnsafeBufferPointer { try writer.append(floats: $0) }
            }
        }
        #expect(directoryEntries(directory.path).isEmpty)
        #expect(throws: SafetensorsError.invalidWrite(file: path, reason: "MoEKit writes F32, F16 and BF16 weights, not I32")) {
            try SafetensorsWriter.write([("i", Tensor(shape: [2], values: [1, 2]), .int32)], to: path)
        }
        #expect(directoryEntries(directory.path).isEmpty)
    }

    /// Raw bytes may be appended for any dtype, in pieces that cross tensor boundaries.
    @Test func rawBytesInPiecesAcrossTensorsAreWritten() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("raw.safetensors")
        let writer = try SafetensorsWriter(path: path, tensors: [TensorSpec(name: "b", dtype: .int32, shape: [2]), TensorSpec(name: "a", dtype: .uint8, shape: [3])])
        let bytes: [UInt8] = [1, 2, 3] + littleEndianBytes([Int32(-1), 70000])
        try bytes.withUnsafeBytes { raw in
            try writer.append(UnsafeRawBufferPointer(rebasing: raw[0 ..< 2]))
            try writer.append(UnsafeRawBufferPointer(rebasing: raw[2 ..< 9]))
            try writer.append(UnsafeRawBufferPointer(rebasing: raw[9...]))
        }
        try writer.finish()
        let file = try SafetensorsFile(path: path)
        #expect(try file.floatTensor("a").values == [1, 2, 3])
        #expect(try file.floatTensor("b").values == [-1, 70000])
    }
}

/// Sharded checkpoints: shards named `model-0000i-of-0000n.safetensors`, split at the size
/// limit, an index with `total_size` and `weight_map`, read back through `ModelCheckpoint`.
@Suite struct ShardedCheckpointTests {
    /// Writes `tensors` (name, f32 tensor) through the sharded writer in its write order.
    static func writeSharded(_ tensors: [String: Tensor], dtype: SafetensorsDType, to directory: String, limit: Int, alwaysIndex: Bool = true) throws -> ShardedSafetensorsWriter {
        let specs = tensors.map { TensorSpec(name: $0.key, dtype: dtype, shape: $0.value.shape) }
        let writer = try ShardedSafetensorsWriter(directory: directory, tensors: specs, maximumShardBytes: limit, alwaysIndex: alwaysIndex)
        while let spec = writer.nextTensor {
            let values = try #require(tensors[spec.name]).values
            // In two pieces, to cover partial appends.
            let middle = values.count / 2
            try values.withUnsafeBufferPointer { all in
                try writer.append(floats: UnsafeBufferPointer(rebasing: all[..<middle]))
                try writer.append(floats: UnsafeBufferPointer(rebasing: all[middle...]))
            }
        }
        try writer.finish()
        return writer
    }

    /// 5 tensors of 64, 64, 200, 32, 32 bytes (f32) under a 128-byte limit: shards [a, b], [c] (larger
    /// than the limit, alone), [d, e]; the index maps each tensor to its shard and sums to 392 bytes.
    @Test func shardsSplitAtTheLimitAndReadBackThroughTheIndex() throws {
        let directory = TemporaryDirectory()
        let tensors: [String: Tensor] = [
            "a": randomTensor([4, 4], seed: 1), "b": randomTensor([16], seed: 2), "c": randomTensor([50], seed: 3),
            "d": randomTensor([2, 4], seed: 4), "e": randomTensor([8], seed: 5),
        ]
        let writer = try Self.writeSharded(tensors, dtype: .float32, to: directory.path, limit: 128)
        let names = ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"]
        #expect(writer.shardFiles == names)
        #expect(directoryEntries(directory.path) == names + [SafetensorsIndex.fileName])
        #expect(writer.tensorBytesWritten == 392)

        let index = try SafetensorsIndex(path: directory.file(SafetensorsIndex.fileName))
        #expect(index.totalSize == 392)
        #expect(index.weightMap == ["a": names[0], "b": names[0], "c": names[1], "d": names[2], "e": names[2]])
        // Raw JSON as Hugging Face lays it out.
        let indexData = try #require(FileManager.default.contents(atPath: directory.file(SafetensorsIndex.fileName)))
        let json = try #require(JSONValue.parse(indexData))
        #expect(json.objectValue?["metadata"]?.objectValue?["total_size"] == .integer(392))
        #expect(json.objectValue?["weight_map"]?.objectValue?["c"] == .string(names[1]))

        let checkpoint = try ModelCheckpoint(directory: directory.path)
        #expect(checkpoint.files.map { URL(fileURLWithPath: $0).lastPathComponent } == names)
        #expect(checkpoint.names == ["a", "b", "c", "d", "e"])
        for (name, tensor) in tensors {
            #expect(try checkpoint.floatTensor(name) == tensor)
        }
        for file in checkpoint.files {
            let held = checkpoint.tensors.filter { $0.file == file }
            if held.count > 1 { #expect(held.reduce(0) { $0 + $1.byteCount } <= 128) }
        }
    }

    /// Empty tensors at a shard boundary (after "a", larger than the 32-byte limit) are written with
    /// their shard and never asked for: `nextTensor` used to name the empty "b", and a caller that
    /// appends nothing for zero elements (as `ModelInitializer` does) then looped forever.
    @Test func emptyTensorsAtShardBoundariesDoNotStallTheWriter() throws {
        let directory = TemporaryDirectory()
        let tensors: [String: Tensor] = [
            "a": randomTensor([16], seed: 1), "b": Tensor(shape: [0, 2], values: []), "c": randomTensor([8], seed: 2),
            "d": Tensor(shape: [0], values: []),
        ]
        let specs = tensors.map { TensorSpec(name: $0.key, dtype: .float32, shape: $0.value.shape) }
        let writer = try ShardedSafetensorsWriter(directory: directory.path, tensors: specs, maximumShardBytes: 32)
        var asked: [String] = []
        while let spec = writer.nextTensor, asked.count < 10 {
            asked.append(spec.name)
            try tensors[spec.name]!.values.withUnsafeBufferPointer { try writer.append(floats: $0) }
        }
        #expect(asked == ["a", "c"])
        try writer.finish()
        let checkpoint = try ModelCheckpoint(directory: directory.path)
        #expect(checkpoint.names == ["a", "b", "c", "d"])
        #expect(try checkpoint.floatTensor("b").shape == [0, 2])
        #expect(try checkpoint.floatTensor("c") == tensors["c"]!)
    }

    /// Shard names pad to five digits as Hugging Face does.
    @Test func shardNamesArePaddedToFiveDigits() {
        #expect(SafetensorsIndex.shardName(1, of: 2) == "model-00001-of-00002.safetensors")
        #expect(SafetensorsIndex.shardName(12, of: 123) == "model-00012-of-00123.safetensors")
    }

    /// One shard without `alwaysIndex` is a plain `model.safetensors` with no index; bf16 values round.
    @Test func singleShardWithoutIndexIsModelSafetensors() throws {
        let directory = TemporaryDirectory()
        let tensors: [String: Tensor] = ["x": randomTensor([3, 3], seed: 8), "y": randomTensor([5], seed: 9)]
        _ = try Self.writeSharded(tensors, dtype: .bfloat16, to: directory.path, limit: ShardedSafetensorsWriter.defaultShardSize, alwaysIndex: false)
        #expect(directoryEntries(directory.path) == ["model.safetensors"])
        let checkpoint = try ModelCheckpoint(directory: directory.path)
        let rounded = tensors["x"]!.values.map { HalfPrecision.float(fromBFloat16: HalfPrecision.bfloat16Bits(from: $0)) }
        #expect(try checkpoint.floatTensor("x").values == rounded)
        #expect(checkpoint.dominantDType == .bfloat16)
    }

    /// Writes a two-shard checkpoint then rewrites its index with `edit`.
    static func twoShardCheckpoint(in directory: String, edit: (inout [String: String]) -> Void) throws {
        _ = try writeSharded(["a": randomTensor([8], seed: 1), "b": randomTensor([8], seed: 2)], dtype: .float32, to: directory, limit: 32)
        let indexPath = directory + "/" + SafetensorsIndex.fileName
        var index = try SafetensorsIndex(path: indexPath)
        edit(&index.weightMap)
        try index.serialized().write(to: URL(fileURLWithPath: indexPath))
    }

    /// An index naming a tensor its shard does not hold is `shardMissingTensor` naming both.
    @Test func indexNamingAMissingTensorIsAClearError() throws {
        let directory = TemporaryDirectory()
        try Self.twoShardCheckpoint(in: directory.path) { $0["ghost"] = "model-00001-of-00002.safetensors" }
        let error = #expect(throws: CheckpointError.self) { try ModelCheckpoint(directory: directory.path) }
        #expect(error == .shardMissingTensor(path: directory.file("model-00001-of-00002.safetensors"), tensor: "ghost"))
        #expect(error?.errorDescription?.contains("'ghost'") == true)
    }

    /// An index naming a shard that does not exist fails naming the shard's path.
    @Test func indexNamingAMissingShardIsAClearError() throws {
        let directory = TemporaryDirectory()
        try Self.twoShardCheckpoint(in: directory.path) { $0["b"] = "model-00009-of-00009.safetensors" }
        let error = #expect(throws: CheckpointError.self) { try ModelCheckpoint(directory: directory.path) }
        let missing = directory.file("model-00009-of-00009.safetensors")
        #expect(error == .safetensors(.cannotOpen(file: missing, reason: "No such file or directory")))
        #expect(error?.errorDescription?.contains(missing) == true)
    }

    /// A shard holding a tensor the index does not list is reported against `weight_map`.
    @Test func tensorMissingFromTheIndexIsReported() throws {
        let directory = TemporaryDirectory()
        _ = try Self.writeSharded(["a": randomTensor([8], seed: 1), "b": randomTensor([8], seed: 2)], dtype: .float32, to: directory.path, limit: 64)
        let indexPath = directory.file(SafetensorsIndex.fileName)
        let shard = directory.file("model-00001-of-00001.safetensors")
        try Data(#"{"weight_map": {"a": "model-00001-of-00001.safetensors"}}"#.utf8).write(to: URL(fileURLWithPath: indexPath))
        let error = #expect(throws: CheckpointError.self) { try ModelCheckpoint(directory: directory.path) }
        #expect(error == .invalidField(path: indexPath, field: "weight_map", reason: "does not list tensor 'b' of \(shard)"))
    }

    /// Malformed index files are errors naming the index and the field.
    @Test func malformedIndexIsAnErrorNamingTheField() throws {
        let directory = TemporaryDirectory()
        let indexPath = directory.file(SafetensorsIndex.fileName)
        try Data("[]".utf8).write(to: URL(fileURLWithPath: indexPath))
        #expect(throws: CheckpointError.invalidJSON(path: indexPath, reason: "not a JSON object")) { try ModelCheckpoint(directory: directory.path) }
        try Data(#"{"metadata": {}}"#.utf8).write(to: URL(fileURLWithPath: indexPath))
        #expect(throws: CheckpointError.invalidField(path: indexPath, field: "weight_map", reason: "missing or not an object")) { try ModelCheckpoint(directory: directory.path) }
        try Data(#"{"weight_map": {"a": "../elsewhere.safetensors"}}"#.utf8).write(to: URL(fileURLWithPath: indexPath))
        #expect(throws: CheckpointError.invalidField(path: indexPath, field: "weight_map.a", reason: "not a shard file name")) { try ModelCheckpoint(directory: directory.path) }
        try Data(#"{"weight_map": {"a": 3}}"#.utf8).write(to: URL(fileURLWithPath: indexPath))
        #expect(throws: CheckpointError.invalidField(path: indexPath, field: "weight_map.a", reason: "not a shard file name")) { try ModelCheckpoint(directory: directory.path) }
    }

    /// The index is `Codable` under Hugging Face's keys: decoding what it encodes gives it back,
    /// and `metadata.total_size` is optional (0 when absent), as some writers leave it out.
    @Test func indexCodableRoundTripUnderHuggingFaceKeys() throws {
        let index = SafetensorsIndex(totalSize: 392, weightMap: ["a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"])
        #expect(try JSONValueDecoder.decode(SafetensorsIndex.self, from: index.jsonValue) == index)
        let encoded = try #require(JSONValue.parse(try JSONEncoder().encode(index)))
        #expect(encoded == index.jsonValue)
        let withoutSize = try JSONValueDecoder.decode(SafetensorsIndex.self, from: .object(["weight_map": .object(["a": .string("model.safetensors")])]))
        #expect(withoutSize == SafetensorsIndex(totalSize: 0, weightMap: ["a": "model.safetensors"]))
    }
}

/// Model directories: what is looked for, and the torch-written fixture. (PyTorch `.bin`
/// directories, including the malicious one: PyTorchCheckpointTests.)
@Suite struct ModelDirectoryTests {
    /// Missing directory, a file passed as a directory, and a directory with no weights are distinct errors.
    @Test func directoriesWithoutWeightsAreDistinctErrors() throws {
        let directory = TemporaryDirectory()
        #expect(throws: CheckpointError.missingFile(path: directory.file("nope"))) { try ModelCheckpoint(directory: directory.file("nope")) }
        #expect(throws: CheckpointError.noWeights(directory: directory.path)) { try ModelCheckpoint(directory: directory.path) }
        writeBytes([1], to: directory.file("plain"))
        #expect(throws: CheckpointError.notADirectory(path: directory.file("plain"))) { try ModelCheckpoint(directory: directory.file("plain")) }
    }

    /// The checkpoint saved by PyTorch's `safetensors` loads and matches its config.json exactly.
    @Test func torchWrittenFixtureLoadsAndMatchesItsConfig() throws {
        let directory = Fixtures.path("minicpm-tiny-torch")
        let file = try SafetensorsFile(path: directory + "/model.safetensors")
        #expect(file.metadata == ["format": "pt"])
        let checkpoint = try ModelCheckpoint(directory: directory)
        let config = try MiniCPMConfig(path: directory + "/config.json")
        let layout = MiniCPMLayout(config: config)
        #expect(try layout.check(checkpoint) == [])
        #expect(checkpoint.names.count == layout.entries.count)
        #expect(checkpoint.dominantDType == .bfloat16)
        let embedding = try checkpoint.floatTensor(MiniCPMTensorNames.embedTokens)
        #expect(embedding.shape == [300, 64])
        #expect(embedding.values.allSatisfy { $0.isFinite })
        #expect(try checkpoint.floatTensor(MiniCPMTensorNames.finalNorm).values.allSatisfy { $0 != 0 })
        let logits = try SafetensorsFile(path: directory + "/expected_logits.safetensors").floatTensor("logits")
        #expect(logits.shape == [14, 300])
    }

    /// A wrong shape or a missing tensor in a model directory is an error naming the tensor.
    @Test func layoutCheckNamesTheWrongTensor() throws {
        let directory = Fixtures.path("minicpm-tiny-torch")
        let checkpoint = try ModelCheckpoint(directory: directory)
        var config = try MiniCPMConfig(path: directory + "/config.json")
        config.intermediateSize = 128
        #expect(throws: CheckpointError.shapeMismatch(directory: directory, tensor: MiniCPMTensorNames.gateProjection(0), expected: [128, 64], actual: [160, 64])) {
            try MiniCPMLayout(config: config).check(checkpoint)
        }
        config = try MiniCPMConfig(path: directory + "/config.json")
        config.numHiddenLayers = 3
        #expect(throws: CheckpointError.missingTensor(directory: directory, tensor: MiniCPMTensorNames.inputLayerNorm(2))) {
            try MiniCPMLayout(config: config).check(checkpoint)
        }
        config.numHiddenLayers = 1
        let unexpected = try MiniCPMLayout(config: config).check(checkpoint)
        #expect(unexpected.count == 9 && unexpected.allSatisfy { $0.hasPrefix("model.layers.1.") })
    }
}
