import COpenBLAS

/// OpenBLAS settings.
///
/// OpenBLAS uses every core by default. Set `OPENBLAS_NUM_THREADS=N` in the environment before
/// starting a process (or `BLAS.threadCount = N`, or `--threads N` on the CLI) to use fewer.
public enum BLAS {
    /// The number of threads OpenBLAS uses for one call.
    public static var threadCount: Int {
        get { Int(openblas_get_num_threads()) }
        set { openblas_set_num_threads(Int32(clamping: max(1, newValue))) }
    }

    /// OpenBLAS's build description (version, core, thread model), for benchmark reports.
    public static var configuration: String {
        guard let config = openblas_get_config() else { return "OpenBLAS (unknown)" }
        return String(cString: config)
    }
}
