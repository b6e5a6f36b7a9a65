import ArgumentParser
import Foundation
import MoEKit

struct ConvertCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert",
        abstract: "Write a model directory's weights (PyTorch .bin or safetensors) as safetensors.",
        discussion: """
        Reads pytorch_model.bin (or its shards with pytorch_model.bin.index.json) without running its \
        pickle: only state-dict globals are accepted, anything else is refused by name. Writes \
        model.safetensors, or shards plus model.safetensors.index.json beyond --shard-size, and copies \
        config.json (torch_dtype updated when --dtype converts) and every other file of the directory. \
        The output appears only when complete.
        """
    )

    @Argument(help: "Model directory (config.json + pytorch_model.bin or safetensors).")
    var modelDirectory: String

    @Argument(help: "Output directory (must not exist unless --force).")
    var outputDirectory: String

    @OptionGroup var weights: WeightOutputOptions

    @OptionGroup var output: OutputOptions

    func run() throws {
        try reportingErrors {
            let options = CheckpointConverter.Options(
                dtype: weights.dtype.safetensors, maximumShardBytes: weights.shardSize.bytes,
                replaceExisting: output.force, progress: output.progress)
            let start = Date()
            let result = try CheckpointConverter.run(directory: modelDirectory, outputDirectory: outputDirectory, options: options)
            print("wrote \(result.outputDirectory): \(result.tensorCount) tensors from \(result.sourceFormat == .pytorch ? "PyTorch .bin" : "safetensors"), \(ByteSize.format(result.bytesWritten)) in \(String(format: "%.2f", Date().timeIntervalSince(start)))s")
            print("  weights: \(result.weightFiles.joined(separator: ", "))")
            print("  copied: \(result.copiedFiles.joined(separator: ", "))")
        }
    }
}
