import Foundation
import MoEKit

/// A time limit on reading an HDF5 routing log. HDF5 itself can loop forever on some damaged
/// metadata (a corrupted global heap made `H5Aread` of a string attribute spin in `H5HG_read`,
/// found by the routing-log fuzz target), and a call inside HDF5 cannot be interrupted. When
/// `body` has not returned within the limit, the process prints one error line naming the file,
/// removes its temporary outputs and ends with `_exit(1)`.
///
/// The limit is 4 s plus the time to read the file at 20 MB/s, far above what an intact log takes
/// (a 4.7 MB, 640-step log is inspected in 0.14 s).
enum ReadDeadline {
    static func seconds(forFile path: String) -> Double {
        let bytes = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        return 4 + Double(bytes) / 20e6
    }

    static func reading<Result>(_ path: String, _ body: () throws -> Result) rethrows -> Result {
        let limit = seconds(forFile: path)
        let finished = Flag()
        DispatchQueue.global().asyncAfter(deadline: .now() + limit) {
            guard !finished.isSet else { return }
            TemporaryPaths.removeAll()
            let kind = (try? InputFile.kind(of: path).kind) ?? nil
            let reason = kind.map { "it is \($0) and gave no routing log" } ?? "the file is damaged"
            let message = "moekit: error: \(path): reading the routing log did not finish within \(Int(limit.rounded())) s; \(reason)\n"
            message.withCString { _ = write(STDERR_FILENO, $0, strlen($0)) }
            _exit(1)
        }
        defer { finished.set() }
        return try body()
    }

    private final class Flag: @unchecked Sendable {
        private let lock = NSLock()
        private var value = false
        var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
        func set() { lock.lock(); value = true; lock.unlock() }
    }
}
