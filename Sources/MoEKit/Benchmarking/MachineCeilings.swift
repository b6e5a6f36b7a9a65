import CMachinePeak
import COpenBLAS
import Foundation

/// The two ceilings every `moekit bench` figure is set against, measured in the same run:
///
/// - **peak**: the CPU's f32 FLOP/s from an FMA-throughput loop (`CMachinePeak`: independent chains
///   s = s·a + b in the widest vectors the CPU has, AVX-512F or AVX2+FMA, one thread per OpenBLAS
///   thread at once; the best of several short runs, so a busy neighbour lowers it less);
/// - **BLAS ceiling**: `cblas_sgemm` at n = 2048 (2·n³ FLOPs), the best of several runs.
///
/// A generic OpenBLAS core, or a BLAS ceiling below ``farBelowPeakShare`` of the peak, is flagged:
/// then "dense / sgemm = 0.95" says little about the machine.
public struct MachineCeilings: Sendable {
    /// FMA-loop GFLOP/s on all benchmark threads; nil when the CPU has neither AVX-512F nor AVX2+FMA.
    var peakGFLOPs: Double?
    /// The instruction set the peak loop used: "avx512f", "avx2+fma" or "none".
    var peakInstructionSet: String
    public var threads: Int
    /// `cblas_sgemm` GFLOP/s at n = ``sgemmSize``.
    var sgemmGFLOPs: Double
    var sgemmSize: Int
    var openBLASVersion: String
    var openBLASCore: String
    var genericCore: Bool
    /// Warnings for the report: generic kernels, a BLAS ceiling far below the peak.
    var flags: [String]

    /// A BLAS ceiling below this share of the FMA peak is flagged.
    static let farBelowPeakShare = 0.5

    public init(peakGFLOPs: Double?, peakInstructionSet: String, threads: Int, sgemmGFLOPs: Double, sgemmSize: Int,
                openBLASVersion: String, openBLASCore: String) {
        self.peakGFLOPs = peakGFLOPs
        self.peakInstructionSet = peakInstructionSet
        self.threads = threads
        self.sgemmGFLOPs = sgemmGFLOPs
        self.sgemmSize = sgemmSize
        self.openBLASVersion = openBLASVersion
        self.openBLASCore = openBLASCore
        genericCore = BLASKernelSelection.isGeneric(core: openBLASCore)
        flags = Self.flags(core: openBLASCore, peakGFLOPs: peakGFLOPs, sgemmGFLOPs: sgemmGFLOPs,
                           better: BLASKernelSelection.bestCore(for: .current))
    }

    /// The report's warnings, a pure function of the kernels and the two ceilings.
    static func flags(core: String, peakGFLOPs: Double?, sgemmGFLOPs: Double, better: String?) -> [String] {
        var flags: [String] = []
        if BLASKernelSelection.isGeneric(core: core) {
            flags.append("OpenBLAS runs its generic \(core) kernels" + (better.map { "; this CPU has \($0)'s (see docs/blas-kernels.md)" } ?? ""))
        }
        if let peak = peakGFLOPs, peak > 0, sgemmGFLOPs < farBelowPeakShare * peak {
            flags.append(String(format: "the BLAS ceiling (sgemm %.1f GFLOP/s) is %.0f%% of the FMA peak (%.1f GFLOP/s)",
                                sgemmGFLOPs, 100 * sgemmGFLOPs / peak, peak))
        }
        return flags
    }

    /// Share of the peak and of the BLAS ceiling of a GFLOP/s figure (nil where a ceiling is unknown).
    public func shares(of gflops: Double) -> (peak: Double?, sgemm: Double?) {
        (peakGFLOPs.map { gflops / $0 }, sgemmGFLOPs > 0 ? gflops / sgemmGFLOPs : nil)
    }

    /// Measures both ceilings on `threads` threads (default: OpenBLAS's).
    public static func measure(threads: Int = BLAS.threadCount, sgemmSize: Int = 2048, runs: Int = 3) -> MachineCeilings {
        let (peak, isa) = measurePeak(threads: threads, runs: max(runs, 3))
        let sgemm = measureSgemm(size: sgemmSize, runs: runs)
        return MachineCeilings(peakGFLOPs: peak, peakInstructionSet: isa.rawValue, threads: threads, sgemmGFLOPs: sgemm,
                               sgemmSize: sgemmSize, openBLASVersion: BLASKernelSelection.openBLASVersion,
                               openBLASCore: BLASKernelSelection.chosenCore)
    }

    // MARK: The FMA loop

    enum InstructionSet: String { case avx512f, avx2fma = "avx2+fma", none }

    static var widestInstructionSet: InstructionSet {
        if moekit_cpu_has_avx512f() != 0 { return .avx512f }
        if moekit_cpu_has_avx2_fma() != 0 { return .avx2fma }
        return .none
    }

    /// Floats of state the loop of `isa` updates each iteration (2 FLOPs each).
    static func chainFloats(_ isa: InstructionSet) -> Int {
        switch isa {
        case .avx512f: Int(MOEKIT_FMA_CHAIN_FLOATS_AVX512)
        case .avx2fma: Int(MOEKIT_FMA_CHAIN_FLOATS_AVX2)
        case .none: 0
        }
    }

    /// Runs the FMA loop: `iterations` rounds of s = s·a + b on every float of `state`.
    static func fmaChains(_ isa: InstructionSet, iterations: Int, a: Float, b: Float, state: inout [Float]) {
        precondition(state.count == chainFloats(isa), "FMA loop state must hold \(chainFloats(isa)) floats")
        state.withUnsafeMutableBufferPointer { buffer in
            guard let pointer = buffer.baseAddress else { return }
            switch isa {
            case .avx512f: moekit_fma_chains_avx512(iterations, a, b, pointer)
            case .avx2fma: moekit_fma_chains_avx2(iterations, a, b, pointer)
            case .none: break
            }
        }
    }

    /// The reference for ``fmaChains(_:iterations:a:b:state:)``: a plain scalar loop of fused multiply-adds.
    static func referenceFMAChains(iterations: Int, a: Float, b: Float, state: inout [Float]) {
        for index in state.indices {
            var s = state[index]
            for _ in 0 ..< iterations { s = b.addingProduct(s, a) }
            state[index] = s
        }
    }

    static func measurePeak(threads: Int, runs: Int) -> (Double?, InstructionSet) {
        let isa = widestInstructionSet
        guard isa != .none else { return (nil, isa) }
        let threadCount = max(1, threads)
        // About 0.1 s per run on a 3 GHz core doing one vector FMA per cycle.
        let iterations = 20_000_000
        var best = 0.0
        for _ in 0 ..< runs {
            let start = DispatchTime.now().uptimeNanoseconds
            DispatchQueue.concurrentPerform(iterations: threadCount) { thread in
                var state = (0 ..< chainFloats(isa)).map { Float($0 + thread) * 1e-3 }
                fmaChains(isa, iterations: iterations, a: 0.999, b: 1e-3, state: &state)
                withExtendedLifetime(state) {}
            }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
            best = max(best, Double(threadCount) * Double(iterations) * Double(chainFloats(isa)) * 2 / seconds * 1e-9)
        }
        return (best, isa)
    }

    static func measureSgemm(size n: Int, runs: Int) -> Double {
        let a = ThroughputBenchmark.randomMatrix([n, n], seed: 0, stream: "ceiling-a", standardDeviation: 1)
        let b = ThroughputBenchmark.randomMatrix([n, n], seed: 0, stream: "ceiling-b", standardDeviation: 1)
        var c = Tensor(shape: [n, n])
        var best = 0.0
        for run in 0 ... max(1, runs) {
            let start = DispatchTime.now().uptimeNanoseconds
            a.values.withUnsafeBufferPointer { pa in
                b.values.withUnsafeBufferPointer { pb in
                    c.values.withUnsafeMutableBufferPointer { pc in
                        guard let pa = pa.baseAddress, let pb = pb.baseAddress, let pc = pc.baseAddress else { return }
                        MatrixMultiply.gemm(m: n, n: n, k: n, a: pa, lda: n, b: pb, ldb: n, transposeB: false, c: pc, ldc: n)
                    }
                }
            }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
            if run > 0 { best = max(best, 2 * Double(n) * Double(n) * Double(n) / seconds * 1e-9) }
        }
        return best
    }

    // MARK: Report

    /// Text lines for the report header.
    public var reportLines: [String] {
        var lines = [String(format: "ceilings: FMA peak %@ (%@, %d threads); BLAS sgemm n=%d %.1f GFLOP/s%@",
                            peakGFLOPs.map { String(format: "%.1f GFLOP/s", $0) } ?? "unknown",
                            peakInstructionSet, threads, sgemmSize, sgemmGFLOPs,
                            peakGFLOPs.map { String(format: " (%.0f%% of peak)", 100 * sgemmGFLOPs / $0) } ?? "")]
        lines.append("blas: OpenBLAS \(openBLASVersion), core \(openBLASCore)\(genericCore ? " (generic)" : "")")
        lines += flags.map { "WARNING: \($0)" }
        return lines
    }

    /// `{"peak_gflops", "peak_isa", "threads", "sgemm_n", "sgemm_gflops", "sgemm_share_of_peak", "openblas_version",
    /// "openblas_core", "generic_core", "flags"}`.
    public var json: JSONValue {
        .object([
            "peak_gflops": peakGFLOPs.map { .number($0) } ?? .null, "peak_isa": .string(peakInstructionSet),
            "threads": .integer(Int64(threads)), "sgemm_n": .integer(Int64(sgemmSize)), "sgemm_gflops": .number(sgemmGFLOPs),
            "sgemm_share_of_peak": peakGFLOPs.map { .number(sgemmGFLOPs / $0) } ?? .null,
            "openblas_version": .string(openBLASVersion), "openblas_core": .string(openBLASCore),
            "generic_core": .bool(genericCore), "flags": .array(flags.map { .string($0) }),
        ])
    }
}
