import ArgumentParser
import Foundation
import MoEKit

struct UpcycleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "upcycle",
        abstract: "Turn a dense MiniCPM checkpoint into a MiniCPM-MoE checkpoint.",
        discussion: """
        Methods: copy (every expert an exact copy of the dense MLP, MiniCPM-MoE's recipe), noise (copy plus \
        seeded Gaussian noise of std S × each matrix's std), partition (the intermediate neurons split into E \
        groups, LLaMA-MoE style, w2 scaled by E), granular (the FFN cut into G slices replicated E/G times, \
        every matrix scaled by G^(1/3), router rows repeated per group, as Megatron-Core does). With partition \
        and granular, intermediate_size in the output config is the expert's size. Attention, norms and \
        embeddings are copied bit-exact. The output is written under a temporary name and appears only when \
        complete. See docs/upcycling.md.
        """
    )

    @Argument(help: "Dense MiniCPM model directory (config.json + safetensors or PyTorch .bin weights).")
    var denseDirectory: String

    @Argument(help: "Output directory (must not exist unless --force).")
    var outputDirectory: String?

    @Option(help: "Experts per MoE layer, E ≥ 2.")
    var experts: Int

    @Option(name: .customLong("top-k"), help: "Experts per token, 1 ≤ K ≤ E.")
    var topK: Int

    @Option(help: "copy, noise, partition or granular.")
    var method: String = "copy"

    @Option(name: .customLong("router-init"), help: "normal, uniform (±1/sqrt(hidden)) or zero.")
    var routerInit: String = "normal"

    @Option(name: .customLong("router-std"), help: "Std of the normal router init.")
    var routerStd: Double = 0.1

    @Option(name: .customLong("noise-std"), help: "noise: std relative to each weight matrix's std.")
    var noiseStd: Double = 0.01

    @Option(help: "granular: fine-grained experts per dense FFN, G (divides intermediate_size and E).")
    var granularity: Int?

    @Option(name: .customLong("partition-by"), help: "partition: random or cluster (balanced k-means on gate/up rows).")
    var partitionBy: String = "random"

    @Option(help: "Random seed (router, noise, partition).")
    var seed: UInt64 = 0

    @Option(help: "Storage dtype: keep, bf16, f16 or f32.")
    var dtype: String = "keep"

    @Option(name: .customLong("shard-size"), help: "Maximum shard size (5GB, 500MB, 2GiB, …).")
    var shardSize: String = "5GB"

    @Option(help: "Compare dense and upcycled logits on N fixed tokens (0 disables); copy must match within 1e-5.")
    var verify: Int = 16

    @Flag(help: "Replace an existing output directory.")
    var force = false

    @Flag(name: .customLong("dry-run"), help: "Print what would be written; needs only DENSE_DIR/config.json.")
    var dryRun = false

    @Flag(help: "No progress output.")
    var quiet = false

    func validate() throws {
        try OptionRanges.check("--experts", experts, OptionRanges.experts)
        try OptionRanges.check("--top-k", topK, 1 ... experts)
        try OptionRanges.check("--verify", verify, 0 ... UpcycleOptions.maximumVerifyTokens)
        if let granularity { try OptionRanges.check("--granularity", granularity, 1 ... experts) }
        try OptionRanges.check("--router-std", routerStd, 0 ... 1e6)
        try OptionRanges.check("--noise-std", noiseStd, 0 ... 1e6)
        guard UpcycleMethod(rawValue: method) != nil else { throw ValidationError("--method must be copy, noise, partition or granular, got '\(method)'") }
        guard RouterInitialization(rawValue: routerInit) != nil else { throw ValidationError("--router-init must be normal, uniform or zero, got '\(routerInit)'") }
        guard NeuronGrouping(rawValue: partitionBy) != nil else { throw ValidationError("--partition-by must be random or cluster, got '\(partitionBy)'") }
        guard dtype.lowercased() == "keep" || StorageDTypeOption.parse(dtype) != nil else { throw ValidationError("--dtype must be keep, bf16, f16 or f32, got '\(dtype)'") }
        guard ByteSize.parse(shardSize) != nil else { throw ValidationError("--shard-size: '\(shardSize)' is not a size (e.g. 5GB, 500MB)") }
        if method == UpcycleMethod.granular.rawValue && granularity == nil { throw ValidationError("--method granular needs --granularity G") }
        if !dryRun && outputDirectory == nil { throw ValidationError("missing OUT_DIR (only --dry-run works without one)") }
    }

    var options: UpcycleOptions {
        var options = UpcycleOptions(experts: experts, topK: topK)
        options.method = UpcycleMethod(rawValue: method) ?? .copy
        options.routerInitialization = RouterInitialization(rawValue: routerInit) ?? .normal
        options.routerStandardDeviation = routerStd
        options.noiseStandardDeviation = noiseStd
        options.granularity = granularity ?? 1
        options.partitionBy = NeuronGrouping(rawValue: partitionBy) ?? .random
        options.seed = seed
        options.dtype = dtype.lowercased() == "keep" ? nil : StorageDTypeOption.parse(dtype)
        options.maximumShardBytes = ByteSize.parse(shardSize) ?? ShardedSafetensorsWriter.defaultShardSize
        options.verifyTokens = verify
        options.replaceExisting = force
        options.progress = quiet ? .quiet : .automatic
        return options
    }

    func run() throws {
        try reportingErrors {
            let plan = try UpcyclePlan(denseDirectory: denseDirectory, options: options, requireWeights: !dryRun)
            if dryRun {
                printPlan(plan)
                return
            }
            let result = try Upcycler.run(plan, outputDirectory: outputDirectory ?? "", verifier: UpcycleCommand.verifier)
            let counts = plan.parameters
            print("wrote \(result.outputDirectory): \(plan.options.method.rawValue), \(plan.options.experts) experts, top-\(plan.options.topK), seed \(plan.options.seed)")
            print("  parameters: \(counts.total.formatted()) total, \(counts.nonEmbedding.formatted()) non-embedding, \(counts.activePerToken.formatted()) active per token")
            print("  files: config.json, \(result.files.joined(separator: ", ")), \(SafetensorsIndex.fileName), \(UpcyclePlan.reportFileName) (\(ByteSize.format(result.bytesWritten)))")
            if let verification = result.verification {
                let bound = verification.tolerance.map { " (tolerance \($0))" } ?? ""
                print("  verify: \(verification.tokens) tokens, max relative logit difference \(verification.maxRelativeDifference)\(bound)")
            }
            for warning in plan.warnings { print("  note: \(warning)") }
        }
    }

    private func printPlan(_ plan: UpcyclePlan) {
        let counts = plan.parameters, dense = plan.denseParameters
        print("dry run: \(plan.denseDirectory) → MiniCPM-MoE, \(plan.options.method.rawValue), \(plan.options.experts) experts, top-\(plan.options.topK) (nothing written)")
        print("  expert intermediate size \(plan.expertIntermediateSize) (dense \(plan.denseConfig.intermediateSize))")
        print("  dense parameters:   \(dense.total.formatted()) total, \(dense.nonEmbedding.formatted()) non-embedding")
        print("  MoE parameters:     \(counts.total.formatted()) total, \(counts.nonEmbedding.formatted()) non-embedding")
        print("  active per token:   \(counts.activePerToken.formatted()) (\(counts.activeNonEmbedding.formatted()) non-embedding)")
        print("  \(plan.tensors.count) tensors, \(ByteSize.format(plan.totalBytes)) (\(plan.totalBytes.formatted()) bytes)")
        for tensor in plan.tensors {
            print("    \(tensor.name)  \(tensor.dtype.rawValue) \(tensor.shape)  \(tensor.byteCount.formatted()) B")
        }
        if !plan.otherFiles.isEmpty { print("  other files copied: \(plan.otherFiles.joined(separator: ", "))") }
        for warning in plan.warnings { print("  note: \(warning)") }
    }

    /// The forward pass `--verify` runs (MoEKit's own, as `moekit forward`).
    static var verifier: LogitsProvider? { MiniCPMForwardLogits() }
}
