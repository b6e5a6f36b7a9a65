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
        every matrix scaled by G^(1/3), router rows repeated per group, as Megatron-Core does), drop \
        (Drop-Upcycling: copy, then in every expert a seeded random ⌊r·I⌋ of the intermediate neurons redrawn \
        from N(mean, std²) of the weights they replace, per matrix; router U(−√3·0.02, √3·0.02) as the paper's \
        code; the redrawn neurons are listed in upcycle-report.json). With partition and granular, \
        intermediate_size in the output config is the expert's size. --router R stores the routing the model \
        will run in config.json (moekit_router); --weight-scale auto multiplies every expert's w2 by 1/Σw, the \
        inverse of the combine weights' sum at a near-zero router (E/K for softmax → top-k without \
        renormalising, He et al. 2024), times the method's own scale. Attention, norms and embeddings are \
        copied bit-exact. The output is written under a temporary name and appears only when complete. See \
        docs/upcycling.md.
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

    @Option(help: "How experts are made from the dense FFN (see above).")
    var method: UpcycleMethod = .copy

    @Option(name: .customLong("drop-ratio"), help: "drop: share r of each expert's intermediate neurons redrawn (0…1, default 0.5).")
    var dropRatio: Double?

    @Option(name: .customLong("shared-experts"), help: "Shared experts per layer (DeepSeekMoE): always active, never routed, each a copy of the dense MLP; every W2 is scaled by 1/(S+1) so the output keeps the dense function (copy, noise, drop).")
    var sharedExperts: Int = 0

    @Option(name: .customLong("router-init"), help: "normal, uniform (±1/sqrt(hidden)), uniform-std (mean 0, std --router-std) or zero (default: normal; drop: uniform-std).")
    var routerInit: RouterInitialization?

    @Option(name: .customLong("router-std"), help: "Std of the normal or uniform-std router init (default 0.1; drop: 0.02).")
    var routerStd: Double?

    @Option(help: "Routing the output runs, stored in config.json as moekit_router (see docs/routers.md); default MiniCPM-MoE's.")
    var router: String?

    @Option(name: .customLong("weight-scale"), help: "none or auto (w2 × 1/Σ combine weights at a near-zero router: E/K for softmax then top-k unnormalised).")
    var weightScale: WeightScaling = .none

    @Option(name: .customLong("noise-std"), help: "noise: std relative to each weight matrix's std.")
    var noiseStd: Double = 0.01

    @Option(help: "granular: fine-grained experts per dense FFN, G (divides intermediate_size and E).")
    var granularity: Int?

    @Option(name: .customLong("partition-by"), help: "partition: random or cluster (balanced k-means on gate/up rows).")
    var partitionBy: NeuronGrouping = .random

    @Option(help: "Random seed (router, noise, partition).")
    var seed: UInt64 = 0

    @OptionGroup var weights: WeightOutputOptions

    @Option(help: "Compare dense and upcycled logits on N fixed tokens (0 disables); copy must match within 1e-5.")
    var verify: Int = 16

    @Flag(name: .customLong("dry-run"), help: "Print what would be written; needs only DENSE_DIR/config.json.")
    var dryRun = false

    @OptionGroup var output: OutputOptions

    func validate() throws {
        try OptionRanges.check("--experts", experts, OptionRanges.experts)
        try OptionRanges.check("--top-k", topK, 1 ... experts)
        try OptionRanges.check("--verify", verify, 0 ... UpcycleOptions.maximumVerifyTokens)
        if let granularity { try OptionRanges.check("--granularity", granularity, 1 ... experts) }
        if let routerStd { try OptionRanges.check("--router-std", routerStd, 0 ... 1e6) }
        try OptionRanges.check("--noise-std", noiseStd, 0 ... 1e6)
        if let dropRatio { try OptionRanges.check("--drop-ratio", dropRatio, 0 ... 1) }
        if dropRatio != nil && method != .drop { throw ValidationError("--drop-ratio only applies to --method drop") }
        if method == .granular && granularity == nil { throw ValidationError("--method granular needs --granularity G") }
        if !dryRun && outputDirectory == nil { throw ValidationError("missing OUT_DIR (only --dry-run works without one)") }
    }

    func options() throws -> UpcycleOptions {
        var options = UpcycleOptions(experts: experts, topK: topK)
        options.method = method
        let paper = UpcycleOptions.paperRouter(for: options.method)
        options.routerInitialization = routerInit ?? paper.initialization
        options.routerStandardDeviation = routerStd ?? paper.standardDeviation
        options.dropRatio = dropRatio ?? DropUpcycling.defaultRatio
        options.sharedExperts = sharedExperts
        options.router = try router.map { try RouterConfiguration(text: $0) }
        options.weightScaling = weightScale
        options.noiseStandardDeviation = noiseStd
        options.granularity = granularity ?? 1
        options.partitionBy = partitionBy
        options.seed = seed
        options.dtype = weights.dtype.safetensors
        options.maximumShardBytes = weights.shardSize.bytes
        options.verifyTokens = verify
        options.replaceExisting = output.force
        options.progress = output.progress
        return options
    }

    func run() throws {
        try reportingErrors {
            let plan = try UpcyclePlan(denseDirectory: denseDirectory, options: try options(), requireWeights: !dryRun)
            if dryRun {
                printPlan(plan)
                return
            }
            let result = try Upcycler.run(plan, outputDirectory: outputDirectory ?? "", verifier: UpcycleCommand.verifier)
            let counts = plan.parameters
            print("wrote \(result.outputDirectory): \(plan.options.method.rawValue), \(plan.options.experts) experts, top-\(plan.options.topK), seed \(plan.options.seed)")
            if plan.options.method == .drop {
                let count = DropUpcycling.redrawnCount(intermediateSize: plan.denseConfig.intermediateSize, ratio: plan.options.dropRatio)
                print("  drop: \(count) of \(plan.denseConfig.intermediateSize) neurons redrawn per expert (r = \(plan.options.dropRatio)); listed in \(UpcyclePlan.reportFileName)")
            }
            if plan.routingWeightScale != 1 { print("  weight scale: w2 × \(plan.routingWeightScale) for the routing") }
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
