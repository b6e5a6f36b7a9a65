import Foundation

/// Token ids from a file: text (whitespace- or comma-separated integers, one sequence per line,
/// blank lines ignored) or a NumPy `.npy` array of int32/int64 (one sequence, 1-D or [1, n]).
enum TokenFile {
    static func read(_ path: String) throws -> [[Int]] {
        let data: Data
        do { data = try InputFile.read(path, limit: InputFile.tokenFileLimit) } catch { throw ModelError.unreadableTokenFile(path: path, reason: error.reason) }
        if data.starts(with: [0x93] + Array("NUMPY".utf8)) { return [try readNumPy(data, path: path)] }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ModelError.unreadableTokenFile(path: path, reason: "neither UTF-8 text nor a .npy array")
        }
        var sequences: [[Int]] = []
        for (lineIndex, line) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let fields = line.split(whereSeparator: { $0 == "," || $0.isWhitespace })
            guard !fields.isEmpty else { continue }
            var sequence: [Int] = []
            for field in fields {
                guard let token = Int(field) else { throw ModelError.invalidToken(path: path, line: lineIndex + 1, text: String(field)) }
                sequence.append(token)
            }
            sequences.append(sequence)
        }
        guard !sequences.isEmpty else { throw ModelError.emptyInput(source: path) }
        return sequences
    }

    /// Parses an `.npy` (format 1.x/2.x/3.x) holding little-endian int32 or int64, C order.
    static func readNumPy(_ data: Data, path: String) throws -> [Int] {
        let bytes = [UInt8](data)
        func fail(_ reason: String) -> ModelError { .unreadableTokenFile(path: path, reason: ".npy: \(reason)") }
        guard bytes.count >= 10 else { throw fail("truncated header") }
        let major = bytes[6]
        let headerLength: Int
        let headerStart: Int
        if major == 1 {
            headerLength = Int(bytes[8]) | Int(bytes[9]) << 8
            headerStart = 10
        } else if major == 2 || major == 3 {
            guard bytes.count >= 12 else { throw fail("truncated header") }
            headerLength = Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24
            headerStart = 12
        } else {
            throw fail("unsupported format version \(major)")
        }
        guard headerStart + headerLength <= bytes.count,
              let header = String(bytes: bytes[headerStart ..< headerStart + headerLength], encoding: .utf8) else {
            throw fail("truncated or non-text header")
        }
        let elementSize: Int
        if header.contains("'<i4'") || header.contains("'|i4'") { elementSize = 4 }
        else if header.contains("'<i8'") || header.contains("'|i8'") { elementSize = 8 }
        else { throw fail("dtype must be little-endian int32 or int64 (header \(header.trimmingCharacters(in: .whitespacesAndNewlines)))") }
        guard !header.contains("'fortran_order': True") else { throw fail("Fortran order is not supported") }
        guard let shapeStart = header.range(of: "'shape':"), let open = header[shapeStart.upperBound...].firstIndex(of: "("),
              let close = header[open...].firstIndex(of: ")") else { throw fail("no shape in header") }
        let dimensions = header[header.index(after: open) ..< close].split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let shape = try dimensions.map { text -> Int in
            guard let value = Int(text), value >= 0 else { throw fail("bad shape entry '\(text)'") }
            return value
        }
        guard shape.count == 1 || (shape.count == 2 && shape[0] == 1) else {
            throw fail("expected one sequence (shape (n,) or (1, n)), got \(shape)")
        }
        let count = shape.last ?? 0
        let dataStart = headerStart + headerLength
        let (needed, overflow) = count.multipliedReportingOverflow(by: elementSize)
        guard !overflow else { throw fail("shape \(shape) is too large: its byte count overflows") }
        guard bytes.count - dataStart == needed else { throw fail("data holds \(bytes.count - dataStart) bytes, shape \(shape) needs \(needed)") }
        guard count > 0 else { throw ModelError.emptyInput(source: path) }
        return bytes.withUnsafeBytes { raw in
            (0 ..< count).map { i in
                elementSize == 4
                    ? Int(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: dataStart + 4 * i, as: Int32.self)))
                    : Int(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: dataStart + 8 * i, as: Int64.self)))
            }
        }
    }
}
