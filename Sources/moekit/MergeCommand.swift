import ArgumentParser
import Foundation
import MoEKit

struct MergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Mix N dense MiniCPM checkpoints into one MiniCPM-MoE (BTX, Branch-Train-MiX).",
        discussion: """
        Sukhbaatar et al. 2024 (arXiv 2403.07816): expert i of every layer is model i's FFN (gate_proj → w1, \
        up_proj → w3, down_proj → w2), every other tensor (embeddings, attention, norms, head) is the average \
        of the N models', and the router is new (--router-init, --router-std). The models must share the \
        architecture: a config field or tensor that differs is refused by name. Train the result with \
        `moekit train` (the MiX phase). The output is written under a temporary name and appears only when \
        complete, with merge-report.json. See docs/upcycling.md.
        """
    )

    @Argument(help: "Two or more dense model directories, then the output directory: DENSE_1 … DENSE_N OUT_DIR.")
    var paths: [String]

    @Option(name: .customLong("top-k"), help: "Experts per token, 1 ≤ K ≤ N.")
    var topK: Int = 2

    @Option(name: .customLong("router-init"), help: "normal, uniform (±1/sqrt(hidden)), uniform-std (mean 0, std --router-std) or zero.")
    var routerInit: RouterInitialization = .normal

    @Option(name: .customLong("router-std"), help: "Std of the normal or uniform-std router init.")
    var routerStd: Double = 0.1

    @Option(help: "Routing the output runs, stored in config.json as moekit_router (see docs/routers.md); default MiniCPM-MoE's.")
    var router: String?

    @Option(help: "Random seed of the router.")
    var seed: UInt64 = 0

    @OptionGroup var weights: WeightOutputOptions

    @OptionGroup var output: OutputOptions

    func validate() throws {
        guard paths.count >= 3 else { throw ValidationError("give at least two dense model directories and the output directory") }
    }

    func run() throws {
        try reportingErrors {
            var options = MergeOptions(topK: topK)
            options.routerInitialization = routerInit
            options.routerStandardDeviation = routerStd
            options.router = try router.map { try RouterConfiguration(text: $0) }
            options.seed = seed
            options.dtype = weights.dtype.safetensors
            options.maximumShardBytes = weights.shardSize.bytes
            options.replaceExisting = output.force
            options.progress = output.progress
            let plan = try MergePlan(denseDirectories: Array(paths.dropLast()), options: options)
            let result = try Merger.run(plan, outputDirectory: paths[paths.count - 1])
            let counts = MiniCPMLayout(config: plan.config).parameterCounts
            print("wrote \(result.outputDirectory): BTX, \(plan.experts) experts (expert i = model i's FFN), top-\(topK), seed \(seed)")
            print("  parameters: \(counts.total.formatted()) total, \(counts.nonEmbedding.formatted()) non-embedding, \(counts.activePerToken.formatted()) active per token")
            print("  files: config.json, \(result.files.joined(separator: ", ")), \(SafetensorsIndex.fileName), \(MergePlan.reportFileName) (\(ByteSize.format(result.bytesWritten)))")
        }
    }
}
