import Foundation

/// `moekit demo` / `make demo`: the MiniCPM-MoE recipe end to end at laptop scale.
///
/// 1. a fresh synthetic multi-domain corpus (`SyntheticCorpus`, a seed the shipped model never saw);
/// 2. the shipped tiny dense MiniCPM (`Notebooks-data/demo-dense`, trained by MoEKit on the same
///    kind of corpus — the command is in its `README.md`) sparse-upcycled to E experts, top-k, the
///    router drawn from N(0, 0.01) as in the MiniCPM paper, checked against the dense logits;
/// 3. the MoE model trained further with the load-balancing loss (coefficient 0.01) under WSD,
///    every step logged (loss, lr, routing statistics, per-domain expert counts);
/// 4. the dense model trained the same steps on the same batches, as the baseline;
/// 5. a report: the dense vs MoE loss at equal steps, the expert load and domain specialisation
///    of the MoE run, dense vs MoE throughput, and where every file is.
public struct DemoPipeline {
    public struct Options: Sendable {
        /// Everything the demo writes goes here (`outputNames`, nothing else).
        public var outputDirectory = "demo-out"
        /// Run in a non-empty `outputDirectory`, replacing the demo's own files there (and only
        /// those: other files in the directory are kept).
        public var replaceExisting = false
        /// The shipped dense model.
        public var denseModel = "Notebooks-data/demo-dense"
        public var experts = 8
        public var topK = 2
        public var corpusTokens = 400_000
        public var corpusSeed: UInt64 = 2026
        public var steps = 120
        public var batchSize = 8
        public var sequenceLength = 128
        public var learningRate: Float = 0.01
        public var auxiliaryLossCoefficient: Float = 0.01
        public var seed: UInt64 = 0
        public init() {}
    }

    /// One row of the dense vs MoE loss comparison.
    public struct LossRow: Sendable {
        public var step: Int
        public var dense: Float
        public var mixture: Float
    }

    public struct Report: Sendable {
        public var lossRows: [LossRow]
        public var denseValidationLoss: Float?
        public var mixtureValidationLoss: Float?
        public var denseTrainingTokensPerSecond: Double
        public var mixtureTrainingTokensPerSecond: Double
        public var denseForwardTokensPerSecond: Double
        public var mixtureForwardTokensPerSecond: Double
        public var inspection: RoutingLogInspection
        public var files: [(path: String, what: String)]
    }

    public let options: Options
    public init(options: Options = Options()) { self.options = options }

    /// The files and directories the demo writes in its output directory.
    public static let outputNames = ["corpus.bin", "corpus.domains.bin", "corpus.domains.json", "moe-upcycled", "moe-trained",
                                     "dense-trained", "moe-train.h5", "dense-train.h5"]

    /// Creates the output directory, or checks an existing one: a file is refused, a non-empty
    /// directory needs `replaceExisting`, and then only the demo's own `outputNames` are removed.
    func prepareOutputDirectory() throws {
        let out = options.outputDirectory, manager = FileManager.default
        var isDirectory: ObjCBool = false
        if manager.fileExists(atPath: out, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw CheckpointError.invalidArgument("\(out): exists and is not a directory; choose another --out") }
            let entries = (try? manager.contentsOfDirectory(atPath: out)) ?? []
            guard entries.isEmpty || options.replaceExisting else {
                throw CheckpointError.invalidArgument("\(out): directory is not empty; pass --force to replace the demo's files in it (other files are kept)")
            }
            for name in Self.outputNames where entries.contains(name) {
                do { try manager.removeItem(atPath: out + "/" + name) } catch {
                    throw CheckpointError.invalidArgument("\(out)/\(name): cannot remove: \(error.localizedDescription)")
                }
            }
            return
        }
        do {
            try manager.createDirectory(atPath: out, withIntermediateDirectories: true)
        } catch {
            throw CheckpointError.invalidArgument("\(out): cannot create directory: \(error.localizedDescription)")
        }
    }

    /// Runs the demo; `say` receives each progress line as it happens.
    public func run(say: (String) -> Void, trainingProgress: (Trainer.Progress) throws -> Void = { _ in }) throws -> Report {
        let out = options.outputDirectory
        let manager = FileManager.default
        guard manager.fileExists(atPath: options.denseModel + "/config.json") else {
            throw CheckpointError.missingFile(path: options.denseModel + "/config.json")
        }
        try prepareOutputDirectory()
        let corpusPath = out + "/corpus.bin"
        let moeInitial = out + "/moe-upcycled", moeTrained = out + "/moe-trained", denseTrained = out + "/dense-trained"
        let moeLog = out + "/moe-train.h5", denseLog = out + "/dense-train.h5"

        // 1. Data.
        let corpus = SyntheticCorpus.generate(tokens: options.corpusTokens, seed: options.corpusSeed)
        try corpus.write(to: corpusPath)
        let counts = corpus.domainTokenCounts
        say("1. corpus: \(corpusPath), \(corpus.tokens.count) tokens in \(SyntheticCorpus.domainNames.count) domains ("
            + zip(SyntheticCorpus.domainNames, counts).map { "\($0) \($1)" }.joined(separator: ", ") + ")")

        // 2. Upcycle.
        var upcycle = UpcycleOptions(experts: options.experts, topK: options.topK)
        upcycle.seed = options.seed
        upcycle.progress = .quiet
        upcycle.verifyTokens = 16
        let plan = try UpcyclePlan(denseDirectory: options.denseModel, options: upcycle)
        let upcycled = try Upcycler.run(plan, outputDirectory: moeInitial, verifier: MiniCPMForwardLogits())
        let verified = upcycled.verification.map { String(format: "; logits equal the dense model's to %.1e (max relative difference)", $0.maxRelativeDifference) } ?? ""
        say("2. upcycled \(options.denseModel) → \(moeInitial): \(options.experts) experts (copies of each MLP), top-\(options.topK), router ~ N(0, 0.01)\(verified)")

        // 3–4. Train both the same steps on the same batches.
        var training = TrainingOptions(steps: options.steps, batchSize: options.batchSize, sequenceLength: options.sequenceLength,
                                       learningRate: options.learningRate)
        training.seed = options.seed
        training.validationFraction = 0.05
        training.evaluationInterval = max(1, options.steps / 4)
        training.validationBatches = 4
        var moeOptions = training
        moeOptions.auxiliaryLossCoefficient = options.auxiliaryLossCoefficient
        let moeTrainer = try Trainer(modelDirectory: moeInitial, dataPath: corpusPath, outputDirectory: moeTrained, logPath: moeLog,
                                     options: moeOptions, replaceExisting: true)
        say("3. training the MoE model \(options.steps) steps (batch \(options.batchSize) × \(options.sequenceLength) tokens, WSD, lr \(options.learningRate), load-balancing loss \(options.auxiliaryLossCoefficient)), logging to \(moeLog)")
        let moeSummary = try moeTrainer.run(progress: trainingProgress)
        let denseTrainer = try Trainer(modelDirectory: options.denseModel, dataPath: corpusPath, outputDirectory: denseTrained, logPath: denseLog,
                                       options: training, replaceExisting: true)
        say("4. training the dense model the same \(options.steps) steps on the same batches, logging to \(denseLog)")
        let denseSummary = try denseTrainer.run(progress: trainingProgress)

        // 5. Report.
        let moeSteps = try RoutingLogReader(path: moeLog).steps(0 ..< options.steps)
        let denseSteps = try RoutingLogReader(path: denseLog).steps(0 ..< options.steps)
        let shown = RoutingLogInspection.evenlySpaced(count: options.steps, limit: 6)
        let rows = shown.map { LossRow(step: $0, dense: denseSteps[$0].training?.languageModelLoss ?? .nan,
                                       mixture: moeSteps[$0].training?.languageModelLoss ?? .nan) }
        let inspection = try RoutingLogInspection(path: moeLog, selection: .last(max(1, options.steps / 4)))

        let forwardBatch = moeTrainer.sampler.validationBatches(maximumBatches: 1).first?.inputs ?? [Array(corpus.tokens.prefix(options.sequenceLength).map(Int.init))]
        let denseForward = try Self.forwardTokensPerSecond(model: denseTrainer.model, sequences: forwardBatch)
        moeTrainer.model.configurableRouter?.isTraining = false
        let moeForward = try Self.forwardTokensPerSecond(model: moeTrainer.model, sequences: forwardBatch)

        let files: [(String, String)] = [
            (corpusPath, "synthetic corpus (uint16 token ids) with corpus.domains.bin / .json domain labels"),
            (moeInitial, "the upcycled MoE before training (with upcycle-report.json)"),
            (moeTrained, "the MoE after training: Hugging Face directory, training_state/ for --resume"),
            (denseTrained, "the dense baseline after the same training"),
            (moeLog, "MoE training log: loss, lr, routing statistics, domain counts (HDF5, h5py-readable while it grows)"),
            (denseLog, "dense training log"),
        ]
        return Report(lossRows: rows, denseValidationLoss: denseSummary.finalValidationLoss, mixtureValidationLoss: moeSummary.finalValidationLoss,
                      denseTrainingTokensPerSecond: denseSummary.tokensPerSecond, mixtureTrainingTokensPerSecond: moeSummary.tokensPerSecond,
                      denseForwardTokensPerSecond: denseForward, mixtureForwardTokensPerSecond: moeForward, inspection: inspection,
                      files: files.map { (path: $0.0, what: $0.1) })
    }

    /// Median tokens/s of 5 full forward passes over `sequences` (after one warm-up).
    static func forwardTokensPerSecond(model: MiniCPMModel, sequences: [[Int]]) throws -> Double {
        let tokens = sequences.reduce(0) { $0 + $1.count }
        _ = try model.forward(sequences)
        var times: [Double] = []
        for _ in 0 ..< 5 {
            let start = Date()
            _ = try model.forward(sequences)
            times.append(Date().timeIntervalSince(start))
        }
        return Double(tokens) / max(times.sorted()[times.count / 2], 1e-9)
    }
}

extension DemoPipeline.Report {
    /// The demo's closing report as text.
    public func text(colour: Bool) -> String {
        var lines = ["", "Language-model loss at equal steps (training batch; same batches for both)", "     step     dense       MoE"]
        for row in lossRows {
            lines.append(String(format: "%9d %9.4f %9.4f", row.step, row.dense, row.mixture))
        }
        if let dense = denseValidationLoss, let mixture = mixtureValidationLoss {
            lines.append(String(format: "validation %7.4f %9.4f   (held-out 5%% of the corpus, after the last step)", dense, mixture))
        }
        lines.append("")
        lines.append("Expert load of the MoE run (last \(inspection.steps.count) step\(inspection.steps.count == 1 ? "" : "s"))")
        lines.append(inspection.textReport(colour: colour))
        lines.append("")
        lines.append("Throughput, tiny model, this machine")
        lines.append(String(format: "  training (forward + backward + AdamW): dense %.0f tokens/s, MoE %.0f tokens/s (MoE/dense %.2f)",
                            denseTrainingTokensPerSecond, mixtureTrainingTokensPerSecond, mixtureTrainingTokensPerSecond / max(denseTrainingTokensPerSecond, 1e-9)))
        lines.append(String(format: "  inference forward: dense %.0f tokens/s, MoE %.0f tokens/s (MoE/dense %.2f)",
                            denseForwardTokensPerSecond, mixtureForwardTokensPerSecond, mixtureForwardTokensPerSecond / max(denseForwardTokensPerSecond, 1e-9)))
        lines.append("")
        lines.append("Files")
        for file in files { lines.append("  \(file.path): \(file.what)") }
        lines.append("  Plot the logs: Notebooks-data/training-analysis.ipynb (MOEKIT_TRAINING_LOG=\(files[4].path) MOEKIT_DENSE_LOG=\(files[5].path))")
        return lines.joined(separator: "\n")
    }
}
