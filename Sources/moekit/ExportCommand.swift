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

    @Option(help: "llama (dense), mixtral (MoE, renormalised top-k), qwen2_moe (MoE, top-k renormalised or not), glm4_moe or minicpm.")
    var format: ExportFormat

    @OptionGroup var weights: WeightOutputOptions

    @OptionGroup var output: OutputOptions

    func run() throws {
        try reportingErrors {
            var options = ExportPlan.Options(format: format, dtype: weights.dtype.safetensors)
            options.maximumShardBytes = weights.shardSize.bytes
            options.replaceExisting = output.force
            options.progress = output.progress
            let plan = try ExportPlan(directory: modelDirectory, options: options)
            let result = try Exporter.run(plan, outputDirectory: outputDirectory)
            let config = plan.outputConfig
            print("wrote \(result.outputDirectory): \(format.architecture.causalLMClassName), \(config.numHiddenLayers) layers"
                  + (config.isMoE ? ", \(config.numExperts ?? 0) experts, top-\(config.topK ?? 0)" : "")
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
