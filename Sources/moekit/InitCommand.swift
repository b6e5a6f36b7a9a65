import ArgumentParser
import Foundation
import MoEKit

struct InitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Write a freshly initialised dense MiniCPM checkpoint.",
        discussion: """
        Matrices are drawn from N(0, (0.1/sqrt(hidden/dim_model_base))²), norms set to 1, \
        deterministically for a seed. Presets: tiny (a few MB), minicpm-1.2b, minicpm-2.4b \
        (the published shapes). Large checkpoints are written tensor by tensor.
        """
    )

    @Argument(help: "Output model directory (must not exist unless --force).")
    var outputDirectory: String

    @Option(help: "Model shape.")
    var preset: MiniCPMPreset = .tiny

    @Option(help: "Random seed.")
    var seed: UInt64 = 0

    @Option(help: "Storage dtype.")
    var dtype: StorageDType = .bf16

    @Option(help: "Override the number of layers.")
    var layers: Int?

    @OptionGroup var output: OutputOptions

    func validate() throws {
        if let layers { try OptionRanges.check("--layers", layers, OptionRanges.layers) }
    }

    func run() throws {
        try reportingErrors {
            var config = preset.config
            if let layers { config.numHiddenLayers = layers }
            let summary = try ModelInitializer.write(config: config, to: outputDirectory, dtype: dtype.safetensors,
                                                     seed: seed, replaceExisting: output.force, progress: output.progress)
            let counts = summary.parameters
            print("wrote \(outputDirectory): \(preset.rawValue), \(config.numHiddenLayers) layers, \(dtype.rawValue), seed \(seed)")
            print("  parameters: \(counts.total.formatted()) total, \(counts.nonEmbedding.formatted()) non-embedding")
            print("  files: config.json, \(summary.files.joined(separator: ", ")) (\(ByteSize.format(summary.bytesWritten)))")
        }
    }
}

extension Int {
    func formatted() -> String {
        let digits = String(self.magnitude)
        var groups: [Substring] = []
        var end = digits.endIndex
        while end > digits.startIndex {
            let start = digits.index(end, offsetBy: -3, limitedBy: digits.startIndex) ?? digits.startIndex
            groups.insert(digits[start ..< end], at: 0)
            end = start
        }
        return (self < 0 ? "-" : "") + groups.joined(separator: ",")
    }
}
