import Foundation

/// The central directory of a zip archive read from a memory map: just enough of the format for
/// the archives `torch.save` writes (PKWARE APPNOTE 6.3, sections 4.3 and 4.5).
///
/// Read on open: the end-of-central-directory record (searched backwards over the at most 64 KiB
/// comment), its ZIP64 locator and record when present (PyTorch always writes them; archives over
/// 4 GiB need them), and every central-directory entry, with ZIP64 extra fields for sizes and
/// offsets stored as 0xFFFFFFFF. Every offset and size is checked against the file length with
/// overflow-checked arithmetic before it is used. A record's data range comes from its local
/// header (whose name must match; its size fields may be zero, as PyTorch writes data
/// descriptors) and the central directory's sizes. Only stored (uncompressed, unencrypted)
/// records can be read; that is what PyTorch writes.
struct ZipArchive {
    struct Entry: Sendable {
        let name: String
        let method: Int
        let flags: Int
        let crc32: UInt32
        let compressedSize: Int
        let uncompressedSize: Int
        let localHeaderOffset: Int
    }

    let path: String
    let mapping: MappedFile
    /// Entries in central-directory order.
    let entries: [Entry]
    private let index: [String: Int]
    /// Where the central directory starts: every record's data must end before it.
    private let centralDirectoryStart: Int

    static let localHeaderSignature: UInt32 = 0x0403_4B50
    static let centralHeaderSignature: UInt32 = 0x0201_4B50
    static let endSignature: UInt32 = 0x0605_4B50
    static let zip64EndSignature: UInt32 = 0x0606_4B50
    static let zip64LocatorSignature: UInt32 = 0x0706_4B50

    init(mapping: MappedFile) throws(PyTorchCheckpointError) {
        let path = mapping.path
        self.path = path
        self.mapping = mapping
        let size = mapping.size
        let reader = ZipByteReader(mapping: mapping)
        guard size >= 22 else { throw .notZipArchive(file: path, reason: "\(size) bytes, smaller than an end-of-central-directory record") }

        // End of central directory: the last signature whose comment reaches exactly to the end.
        var endOffset: Int?
        var candidate = size - 22
        let lowest = max(0, size - 22 - 0xFFFF)
        while candidate >= lowest {
            if reader.u32(candidate) == Self.endSignature, candidate + 22 + Int(reader.u16(candidate + 20)) == size {
                endOffset = candidate
                break
            }
            candidate -= 1
        }
        guard let end = endOffset else {
            throw .notZipArchive(file: path, reason: "no end-of-central-directory record (truncated, or not a zip)")
        }
        var entryCount = Int(reader.u16(end + 10))
        var directorySize = Int(reader.u32(end + 12))
        var directoryOffset = Int(reader.u32(end + 16))
        guard reader.u16(end + 4) == 0 || reader.u16(end + 4) == 0xFFFF else {
            throw .invalidZip(file: path, reason: "multi-disk archives are not supported")
        }

        // ZIP64: a locator just before the end record points at the ZIP64 end record.
        if end >= 20, reader.u32(end - 20) == Self.zip64LocatorSignature {
            guard let recordOffset = Int(exactly: reader.u64(end - 20 + 8)), recordOffset >= 0, recordOffset <= end - 20 - 56 else {
                throw .invalidZip(file: path, reason: "ZIP64 locator points outside the file")
            }
            guard reader.u32(recordOffset) == Self.zip64EndSignature else {
                throw .invalidZip(file: path, reason: "no ZIP64 end-of-central-directory record at byte \(recordOffset)")
            }
            guard let count = Int(exactly: reader.u64(recordOffset + 32)), let length = Int(exactly: reader.u64(recordOffset + 40)),
                  let offset = Int(exactly: reader.u64(recordOffset + 48)) else {
                throw .invalidZip(file: path, reason: "ZIP64 end record sizes overflow")
            }
            entryCount = count
            directorySize = length
            directoryOffset = offset
        } else if entryCount == 0xFFFF || directorySize == 0xFFFF_FFFF || directoryOffset == 0xFFFF_FFFF {
            throw .invalidZip(file: path, reason: "ZIP64 sizes without a ZIP64 locator")
        }
        guard directoryOffset >= 0, directorySize >= 0, directoryOffset <= size, directorySize <= size - directoryOffset,
              directoryOffset + directorySize <= end else {
            throw .invalidZip(file: path, reason: "central directory [\(directoryOffset), +\(directorySize)) lies outside the file")
        }
        // Each entry takes at least 46 bytes, so a count beyond that is corrupt (and bounds the loop).
        guard entryCount >= 0, entryCount <= directorySize / 46 else {
            throw .invalidZip(file: path, reason: "\(entryCount) entries cannot fit a \(directorySize)-byte central directory")
        }

        var entries: [Entry] = []
        var index: [String: Int] = [:]
        var position = directoryOffset
        let directoryEnd = directoryOffset + directorySize
        for number in 0 ..< entryCount {
            guard position + 46 <= directoryEnd, reader.u32(position) == Self.centralHeaderSignature else {
                throw .invalidZip(file: path, reason: "central directory entry \(number) at byte \(position) is missing or truncated")
            }
            let flags = Int(reader.u16(position + 8))
            let method = Int(reader.u16(position + 10))
            let crc = reader.u32(position + 16)
            var compressed = UInt64(reader.u32(position + 20))
            var uncompressed = UInt64(reader.u32(position + 24))
            let nameLength = Int(reader.u16(position + 28))
            let extraLength = Int(reader.u16(position + 30))
            let commentLength = Int(reader.u16(position + 32))
            var localOffset = UInt64(reader.u32(position + 42))
            let variableStart = position + 46
            let next = variableStart + nameLength + extraLength + commentLength
            guard next <= directoryEnd else {
                throw .invalidZip(file: path, reason: "central directory entry \(number) runs past the directory's end")
            }
            let name = String(decoding: mapping.bytes(variableStart ..< variableStart + nameLength), as: UTF8.self)

            // ZIP64 extended information (header 0x0001): the 64-bit values, in this order, of
            // exactly those fields whose 32-bit slot holds 0xFFFFFFFF.
            let extra = variableStart + nameLength
            var cursor = extra
            while cursor + 4 <= extra + extraLength {
                let id = reader.u16(cursor)
                let length = Int(reader.u16(cursor + 2))
                let body = cursor + 4
                guard body + length <= extra + extraLength else {
                    throw .invalidZip(file: path, reason: "entry '\(name)': extra field runs past its end")
                }
                if id == 0x0001 {
                    var field = body
                    func take() throws(PyTorchCheckpointError) -> UInt64 {
                        guard field + 8 <= body + length else {
                            throw .invalidZip(file: path, reason: "entry '\(name)': ZIP64 extra field too short")
                        }
                        defer { field += 8 }
                        return reader.u64(field)
                    }
                    if uncompressed == 0xFFFF_FFFF { uncompressed = try take() }
                    if compressed == 0xFFFF_FFFF { compressed = try take() }
                    if localOffset == 0xFFFF_FFFF { localOffset = try take() }
                }
                cursor = body + length
            }
            guard let compressedSize = Int(exactly: compressed), let uncompressedSize = Int(exactly: uncompressed),
                  let localHeaderOffset = Int(exactly: localOffset), compressedSize >= 0, uncompressedSize >= 0,
                  localHeaderOffset >= 0, localHeaderOffset < directoryOffset else {
                throw .invalidZip(file: path, reason: "entry '\(name)': local header offset or sizes outside the file")
            }
            guard index[name] == nil else { throw .invalidZip(file: path, reason: "entry '\(name)' appears twice") }
            index[name] = entries.count
            entries.append(Entry(name: name, method: method, flags: flags, crc32: crc, compressedSize: compressedSize,
                                 uncompressedSize: uncompressedSize, localHeaderOffset: localHeaderOffset))
            position = next
        }
        self.entries = entries
        self.index = index
        centralDirectoryStart = directoryOffset
    }

    func entry(_ name: String) -> Entry? { index[name].map { entries[$0] } }

    /// The byte range of a stored record's data inside the file, checked against the file: the
    /// local header must be there with the same name, the record stored and unencrypted, and its
    /// data must end before the central directory.
    func dataRange(_ name: String) throws(PyTorchCheckpointError) -> Range<Int> {
        guard let entry = entry(name) else { throw .missingRecord(file: path, record: name) }
        if entry.flags & 0x41 != 0 { throw .encryptedRecord(file: path, record: name) }
        guard entry.method == 0 else { throw .compressedRecord(file: path, record: name, method: entry.method) }
        guard entry.compressedSize == entry.uncompressedSize else {
            throw .invalidZip(file: path, reason: "stored record '\(name)' has compressed size \(entry.compressedSize) ≠ size \(entry.uncompressedSize)")
        }
        let reader = ZipByteReader(mapping: mapping)
        let header = entry.localHeaderOffset
        guard header + 30 <= centralDirectoryStart, reader.u32(header) == Self.localHeaderSignature else {
            throw .invalidZip(file: path, reason: "record '\(name)': no local header at byte \(header)")
        }
        let nameLength = Int(reader.u16(header + 26))
        let extraLength = Int(reader.u16(header + 28))
        let start = header + 30 + nameLength + extraLength
        guard start <= centralDirectoryStart,
              mapping.bytes(header + 30 ..< header + 30 + nameLength).elementsEqual(name.utf8) else {
            throw .invalidZip(file: path, reason: "record '\(name)': local header at byte \(header) names another record")
        }
        guard entry.compressedSize <= centralDirectoryStart - start else {
            throw .invalidZip(file: path, reason: "record '\(name)': \(entry.compressedSize) bytes from byte \(start) run past the data area (truncated?)")
        }
        return start ..< start + entry.compressedSize
    }

    /// A small record's bytes, checked against its CRC-32 (used for `data.pkl`, `byteorder`, `version`).
    func checkedData(_ name: String) throws(PyTorchCheckpointError) -> UnsafeRawBufferPointer {
        let range = try dataRange(name)
        let bytes = mapping.bytes(range)
        guard CRC32.checksum(bytes) == entry(name)?.crc32 else { throw .checksumMismatch(file: path, record: name) }
        return bytes
    }
}

/// Little-endian integers at byte offsets of a map; reads past the end return 0 (callers check
/// ranges before trusting a value, so a zero only ever fails a later check).
struct ZipByteReader {
    let mapping: MappedFile

    private func load<T: FixedWidthInteger>(_ offset: Int, as type: T.Type) -> T {
        guard offset >= 0, offset <= mapping.size - MemoryLayout<T>.size else { return 0 }
        return T(littleEndian: mapping.bytes(offset ..< offset + MemoryLayout<T>.size).loadUnaligned(as: T.self))
    }

    func u16(_ offset: Int) -> UInt16 { load(offset, as: UInt16.self) }
    func u32(_ offset: Int) -> UInt32 { load(offset, as: UInt32.self) }
    func u64(_ offset: Int) -> UInt64 { load(offset, as: UInt64.self) }
}

/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), as zip stores it.
enum CRC32 {
    static let table: [UInt32] = (0 ..< 256).map { value in
        var c = UInt32(value)
        for _ in 0 ..< 8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        table.withUnsafeBufferPointer { table in
            for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        }
        return crc ^ 0xFFFF_FFFF
    }
}
