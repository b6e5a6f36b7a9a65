import Foundation

/// A directory built under a temporary name beside its destination and renamed into place by
/// `commit()`. An existing destination is refused unless `replaceExisting`; an abandoned build
/// (error, or the value dropped without commit) removes the temporary directory.
final class AtomicDirectory {
    let destination: String
    let temporaryPath: String
    private let replaceExisting: Bool
    private var committed = false

    init(destination: String, replaceExisting: Bool) throws(FileError) {
        let manager = FileManager.default
        let url = URL(fileURLWithPath: destination).standardizedFileURL
        self.destination = url.path
        self.replaceExisting = replaceExisting
        var existingIsDirectory: ObjCBool = false
        if manager.fileExists(atPath: self.destination, isDirectory: &existingIsDirectory) {
            guard replaceExisting else { throw .alreadyExists(path: destination) }
            // --force replaces an earlier output directory, never a file (or a link to one).
            guard existingIsDirectory.boolValue else {
                throw .notADirectory(path: destination, advice: "--force replaces directories only, choose another output")
            }
        }
        let parent = url.deletingLastPathComponent().path
        var isDirectory: ObjCBool = false
        guard manager.fileExists(atPath: parent, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw .missingDirectory(path: parent)
        }
        temporaryPath = parent + "/." + url.lastPathComponent + ".tmp-\(getpid())-\(UInt32.random(in: 0 ... .max))"
        do {
            try manager.createDirectory(atPath: temporaryPath, withIntermediateDirectories: false)
        } catch {
            throw .cannotCreateDirectory(path: temporaryPath, reason: error.localizedDescription)
        }
        TemporaryPaths.register(temporaryPath)
    }

    deinit {
        if !committed { abandon() }
    }

    /// Path of a file inside the directory being built.
    func path(_ name: String) -> String { temporaryPath + "/" + name }

    /// Renames the finished directory into place (replacing an existing one when allowed).
    func commit() throws(FileError) {
        let manager = FileManager.default
        var aside: String?
        var existingIsDirectory: ObjCBool = false
        if manager.fileExists(atPath: destination, isDirectory: &existingIsDirectory) {
            guard replaceExisting else { throw .alreadyExists(path: destination) }
            guard existingIsDirectory.boolValue else { throw .notADirectory(path: destination, advice: "not replaced") }
            let moved = temporaryPath + ".old"
            guard rename(destination, moved) == 0 else {
                throw .cannotRename(path: destination, what: "move the existing directory aside", reason: String(cString: strerror(errno)))
            }
            aside = moved
        }
        guard rename(temporaryPath, destination) == 0 else {
            let reason = String(cString: strerror(errno))
            if let aside { _ = rename(aside, destination) }
            throw .cannotRename(path: destination, what: "rename the finished directory into place", reason: reason)
        }
        committed = true
        TemporaryPaths.unregister(temporaryPath)
        if let aside { try? manager.removeItem(atPath: aside) }
    }

    /// Removes the temporary directory.
    func abandon() {
        try? FileManager.default.removeItem(atPath: temporaryPath)
        TemporaryPaths.unregister(temporaryPath)
    }
}

/// Temporary outputs in progress, removed by the CLI's signal handler when a run is interrupted.
public enum TemporaryPaths {
    nonisolated(unsafe) private static var paths: Set<String> = []
    private static let lock = NSLock()

    static func register(_ path: String) { lock.lock(); paths.insert(path); lock.unlock() }
    static func unregister(_ path: String) { lock.lock(); paths.remove(path); lock.unlock() }

    /// Removes every registered temporary path (called on SIGINT/SIGTERM).
    public static func removeAll() {
        lock.lock()
        let pending = paths
        paths.removeAll()
        lock.unlock()
        for path in pending { try? FileManager.default.removeItem(atPath: path) }
    }
}
