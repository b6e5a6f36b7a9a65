import Foundation

/// Wall-clock time spent in each stage of a forward pass, for benchmarks' breakdowns.
/// Passing no timer costs nothing.
public final class StageTimer: @unchecked Sendable {
    public enum Stage: String, CaseIterable, Sendable {
        case attention, router, dispatch, expertGEMM = "expert_gemm", combine, denseFFN = "dense_ffn", other
        /// Building routing records (statistics for logs), when asked for.
        case routingStatistics = "routing_statistics"
        /// Writing routing logs.
        case logWrite = "log_write"
    }

    public private(set) var seconds: [Stage: Double] = [:]

    public init() {}

    @inline(__always)
    public func measure<T>(_ stage: Stage, _ body: () throws -> T) rethrows -> T {
        let start = DispatchTime.now().uptimeNanoseconds
        defer { seconds[stage, default: 0] += Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9 }
        return try body()
    }

    func reset() { seconds.removeAll() }
}

extension Optional where Wrapped == StageTimer {
    @inline(__always)
    func measure<T>(_ stage: StageTimer.Stage, _ body: () throws -> T) rethrows -> T {
        if let timer = self { return try timer.measure(stage, body) }
        return try body()
    }
}
