import ArgumentParser
import Foundation
import MoEKit

struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "The MiniCPM-MoE recipe at laptop scale: upcycle the shipped tiny dense model, train it with load balancing, compare.",
        discussion: """
        Generates a synthetic multi-domain corpus, upcycles Notebooks-data/demo-dense (a tiny dense \
        MiniCPM trained by MoEKit) to --experts experts with top-k routing (router ~ N(0, 0.01), \
        verified against the dense logits), trains the MoE model with the load-balancing loss under \
        WSD while logging every step, trains the dense model the same steps as a baseline, and \
        prints the dense vs MoE loss at equal steps, the expert load with per-domain \
        specialisation, dense vs MoE throughput and where every file is.
        """
    )

    @Option(help: "Output directory (created; a non-empty one needs --force).")
    var out: String = "demo-out"
    @Flag(help: "Run in a non-empty --out directory, replacing the demo's own files there (other files are kept).")
    var force = false
    @Option(help: "The dense model to start from.")
    var denseModel: String = "Notebooks-data/demo-dense"
    @Option(help: "Training steps of each run.")
    var steps: Int = 120
    @Option(help: "Experts of the MoE.")
    var experts: Int = 8
    @Option(name: .customLong("top-k"), help: "Experts per token.")
    var topK: Int = 2
    @OptionGroup var compute: ComputeOptions
    @Flag(help: "No per-step progress lines.")
    var quiet = false

    func validate() throws {
        try OptionRanges.check("--steps", steps, 4 ... 1_000_000)
        try OptionRanges.check("--experts", experts, 2 ... 256)
        try OptionRanges.check("--top-k", topK, 1 ... experts)
    }

    func run() throws {
        try reportingErrors {
            compute.apply()
            var options = DemoPipeline.Options()
            options.outputDirectory = out
            options.replaceExisting = force
            options.denseModel = denseModel
            options.steps = steps
            options.experts = experts
            options.topK = topK
            let started = Date()
            let printer = TrainingProgressPrinter(style: quiet ? .quiet : .automatic)
            let pipeline = DemoPipeline(options: options)
            // Unbuffered, so the stage lines and the per-step progress on stderr stay in order when piped.
            let report = try pipeline.run(stage: { FileHandle.standardOutput.write(Data((Self.line($0, options: options, paths: pipeline.paths) + "\n").utf8)) },
                                          trainingProgress: printer.report)
            print(Self.text(report, colour: isatty(STDOUT_FILENO) == 1))
            print(String(format: "demo finished in %.0f s", Date().timeIntervalSince(started)))
        }
    }

    /// The progress line of a pipeline stage.
    static func line(_ stage: DemoPipeline.Stage, options: DemoPipeline.Options, paths: DemoPipeline.Paths) -> String {
        switch stage {
        case let .corpus(tokens, names, counts):
            return "1. corpus: \(paths.corpus), \(tokens) tokens in \(names.count) domains ("
                + zip(names, counts).map { "\($0) \($1)" }.joined(separator: ", ") + ")"
        case let .upcycled(verification):
            let verified = verification.map { String(format: "; logits equal the dense model's to %.1e (max relative difference)", $0.maxRelativeDifference) } ?? ""
            return "2. upcycled \(options.denseModel) → \(paths.upcycled): \(options.experts) experts (copies of each MLP), top-\(options.topK), router ~ N(0, 0.01)\(verified)"
        case .trainingMoE:
            return "3. training the MoE model \(options.steps) steps (batch \(options.batchSize) × \(options.sequenceLength) tokens, WSD, lr \(options.learningRate), load-balancing loss \(options.auxiliaryLossCoefficient)), logging to \(paths.moeLog)"
        case .trainingDense:
            return "4. training the dense model the same \(options.steps) steps on the same batches, logging to \(paths.denseLog)"
        }
    }

    /// The files the demo leaves, each with what it holds.
    static func files(_ paths: DemoPipeline.Paths) -> [(path: String, what: String)] {
        [
            (paths.corpus, "synthetic corpus (uint16 token ids) with corpus.domains.bin / .json domain labels"),
            (paths.upcycled, "the upcycled MoE before training (with upcycle-report.json)"),
            (paths.trainedMoE, "the MoE after training: Hugging Face directory, training_state/ for --resume"),
            (paths.trainedDense, "the dense baseline after the same training"),
            (paths.moeLog, "MoE training log: loss, lr, routing statistics, domain counts (HDF5, h5py-readable while it grows)"),
            (paths.denseLog, "dense training log"),
        ]
    }

    /// The demo's closing report as text.
    static func text(_ report: DemoPipeline.Report, colour: Bool) -> String {
        let lossRows = report.lossRows, inspection = report.inspection, files = Self.files(report.paths)
        let denseValidationLoss = report.denseValidationLoss, moeValidationLoss = report.moeValidationLoss
        let denseTrainingTokensPerSecond = report.denseTrainingTokensPerSecond, moeTrainingTokensPerSecond = report.moeTrainingTokensPerSecond
        let denseForwardTokensPerSecond = report.denseForwardTokensPerSecond, moeForwardTokensPerSecond = report.moeForwardTokensPerSecond
        var lines = ["", "Language-model loss at equal steps (training batch; same batches for both)", "     step     dense       MoE"]
        for row in lossRows {
            lines.append(String(format: "%9d %9.4f %9.4f", row.step, row.dense, row.moe))
        }
        if let dense = denseValidationLoss, let moe = moeValidationLoss {
            lines.append(String(format: "validation %7.4f %9.4f   (held-out 5%% of the corpus, after the last step)", dense, moe))
        }
        lines.append("")
        lines.append("Expert load of the MoE run (last \(inspection.steps.count) step\(inspection.steps.count == 1 ? "" : "s"))")
        lines.append(inspection.textReport(colour: colour))
        lines.append("")
        lines.append("Throughput, tiny model, this machine")
        lines.append(String(format: "  training (forward + backward + AdamW): dense %.0f tokens/s, MoE %.0f tokens/s (MoE/dense %.2f)",
                            denseTrainingTokensPerSecond, moeTrainingTokensPerSecond, moeTrainingTokensPerSecond / max(denseTrainingTokensPerSecond, 1e-9)))
        lines.append(String(format: "  inference forward: dense %.0f tokens/s, MoE %.0f tokens/s (MoE/dense %.2f)",
                            denseForwardTokensPerSecond, moeForwardTokensPerSecond, moeForwardTokensPerSecond / max(denseForwardTokensPerSecond, 1e-9)))
        lines.append("")
        lines.append("Files")
        for file in files { lines.append("  \(file.path): \(file.what)") }
        lines.append("  Plot the logs: Notebooks-data/training-analysis.ipynb (MOEKIT_TRAINING_LOG=\(files[4].path) MOEKIT_DENSE_LOG=\(files[5].path))")
        return lines.joined(separator: "\n")
    }
}
