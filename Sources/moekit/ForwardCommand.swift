import ArgumentParser
import Foundation
import MoEKit

struct ForwardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forward",
        abstract: "Run a MiniCPM or MiniCPM-MoE model on token ids or text and write the logits.",
        discussion: """
        Token files: whitespace- or comma-separated integers, one sequence per line, or a .npy of \
        int32/int64 (one sequence). Or --text: one document per line, tokenised with the model \
        directory's tokenizer.json. The output is a safetensors file with one F32 tensor `logits` \
        [total tokens, vocab], sequences stacked in input order. Weights are used in their stored \
        dtype from the read-only memory map (bf16 stays bf16; compute is f32), so the 13.6B \
        MiniCPM-MoE-8x2B runs in a few hundred MB of anonymous memory.
        """
    )

    @Argument(help: "Model directory (config.json + safetensors or PyTorch .bin weights).")
    var modelDirectory: String

    @OptionGroup var input: TokenInputOptions

    @Option(help: "Where to write the logits.")
    var output: String = "logits.safetensors"

    @Option(help: "Router to use instead of the model's (MoE only; a preset such as softmax-topk, switch, sigmoid, and/or moekit_router fields, e.g. \"topk:capacity_factor=1.25\"); see docs/routers.md.")
    var router: String?

    @Option(help: ArgumentHelp("Tokens per batch: whole sequences run together, one layer at a time over the batch, so each layer's weights are read once per batch.",
                               discussion: "Weights stay in their stored dtype (bf16 too), read from the memory map; memory holds one batch's activations and the logits."))
    var batchTokens: Int = 4096

    @Option(name: .customLong("compute"), help: ComputePrecision.help)
    var computePrecision: ComputePrecision = .float32

    func validate() throws {
        try OptionRanges.check("--batch-tokens", batchTokens, OptionRanges.tokensPerCall)
        try computePrecision.validateForThisCPU()
    }

    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try reportingErrors {
            compute.apply()
            let sequences = try input.source.read(modelDirectory: modelDirectory)
            let total = sequences.reduce(0) { $0 + $1.count }, longest = sequences.map(\.count).max() ?? 0
            let what = "the logits of \(total) tokens"
            let estimate = { MemoryEstimate.forwardBytes($0, tokens: total, sequence: longest) }
            try OptionRanges.checkMemory(modelDirectory: modelDirectory, what: what, estimate: estimate)
            let start = Date()
            let model = try MiniCPMModel(directory: modelDirectory)
            if computePrecision != .float32 {
                try OptionRanges.checkMemory(forCompute: computePrecision, model: model, what: what, estimate: estimate)
                model.weights = model.weights.forCompute(computePrecision)
            }
            if let router {
                guard model.config.isMoE else { throw ValidationError("--router needs a MiniCPM-MoE model; \(modelDirectory) is dense") }
                try model.useRouter(RouterConfiguration(text: router))
            }
            let loaded = Date()
            let logits = try model.logits(for: sequences, batchTokens: batchTokens, source: input.source.path)
            let finished = Date()
            try SafetensorsWriter.write([("logits", logits, .float32)], to: output)
            let config = model.config
            let kind = config.isMoE ? "MiniCPM-MoE (\(config.numExperts!) experts, top-\(config.topK ?? 2))" : "MiniCPM (dense)"
            print("\(modelDirectory): \(kind), \(config.numHiddenLayers) layers, hidden \(config.hiddenSize), vocab \(config.vocabSize)")
            if !model.unexpectedTensors.isEmpty { print("  ignored unexpected tensors: \(model.unexpectedTensors.joined(separator: ", "))") }
            print("  \(sequences.count) sequence\(sequences.count == 1 ? "" : "s"), \(logits.rows) tokens; load \(String(format: "%.2f", loaded.timeIntervalSince(start)))s, forward \(String(format: "%.3f", finished.timeIntervalSince(loaded)))s")
            print("  wrote \(output): logits \(logits.shape) F32")
        }
    }
}
