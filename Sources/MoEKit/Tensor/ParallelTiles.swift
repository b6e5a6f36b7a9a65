import COpenBLAS
import Foundation

/// A pool of independent work items ("tiles") run by a few workers, each taking the next tile
/// from a shared counter, with OpenBLAS held at one thread per call while the pool runs: every
/// worker's sgemm then runs single-threaded on its own core. This is llama.cpp's `mul_mat_id`
/// schedule — many small GEMMs (the experts' blocks, attention's heads) as one pool of tiles —
/// rather than one multi-threaded GEMM after another, each too small to keep the cores busy.
///
/// NOTE: OpenBLAS's thread count is process-wide state; it is restored when the last running
/// pool ends. A pool started inside a tile sees one BLAS thread and runs its tiles in the calling
/// worker.
enum ParallelTiles {
    /// Workers a pool uses: OpenBLAS's thread count (`--threads`, `OPENBLAS_NUM_THREADS`).
    static var workerCount: Int { max(1, BLAS.threadCount) }

    /// Calls `body(tile, worker)` once for every tile in `0 ..< tiles`, on at most `workers`
    /// threads (`worker` in `0 ..< workers` names per-worker scratch). Tiles must write disjoint
    /// memory; their order is unspecified.
    static func run(tiles: Int, workers: Int = workerCount, _ body: (_ tile: Int, _ worker: Int) -> Void) {
        guard tiles > 0 else { return }
        let count = min(max(1, workers), tiles)
        guard count > 1 else {
            for tile in 0 ..< tiles { body(tile, 0) }
            return
        }
        SingleThreadedBLAS.enter()
        defer { SingleThreadedBLAS.leave() }
        let counter = TileCounter()
        WorkerPool.shared.run(parts: count) { worker in
            while let tile = counter.next(below: tiles) { body(tile, worker) }
        }
    }

    /// The same tiles run one after another by the calling thread (the reference schedule tests compare against).
    static func runSerially(tiles: Int, _ body: (_ tile: Int, _ worker: Int) -> Void) {
        for tile in 0 ..< tiles { body(tile, 0) }
    }
}

/// OpenBLAS at one thread while any pool runs: the first pool to start saves the thread count
/// and sets 1, the last to end restores it (pools started by concurrent callers, e.g. tests run in
/// parallel, must not restore each other's setting).
private enum SingleThreadedBLAS {
    nonisolated(unsafe) private static var activePools = 0
    nonisolated(unsafe) private static var savedThreadCount: Int32 = 1
    private static let lock = NSLock()

    static func enter() {
        lock.lock()
        defer { lock.unlock() }
        if activePools == 0 {
            savedThreadCount = openblas_get_num_threads()
            openblas_set_num_threads(1)
        }
        activePools += 1
    }

    static func leave() {
        lock.lock()
        defer { lock.unlock() }
        activePools -= 1
        if activePools == 0 { openblas_set_num_threads(savedThreadCount) }
    }
}

/// The next unclaimed tile index, under a lock (tiles take microseconds to milliseconds each).
private final class TileCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var nextTile = 0

    func next(below limit: Int) -> Int? {
        lock.lock()
        defer { lock.unlock() }
        guard nextTile < limit else { return nil }
        nextTile += 1
        return nextTile - 1
    }
}

/// A value handed to pool workers that the caller guarantees is used safely (tiles write disjoint memory).
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
