import Foundation
import Synchronization
import Testing
@testable import MoEKit

/// The polling worker pool behind the row-split kernels and `ParallelTiles`: every part runs exactly
/// once, part 0 on the caller and the others on the pool's threads, also after the workers have gone
/// to sleep; calls it cannot take (nested, concurrent, too many parts) still run every part.
@Suite struct WorkerPoolTests {
    /// Runs `pool.run(parts:)` and returns how often each part ran and whether each ran where it should
    /// (part 0 on the caller, the others elsewhere), checking the pool's own threads took the job.
    private func runOnce(_ pool: WorkerPool, parts: Int) -> (counts: [Int], onExpectedThread: [Bool]) {
        let counts = UnsafeMutableBufferPointer<Int>.allocate(capacity: parts)
        let placed = UnsafeMutableBufferPointer<Bool>.allocate(capacity: parts)
        defer {
            counts.deallocate()
            placed.deallocate()
        }
        counts.initialize(repeating: 0)
        placed.initialize(repeating: false)
        let caller = pthread_self()
        let pooled = pool.pooledJobs.load(ordering: .relaxed)
        let shared = UncheckedSendable((counts, placed))
        pool.run(parts: parts) { part in
            shared.value.0[part] += 1
            shared.value.1[part] = (pthread_equal(pthread_self(), caller) != 0) == (part == 0)
        }
        #expect(pool.pooledJobs.load(ordering: .relaxed) == pooled + (parts > 1 && parts - 1 <= pool.workerCount ? 1 : 0))
        return (Array(counts), Array(placed))
    }

    @Test func everyPartRunsOnceOnItsOwnThread() {
        let pool = WorkerPool(workers: 3)
        for parts in [1, 2, 3, 4] {
            for _ in 0 ..< 50 {
                let (counts, placed) = runOnce(pool, parts: parts)
                #expect(counts == Array(repeating: 1, count: parts))
                #expect(placed.allSatisfy { $0 }, "parts \(parts): \(placed)")
            }
        }
    }

    /// Workers start as jobs need them: a pool of three that has only run two-part jobs has one.
    @Test func workersStartOnlyAsJobsNeedThem() {
        let pool = WorkerPool(workers: 3)
        #expect(pool.startedWorkerCount == 0)
        _ = runOnce(pool, parts: 2)
        _ = runOnce(pool, parts: 2)
        #expect(pool.startedWorkerCount == 1)
        let (counts, placed) = runOnce(pool, parts: 4)
        #expect(pool.startedWorkerCount == 3)
        #expect(counts == [1, 1, 1, 1] && placed.allSatisfy { $0 })
    }

    /// Workers that have polled past `pollNanoseconds` sleep; the next job wakes them.
    @Test func sleepingWorkersWakeForTheNextJob() {
        let pool = WorkerPool(workers: 1)
        for _ in 0 ..< 3 {
            let (counts, placed) = runOnce(pool, parts: 2)
            #expect(counts == [1, 1] && placed == [true, true])
            usleep(useconds_t(WorkerPool.pollNanoseconds / 1000 + 20_000))
        }
    }

    /// More parts than the pool has threads run through `concurrentPerform`, each once.
    @Test func morePartsThanThreadsStillRunOnce() {
        let pool = WorkerPool(workers: 1)
        let (counts, _) = runOnce(pool, parts: 7)
        #expect(counts == Array(repeating: 1, count: 7))
    }

    /// A part that starts a job of its own (the pool is busy) runs it without deadlock.
    @Test func nestedJobsRunEveryInnerPart() {
        let pool = WorkerPool(workers: 2)
        let counts = UnsafeMutableBufferPointer<Int>.allocate(capacity: 9)
        defer { counts.deallocate() }
        counts.initialize(repeating: 0)
        let shared = UncheckedSendable(counts)
        pool.run(parts: 3) { outer in
            pool.run(parts: 3) { inner in shared.value[outer * 3 + inner] += 1 }
        }
        #expect(Array(counts) == Array(repeating: 1, count: 9))
    }

    /// Eight threads sharing one pool: one job at a time takes it, the rest fall back; nothing is lost.
    @Test func concurrentCallersEachGetEveryPart() {
        let pool = WorkerPool(workers: 2)
        let callers = 8, jobs = 100, parts = 3
        let counts = UnsafeMutableBufferPointer<Int>.allocate(capacity: callers * jobs * parts)
        defer { counts.deallocate() }
        counts.initialize(repeating: 0)
        let shared = UncheckedSendable(counts)
        DispatchQueue.concurrentPerform(iterations: callers) { caller in
            for job in 0 ..< jobs {
                pool.run(parts: parts) { part in shared.value[(caller * jobs + job) * parts + part] += 1 }
            }
        }
        #expect(counts.allSatisfy { $0 == 1 })
    }
}
