import COpenBLAS
import Foundation

/// Dense-versus-MoE throughput at the layer and model level (`moekit bench`).
///
/// Every case is warmed up, then timed `repeats` times; figures are medians with min and max.
/// FLOP conventions: a SwiGLU FFN of intermediate size I on T tokens does 6·T·H·I (three GEMMs of
/// 2·T·H·I); the MoE layer does 6·T·k·H·I in its experts (the router's 2·T·H·E is not counted);
/// the bare sgemm case is `[T, H] × [H, 2I]`, the shape of the FFN's fused gate+up GEMM.
/// The cases' operands and bodies live in `BenchmarkCases.swift`, shared with `Benchmarks/`.
public struct ThroughputBenchmark {
    public enum Routing: String, CaseIterable, Sendable { case learned, uniform, collapsed }

    public struct Options: Sendable {
        public var config: MiniCPMConfig
        public var experts = 8
        public var topK = 2
        public var tokenCounts = [128, 512, 2048]
        public var decodeSteps = 32
        public var routings: [Routing] = Routing.allCases
        public var repeats = 5
        var warmups = 1
        public var layerLevel = true
        public var modelLevel = true
        public var seed: UInt64 = 0
        /// Model level on real checkpoints (read in their stored dtype from the memory map) instead
        /// of random in-memory f32 models of the preset's shapes: both or neither.
        public var denseModelDirectory: String?
        public var moeModelDirectory: String?
        /// The arithmetic of the products with weights (`--compute`; bf16 rounds in-memory weights once).
        public var computePrecision = ComputePrecision.float32

        public init(config: MiniCPMConfig) { self.config = config }
    }

    public struct Statistic: Sendable, Codable {
        public var min: Double
        public var median: Double
        public var max: Double

        init(_ samples: [Double]) {
            let sorted = samples.sorted()
            min = sorted.first ?? 0
            max = sorted.last ?? 0
            median = sorted.isEmpty ? 0 : sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        }
    }

    public struct Result: Sendable {
        public var level: String
        public var kind: String
        public var phase: String?
        public var tokens: Int
        public var experts: Int?
        public var topK: Int?
        public var routing: String?
        public var tokensPerSecond: Statistic
        public var gflops: Statistic?
        /// Median seconds per stage of one run (model level).
        public var breakdown: [String: Double]?
        public var note: String?
    }

    public struct Machine: Sendable {
        var cpu: String
        var cores: Int
        var openblas: String
        var openblasVersion: String
        var openblasCore: String
        public var threads: Int

        public static var current: Machine {
            let cpuInfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
            let model = cpuInfo.split(separator: "\n").first { $0.hasPrefix("model name") }
                .map { $0.split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "" } ?? "unknown"
            return Machine(cpu: model, cores: ProcessInfo.processInfo.activeProcessorCount, openblas: BLAS.configuration,
                           openblasVersion: BLASKernelSelection.openBLASVersion, openblasCore: BLASKernelSelection.chosenCore,
                           threads: BLAS.threadCount)
        }

        /// "machine: <cpu>, N cores, OpenBLAS <version> core <core>, T threads".
        public var reportLine: String {
            "machine: \(cpu), \(cores) cores; OpenBLAS \(openblasVersion), core \(openblasCore)\(BLASKernelSelection.coreOrigin()), \(threads) threads"
        }
    }

    public let options: Options
    public init(options: Options) { self.options = options }

    static func throughput(_ seconds: [Double], work: Double) -> Statistic {
        Statistic(seconds.map { work / $0 })
    }

    static func randomMatrix(_ shape: [Int], seed: UInt64, stream: String, standardDeviation: Float) -> Tensor {
        var random = SeededRandom(seed: seed, stream: stream)
        var tensor = Tensor(shape: shape)
        tensor.values.withUnsafeMutableBufferPointer { random.fillNormal($0, standardDeviation: standardDeviation) }
        return tensor
    }

    /// Runs every selected case, reporting each result as soon as it is measured.
    public func run(progress: (Result) -> Void = { _ in }) throws -> [Result] {
        var results: [Result] = []
        func emit(_ result: Result) { results.append(result); progress(result) }
        if options.layerLevel { try runLayerLevel(emit) }
        if options.modelLevel { try runModelLevel(emit) }
        return results
    }

    // MARK: Layer level

    /// Times several cases round-robin — warm-ups first, then repeat r of every case before repeat
    /// r+1 of any — so drift in the machine's speed (other load, clock changes) hits every case
    /// alike and ratios measured in one run stay fair. Returns seconds per run, per case.
    ///
    /// After each case in `settleAfter`, untimed, it waits `openBLASIdleSeconds`: a multi-threaded
    /// OpenBLAS call leaves OpenBLAS's other threads polling in `sched_yield` for 2^28 clock ticks
    /// (about 0.1 s), and they took a core from whichever case came next (the dense FFN at T=128
    /// measured 90–130 instead of ~195 GFLOP/s in one repeat of five, more often than not).
    static func timeInterleaved(warmups: Int, repeats: Int, settleAfter: Set<Int> = [], _ cases: [() throws -> Void]) throws -> [[Double]] {
        func settle(_ index: Int) { if settleAfter.contains(index) { usleep(useconds_t(openBLASIdleSeconds * 1e6)) } }
        for _ in 0 ..< warmups {
            for (index, body) in cases.enumerated() {
                try body()
                settle(index)
            }
        }
        var samples = [[Double]](repeating: [], count: cases.count)
        for _ in 0 ..< repeats {
            for (index, body) in cases.enumerated() {
                let start = DispatchTime.now().uptimeNanoseconds
                try body()
                samples[index].append(Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9)
                settle(index)
            }
        }
        return samples
    }

    /// How long OpenBLAS's threads poll after a multi-threaded call before they sleep, with margin:
    /// 2^28 ticks of OpenBLAS's cycle counter (0.3.21's default THREAD_TIMEOUT) at 2 GHz or more.
    static let openBLASIdleSeconds = 0.15

    func runLayerLevel(_ emit: (Result) -> Void) throws {
        let cases = makeLayerCases()
        let k = options.topK, e = options.experts
        for tokens in options.tokenCounts {
            let x = cases.input(tokens: tokens)
            var output = cases.sgemmOutput(tokens: tokens)
            let routers = try options.routings.map { try self.router($0) }
            let timers = options.routings.map { _ in StageTimer() }
            var bodies: [() throws -> Void] = [
                { cases.sgemm(x, into: &output) },
                { _ = cases.denseForward(x) },
                { _ = cases.denseForward(x, active: true) },
            ]
            for (router, timer) in zip(routers, timers) {
                bodies.append {
                    timer.reset()
                    _ = cases.moeForward(x, router: router, timer: timer)
                }
            }
            // The bare sgemm (case 0) is OpenBLAS's multi-threaded call; the cases after it are MoEKit's pools.
            let seconds = try Self.timeInterleaved(warmups: options.warmups, repeats: options.repeats, settleAfter: [0], bodies)
            emit(Result(level: "layer", kind: "sgemm", tokens: tokens, tokensPerSecond: Self.throughput(seconds[0], work: Double(tokens)),
                        gflops: Self.throughput(seconds[0], work: cases.sgemmFLOPs(tokens: tokens) * 1e-9),
                        note: "[\(tokens),\(cases.hiddenSize)]x[\(cases.hiddenSize),\(2 * cases.intermediateSize)]"))
            emit(Result(level: "layer", kind: "dense", tokens: tokens, tokensPerSecond: Self.throughput(seconds[1], work: Double(tokens)),
                        gflops: Self.throughput(seconds[1], work: cases.denseFLOPs(tokens: tokens) * 1e-9)))
            emit(Result(level: "layer", kind: "dense-active", tokens: tokens, topK: k,
                        tokensPerSecond: Self.throughput(seconds[2], work: Double(tokens)),
                        gflops: Self.throughput(seconds[2], work: cases.activeFLOPs(tokens: tokens) * 1e-9),
                        note: "intermediate \(k * cases.intermediateSize)"))
            for (index, routing) in options.routings.enumerated() {
                emit(Result(level: "layer", kind: "moe", tokens: tokens, experts: e, topK: k, routing: routing.rawValue,
                            tokensPerSecond: Self.throughput(seconds[3 + index], work: Double(tokens)),
                            gflops: Self.throughput(seconds[3 + index], work: cases.activeFLOPs(tokens: tokens) * 1e-9),
                            breakdown: Self.breakdown(timers[index])))
            }
        }
    }

    func runModelLevel(_ emit: (Result) -> Void) throws {
        let (dense, moe) = try makeModels()
        for tokens in options.tokenCounts where tokens <= options.config.maxPositionEmbeddings {
            let sequence = prefillSequence(tokens: tokens)
            let variants: [(kind: String, model: MiniCPMModel, routing: Routing?)] =
                [("dense", dense, nil)] + options.routings.map { ("moe", moe, $0) }
            let routers = try variants.map { try $0.routing.map { try self.router($0) } }
            let timers = variants.map { _ in StageTimer() }
            let bodies: [() throws -> Void] = variants.indices.map { index in
                {
                    let variant = variants[index]
                    if let router = routers[index] { variant.model.router = router }
                    timers[index].reset()
                    _ = try variant.model.forward([sequence], logitRows: .lastTokenOfEachSequence, timer: timers[index])
                }
            }
            let seconds = try Self.timeInterleaved(warmups: options.warmups, repeats: options.repeats, bodies)
            for (index, variant) in variants.enumerated() {
                emit(Result(level: "model", kind: variant.kind, phase: "prefill", tokens: tokens,
                            experts: variant.routing == nil ? nil : options.experts, topK: variant.routing == nil ? nil : options.topK,
                            routing: variant.routing?.rawValue, tokensPerSecond: Self.throughput(seconds[index], work: Double(tokens)),
                            gflops: nil, breakdown: Self.breakdown(timers[index])))
            }
        }
        guard options.decodeSteps > 0, let prompt = decodePrompt(), let last = prompt.last else { return }
        for (kind, model) in [("dense", dense), ("moe", moe)] {
            if kind == "moe" { model.router = try self.router(.learned) }
            let timer = StageTimer()
            var samples: [Double] = []
            for run in 0 ..< (options.warmups + options.repeats) {
                let cache = model.makeCache()
                _ = try model.forward([(prompt, cache)], logitRows: .lastTokenOfEachSequence)
                timer.reset()
                let start = DispatchTime.now().uptimeNanoseconds
                try Self.decode(model, cache: cache, after: last, steps: options.decodeSteps, timer: timer)
                if run >= options.warmups { samples.append(Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9 / Double(options.decodeSteps)) }
            }
            emit(Result(level: "model", kind: kind, phase: "decode", tokens: options.decodeSteps,
                        experts: kind == "moe" ? options.experts : nil, topK: kind == "moe" ? options.topK : nil,
                        routing: kind == "moe" ? "learned" : nil, tokensPerSecond: Self.throughput(samples, work: 1), gflops: nil,
                        breakdown: Self.breakdown(timer).mapValues { $0 / Double(options.decodeSteps) },
                        note: "after a \(prompt.count)-token prompt, KV cache"))
        }
    }

    /// The report as JSON: `{"machine": {...}, "results": [{"level", "kind", "phase", "tokens", "experts", "top_k",
    /// "routing", "tokens_per_s": {"min", "median", "max"}, "gflops": {...}|null, "breakdown_s", "note"}]}`.
    /// With `ceilings`, the document has `"ceilings": {...}` (``MachineCeilings/json``) and every result
    /// with GFLOP/s has `"share_of_peak"` and `"share_of_sgemm"` (of its median).
    public static func json(machine: Machine, results: [Result], options: Options, ceilings: MachineCeilings? = nil) -> JSONValue {
        func statistic(_ s: Statistic?) -> JSONValue {
            guard let s else { return .null }
            return .object(["min": .number(s.min), "median": .number(s.median), "max": .number(s.max)])
        }
        func optionalInt(_ value: Int?) -> JSONValue { value.map { .integer(Int64($0)) } ?? .null }
        func optionalString(_ value: String?) -> JSONValue { value.map { .string($0) } ?? .null }
        func share(_ r: Result, _ pick: ((peak: Double?, sgemm: Double?)) -> Double?) -> JSONValue {
            guard let ceilings, let gflops = r.gflops?.median, let value = pick(ceilings.shares(of: gflops)) else { return .null }
            return .number(value)
        }
        let c = options.config
        var document: [String: JSONValue] = [
            "machine": .object(["cpu": .string(machine.cpu), "cores": .integer(Int64(machine.cores)),
                                "openblas": .string(machine.openblas), "openblas_version": .string(machine.openblasVersion),
                                "openblas_core": .string(machine.openblasCore), "threads": .integer(Int64(machine.threads))]),
            "shapes": .object(["hidden": .integer(Int64(c.hiddenSize)), "intermediate": .integer(Int64(c.intermediateSize)),
                               "layers": .integer(Int64(c.numHiddenLayers)), "heads": .integer(Int64(c.numAttentionHeads)),
                               "kv_heads": .integer(Int64(c.numKeyValueHeads)), "vocab": .integer(Int64(c.vocabSize))]),
            "repeats": .integer(Int64(options.repeats)),
            "compute": .string(options.computePrecision.rawValue),
            "results": .array(results.map { r in
                .object([
                    "level": .string(r.level), "kind": .string(r.kind), "phase": optionalString(r.phase),
                    "tokens": .integer(Int64(r.tokens)), "experts": optionalInt(r.experts), "top_k": optionalInt(r.topK),
                    "routing": optionalString(r.routing), "tokens_per_s": statistic(r.tokensPerSecond), "gflops": statistic(r.gflops),
                    "breakdown_s": r.breakdown.map { .object($0.mapValues { .number($0) }) } ?? .null,
                    "note": optionalString(r.note),
                    "share_of_peak": share(r) { $0.peak }, "share_of_sgemm": share(r) { $0.sgemm },
                ])
            }),
        ]
        if let ceilings { document["ceilings"] = ceilings.json }
        return .object(document)
    }

    static func breakdown(_ timer: StageTimer) -> [String: Double] {
        Dictionary(uniqueKeysWithValues: timer.seconds.map { ($0.key.rawValue, $0.value) })
    }
}
