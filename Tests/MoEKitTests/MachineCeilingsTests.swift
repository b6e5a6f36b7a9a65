import Foundation
import Testing
@testable import MoEKit

/// The bench's ceilings: the FMA-throughput loop computes exactly what a scalar loop of fused
/// multiply-adds computes (so it does the FLOPs it is credited with), and the report's flags.
@Suite struct MachineCeilingsTests {
    @Test(arguments: [MachineCeilings.InstructionSet.avx512f, .avx2fma])
    func fmaLoopMatchesTheScalarReference(_ isa: MachineCeilings.InstructionSet) {
        let supported = isa == .avx512f ? MachineCeilings.widestInstructionSet == .avx512f
            : MachineCeilings.widestInstructionSet != .none
        guard supported else { return }
        let start = (0 ..< MachineCeilings.chainFloats(isa)).map { Float($0) * 0.37 - 20 }
        var vector = start, reference = start
        MachineCeilings.fmaChains(isa, iterations: 1000, a: 0.995, b: 0.25, state: &vector)
        MachineCeilings.referenceFMAChains(iterations: 1000, a: 0.995, b: 0.25, state: &reference)
        #expect(vector == reference)
        #expect(vector != start)
    }

    @Test func peakIsMeasuredWhereTheCPUHasFMA() {
        let (peak, isa) = MachineCeilings.measurePeak(threads: 1, runs: 1)
        #expect((peak != nil) == (isa != .none))
        if let peak { #expect(peak > 0.1) }
    }

    @Test func genericKernelsAndALowCeilingAreFlagged() {
        let generic = MachineCeilings.flags(core: "Prescott", peakGFLOPs: 300, sgemmGFLOPs: 59, better: "SkylakeX")
        #expect(generic.count == 2)
        #expect(generic[0].contains("Prescott") && generic[0].contains("SkylakeX"))
        #expect(generic[1].contains("20%"))
        #expect(MachineCeilings.flags(core: "SkylakeX", peakGFLOPs: 300, sgemmGFLOPs: 280, better: "SkylakeX").isEmpty)
        #expect(MachineCeilings.flags(core: "Cooperlake", peakGFLOPs: nil, sgemmGFLOPs: 10, better: nil).isEmpty)
    }

    @Test func sharesAreOfBothCeilings() {
        let ceilings = MachineCeilings(peakGFLOPs: 200, peakInstructionSet: "avx512f", threads: 2, sgemmGFLOPs: 100, sgemmSize: 2048,
                                       openBLASVersion: "0.3.21", openBLASCore: "Cooperlake")
        let shares = ceilings.shares(of: 50)
        #expect(shares.peak == 0.25 && shares.sgemm == 0.5)
        #expect(ceilings.reportLines[0].contains("50% of peak"))
    }
}

/// The bench's round-robin timing: every case's samples, in order, with the settle after an
/// OpenBLAS case outside the timed region.
@Suite struct InterleavedTimingTests {
    @Test func settleAfterACaseIsNotTimed() throws {
        var order: [Int] = []
        let start = DispatchTime.now().uptimeNanoseconds
        let samples = try ThroughputBenchmark.timeInterleaved(warmups: 1, repeats: 2, settleAfter: [0], [{ order.append(0) }, { order.append(1) }])
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
        #expect(order == [0, 1, 0, 1, 0, 1])
        #expect(samples.map(\.count) == [2, 2])
        // Three settles of 0.15 s happened, none inside a sample.
        #expect(elapsed >= 3 * ThroughputBenchmark.openBLASIdleSeconds)
        #expect(samples.joined().allSatisfy { $0 < ThroughputBenchmark.openBLASIdleSeconds / 2 })
    }
}
