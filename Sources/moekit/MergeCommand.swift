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
    var routerInit: String = "normal"

    @Option(name: .customLong("router-std"), help: "Std of the normal or uniform-std router init.")
    var routerStd: Double = 0.1

    @Option(help: "Routing the output runs, stored in config.json as moekit_router (see docs/routers.md); default MiniCPM-MoE's.")
    var router: String?

    @Option(help: "Random seed of the router.")
    var seed: UInt64 = 0

    @Option(help: "Storage dtype: keep, bf16, f16 or f32.")
    var dtype: String = "keep"

    @Option(name: .customLong("shard-size"), help: "Maximum shard size (5GB, 500MB, 2GiB, …).")
    var shardSize: String = "5GB"

    @Flag(help: "Replace an existing output directory.")
    var force = false

    @Flag(help: "No progress output.")
    var quiet = false

    func validate() throws {
        guard paths.count >= 3 else { throw ValidationError("give at least two dense model directories and the output directory") }
        guard RouterInitialization(rawValue: routerInit) != nil else {
            throw ValidationError("--router-init must be normal, uniform, uniform-std or zero, got '\(routerInit)'")
        }
        guard dtype.lowercased() == "keep" || StorageDTypeOption.parse(dtype) != nil else { throw ValidationError("--dtype must be keep, bf16, f16 or f32, got '\(dtype)'") }
        guard ByteSize.parse(shardSize) != nil else { throw ValidationError("--shard-size: '\(shardSize)' is not a size (e.g. 5GB, 500MB)") }
    }

    func run() throws {
        try reportingErrors {
            var options = MergeOptions(topK: topK)
            options.routerInitialization = RouterInitialization(rawValue: routerInit) ?? .normal
            options.routerStandardDeviation = routerStd
            options.router = try router.map { try RouterConfiguration(text: $0) }
            options.seed = seed
            options.dtype = dtype.lowercased() == "keep" ? nil : StorageDTypeOption.parse(dtype)
            options.maximumShardBytes = ByteSize.parse(shardSize) ?? ShardedSafetensorsWriter.defaultShardSize
            options.replaceExisting = force
            options.progress = quiet ? .quiet : .automatic
            let plan = try MergePlan(denseDirectories: Array(paths.dropLast()), options: options)
            let result = try Merger.run(plan, outputDirectory: paths[paths.count - 1])
            let counts = MiniCPMLayout(config: plan.config).parameterCounts
            print("wrote \(result.outputDirectory): BTX, \(plan.experts) experts (expert i = model i's FFN), top-\(topK), seed \(seed)")
            print("  parameters: \(counts.total.formatted()) total, \(counts.nonEmbedding.formatted()) non-embedding, \(counts.activePerToken.formatted()) active per token")
            print("  files: config.json, \(result.files.joined(separator: ", ")), \(SafetensorsIndex.fileName), \(MergePlan.reportFileName) (\(ByteSize.format(result.bytesWritten)))")
        }
    }
}
