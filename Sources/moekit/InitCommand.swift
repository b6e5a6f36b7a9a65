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

    @Option(help: "Model shape: \(MiniCPMPreset.allCases.map(\.rawValue).joined(separator: ", ")).")
    var preset: String = "tiny"

    @Option(help: "Random seed.")
    var seed: UInt64 = 0

    @Option(help: "Storage dtype: bf16, f16 or f32.")
    var dtype: String = "bf16"

    @Option(help: "Override the number of layers.")
    var layers: Int?

    @Flag(help: "Replace an existing output directory.")
    var force = false

    @Flag(help: "No progress output.")
    var quiet = false

    func validate() throws {
        guard MiniCPMPreset(rawValue: preset) != nil else {
            throw ValidationError("unknown preset '\(preset)'; choose one of \(MiniCPMPreset.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard StorageDTypeOption.parse(dtype) != nil else { throw ValidationError("--dtype must be bf16, f16 or f32, got '\(dtype)'") }
        if let layers { try OptionRanges.check("--layers", layers, OptionRanges.layers) }
    }

    func run() throws {
        try reportingErrors {
            var config = MiniCPMPreset(rawValue: preset)!.config
            if let layers { config.numHiddenLayers = layers }
            let summary = try ModelInitializer.write(config: config, to: outputDirectory, dtype: StorageDTypeOption.parse(dtype)!,
                                                     seed: seed, replaceExisting: force, progress: quiet ? .quiet : .automatic)
            let counts = summary.parameters
            print("wrote \(outputDirectory): \(preset), \(config.numHiddenLayers) layers, \(dtype), seed \(seed)")
            print("  parameters: \(counts.total.formatted()) total, \(counts.nonEmbedding.formatted()) non-embedding")
            print("  files: config.json, \(summary.files.joined(separator: ", ")) (\(ByteSize.format(summary.bytesWritten)))")
        }
    }
}

enum StorageDTypeOption {
    static func parse(_ text: String) -> SafetensorsDType? {
        switch text.lowercased() {
        case "bf16", "bfloat16": return .bfloat16
        case "f16", "fp16", "float16": return .float16
        case "f32", "fp32", "float32": return .float32
        default: return nil
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
