import ArgumentParser
import Foundation
import MoEKit

@main
struct MoEKitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moekit",
        abstract: "Mixture-of-experts research on MiniCPM: upcycle, route, log, benchmark.",
        discussion: """
        MoEKit reads Hugging Face model directories (config.json + safetensors or PyTorch .bin, whose pickle is
        never run) and writes them as safetensors.
        OpenBLAS uses every core by default; set OPENBLAS_NUM_THREADS=N to use fewer.
        When OpenBLAS picks generic kernels on a CPU that has better ones, moekit restarts itself once
        with OPENBLAS_CORETYPE set (one line on stderr; MOEKIT_KEEP_BLAS_CORE=1 keeps them; a core you
        set yourself is always kept).
        """,
        version: "0.1.0\n\(BLASKernelSelection.summary)",
        subcommands: [DemoCommand.self, InitCommand.self, ShowCommand.self, ConvertCommand.self, UpcycleCommand.self, MergeCommand.self, ExportCommand.self, TrainCommand.self,
                      CorpusCommand.self, ForwardCommand.self, TraceCommand.self, TokenizeCommand.self, InspectCommand.self, BenchCommand.self]
    )

    /// Checks OpenBLAS's kernel choice (and restarts with a better one) before anything else runs.
    static func main() {
        BLASKernelSelection.reexecuteIfNeeded(quiet: CommandLine.arguments.dropFirst().contains("--quiet"))
        main(nil)
    }
}

/// Runs a command body, turning any error into one line on stderr and exit status 1.
func reportingErrors(_ body: () throws -> Void) throws {
    CLISignals.installCleanupHandlers()
    do {
        try body()
    } catch let error as ExitCode {
        throw error
    } catch let error as ValidationError {
        throw error
    } catch {
        let message = (error as? LocalizedError)?.errorDescription ?? String(describing: error)
        FileHandle.standardError.write(Data("moekit: error: \(oneLine(message))\n".utf8))
        throw ExitCode.failure
    }
}

/// `text` on one line: control characters and line or paragraph separators (which a damaged file
/// can put into a tensor or entry name quoted by an error) become spaces.
func oneLine(_ text: String) -> String {
    var scalars = String.UnicodeScalarView()
    for scalar in text.unicodeScalars {
        switch scalar.properties.generalCategory {
        case .control, .lineSeparator, .paragraphSeparator: scalars.append(" ")
        default: scalars.append(scalar)
        }
    }
    return String(scalars)
}

/// On SIGINT/SIGTERM, ends any child reader, removes temporary outputs in progress and then ends
/// the process with `_exit`, so an interrupted run leaves nothing half-written and always ends.
///
/// A plain `sigaction` handler does the one async-signal-safe thing, writing the signal number to
/// a pipe; a dedicated thread reads it, cleans up and calls `_exit`. Whichever thread the kernel
/// picks (OpenBLAS's workers exist before `main`), the signal is caught: ignoring it and listening
/// with a dispatch signal source lost it when it landed on a thread that had not blocked it, and an
/// interrupted upcycle then ran to completion (the flaky `test_interrupted_upcycle_leaves_nothing_behind`).
/// It must not call `exit()`: that runs the atexit handlers, and HDF5's `H5_term_library` then
/// waits for the library lock that the main thread holds while it is inside an HDF5 call, which
/// deadlocked `inspect` on a damaged log. `_exit` runs no handlers; nothing else needs flushing
/// (outputs are renamed into place only when complete).
enum CLISignals {
    nonisolated(unsafe) private static var pipeWriteEnd: Int32 = -1
    /// A child process to end with this one (`IsolatedLogRead`), 0 when none.
    nonisolated(unsafe) static var childProcess: pid_t = 0

    static func installCleanupHandlers() {
        guard pipeWriteEnd < 0 else { return }
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { return }
        let readEnd = ends[0]
        pipeWriteEnd = ends[1]
        Thread.detachNewThread {
            var signalNumber: Int32 = 0
            while read(readEnd, &signalNumber, MemoryLayout<Int32>.size) != MemoryLayout<Int32>.size {}
            if childProcess > 0 { kill(childProcess, SIGKILL) }
            TemporaryPaths.removeAll()
            let message = "moekit: interrupted, temporary files removed\n"
            message.withCString { _ = write(STDERR_FILENO, $0, strlen($0)) }
            _exit(128 + signalNumber)
        }
        for signalNumber in [SIGINT, SIGTERM] {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { received in
                var number = received
                _ = write(CLISignals.pipeWriteEnd, &number, MemoryLayout<Int32>.size)
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = SA_RESTART
            sigaction(signalNumber, &action, nil)
        }
    }
}
