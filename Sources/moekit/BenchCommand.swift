import ArgumentParser
import Foundation
import MoEKit

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure dense versus MoE throughput (layer and model level).",
        discussion: """
        Layer level: the dense SwiGLU FFN, a dense FFN k× as wide (same active FLOPs), the MoE layer \
        under each routing mode, and a bare cblas_sgemm of the fused gate+up shape as the machine's \
        ceiling. Model level: prefill and decode (KV cache) tokens/s of a dense model of the preset's \
        shapes and of its sparse upcycling, with the time split into stages. Medians of --repeats \
        runs after warm-up, with min and max. Routing: learned (the router), uniform (round-robin: \
        best case), collapsed (every token to the same k experts: worst imbalance).
        """
    )

    @Option(help: "Shapes: \(MiniCPMPreset.allCases.map(\.rawValue).joined(separator: ", ")).")
    var preset: String = "minicpm-2.4b"
    @Option(help: "Layers of the model-level models.")
    var layers: Int = 2
    @Option(help: "Experts of the MoE.")
    var experts: Int = 8
    @Option(name: .customLong("top-k"), help: "Experts per token.")
    var topK: Int = 2
    @Option(help: "Token counts, comma-separated.")
    var tokens: String = "128,512,2048"
    @Option(help: "Decode steps for the model-level decode measurement (0 skips it).")
    var decode: Int = 32
    @Option(help: "Routing modes, comma-separated: learned, uniform, collapsed.")
    var routing: String = "learned,uniform,collapsed"
    @Option(help: "Which levels: layer, model, all (both), or training (one training step, dense vs MoE, with --batch × --seq tokens).")
    var level: String = "all"
    @Option(help: "Training level: sequences per batch.")
    var batch: Int = 8
    @Option(help: "Training level: tokens per sequence.")
    var seq: Int = 128
    @OptionGroup var compute: ComputeOptions
    @Option(help: "Timed runs per case.")
    var repeats: Int = 5
    @Option(help: "Write the results as JSON to this file.")
    var json: String?

    func validate() throws {
        try OptionRanges.check("--layers", layers, OptionRanges.layers)
        try OptionRanges.check("--experts", experts, OptionRanges.experts)
        try OptionRanges.check("--top-k", topK, 1 ... experts)
        for text in tokens.split(separator: ",") {
            guard let count = Int(text.trimmingCharacters(in: .whitespaces)) else { throw ValidationError("--tokens: '\(text)' is not an integer") }
            try OptionRanges.check("--tokens", count, 1 ... ConfigLimits.maxPositionEmbeddings)
        }
        try OptionRanges.check("--decode", decode, OptionRanges.decodeSteps)
        try OptionRanges.check("--repeats", repeats, OptionRanges.repeats)
        try OptionRanges.check("--batch", batch, OptionRanges.batch)
        try OptionRanges.check("--seq", seq, OptionRanges.sequenceLength)
        try OptionRanges.check("--batch × --seq", batch * seq, 1 ... TrainingOptions.maximumTokensPerStep)
    }

    /// The larger of the dense and the MoE run of the benchmark's shapes, for the memory estimate.
    private func estimatedBytes(_ config: MiniCPMConfig, tokens: Int) -> Int {
        var moe = config
        moe.numExperts = experts
        moe.numExpertsPerToken = topK
        if level == "training" {
            return max(MemoryEstimate.trainingBytes(config, batch: batch, seq: seq), MemoryEstimate.trainingBytes(moe, batch: batch, seq: seq))
        }
        let sequence = max(tokens, 128 + decode)
        return max(MemoryEstimate.forwardBytes(config, tokens: tokens, sequence: sequence), MemoryEstimate.forwardBytes(moe, tokens: tokens, sequence: sequence))
    }

    func run() throws {
        try reportingErrors {
            guard let shapes = MiniCPMPreset(rawValue: preset) else { throw ValidationError("unknown preset '\(preset)'") }
            var config = shapes.config
            config.numHiddenLayers = layers
            var options = ThroughputBenchmark.Options(config: config)
            options.experts = experts
            options.topK = topK
            options.tokenCounts = try tokens.split(separator: ",").map {
                guard let n = Int($0.trimmingCharacters(in: .whitespaces)), n > 0 else { throw ValidationError("--tokens: '\($0)' is not a positive integer") }
                return n
            }
            options.routings = try routing.split(separator: ",").map {
                guard let mode = ThroughputBenchmark.Routing(rawValue: String($0)) else { throw ValidationError("--routing: unknown mode '\($0)'") }
                return mode
            }
            options.decodeSteps = decode
            options.repeats = max(1, repeats)
            try MemoryEstimate.check(estimatedBytes(config, tokens: options.tokenCounts.max() ?? 0), for: "bench with these shapes")
            options.layerLevel = level == "all" || level == "layer"
            options.modelLevel = level == "all" || level == "model"
            guard layers >= 1, experts >= 2, topK >= 1, topK <= experts else { throw ValidationError("need layers ≥ 1, experts ≥ 2, 1 ≤ top-k ≤ experts") }
            compute.apply()
            if level == "training" {
                try runTraining(config: config)
                return
            }
            guard level == "all" || level == "layer" || level == "model" else { throw ValidationError("--level must be layer, model, all or training") }
            let machine = ThroughputBenchmark.Machine.current
            print("machine: \(machine.cpu), \(machine.cores) cores, OpenBLAS threads \(machine.threads)")
            print("shapes: \(preset) hidden \(config.hiddenSize), intermediate \(config.intermediateSize); MoE \(experts) experts, top-\(topK); \(options.repeats) runs per case")
            print(BenchTable.header)
            let results = try ThroughputBenchmark(options: options).run { print(BenchTable.row($0)) }
            print(BenchTable.summary(results))
            if let json {
                let document = ThroughputBenchmark.json(machine: machine, results: results, options: options)
                try AtomicFileWriter.write(document.serialized(), to: json)
                print("wrote \(json)")
            }
        }
    }
}

extension BenchCommand {
    func runTraining(config: MiniCPMConfig) throws {
        guard batch >= 1, seq >= 1, seq <= config.maxPositionEmbeddings else { throw ValidationError("--batch and --seq must be ≥ 1, --seq ≤ max_position_embeddings") }
        var options = TrainingBenchmark.Options(config: config)
        options.experts = experts
        options.topK = topK
        options.batchSize = batch
        options.sequenceLength = seq
        options.repeats = max(1, repeats)
        let machine = ThroughputBenchmark.Machine.current
        print("machine: \(machine.cpu), \(machine.cores) cores, OpenBLAS threads \(machine.threads)")
        print("training step (forward + backward + AdamW): \(preset) shapes, \(layers) layers, batch \(batch) × \(seq) tokens; MoE \(experts) experts, top-\(topK); \(options.repeats) runs per case")
        print(BenchTable.header)
        let results = try TrainingBenchmark(options: options).run()
        for result in results { print(BenchTable.row(result)) }
        if let dense = results.first(where: { $0.kind == "dense" }), let moe = results.first(where: { $0.kind == "moe" }),
           let sgemm = results.first(where: { $0.kind == "sgemm" })?.gflops?.median {
            print("ratios (medians):")
            print(String(format: "  dense training GFLOP/s / sgemm = %.2f", (dense.gflops?.median ?? 0) / sgemm))
            print(String(format: "  MoE training GFLOP/s / sgemm = %.2f", (moe.gflops?.median ?? 0) / sgemm))
            print(String(format: "  MoE / dense training tokens/s = %.2f", moe.tokensPerSecond.median / dense.tokensPerSecond.median))
        }
        if let json {
            var document = ThroughputBenchmark.json(machine: machine, results: results, options: ThroughputBenchmark.Options(config: config))
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
        + pad("tokens/s (median)", 18, right: true) + pad("GFLOP/s min/med/max", 24, right: true) + "  breakdown"

    static func pad(_ text: String, _ width: Int, right: Bool = false) -> String {
        let padding = String(repeating: " ", count: max(0, width - text.count))
        return right ? padding + text : text + padding
    }

    static func row(_ r: ThroughputBenchmark.Result) -> String {
        let gflops = r.gflops.map { String(format: "%.1f/%.1f/%.1f", $0.min, $0.median, $0.max) } ?? "-"
        var breakdown = ""
        if let parts = r.breakdown {
            let total = parts.values.reduce(0, +)
            breakdown = parts.sorted { $0.value > $1.value }.filter { $0.value > 0 }
                .map { String(format: "%@ %.0f%%", $0.key, 100 * $0.value / max(total, 1e-12)) }.joined(separator: ", ")
        }
        return pad(r.level, 6) + pad(r.kind, 13) + pad(r.phase ?? "-", 8) + pad(String(r.tokens), 7, right: true) + "  "
            + pad(r.routing ?? "-", 10) + pad(String(format: "%.1f", r.tokensPerSecond.median), 18, right: true)
            + pad(gflops, 24, right: true) + "  " + breakdown
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
