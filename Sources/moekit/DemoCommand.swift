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
            let printer = TrainingProgressPrinter(quiet: quiet)
            // Unbuffered, so the stage lines and the per-step progress on stderr stay in order when piped.
            let report = try DemoPipeline(options: options).run(say: { FileHandle.standardOutput.write(Data(($0 + "\n").utf8)) },
                                                                trainingProgress: printer.report)
            print(report.text(colour: isatty(STDOUT_FILENO) == 1))
            print(String(format: "demo finished in %.0f s", Date().timeIntervalSince(started)))
        }
    }
}
