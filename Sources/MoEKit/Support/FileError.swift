import Foundation

/// Problems creating, writing, copying or replacing MoEKit's output files and directories (the
/// `AtomicFileWriter` / `AtomicDirectory` layer). Each message starts with the path at fault.
public enum FileError: Error, LocalizedError, Equatable, Sendable {
    /// Writing, closing or renaming a file failed.
    case writeFailed(path: String, reason: String)
    /// The output exists and replacing it was not asked for.
    case alreadyExists(path: String)
    /// A directory is needed but the path is a file (or a link to one); `advice` says what to do.
    case notADirectory(path: String, advice: String)
    /// An output's parent directory does not exist.
    case missingDirectory(path: String)
    /// A directory holds files and replacing them was not asked for; `advice` says what to do.
    case directoryNotEmpty(path: String, advice: String)
    case cannotCreateDirectory(path: String, reason: String)
    /// A file or directory cannot be copied to `destination`.
    case cannotCopy(path: String, destination: String, reason: String)
    case cannotRemove(path: String, reason: String)
    /// An output path that is an input or holds it (writing would replace the input).
    case outputOverlapsInput(output: String, input: String, reason: String)
    /// Renaming a finished directory into place, or an existing one aside, failed.
    case cannotRename(path: String, what: String, reason: String)

    public var errorDescription: String? {
        switch self {
        case let .writeFailed(path, reason): return "\(path): write failed: \(reason)"
        case let .alreadyExists(path): return "\(path): already exists (use --force to replace it)"
        case let .notADirectory(path, advice): return "\(path): exists and is not a directory; \(advice)"
        case let .missingDirectory(path): return "\(path): no such file"
        case let .directoryNotEmpty(path, advice): return "\(path): directory is not empty; \(advice)"
        case let .cannotCreateDirectory(path, reason): return "\(path): cannot create directory: \(reason)"
        case let .cannotCopy(path, destination, reason): return "\(path): cannot copy into \(destination): \(reason)"
        case let .cannotRemove(path, reason): return "\(path): cannot remove: \(reason)"
        case let .outputOverlapsInput(output, input, reason):
            return "\(output): the output \(reason) (\(input)); choose another output directory"
        case let .cannotRename(path, what, reason): return "\(path): cannot \(what): \(reason)"
        }
    }
}
