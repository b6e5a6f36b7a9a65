import CMoEKernels
import Dispatch
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Persistent worker threads that poll for the next job for a short while before they sleep, so
/// back-to-back parallel steps (decode's ~30 GEMVs per token, each a few hundred microseconds)
/// start on both cores at once.
///
/// `DispatchQueue.concurrentPerform` hands each call to a dispatch worker that has gone to sleep
/// since the last one. On a virtual machine an idle vCPU halts, and waking it took 20–100 µs per
/// call, after which the late thread's half of a 10 MB decode GEMV ran on a cold core: the second
/// thread finished 100–200 µs after the first, half again as long as the product itself
/// (docs/bf16-kernels.md). llama.cpp's thread pool polls the same way (`ggml_graph_compute_thread`).
///
/// A job runs `body(part)` for `part` in `0 ..< parts`, part 0 on the calling thread and part i on
/// worker i; the call returns when every part has. One job runs at a time: a call made while a job
/// runs (from another thread, or from inside a part), or asking for more parts than the pool has
/// threads, goes to `concurrentPerform` instead, so callers never wait for each other or deadlock.
final class WorkerPool: @unchecked Sendable {
    /// The process's pool: at most one thread fewer than the cores (the caller is the last one).
    static let shared = WorkerPool(workers: max(0, ProcessInfo.processInfo.activeProcessorCount - 1))

    /// How long an idle worker polls before it sleeps: long enough to bridge the serial steps
    /// between a model's products (norms, RoPE, attention on one token), short enough that a
    /// finished job does not hold a core for long.
    static let pollNanoseconds: UInt64 = 2_000_000

    let workerCount: Int
    /// Jobs the pool's own threads ran (not handed to `concurrentPerform`); tests read it.
    let pooledJobs = Atomic<Int>(0)

    /// Job word: generation << 16 | parts. Workers compare generations; the part count travels with it.
    private let job = Atomic<UInt64>(0)
    private let finishedParts = Atomic<Int>(0)
    private let sleepers = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)
    private let wakeUp = NSCondition()
    /// The running job's body; written before the job word is published (release), read after it
    /// is seen (acquire), and unused once the job has finished.
    nonisolated(unsafe) private var body: ((Int) -> Void)?
    private var startedWorkers = 0
    private let startLock = NSLock()

    init(workers: Int) {
        workerCount = workers
    }

    /// Runs `body(part)` for every part in `0 ..< parts` concurrently (see the type's note).
    func run(parts: Int, _ body: (Int) -> Void) {
        guard parts > 1 else {
            if parts == 1 { body(0) }
            return
        }
        guard parts - 1 <= workerCount, busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            withoutActuallyEscaping(body) { body in
                let shared = UncheckedSendable(body)
                DispatchQueue.concurrentPerform(iterations: parts) { shared.value($0) }
            }
            return
        }
        defer { busy.store(false, ordering: .releasing) }
        ensureWorkers(parts - 1)
        pooledJobs.add(1, ordering: .relaxed)
        withoutActuallyEscaping(body) { body in
            self.body = body
            finishedParts.store(0, ordering: .relaxed)
            let generation = (job.load(ordering: .relaxed) >> 16) &+ 1
            job.store(generation << 16 | UInt64(parts), ordering: .sequentiallyConsistent)
            if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
                wakeUp.lock()
                wakeUp.broadcast()
                wakeUp.unlock()
            }
            body(0)
            var spins = 0
            while finishedParts.load(ordering: .acquiring) < parts - 1 {
                spins += 1
                if spins & 1023 == 0 { sched_yield() } else { moekit_cpu_relax() }
            }
            self.body = nil
        }
    }

    /// Starts workers up to `count` (only as many as jobs have asked for: on a many-core host
    /// where OpenBLAS uses two threads, one worker polls, not all the others). Called while this
    /// caller owns the pool and no job runs, so a new worker's last-seen generation is the current one.
    private func ensureWorkers(_ count: Int) {
        startLock.lock()
        defer { startLock.unlock() }
        guard startedWorkers < count else { return }
        let seen = job.load(ordering: .acquiring) >> 16
        for index in startedWorkers + 1 ... count {
            Thread { self.workerLoop(index: index, seen: seen) }.start()
        }
        startedWorkers = count
    }

    /// Workers started so far (tests read it).
    var startedWorkerCount: Int {
        startLock.lock()
        defer { startLock.unlock() }
        return startedWorkers
    }

    private func workerLoop(index: Int, seen start: UInt64) {
        var seen = start
        while true {
            let word = waitForJob(after: seen)
            seen = word >> 16
            let parts = Int(word & 0xffff)
            guard index < parts else { continue }
            runPart(index)
            finishedParts.add(1, ordering: .releasing)
        }
    }

    /// The worker's reference to the job's body ends inside this call, before the part is counted
    /// as finished: `run`'s `withoutActuallyEscaping` traps if the body outlives the job.
    @inline(never)
    private func runPart(_ index: Int) {
        body?(index)
    }

    /// Polls for a job word with a generation other than `seen`, then sleeps until one is published.
    private func waitForJob(after seen: UInt64) -> UInt64 {
        let deadline = Self.now() + Self.pollNanoseconds
        var spins = 0
        while true {
            let word = job.load(ordering: .acquiring)
            if word >> 16 != seen { return word }
            spins += 1
            if spins & 255 == 0 {
                if Self.now() > deadline { break }
                sched_yield()
            } else {
                moekit_cpu_relax()
            }
        }
        wakeUp.lock()
        defer { wakeUp.unlock() }
        sleepers.add(1, ordering: .sequentiallyConsistent)
        defer { sleepers.subtract(1, ordering: .relaxed) }
        while true {
            let word = job.load(ordering: .sequentiallyConsistent)
            if word >> 16 != seen { return word }
            wakeUp.wait()
        }
    }

    private static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
}
