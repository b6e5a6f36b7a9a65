import Foundation
import Testing
@testable import MoEKit

@Suite struct TokenFileTests {
    /// Text token files: whitespace or commas, one sequence per line, blank lines skipped.
    @Test func readsTextSequences() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("tokens.txt")
        try "1 2 3\n\n4,5, 6\r\n7\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(try TokenFile.read(path) == [[1, 2, 3], [4, 5, 6], [7]])
    }

    /// A non-integer names the file and line.
    @Test func badTokenNamesLine() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("tokens.txt")
        try "1 2\n3 x4\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: ModelError.invalidToken(path: path, line: 2, text: "x4")) { try TokenFile.read(path) }
        #expect(throws: ModelError.unreadableTokenFile(path: directory.file("missing"), reason: "no such file")) {
            try TokenFile.read(directory.file("missing"))
        }
    }

    /// `.npy` arrays of int32 and int64, as NumPy writes them (format 1.0 header padded to 64 bytes).
    @Test(arguments: ["<i4", "<i8"])
    func readsNumPyArrays(dtype: String) throws {
        let values: [Int] = [5, 0, 299, 17]
        var header = "{'descr': '\(dtype)', 'fortran_order': False, 'shape': (\(values.count),), }"
        while (10 + header.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.count & 0xFF), UInt8(header.count >> 8)]
        bytes += Array(header.utf8)
        for value in values {
            if dtype == "<i4" { withUnsafeBytes(of: Int32(value).littleEndian) { bytes += $0 } }
            else { withUnsafeBytes(of: Int64(value).littleEndian) { bytes += $0 } }
        }
        let directory = TemporaryDirectory()
        let path = directory.file("tokens.npy")
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect(try TokenFile.read(path) == [values])

        try Data(bytes.dropLast(3)).write(to: URL(fileURLWithPath: path))
        #expect(throws: ModelError.self) { try TokenFile.read(path) }
    }
}
