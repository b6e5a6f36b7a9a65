import Foundation
import MoEKit

/// Reads a routing log in a child process, so that the HDF5 library failing on a damaged file
/// cannot take this process with it. HDF5 1.10 can crash (SIGSEGV in `H5HG_read` on a corrupted
/// global heap, found by the routing-log fuzz target under address sanitizer) or loop forever
/// inside a call; neither can be caught in-process. The child is this executable running
/// `moekit inspect LOG` (with the `ReadDeadline`); a child killed by a signal becomes one error
/// line naming the file.
enum IsolatedLogRead {
    /// Set in the child's environment: the child reads in-process.
    static let childVariable = "MOEKIT_LOG_READER_CHILD"

    static var isChild: Bool { ProcessInfo.processInfo.environment[childVariable] != nil }

    /// Runs `moekit ARGUMENTS` (an `inspect` of `log`) in a child with this process's standard
    /// output and error; returns its exit status, or throws when a signal ended it.
    static func run(_ arguments: [String], log: String, errors: Pipe? = nil) throws -> Int32 {
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        child.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment[childVariable] = "1"
        environment["SWIFT_BACKTRACE"] = "enable=no"  // the parent reports a crash in one line
        child.environment = environment
        if let errors {
            child.standardOutput = FileHandle.nullDevice
            child.standardError = errors
        }
        do { try child.run() } catch {
            throw RoutingLogError.cannotOpen(file: log, reason: "cannot start a reader process: \(error.localizedDescription)")
        }
        CLISignals.childProcess = child.processIdentifier
        child.waitUntilExit()
        CLISignals.childProcess = 0
        if child.terminationReason == .uncaughtSignal {
            throw RoutingLogError.cannotOpen(file: log, reason: "the HDF5 library crashed reading it (signal \(child.terminationStatus)); the file is damaged")
        }
        return child.terminationStatus
    }

    /// Checks that `log` can be read (`moekit inspect LOG` in a child, output discarded) before
    /// this process opens it for appending; throws the reason when it cannot.
    static func check(_ log: String) throws {
        guard !isChild, FileManager.default.fileExists(atPath: log) else { return }
        let errors = Pipe()
        let status = try run(["inspect", log], log: log, errors: errors)
        if status != 0 {
            let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile().prefix(4096), as: UTF8.self)
            throw ChildError(message: text.split(separator: "\n").first.map { String($0.dropFirst($0.hasPrefix("moekit: error: ") ? 15 : 0)) }
                                 ?? "\(log): cannot read the routing log")
        }
    }

    /// The child's one-line error, passed on.
    struct ChildError: LocalizedError {
        let message: String
        var errorDescription: String? { message }
    }
}
