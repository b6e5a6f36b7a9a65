import CHDF5
import Foundation

// A small owning layer over the HDF5 C API, just what routing logs need. Every identifier is held by a
// class that closes it on deinit; every failure becomes a `RoutingLogError` naming the file and the
// dataset or attribute, with HDF5's innermost error message as the reason. HDF5's own stderr printing
// is switched off (per thread: the Debian library is built thread-safe, which makes the error stack
// and its printing thread-local), so `HDF5.prepare()` runs at the start of every public entry point.

enum HDF5 {
    /// Initialises the library and silences its automatic error printing on the calling thread.
    static func prepare() {
        _ = H5open()
        _ = moekit_H5_silence_errors()
    }

    /// The most specific message on this thread's HDF5 error stack (then clears the stack).
    static func lastErrorMessage() -> String {
        final class Messages { var items: [String] = [] }
        let messages = Messages()
        let unmanaged = Unmanaged.passRetained(messages)
        defer { unmanaged.release() }
        _ = H5Ewalk2(moekit_H5E_DEFAULT(), H5E_WALK_DOWNWARD, { _, description, client in
            guard let description, let client, let text = description.pointee.desc else { return 0 }
            Unmanaged<Messages>.fromOpaque(client).takeUnretainedValue().items.append(String(cString: text))
            return 0
        }, unmanaged.toOpaque())
        _ = H5Eclear2(moekit_H5E_DEFAULT())
        return messages.items.first ?? "unknown HDF5 error"
    }

    /// `H5Fis_hdf5`: true when the file carries an HDF5 signature.
    static func isHDF5(_ path: String) -> Bool { H5Fis_hdf5(path) > 0 }
}

/// A scalar or array element type with a native HDF5 memory type.
protocol HDF5Element {
    static var nativeType: hid_t { get }
    static var isFloatingPoint: Bool { get }
    static var zero: Self { get }
}
extension Int64: HDF5Element {
    static var nativeType: hid_t { moekit_H5T_NATIVE_INT64() }
    static var isFloatingPoint: Bool { false }
    static var zero: Int64 { 0 }
}
extension Int32: HDF5Element {
    static var nativeType: hid_t { moekit_H5T_NATIVE_INT32() }
    static var isFloatingPoint: Bool { false }
    static var zero: Int32 { 0 }
}
extension Int16: HDF5Element {
    static var nativeType: hid_t { moekit_H5T_NATIVE_INT16() }
    static var isFloatingPoint: Bool { false }
    static var zero: Int16 { 0 }
}
extension Float: HDF5Element {
    static var nativeType: hid_t { moekit_H5T_NATIVE_FLOAT() }
    static var isFloatingPoint: Bool { true }
    static var zero: Float { 0 }
}

/// Any HDF5 identifier closed by `closer` on deinit.
final class HDF5Object {
    let id: hid_t
    private let closer: (hid_t) -> herr_t
    init(_ id: hid_t, closer: @escaping (hid_t) -> herr_t) {
        self.id = id
        self.closer = closer
    }
    deinit { _ = closer(id) }
}

typealias HDF5Dataspace = HDF5Object
typealias HDF5PropertyList = HDF5Object
typealias HDF5Attribute = HDF5Object
typealias HDF5Datatype = HDF5Object

extension HDF5Object {
    static func dataspace(_ id: hid_t) -> HDF5Dataspace { HDF5Object(id) { H5Sclose($0) } }
    static func propertyList(_ id: hid_t) -> HDF5PropertyList { HDF5Object(id) { H5Pclose($0) } }
    static func attribute(_ id: hid_t) -> HDF5Attribute { HDF5Object(id) { H5Aclose($0) } }
    static func datatype(_ id: hid_t) -> HDF5Datatype { HDF5Object(id) { H5Tclose($0) } }
}

/// An open HDF5 file. `path` is the name used in error messages (the destination, even while the
/// writer still works under a temporary name).
final class HDF5File {
    let id: hid_t
    let path: String

    private init(id: hid_t, path: String) {
        self.id = id
        self.path = path
    }
    deinit { _ = H5Fclose(id) }

    /// File access properties with the latest format bounds, which SWMR requires.
    private static func latestFormatAccess(path: String) throws -> HDF5PropertyList {
        let access = HDF5Object.propertyList(H5Pcreate(moekit_H5P_FILE_ACCESS()))
        guard access.id >= 0, H5Pset_libver_bounds(access.id, moekit_H5F_LIBVER_LATEST(), moekit_H5F_LIBVER_LATEST()) >= 0 else {
            throw RoutingLogError.hdf5(file: path, operation: "set format bounds for", object: "/", reason: HDF5.lastErrorMessage())
        }
        return access
    }

    /// Creates `actualPath` (refusing an existing one) in the latest file format; errors name `displayPath`.
    static func create(actualPath: String, displayPath: String) throws -> HDF5File {
        let access = try latestFormatAccess(path: displayPath)
        let id = H5Fcreate(actualPath, moekit_H5F_ACC_EXCL(), moekit_H5P_DEFAULT(), access.id)
        guard id >= 0 else { throw RoutingLogError.cannotOpen(file: displayPath, reason: HDF5.lastErrorMessage()) }
        return HDF5File(id: id, path: displayPath)
    }

    /// Opens an existing file for writing in the latest format (append; SWMR writing starts after
    /// the caller has checked and repaired the datasets, which SWMR mode would not allow).
    ///
    /// A writer that was killed leaves the superblock marked "open for writing", which makes a
    /// plain open fail. Then the open is retried the way `h5clear -s` does it (the file-access
    /// property `clear_status_flags`), so `--append` / `--resume` continue a killed run's log. The
    /// retry still takes HDF5's file lock, so a writer that is really alive keeps the file.
    static func openForReadWrite(path: String) throws -> HDF5File {
        let access = try latestFormatAccess(path: path)
        let id = H5Fopen(path, moekit_H5F_ACC_RDWR(), access.id)
        if id >= 0 { return HDF5File(id: id, path: path) }
        let firstError = HDF5.lastErrorMessage()
        _ = H5Eclear2(moekit_H5E_DEFAULT())
        var clear = true
        if H5Pset(access.id, "clear_status_flags", &clear) >= 0 {
            let cleared = H5Fopen(path, moekit_H5F_ACC_RDWR(), access.id)
            if cleared >= 0 { return HDF5File(id: cleared, path: path) }
        }
        _ = H5Eclear2(moekit_H5E_DEFAULT())
        throw RoutingLogError.cannotOpen(file: path, reason: firstError)
    }

    /// Metadata read attempts of a SWMR reader. A SWMR reader retries a metadata block whose
    /// checksum fails (the writer may be rewriting it), with growing sleeps; HDF5's default of 100
    /// attempts made a damaged log take minutes per block. A live writer flushes a block in one
    /// write, so a few attempts suffice.
    static let swmrMetadataReadAttempts: UInt32 = 6

    /// Opens read-only: plainly when no writer has the file open (a finished log: a damaged block
    /// fails at once), with SWMR read only when the superblock says a writer has it open (a live
    /// log, or one whose writer was killed), with `swmrMetadataReadAttempts`. `isSWMR` tells which.
    static func openForReading(path: String) throws -> (file: HDF5File, isSWMR: Bool) {
        let plain = H5Fopen(path, moekit_H5F_ACC_RDONLY(), moekit_H5P_DEFAULT())
        if plain >= 0 { return (HDF5File(id: plain, path: path), false) }
        let plainError = HDF5.lastErrorMessage()
        let access = HDF5Object.propertyList(H5Pcreate(moekit_H5P_FILE_ACCESS()))
        guard access.id >= 0, H5Pset_metadata_read_attempts(access.id, swmrMetadataReadAttempts) >= 0 else {
            throw RoutingLogError.cannotOpen(file: path, reason: HDF5.lastErrorMessage())
        }
        let swmr = H5Fopen(path, moekit_H5F_ACC_RDONLY() | moekit_H5F_ACC_SWMR_READ(), access.id)
        guard swmr >= 0 else {
            _ = H5Eclear2(moekit_H5E_DEFAULT())
            throw RoutingLogError.cannotOpen(file: path, reason: plainError)
        }
        return (HDF5File(id: swmr, path: path), true)
    }

    func startSWMRWrite() throws {
        guard H5Fstart_swmr_write(id) >= 0 else {
            throw RoutingLogError.hdf5(file: path, operation: "start SWMR writing on", object: "/", reason: HDF5.lastErrorMessage())
        }
    }

    func flush() throws {
        guard H5Fflush(id, H5F_SCOPE_GLOBAL) >= 0 else {
            throw RoutingLogError.hdf5(file: path, operation: "flush", object: "/", reason: HDF5.lastErrorMessage())
        }
    }

    // MARK: Links and groups

    /// True when every component of the absolute `name` exists (H5Lexists fails on a missing parent).
    func linkExists(_ name: String) -> Bool {
        var prefix = ""
        for component in name.split(separator: "/") {
            prefix += "/" + component
            guard H5Lexists(id, prefix, moekit_H5P_DEFAULT()) > 0 else {
                _ = H5Eclear2(moekit_H5E_DEFAULT())
                return false
            }
        }
        return true
    }

    func createGroup(_ name: String) throws {
        let group = H5Gcreate2(id, name, moekit_H5P_DEFAULT(), moekit_H5P_DEFAULT(), moekit_H5P_DEFAULT())
        guard group >= 0 else { throw RoutingLogError.hdf5(file: path, operation: "create group", object: name, reason: HDF5.lastErrorMessage()) }
        _ = H5Gclose(group)
    }

    // MARK: Datasets

    /// Creates a chunked, deflate-compressed dataset whose first axis starts at 0 and is unlimited.
    /// Deflate level 1: every per-step flush recompresses the chunk being filled, and level 1 keeps
    /// that within the 2% logging budget (level 4 cost about 0.2 ms more per step on the tiny preset).
    /// `trailingShape` are the fixed dimensions after it; `chunkRows` rows make one chunk.
    func createExtendibleDataset(_ name: String, fileType: hid_t, trailingShape: [Int], chunkRows: Int) throws -> HDF5Dataset {
        func failure() -> RoutingLogError { .hdf5(file: path, operation: "create dataset", object: name, reason: HDF5.lastErrorMessage()) }
        var current = [hsize_t(0)] + trailingShape.map { hsize_t($0) }
        var maximum = [moekit_H5S_UNLIMITED()] + trailingShape.map { hsize_t($0) }
        var chunk = [hsize_t(max(1, chunkRows))] + trailingShape.map { hsize_t(max(1, $0)) }
        let space = HDF5Object.dataspace(H5Screate_simple(Int32(current.count), &current, &maximum))
        let creation = HDF5Object.propertyList(H5Pcreate(moekit_H5P_DATASET_CREATE()))
        guard space.id >= 0, creation.id >= 0,
              H5Pset_chunk(creation.id, Int32(chunk.count), &chunk) >= 0,
              H5Pset_deflate(creation.id, 1) >= 0 else { throw failure() }
        let dataset = H5Dcreate2(id, name, fileType, space.id, moekit_H5P_DEFAULT(), creation.id, moekit_H5P_DEFAULT())
        guard dataset >= 0 else { throw failure() }
        return HDF5Dataset(id: dataset, name: name, file: path)
    }

    func openDataset(_ name: String) throws -> HDF5Dataset {
        guard linkExists(name) else { throw RoutingLogError.missingDataset(file: path, dataset: name) }
        let dataset = H5Dopen2(id, name, moekit_H5P_DEFAULT())
        guard dataset >= 0 else { throw RoutingLogError.invalidDataset(file: path, dataset: name, reason: HDF5.lastErrorMessage()) }
        return HDF5Dataset(id: dataset, name: name, file: path)
    }

    // MARK: Root attributes

    func hasAttribute(_ name: String) -> Bool {
        let exists = H5Aexists(id, name)
        if exists < 0 { _ = H5Eclear2(moekit_H5E_DEFAULT()) }
        return exists > 0
    }

    /// A scalar variable-length UTF-8 string attribute on the root group (h5py reads it as `str`).
    func writeAttribute(_ name: String, _ value: String) throws {
        let type = HDF5Object.datatype(H5Tcopy(moekit_H5T_C_S1()))
        let space = HDF5Object.dataspace(H5Screate(H5S_SCALAR))
        guard type.id >= 0, space.id >= 0,
              H5Tset_size(type.id, moekit_H5T_VARIABLE()) >= 0,
              H5Tset_cset(type.id, H5T_CSET_UTF8) >= 0 else {
            throw RoutingLogError.hdf5(file: path, operation: "write attribute", object: name, reason: HDF5.lastErrorMessage())
        }
        let attribute = HDF5Object.attribute(H5Acreate2(id, name, type.id, space.id, moekit_H5P_DEFAULT(), moekit_H5P_DEFAULT()))
        let status: herr_t = value.withCString { text in
            var pointer: UnsafePointer<CChar>? = text
            return withUnsafePointer(to: &pointer) { H5Awrite(attribute.id, type.id, $0) }
        }
        guard attribute.id >= 0, status >= 0 else {
            throw RoutingLogError.hdf5(file: path, operation: "write attribute", object: name, reason: HDF5.lastErrorMessage())
        }
    }

    /// A scalar int64 attribute on the root group.
    func writeAttribute(_ name: String, _ value: Int64) throws {
        let space = HDF5Object.dataspace(H5Screate(H5S_SCALAR))
        let attribute = HDF5Object.attribute(H5Acreate2(id, name, moekit_H5T_STD_I64LE(), space.id, moekit_H5P_DEFAULT(), moekit_H5P_DEFAULT()))
        var value = value
        guard space.id >= 0, attribute.id >= 0, H5Awrite(attribute.id, moekit_H5T_NATIVE_INT64(), &value) >= 0 else {
            throw RoutingLogError.hdf5(file: path, operation: "write attribute", object: name, reason: HDF5.lastErrorMessage())
        }
    }

    /// Opens a root attribute holding exactly one element of `typeClass`; nil when absent.
    private func openSingleAttribute(_ name: String, typeClass: H5T_class_t, typeName: String) throws -> (HDF5Attribute, HDF5Datatype)? {
        guard hasAttribute(name) else { return nil }
        let attribute = HDF5Object.attribute(H5Aopen(id, name, moekit_H5P_DEFAULT()))
        guard attribute.id >= 0 else { throw RoutingLogError.invalidAttribute(file: path, attribute: name, reason: HDF5.lastErrorMessage()) }
        let type = HDF5Object.datatype(H5Aget_type(attribute.id))
        let space = HDF5Object.dataspace(H5Aget_space(attribute.id))
        guard type.id >= 0, H5Tget_class(type.id) == typeClass else {
            throw RoutingLogError.invalidAttribute(file: path, attribute: name, reason: "expected a \(typeName)")
        }
        guard space.id >= 0, H5Sget_simple_extent_npoints(space.id) == 1 else {
            throw RoutingLogError.invalidAttribute(file: path, attribute: name, reason: "expected a single \(typeName), found an array")
        }
        return (attribute, type)
    }

    /// A root string attribute (variable or fixed length); nil when absent.
    func stringAttribute(_ name: String) throws -> String? {
        guard let (attribute, type) = try openSingleAttribute(name, typeClass: H5T_STRING, typeName: "string") else { return nil }
        func failure() -> RoutingLogError { .invalidAttribute(file: path, attribute: name, reason: HDF5.lastErrorMessage()) }
        if H5Tis_variable_str(type.id) > 0 {
            let memoryType = HDF5Object.datatype(H5Tcopy(moekit_H5T_C_S1()))
            guard H5Tset_size(memoryType.id, moekit_H5T_VARIABLE()) >= 0, H5Tset_cset(memoryType.id, H5Tget_cset(type.id)) >= 0 else { throw failure() }
            var pointer: UnsafeMutablePointer<CChar>? = nil
            guard H5Aread(attribute.id, memoryType.id, &pointer) >= 0 else { throw failure() }
            defer { if let pointer { H5free_memory(pointer) } }
            return pointer.map { String(cString: $0) } ?? ""
        }
        let size = H5Tget_size(type.id)
        guard size > 0, size < 1 << 26 else { throw RoutingLogError.invalidAttribute(file: path, attribute: name, reason: "string size \(size)") }
        var bytes = [CChar](repeating: 0, count: size + 1)
        guard H5Aread(attribute.id, type.id, &bytes) >= 0 else { throw failure() }
        return String(decoding: bytes.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A root integer attribute; nil when absent.
    func integerAttribute(_ name: String) throws -> Int64? {
        guard let (attribute, _) = try openSingleAttribute(name, typeClass: H5T_INTEGER, typeName: "integer") else { return nil }
        var value: Int64 = 0
        guard H5Aread(attribute.id, moekit_H5T_NATIVE_INT64(), &value) >= 0 else {
            throw RoutingLogError.invalidAttribute(file: path, attribute: name, reason: HDF5.lastErrorMessage())
        }
        return value
    }
}

/// An open dataset whose first axis is the growing one (steps or tokens).
final class HDF5Dataset {
    let id: hid_t
    let name: String
    let file: String

    init(id: hid_t, name: String, file: String) {
        self.id = id
        self.name = name
        self.file = file
    }
    deinit { _ = H5Dclose(id) }

    private func failure(_ operation: String) -> RoutingLogError {
        .hdf5(file: file, operation: operation, object: name, reason: HDF5.lastErrorMessage())
    }

    /// Current dimensions.
    func shape() throws -> [Int] {
        let space = HDF5Object.dataspace(H5Dget_space(id))
        let rank = space.id >= 0 ? H5Sget_simple_extent_ndims(space.id) : -1
        guard rank >= 0 else { throw failure("read the shape of") }
        var dimensions = [hsize_t](repeating: 0, count: Int(rank))
        guard H5Sget_simple_extent_dims(space.id, &dimensions, nil) >= 0 else { throw failure("read the shape of") }
        return dimensions.map { Int(clamping: $0) }
    }

    /// The element type class (`H5T_INTEGER`, `H5T_FLOAT`, …).
    func typeClass() throws -> H5T_class_t {
        let type = HDF5Object.datatype(H5Dget_type(id))
        guard type.id >= 0 else { throw failure("read the type of") }
        return H5Tget_class(type.id)
    }

    /// Reloads the dataset's metadata so a SWMR reader sees rows the writer appended since.
    func refresh() throws {
        guard H5Drefresh(id) >= 0 else { throw failure("refresh") }
    }

    func setExtent(_ dimensions: [Int]) throws {
        var dimensions = dimensions.map { hsize_t($0) }
        guard H5Dset_extent(id, &dimensions) >= 0 else { throw failure("extend") }
    }

    /// Selects rows `rows` (all of every trailing axis) in the file and a matching memory space.
    private func selection(rows: Range<Int>, trailingShape: [Int]) throws -> (file: HDF5Dataspace, memory: HDF5Dataspace) {
        let fileSpace = HDF5Object.dataspace(H5Dget_space(id))
        var start = [hsize_t(rows.lowerBound)] + trailingShape.map { _ in hsize_t(0) }
        var count = [hsize_t(rows.count)] + trailingShape.map { hsize_t($0) }
        let memory = HDF5Object.dataspace(H5Screate_simple(Int32(count.count), &count, nil))
        guard fileSpace.id >= 0, memory.id >= 0,
              H5Sselect_hyperslab(fileSpace.id, H5S_SELECT_SET, &start, nil, &count, nil) >= 0 else {
            throw failure("select rows \(rows.lowerBound)..<\(rows.upperBound) of")
        }
        return (fileSpace, memory)
    }

    /// Writes `values` (row-major, `rows.count · Π trailingShape` elements) into rows `rows`,
    /// which must already lie inside the dataset's extent.
    func write<Element: HDF5Element>(_ values: [Element], rows: Range<Int>, trailingShape: [Int]) throws {
        guard !rows.isEmpty else { return }
        let (fileSpace, memory) = try selection(rows: rows, trailingShape: trailingShape)
        let status = values.withUnsafeBufferPointer {
            H5Dwrite(id, Element.nativeType, memory.id, fileSpace.id, moekit_H5P_DEFAULT(), $0.baseAddress)
        }
        guard status >= 0 else { throw failure("write") }
    }

    /// Reads rows `rows` (row-major), converting to `Element`.
    ///
    /// A damaged file can claim any extent, so the element count is checked for overflow and
    /// against what the file could hold (its size times deflate's best ratio, 1032:1) before
    /// anything is allocated.
    func read<Element: HDF5Element>(rows: Range<Int>, trailingShape: [Int], as: Element.Type = Element.self) throws -> [Element] {
        var count = rows.count
        for dimension in trailingShape {
            let (product, overflow) = count.multipliedReportingOverflow(by: dimension)
            guard !overflow, dimension >= 0 else { throw RoutingLogError.invalidDataset(file: file, dataset: name, reason: "shape \(trailingShape) overflows") }
            count = product
        }
        guard count > 0 else { return [] }
        let fileBytes = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? Int) ?? nil
        let (bytes, overflow) = count.multipliedReportingOverflow(by: MemoryLayout<Element>.stride)
        if let fileBytes, overflow || bytes / 1032 > fileBytes + (1 << 20) {
            throw RoutingLogError.invalidDataset(file: file, dataset: name,
                                                 reason: "\(rows.count) rows × \(trailingShape) is more than a \(fileBytes)-byte file can hold (damaged)")
        }
        var values = [Element](repeating: .zero, count: count)
        let (fileSpace, memory) = try selection(rows: rows, trailingShape: trailingShape)
        let status = values.withUnsafeMutableBufferPointer {
            H5Dread(id, Element.nativeType, memory.id, fileSpace.id, moekit_H5P_DEFAULT(), $0.baseAddress)
        }
        guard status >= 0 else { throw failure("read") }
        return values
    }
}
