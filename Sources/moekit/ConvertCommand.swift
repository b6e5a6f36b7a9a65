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

    @Option(help: "Storage dtype of floating-point tensors: keep, bf16, f16 or f32 (integer tensors keep theirs).")
    var dtype: String = "keep"

    @Option(name: .customLong("shard-size"), help: "Maximum shard size (5GB, 500MB, 2GiB, …).")
    var shardSize: String = "5GB"

    @Flag(help: "Replace an existing output directory.")
    var force = false

    @Flag(help: "No progress output.")
    var quiet = false

    func validate() throws {
        guard dtype.lowercased() == "keep" || StorageDTypeOption.parse(dtype) != nil else { throw ValidationError("--dtype must be keep, bf16, f16 or f32, got '\(dtype)'") }
        guard ByteSize.parse(shardSize) != nil else { throw ValidationError("--shard-size: '\(shardSize)' is not a size (e.g. 5GB, 500MB)") }
    }

    func run() throws {
        try reportingErrors {
            let options = CheckpointConverter.Options(
                dtype: dtype.lowercased() == "keep" ? nil : StorageDTypeOption.parse(dtype),
                maximumShardBytes: ByteSize.parse(shardSize) ?? ShardedSafetensorsWriter.defaultShardSize,
                replaceExisting: force, progress: quiet ? .quiet : .automatic)
            let start = Date()
            let result = try CheckpointConverter.run(directory: modelDirectory, outputDirectory: outputDirectory, options: options)
            print("wrote \(result.outputDirectory): \(result.tensorCount) tensors from \(result.sourceFormat == .pytorch ? "PyTorch .bin" : "safetensors"), \(ByteSize.format(result.bytesWritten)) in \(String(format: "%.2f", Date().timeIntervalSince(start)))s")
            print("  weights: \(result.weightFiles.joined(separator: ", "))")
            print("  copied: \(result.copiedFiles.joined(separator: ", "))")
        }
    }
}
