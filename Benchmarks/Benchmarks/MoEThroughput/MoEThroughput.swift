// Dense versus MoE throughput at small shapes: the cases of `moekit bench`, through the same
// library code (ThroughputBenchmark's LayerCases, routers, models and decode loop), so a regression
// in either shows here against a saved baseline.
//
// Layer level (hidden 256, intermediate 640, 8 experts, top-2; 128 and 512 tokens): the bare sgemm
// ceiling, the dense SwiGLU FFN, the dense FFN 2× as wide (the MoE's active FLOPs), and the MoE
// layer under learned, uniform and collapsed routing.
// Model level (the `tiny` preset: hidden 128, 4 layers, vocab 1024, and its upcycling to 8 experts,
// top-2, built in memory): prefill of 128 and 512 tokens, dense and MoE under each routing, and
// 32 greedy decode steps with the KV cache after a 128-token prompt.
//
// Metrics: package-benchmark's throughput (iterations/s) and wall clock, the malloc count, and two
// custom ones measured around the case's body: tokens/s and, at the layer level, MFLOP/s (the
// FLOP conventions of ThroughputBenchmark: 6·T·H·I per FFN, k times that for the MoE's experts).
import Benchmark
import Foundation
import MoEKit

/// Custom metrics, larger is better; regressions are judged on them as on throughput.
enum MoEMetric {
    static let tokensPerSecond = BenchmarkMetric.custom("tokens/s", polarity: .prefersLarger, useScalingFactor: false)
    static let megaflopsPerSecond = BenchmarkMetric.custom("MFLOP/s", polarity: .prefersLarger, useScalingFactor: false)
}

/// Runs `body` once and records tokens/s (and MFLOP/s when `flops` is given) from its wall time.
/// Failures are reported through the benchmark instead of crashing the suite.
func measure(_ benchmark: Benchmark, tokens: Int, flops: Double? = nil, _ body: () throws -> Void) {
    let start = DispatchTime.now().uptimeNanoseconds
    do {
        try body()
    } catch {
        benchmark.error("\(benchmark.name): \(error.localizedDescription)")
        return
    }
    let seconds = max(Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9, 1e-9)
    benchmark.measurement(MoEMetric.tokensPerSecond, Int((Double(tokens) / seconds).rounded()))
    if let flops { benchmark.measurement(MoEMetric.megaflopsPerSecond, Int((flops * 1e-6 / seconds).rounded())) }
}

let benchmarks: @Sendable () -> Void = {
    // NOTE: a shared 2-core machine is noisy, and other work only ever slows a run down: judge speed
    // on the fast quartile (p25; percentiles run from best to worst whatever the metric's polarity),
    // a drop of more than 20% there being a regression. The malloc count is deterministic but for the
    // BLAS library's own buffers: 10% on the median.
    let timeThreshold = BenchmarkThresholds(relative: [.p25: 20.0])
    let thresholds: [BenchmarkMetric: BenchmarkThresholds] = [
        .throughput: timeThreshold, .wallClock: timeThreshold, MoEMetric.tokensPerSecond: timeThreshold,
        .mallocCountTotal: BenchmarkThresholds(relative: [.p50: 10.0]),
    ]
    Benchmark.defaultConfiguration = .init(
        metrics: [.throughput, .wallClock, .mallocCountTotal, MoEMetric.tokensPerSecond],
        warmupIterations: 2,
        maxDuration: .seconds(2),
        maxIterations: 1000,
        thresholds: thresholds
    )
    let layerConfiguration = Benchmark.Configuration(
        metrics: Benchmark.defaultConfiguration.metrics + [MoEMetric.megaflopsPerSecond],
        thresholds: thresholds.merging([MoEMetric.megaflopsPerSecond: timeThreshold]) { $1 }
    )

    // MARK: Layer level

    var layerShape = MiniCPMPreset.tiny.config
    layerShape.hiddenSize = 256
    layerShape.intermediateSize = 640
    var layerOptions = ThroughputBenchmark.Options(config: layerShape)
    layerOptions.experts = 8
    layerOptions.topK = 2
    let layerBench = ThroughputBenchmark(options: layerOptions)
    let layer = layerBench.makeLayerCases()
    let modelOptions = {
        var options = ThroughputBenchmark.Options(config: MiniCPMPreset.tiny.config)
        options.experts = 8
        options.topK = 2
        options.decodeSteps = 32
        return options
    }()
    let modelBench = ThroughputBenchmark(options: modelOptions)
    let layerRouters: [(ThroughputBenchmark.Routing, ExpertRouter)], modelRouters: [(ThroughputBenchmark.Routing, ExpertRouter)]
    let dense: MiniCPMModel, moe: MiniCPMModel
    do {
        layerRouters = try ThroughputBenchmark.Routing.allCases.map { ($0, try layerBench.router($0)) }
        modelRouters = try ThroughputBenchmark.Routing.allCases.map { ($0, try modelBench.router($0)) }
        (dense, moe) = try modelBench.makeModels()
    } catch {
        Benchmark("setup") { benchmark in benchmark.error("building the routers and tiny models failed: \(error.localizedDescription)") }
        return
    }
    for tokens in [128, 512] {
        let x = layer.input(tokens: tokens)
        Benchmark("layer sgemm T=\(tokens)", configuration: layerConfiguration) { benchmark in
            var output = layer.sgemmOutput(tokens: tokens)
            benchmark.startMeasurement()
            measure(benchmark, tokens: tokens, flops: layer.sgemmFLOPs(tokens: tokens)) { layer.sgemm(x, into: &output) }
            blackHole(output)
        }
        Benchmark("layer dense T=\(tokens)", configuration: layerConfiguration) { benchmark in
            measure(benchmark, tokens: tokens, flops: layer.denseFLOPs(tokens: tokens)) { blackHole(layer.denseForward(x)) }
        }
        Benchmark("layer dense-active T=\(tokens)", configuration: layerConfiguration) { benchmark in
            measure(benchmark, tokens: tokens, flops: layer.activeFLOPs(tokens: tokens)) { blackHole(layer.denseForward(x, active: true)) }
        }
        for (routing, router) in layerRouters {
            Benchmark("layer moe \(routing.rawValue) T=\(tokens)", configuration: layerConfiguration) { benchmark in
                measure(benchmark, tokens: tokens, flops: layer.activeFLOPs(tokens: tokens)) {
                    blackHole(layer.moeForward(x, router: router))
                }
            }
        }
    }

    // MARK: Model level

    for tokens in [128, 512] {
        let sequence = modelBench.prefillSequence(tokens: tokens)
        Benchmark("model prefill dense T=\(tokens)") { benchmark in
            measure(benchmark, tokens: tokens) { blackHole(try dense.forward([sequence], logitRows: .lastTokenOfEachSequence)) }
        }
        for (routing, router) in modelRouters {
            Benchmark("model prefill moe \(routing.rawValue) T=\(tokens)") { benchmark in
                measure(benchmark, tokens: tokens) {
                    moe.router = router
                    blackHole(try moe.forward([sequence], logitRows: .lastTokenOfEachSequence))
                }
            }
        }
    }
    if let prompt = modelBench.decodePrompt(), let last = prompt.last {
        let steps = modelOptions.decodeSteps
        for (kind, model) in [("dense", dense), ("moe learned", moe)] {
            Benchmark("model decode \(kind) \(steps) steps") { benchmark in
                do {
                    if model === moe { model.router = modelRouters.first { $0.0 == .learned }?.1 }
                    let cache = model.makeCache()
                    _ = try model.forward([(prompt, cache)], logitRows: .lastTokenOfEachSequence)
                    benchmark.startMeasurement()  // the prompt's prefill is not part of decoding
                    measure(benchmark, tokens: steps) { blackHole(try ThroughputBenchmark.decode(model, cache: cache, after: last, steps: steps)) }
                } catch {
                    benchmark.error("\(benchmark.name): \(error.localizedDescription)")
                }
            }
        }
    }
}
