import ArgumentParser
import Foundation
import MoEKit

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure dense versus MoE throughput (layer and model level).",
        discussion: """
        Every report starts with the machine's two ceilings, measured in the same run: its peak f32 \
        FLOP/s (an FMA-throughput loop on every thread) and cblas_sgemm at n = 2048; every GFLOP/s \
        figure is also given as a share of both, and generic OpenBLAS kernels or a BLAS ceiling far \
        below the peak are flagged. Layer level: the dense SwiGLU FFN, a dense FFN k× as wide (same \
        active FLOPs), the MoE layer under each routing mode, and a bare cblas_sgemm of the fused \
        gate+up shape. Model level: prefill and decode (KV cache) tokens/s of a dense model of the preset's \
        shapes and of its sparse upcycling, with the time split into stages. Medians of --repeats \
        runs after warm-up, with min and max. Routing: learned (the router), uniform (round-robin: \
        best case), collapsed (every token to the same k experts: worst imbalance).
        """
    )

    @Option(help: "Shapes of the models timed.")
    var preset: MiniCPMPreset = .minicpm2_4b
    @Option(help: "Take the shapes (and an MoE's experts and top-k) from this model directory's config.json instead of --preset: MiniCPM, Llama, Mixtral, … (random weights of those shapes are timed).")
    var model: String?
    @Option(help: "Layers of the model-level models.")
    var layers: Int = 2
    @Option(name: .customLong("dense-model"), help: "Model level on this dense checkpoint (with --moe-model), weights mapped in their stored dtype.")
    var denseModel: String?
    @Option(name: .customLong("moe-model"), help: "Model level on this MoE checkpoint (with --dense-model), e.g. the dense model's upcycling.")
    var moeModel: String?
    @Option(help: "Experts of the MoE (default: the --model's, else 8).")
    var experts: Int?
    @Option(name: .customLong("top-k"), help: "Experts per token (default: the --model's, else 2).")
    var topK: Int?
    @Option(help: "Token counts, comma-separated.")
    var tokens: CommaSeparated<Int> = [128, 512, 2048]
    @Option(help: "Decode steps for the model-level decode measurement (0 skips it).")
    var decode: Int = 32
    @Option(help: "Routing modes, comma-separated.")
    var routing: CommaSeparated<ThroughputBenchmark.Routing> = [.learned, .uniform, .collapsed]
    @Option(help: "Which levels: layer, model, all (both), or training (one training step, dense vs MoE, with --batch × --seq tokens).")
    var level: BenchLevel = .all
    @Option(help: "Training level: sequences per batch.")
    var batch: Int = 8
    @Option(help: "Training level: tokens per sequence.")
    var seq: Int = 128
    @OptionGroup var compute: ComputeOptions
    @Option(name: .customLong("compute"), help: ComputePrecision.help)
    var computePrecision: ComputePrecision = .float32
    @Option(help: "Timed runs per case.")
    var repeats: Int = 5
    @Option(help: "Write the results as JSON to this file.")
    var json: String?

    func validate() throws {
        try OptionRanges.check("--layers", layers, OptionRanges.layers)
        if let experts { try OptionRanges.check("--experts", experts, OptionRanges.experts) }
        if let topK { try OptionRanges.check("--top-k", topK, 1 ... (experts ?? ConfigLimits.numExperts)) }
        for count in tokens.values { try OptionRanges.check("--tokens", count, 1 ... ConfigLimits.maxPositionEmbeddings) }
        try OptionRanges.check("--decode", decode, OptionRanges.decodeSteps)
        try OptionRanges.check("--repeats", repeats, OptionRanges.repeats)
        try OptionRanges.check("--batch", batch, OptionRanges.batch)
        try OptionRanges.check("--seq", seq, OptionRanges.sequenceLength)
        try OptionRanges.check("--batch × --seq", batch * seq, 1 ... TrainingOptions.maximumTokensPerStep)
        if (denseModel == nil) != (moeModel == nil) { throw ValidationError("--dense-model and --moe-model go together") }
        if denseModel != nil && level != .model { throw ValidationError("--dense-model/--moe-model measure the model level: pass --level model") }
        try computePrecision.validateForThisCPU()
        if computePrecision != .float32 && level == .training { throw ValidationError("--compute bf16 is for inference: training computes in f32") }
    }

    /// The larger of the dense and the MoE run of the benchmark's shapes, for the memory estimate.
    private func estimatedBytes(_ config: MiniCPMConfig, tokens: Int, experts: Int, topK: Int) -> Int {
        var moe = config
        moe.numExperts = experts
        moe.topK = topK
        if level == .training {
            return max(MemoryEstimate.trainingBytes(config, batch: batch, seq: seq), MemoryEstimate.trainingBytes(moe, batch: batch, seq: seq))
        }
        let sequence = max(tokens, 128 + decode)
        let activations = max(MemoryEstimate.forwardBytes(config, tokens: tokens, sequence: sequence), MemoryEstimate.forwardBytes(moe, tokens: tokens, sequence: sequence))
        guard denseModel == nil else { return activations }  // checkpoints stay mapped
        // In-memory f32 models: the dense one, and the MoE's experts unless they share the dense MLP.
        var shared = ThroughputBenchmark.Options(config: config)
        shared.experts = experts
        let expertsShare = ThroughputBenchmark(options: shared).expertsShareMemory
        // --compute bf16 rounds both in-memory models into bf16 copies (every expert its own).
        let bf16Copies = computePrecision == .bfloat16 ? MemoryEstimate.sum(MemoryEstimate.modelBytes(config), MemoryEstimate.modelBytes(moe)) / 2 : 0
        return MemoryEstimate.sum(activations, MemoryEstimate.modelBytes(config), expertsShare ? 0 : MemoryEstimate.modelBytes(moe), bf16Copies)
    }

    func run() throws {
        try reportingErrors {
            var config: MiniCPMConfig
            var shapeName = preset.rawValue
            if let model {
                config = try MiniCPMConfig(path: model + "/config.json")
                shapeName = "\(model) (\(config.architecture.causalLMClassName))"
            } else {
                config = preset.config
            }
            var experts = self.experts ?? config.numExperts ?? 8, topK = self.topK ?? config.topK ?? 2
            config.numExperts = nil
            config.topK = nil
            config.numHiddenLayers = layers
            if let denseModel, let moeModel {
                config = try MiniCPMConfig(path: denseModel + "/config.json")
                let moeConfig = try MiniCPMConfig(path: moeModel + "/config.json")
                guard !config.isMoE, let count = moeConfig.numExperts else { throw ValidationError("--dense-model must be dense and --moe-model a MiniCPM-MoE model") }
                experts = count
                topK = moeConfig.topK ?? 2
            }
            var options = ThroughputBenchmark.Options(config: config)
            options.experts = experts
            options.topK = topK
            options.denseModelDirectory = denseModel
            options.moeModelDirectory = moeModel
            options.tokenCounts = tokens.values
            options.routings = routing.values
            options.decodeSteps = decode
            options.repeats = max(1, repeats)
            options.computePrecision = computePrecision
            try MemoryEstimate.check(estimatedBytes(config, tokens: options.tokenCounts.max() ?? 0, experts: experts, topK: topK), for: "bench with these shapes")
            options.layerLevel = level.includesLayers
            options.modelLevel = level.includesModel
            guard layers >= 1, experts >= 2, topK >= 1, topK <= experts else { throw ValidationError("need layers ≥ 1, experts ≥ 2, 1 ≤ top-k ≤ experts") }
            compute.apply()
            if level == .training {
                try runTraining(config: config, shapeName: shapeName, experts: experts, topK: topK)
                return
            }
            let machine = ThroughputBenchmark.Machine.current
            print(machine.reportLine)
            let ceilings = MachineCeilings.measure()
            ceilings.reportLines.forEach { print($0) }
            if let denseModel, let moeModel {
                print("models: \(denseModel) and \(moeModel) (\(config.numHiddenLayers) layers, hidden \(config.hiddenSize), intermediate \(config.intermediateSize), weights mapped in their stored dtype); MoE \(experts) experts, top-\(topK); \(options.repeats) runs per case")
            } else {
                print("shapes: \(shapeName) hidden \(config.hiddenSize), intermediate \(config.intermediateSize); MoE \(experts) experts, top-\(topK); \(layers) layers; \(options.repeats) runs per case")
                if options.modelLevel && ThroughputBenchmark(options: options).expertsShareMemory {
                    print("note: the in-memory MoE's experts share the dense MLP's f32 memory (copies would exceed half the RAM); use --dense-model/--moe-model for real checkpoints")
                }
            }
            print("compute: \(computePrecision == .float32 ? "f32" : "bf16 (activations rounded to bf16, bf16 weights, f32 sums: vdpbf16ps); %peak and %sgemm are shares of the f32 ceilings, which vdpbf16ps can exceed up to 2×")")
            print(BenchTable.header)
            let results = try ThroughputBenchmark(options: options).run { print(BenchTable.row($0, ceilings: ceilings)) }
            print(BenchTable.summary(results))
            if let json {
                let document = ThroughputBenchmark.json(machine: machine, results: results, options: options, ceilings: ceilings)
                try AtomicFileWriter.write(document.serialized(), to: json)
                print("wrote \(json)")
            }
        }
    }
}

extension BenchCommand {
    func runTraining(config: MiniCPMConfig, shapeName: String, experts: Int, topK: Int) throws {
        guard batch >= 1, seq >= 1, seq <= config.maxPositionEmbeddings else { throw ValidationError("--batch and --seq must be ≥ 1, --seq ≤ max_position_embeddings") }
        var options = TrainingBenchmark.Options(config: config)
        options.experts = experts
        options.topK = topK
        options.batchSize = batch
        options.sequenceLength = seq
        options.repeats = max(1, repeats)
        let machine = ThroughputBenchmark.Machine.current
        print(machine.reportLine)
        let ceilings = MachineCeilings.measure()
        ceilings.reportLines.forEach { print($0) }
        print("training step (forward + backward + AdamW): \(shapeName) shapes, \(layers) layers, batch \(batch) × \(seq) tokens; MoE \(experts) experts, top-\(topK); \(options.repeats) runs per case")
        print(BenchTable.header)
        let results = try TrainingBenchmark(options: options).run()
        for result in results { print(BenchTable.row(result, ceilings: ceilings)) }
        if let dense = results.first(where: { $0.kind == "dense" }), let moe = results.first(where: { $0.kind == "moe" }),
           let sgemm = results.first(where: { $0.kind == "sgemm" })?.gflops?.median {
            print("ratios (medians):")
            print(String(format: "  dense training GFLOP/s / sgemm = %.2f", (dense.gflops?.median ?? 0) / sgemm))
            print(String(format: "  MoE training GFLOP/s / sgemm = %.2f", (moe.gflops?.median ?? 0) / sgemm))
            print(String(format: "  MoE / dense training tokens/s = %.2f", moe.tokensPerSecond.median / dense.tokensPerSecond.median))
        }
        if let json {
            var reportOptions = ThroughputBenchmark.Options(config: config)
            reportOptions.repeats = options.repeats
            var document = ThroughputBenchmark.json(machine: machine, results: results, options: reportOptions, ceilings: ceilings)
            if case .object(var object) = document {
                object["training"] = .object(["batch": .integer(Int64(batch)), "seq": .integer(Int64(seq))])
                document = .object(object)
            }
            try AtomicFileWriter.write(document.serialized(), to: json)
            print("wrote \(json)")
        }
    }
}

enum BenchTable {
    static let header = pad("level", 6) + pad("kind", 13) + pad("phase", 8) + pad("tokens", 7, right: true) + "  " + pad("routing", 10)
        + pad("tokens/s (median)", 18, right: true) + pad("GFLOP/s min/med/max", 24, right: true) + pad("%peak %sgemm", 14, right: true)
        + "  breakdown"

    static func pad(_ text: String, _ width: Int, right: Bool = false) -> String {
        let padding = String(repeating: " ", count: max(0, width - text.count))
        return right ? padding + text : text + padding
    }

    static func row(_ r: ThroughputBenchmark.Result, ceilings: MachineCeilings) -> String {
        let gflops = r.gflops.map { String(format: "%.1f/%.1f/%.1f", $0.min, $0.median, $0.max) } ?? "-"
        var shares = "-"
        if let median = r.gflops?.median {
            let (peak, sgemm) = ceilings.shares(of: median)
            shares = (peak.map { String(format: "%.0f%%", 100 * $0) } ?? "?") + " " + (sgemm.map { String(format: "%.0f%%", 100 * $0) } ?? "?")
        }
        var breakdown = ""
        if let parts = r.breakdown {
            let total = parts.values.reduce(0, +)
            breakdown = parts.sorted { $0.value > $1.value }.filter { $0.value > 0 }
                .map { String(format: "%@ %.0f%%", $0.key, 100 * $0.value / max(total, 1e-12)) }.joined(separator: ", ")
        }
        return pad(r.level, 6) + pad(r.kind, 13) + pad(r.phase ?? "-", 8) + pad(String(r.tokens), 7, right: true) + "  "
            + pad(r.routing ?? "-", 10) + pad(String(format: "%.1f", r.tokensPerSecond.median), 18, right: true)
            + pad(gflops, 24, right: true) + pad(shares, 14, right: true) + "  " + breakdown
    }

    /// The ratios the targets are stated in.
    static func summary(_ results: [ThroughputBenchmark.Result]) -> String {
        var lines = ["ratios (medians):"]
        for tokens in Set(results.map(\.tokens)).sorted() {
            let layer = results.filter { $0.level == "layer" && $0.tokens == tokens }
            if let dense = layer.first(where: { $0.kind == "dense" })?.gflops?.median {
                if let sgemm = layer.first(where: { $0.kind == "sgemm" })?.gflops?.median {
                    lines.append(String(format: "  layer T=%d: dense FFN / sgemm = %.2f", tokens, dense / sgemm))
                }
                for moe in layer where moe.kind == "moe" {
                    lines.append(String(format: "  layer T=%d: MoE (%@) / dense FFN GFLOP/s = %.2f", tokens, moe.routing ?? "", (moe.gflops?.median ?? 0) / dense))
                }
            }
            let prefill = results.filter { $0.level == "model" && $0.phase == "prefill" && $0.tokens == tokens }
            if let dense = prefill.first(where: { $0.kind == "dense" })?.tokensPerSecond.median {
                for moe in prefill where moe.kind == "moe" {
                    lines.append(String(format: "  model T=%d prefill: MoE (%@) / dense tokens/s = %.2f", tokens, moe.routing ?? "", moe.tokensPerSecond.median / dense))
                }
            }
        }
        return lines.joined(separator: "\n")
    }
}
