import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Writes a file under a temporary name beside its destination and renames it into place on
/// `commit()`, so a reader never sees a half-written file. Dropped without `commit()`, the
/// temporary file is removed.
public final class AtomicFileWriter {
    let destination: String
    let temporaryPath: String
    private var descriptor: Int32
    private var buffer: [UInt8] = []
    private let bufferLimit = 1 << 22
    public private(set) var bytesWritten = 0

    public init(destination: String) throws(FileError) {
        self.destination = destination
        let url = URL(fileURLWithPath: destination)
        let directory = url.deletingLastPathComponent().path
        temporaryPath = directory + "/." + url.lastPathComponent + ".tmp-\(getpid())-\(UInt32.random(in: 0 ... .max))"
        descriptor = open(temporaryPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw .writeFailed(path: destination, reason: String(cString: strerror(errno)))
        }
        buffer.reserveCapacity(bufferLimit)
    }

    deinit {
        if descriptor >= 0 {
            close(descriptor)
            unlink(temporaryPath)
        }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws(FileError) {
        bytesWritten += bytes.count
        if buffer.count + bytes.count <= bufferLimit {
            buffer.append(contentsOf: bytes)
            return
        }
        try flushBuffer()
        if bytes.count >= bufferLimit { try writeAll(bytes) } else { buffer.append(contentsOf: bytes) }
    }

    public func write(_ data: Data) throws(FileError) {
        do {
            try data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in try write(raw) }
        } catch let error as FileError { throw error } catch { throw .writeFailed(path: destination, reason: "\(error)") }
    }

    private func flushBuffer() throws(FileError) {
        guard !buffer.isEmpty else { return }
        let pending = buffer
        buffer.removeAll(keepingCapacity: true)
        do {
            try pending.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in try writeAll(raw) }
        } catch let error as FileError { throw error } catch { throw .writeFailed(path: destination, reason: "\(error)") }
    }

    private func writeAll(_ bytes: UnsafeRawBufferPointer) throws(FileError) {
        var offset = 0
        while offset < bytes.count {
            let written = Glibc.write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                throw .writeFailed(path: destination, reason: String(cString: strerror(errno)))
            }
            offset += written
        }
    }

    /// Flushes, closes and renames the file into place.
    func commit() throws(FileError) {
        try flushBuffer()
        let result = close(descriptor)
        descriptor = -1
        guard result == 0 else {
            unlink(temporaryPath)
            throw .writeFailed(path: destination, reason: String(cString: strerror(errno)))
        }
        guard rename(temporaryPath, destination) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporaryPath)
            throw .writeFailed(path: destination, reason: reason)
        }
    }

    /// Writes `data` to `path` atomically.
    public static func write(_ data: Data, to path: String) throws(FileError) {
        let writer = try AtomicFileWriter(destination: path)
        try writer.write(data)
        try writer.commit()
    }
}
