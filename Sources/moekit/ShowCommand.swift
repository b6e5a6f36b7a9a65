import ArgumentParser
import Foundation
import MoEKit

struct ShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Describe a model directory or a weight file (.safetensors or PyTorch .bin): config, tensors, parameter counts.",
        discussion: "A model directory is checked against its config.json: missing tensors and wrong shapes are errors, unexpected tensors are listed."
    )

    @Argument(help: "A model directory (safetensors or PyTorch .bin weights) or one weight file.")
    var path: String

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    @Flag(help: "With --json: include every tensor's values (as f32).")
    var values = false

    func run() throws {
        try reportingErrors {
            let inspection = try CheckpointInspection(path: path, includeValues: values)
            if json {
                FileHandle.standardOutput.write(inspection.json().serialized(pretty: true))
                print()
                return
            }
            if let config = inspection.config {
                let kind = config.isMoE ? "MiniCPM-MoE, \(config.numExperts!) experts, top-\(config.topK ?? 2)" : "MiniCPM (dense)"
                print("\(path): \(kind), \(inspection.format == .pytorch ? "PyTorch .bin" : "safetensors") weights")
                print("  hidden \(config.hiddenSize), intermediate \(config.intermediateSize), \(config.numHiddenLayers) layers, \(config.numAttentionHeads) heads (\(config.numKeyValueHeads) kv), vocab \(config.vocabSize)")
                print("  scale_emb \(config.scaleEmb), dim_model_base \(config.dimModelBase), scale_depth \(config.scaleDepth), rope_theta \(config.ropeTheta), tied \(config.tieWordEmbeddings)")
            } else {
                print("\(path): \(inspection.format == .pytorch ? "PyTorch checkpoint" : "safetensors file")\(inspection.metadata.map { ", metadata \($0)" } ?? "")")
            }
            if let counts = inspection.parameters {
                print("  parameters: \(counts.total.formatted()) total, \(counts.nonEmbedding.formatted()) non-embedding, \(counts.activePerToken.formatted()) active per token")
            }
            let bytes = inspection.bytesByDType.sorted { $0.key < $1.key }.map { "\($0.key) \(ByteSize.format($0.value))" }.joined(separator: ", ")
            print("  \(inspection.tensors.count) tensors: \(bytes)")
            for tensor in inspection.tensors.prefix(12) {
                print("    \(tensor.name)  \(tensor.dtype) \(tensor.shape)")
            }
            if inspection.tensors.count > 12 { print("    … \(inspection.tensors.count - 12) more") }
            if !inspection.unexpected.isEmpty {
                print("  unexpected tensors: \(inspection.unexpected.joined(separator: ", "))")
            }
        }
    }
}
