import ArgumentParser
import Foundation
import MoEKit

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write a MiniCPM model as a Llama or Mixtral checkpoint that transformers, vLLM and llama.cpp load natively.",
        discussion: """
        Folds MiniCPM's scalars into the weights (embed_tokens × scale_emb; o_proj and every down_proj/w2 × \
        scale_depth/√L; lm_head ÷ (hidden_size/dim_model_base), tied embeddings untied), writes config.json in \
        the target's names with every value explicit, and copies the tokenizer and generation files. A dense \
        model becomes a Llama, an MoE (softmax → top-k → renormalise) a Mixtral; router settings Mixtral \
        cannot express are refused by name. --format minicpm writes MiniCPM names back (with neutral \
        scalars), e.g. for a Llama or Mixtral trained elsewhere. Prints the fold's rounding error in the \
        output dtype. The output appears only when complete. See docs/scale-out.md.
        """
    )

    @Argument(help: "Model directory (MiniCPM, Llama or Mixtral; config.json + safetensors or PyTorch .bin).")
    var modelDirectory: String

    @Argument(help: "Output directory (must not exist unless --force).")
    var outputDirectory: String

    @Option(help: "llama (dense), mixtral (MoE, renormalised top-k), qwen2_moe (MoE, top-k renormalised or not) or minicpm.")
    var format: String

    @Option(help: "Storage dtype: keep, f32, bf16 or f16.")
    var dtype: String = "keep"

    @Option(name: .customLong("shard-size"), help: "Maximum shard size (5GB, 500MB, 2GiB, …).")
    var shardSize: String = "5GB"

    @Flag(help: "Replace an existing output directory.")
    var force = false

    @Flag(help: "No progress output.")
    var quiet = false

    func validate() throws {
        guard ExportFormat(rawValue: format) != nil else {
            throw ValidationError("--format must be \(ExportFormat.allCases.map(\.rawValue).joined(separator: ", ")), got '\(format)'")
        }
        guard dtype.lowercased() == "keep" || StorageDTypeOption.parse(dtype) != nil else { throw ValidationError("--dtype must be keep, f32, bf16 or f16, got '\(dtype)'") }
        guard ByteSize.parse(shardSize) != nil else { throw ValidationError("--shard-size: '\(shardSize)' is not a size (e.g. 5GB, 500MB)") }
    }

    func run() throws {
        try reportingErrors {
            let format = ExportFormat(rawValue: self.format) ?? .llama
            var options = ExportPlan.Options(format: format, dtype: dtype.lowercased() == "keep" ? nil : StorageDTypeOption.parse(dtype))
            options.maximumShardBytes = ByteSize.parse(shardSize) ?? ShardedSafetensorsWriter.defaultShardSize
            options.replaceExisting = force
            options.progress = quiet ? .quiet : .automatic
            let plan = try ExportPlan(directory: modelDirectory, options: options)
            let result = try Exporter.run(plan, outputDirectory: outputDirectory)
            let config = plan.outputConfig
            print("wrote \(result.outputDirectory): \(format.architecture.causalLMClassName), \(config.numHiddenLayers) layers"
                  + (config.isMoE ? ", \(config.numExperts ?? 0) experts, top-\(config.numExpertsPerToken ?? 0)" : "")
                  + ", \(config.torchDtype ?? "?"), \(ByteSize.format(result.bytesWritten))")
            print("  files: config.json, \((result.weightFiles + plan.otherFiles + [ExportPlan.reportFileName]).joined(separator: ", "))")
            if result.foldErrors.isEmpty {
                print("  fold: neutral scalars, every tensor copied as stored")
            }
            for error in result.foldErrors {
                print("  fold \(error.fold.rawValue) (factor \(error.factor)): \(error.tensors) tensor\(error.tensors == 1 ? "" : "s"), rounding in \(config.torchDtype ?? "?"): max relative \(String(format: "%.3g", error.maxRelative)), norm-wise \(String(format: "%.3g", error.normRelative))")
            }
            if case .number(let coefficient)? = config.otherKeys["router_aux_loss_coef"] {
                print("  router_aux_loss_coef \(coefficient) (MoEKit's per-layer coefficient × layers / top-k; docs/scale-out.md)")
            }
            for note in plan.notes { print("  note: \(note)") }
        }
    }
}
