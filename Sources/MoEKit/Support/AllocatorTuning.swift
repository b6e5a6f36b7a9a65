#if canImport(Glibc)
import Glibc
#endif

/// glibc's allocator, set once for training: a training step allocates and frees the same
/// activation-sized blocks (a few hundred kB to tens of MB) every step. By default glibc serves the
/// larger ones with `mmap` and returns freed heap tops to the kernel, so each step page-faults and
/// zero-fills them again (system time, on one core at a time). With the `mmap` threshold at its
/// 32 MB maximum and heap trimming off, freed blocks stay in the heap for the next step.
///
/// NOTE: the setting is process-wide (as `MALLOC_TRIM_THRESHOLD_` / `GLIBC_TUNABLES` would be):
/// the heap keeps its peak size (one step's working set, which the next step needs again) instead
/// of shrinking between steps; blocks of 32 MB and more (the `[vocab, hidden]` gradients, see
/// `GradientWorkspace`) are still mapped and unmapped as before. A no-op off glibc.
enum AllocatorTuning {
    static let mmapThreshold: Int32 = 32 << 20
    /// −1: never trim (`mallopt(3)`).
    static let trimThreshold: Int32 = -1
    /// `mallopt`'s parameters, from glibc's `<malloc.h>` (which the Glibc module does not export).
    static let trimThresholdParameter: Int32 = -1, mmapThresholdParameter: Int32 = -3

    /// Applies the setting the first time it is read.
    static let retainFreedMemory: Void = {
        #if canImport(Glibc)
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return }
        let mallopt = unsafeBitCast(symbol, to: Mallopt.self)
        _ = mallopt(mmapThresholdParameter, mmapThreshold)
        _ = mallopt(trimThresholdParameter, trimThreshold)
        #endif
    }()
}
