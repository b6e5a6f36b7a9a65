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
        FileHandle.standardError.write(Data("moekit: error: \(message.replacingOccurrences(of: "\n", with: " "))\n".utf8))
        throw ExitCode.failure
    }
}

/// On SIGINT/SIGTERM, removes temporary outputs in progress before exiting, so an interrupted
/// run leaves nothing half-written.
enum CLISignals {
    nonisolated(unsafe) private static var sources: [DispatchSourceSignal] = []

    static func installCleanupHandlers() {
        guard sources.isEmpty else { return }
        for signalNumber in [SIGINT, SIGTERM] {
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler {
                TemporaryPaths.removeAll()
                FileHandle.standardError.write(Data("moekit: interrupted, temporary files removed\n".utf8))
                exit(128 + signalNumber)
            }
            source.resume()
            sources.append(source)
        }
    }
}
