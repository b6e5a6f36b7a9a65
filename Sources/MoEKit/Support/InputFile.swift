import Foundation

/// Why a file given as input cannot be read, said as what the path really is.
public enum InputFileError: Error, LocalizedError, Equatable, Sendable {
    case missing(path: String)
    /// The path exists but is not a regular file: a directory, FIFO, device, socket.
    case notARegularFile(path: String, kind: String)
    case tooLarge(path: String, bytes: Int, limit: Int)
    case unreadable(path: String, reason: String)

    /// What is wrong, without the path.
    public var reason: String {
        switch self {
        case .missing: return "no such file"
        case let .notARegularFile(_, kind): return "is \(kind), not a regular file"
        case let .tooLarge(_, bytes, limit): return "\(bytes) bytes is more than the \(limit)-byte limit for this file"
        case let .unreadable(_, reason): return "cannot read: \(reason)"
        }
    }

    public var path: String {
        switch self {
        case let .missing(path), let .notARegularFile(path, _), let .tooLarge(path, _, _), let .unreadable(path, _): return path
        }
    }

    public var errorDescription: String? { "\(path): \(reason)" }
}

/// Reading small input files (JSON configs, tokenizers, token lists) safely: the path is checked
/// with `stat` before it is opened, so a FIFO or device is refused instead of blocking or reading
/// forever, and the size is checked against a limit before anything is allocated.
public enum InputFile {
    /// What `path` is when it is not a regular file ("a directory", "a FIFO", …); nil for a regular file.
    /// Throws `.missing` when nothing is there.
    public static func kind(of path: String) throws(InputFileError) -> (kind: String?, size: Int) {
        var info = stat()
        guard stat(path, &info) == 0 else {
            if errno == ENOENT || errno == ENOTDIR { throw .missing(path: path) }
            throw .unreadable(path: path, reason: String(cString: strerror(errno)))
        }
        switch info.st_mode & S_IFMT {
        case S_IFREG: return (nil, Int(info.st_size))
        case S_IFDIR: return ("a directory", 0)
        case S_IFIFO: return ("a FIFO", 0)
        case S_IFCHR: return ("a character device", 0)
        case S_IFBLK: return ("a block device", 0)
        case S_IFSOCK: return ("a socket", 0)
        default: return ("not a regular file", 0)
        }
    }

    /// The bytes of the regular file at `path`, at most `limit` bytes.
    public static func read(_ path: String, limit: Int) throws(InputFileError) -> Data {
        let (kind, size) = try kind(of: path)
        if let kind { throw .notARegularFile(path: path, kind: kind) }
        guard size <= limit else { throw .tooLarge(path: path, bytes: size, limit: limit) }
        guard let handle = FileHandle(forReadingAtPath: path) else { throw .unreadable(path: path, reason: String(cString: strerror(errno))) }
        defer { try? handle.close() }
        do {
            // One byte more than the limit tells a file that grew since `stat`.
            let data = try handle.read(upToCount: limit + 1) ?? Data()
            guard data.count <= limit else { throw InputFileError.tooLarge(path: path, bytes: data.count, limit: limit) }
            return data
        } catch let error as InputFileError {
            throw error
        } catch {
            throw .unreadable(path: path, reason: error.localizedDescription)
        }
    }

    /// 64 MiB: the largest JSON MoEKit reads (a tokenizer.json with a 250k vocabulary is ~20 MB).
    static let jsonLimit = 64 << 20
    /// 2 GiB: token ids and text read whole into memory (`forward`, `trace`, `tokenize`).
    static let tokenFileLimit = 2 << 30
}
