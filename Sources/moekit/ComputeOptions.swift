import ArgumentParser
import MoEKit

/// Options shared by the commands that compute: how many OpenBLAS threads to use.
struct ComputeOptions: ParsableArguments {
    @Option(help: "OpenBLAS threads (default: all cores, or OPENBLAS_NUM_THREADS).")
    var threads: Int?

    func validate() throws {
        if let threads { try OptionRanges.check("--threads", threads, OptionRanges.threads) }
    }

    /// Applies the options to the process.
    func apply() {
        if let threads { BLAS.threadCount = threads }
    }
}
