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
/// 5. the figures for a report: the dense vs MoE loss at equal steps, the expert load and domain
///    specialisation of the MoE run, dense vs MoE throughput, and where every file is.
///
/// The library runs the steps and returns figures; `moekit demo` words the stage lines and report.
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
        var corpusSeed: UInt64 = 2026
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
        public var moe: Float
    }

    /// Where the demo writes, inside `Options.outputDirectory` (the directories and files of `outputNames`).
    public struct Paths: Sendable {
        public let corpus: String, upcycled: String, trainedMoE: String, trainedDense: String, moeLog: String, denseLog: String

        init(outputDirectory out: String) {
            corpus = out + "/corpus.bin"
            upcycled = out + "/moe-upcycled"
            trainedMoE = out + "/moe-trained"
            trainedDense = out + "/dense-trained"
            moeLog = out + "/moe-train.h5"
            denseLog = out + "/dense-train.h5"
        }
    }

    /// A step about to run or just done, for the progress lines.
    public enum Stage: Sendable {
        /// The corpus is written: its token count and each domain's.
        case corpus(tokens: Int, domainNames: [String], domainTokens: [Int])
        /// The dense model is upcycled, with the verification against its logits.
        case upcycled(verification: UpcycleVerification?)
        /// The MoE model's training starts.
        case trainingMoE
        /// The dense baseline's training starts.
        case trainingDense
    }

    public struct Report: Sendable {
        public var lossRows: [LossRow]
        public var denseValidationLoss: Float?
        public var moeValidationLoss: Float?
        public var denseTrainingTokensPerSecond: Double
        public var moeTrainingTokensPerSecond: Double
        public var denseForwardTokensPerSecond: Double
        public var moeForwardTokensPerSecond: Double
        public var inspection: RoutingLogInspection
        public var paths: Paths
    }

    public let options: Options
    public init(options: Options = Options()) { self.options = options }

    /// The files and directories the demo writes in its output directory.
    static let outputNames = ["corpus.bin", "corpus.domains.bin", "corpus.domains.json", "moe-upcycled", "moe-trained",
                                     "dense-trained", "moe-train.h5", "dense-train.h5"]

    /// Creates the output directory, or checks an existing one: a file is refused, a non-empty
    /// directory needs `replaceExisting`, and then only the demo's own `outputNames` are removed.
    func prepareOutputDirectory() throws(FileError) {
        let out = options.outputDirectory, manager = FileManager.default
        var isDirectory: ObjCBool = false
        if manager.fileExists(atPath: out, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw .notADirectory(path: out, advice: "choose another --out") }
            let entries = (try? manager.contentsOfDirectory(atPath: out)) ?? []
            guard entries.isEmpty || options.replaceExisting else {
                throw .directoryNotEmpty(path: out, advice: "pass --force to replace the demo's files in it (other files are kept)")
            }
            for name in Self.outputNames where entries.contains(name) {
                do { try manager.removeItem(atPath: out + "/" + name) } catch {
                    throw .cannotRemove(path: out + "/" + name, reason: error.localizedDescription)
                }
            }
            return
        }
        do {
            try manager.createDirectory(atPath: out, withIntermediateDirectories: true)
        } catch {
            throw .cannotCreateDirectory(path: out, reason: error.localizedDescription)
        }
    }

    /// Where this run writes.
    public var paths: Paths { Paths(outputDirectory: options.outputDirectory) }

    /// Runs the demo; `stage` is told each step as it happens.
    public func run(stage: (Stage) -> Void, trainingProgress: (Trainer.Progress) throws -> Void = { _ in }) throws -> Report {
        let manager = FileManager.default
        guard manager.fileExists(atPath: options.denseModel + "/config.json") else {
            throw CheckpointError.missingFile(path: options.denseModel + "/config.json")
        }
        try prepareOutputDirectory()
        let paths = self.paths
        let corpusPath = paths.corpus
        let moeInitial = paths.upcycled, moeTrained = paths.trainedMoE, denseTrained = paths.trainedDense
        let moeLog = paths.moeLog, denseLog = paths.denseLog

        // 1. Data.
        let corpus = SyntheticCorpus.generate(tokens: options.corpusTokens, seed: options.corpusSeed)
        try corpus.write(to: corpusPath)
        stage(.corpus(tokens: corpus.tokens.count, domainNames: SyntheticCorpus.domainNames, domainTokens: corpus.domainTokenCounts))

        // 2. Upcycle.
        var upcycle = UpcycleOptions(experts: options.experts, topK: options.topK)
        upcycle.seed = options.seed
        upcycle.progress = .quiet
        upcycle.verifyTokens = 16
        let plan = try UpcyclePlan(denseDirectory: options.denseModel, options: upcycle)
        let upcycled = try Upcycler.run(plan, outputDirectory: moeInitial, verifier: MiniCPMForwardLogits())
        stage(.upcycled(verification: upcycled.verification))

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
        stage(.trainingMoE)
        let moeSummary = try moeTrainer.run(progress: trainingProgress)
        let denseTrainer = try Trainer(modelDirectory: options.denseModel, dataPath: corpusPath, outputDirectory: denseTrained, logPath: denseLog,
                                       options: training, replaceExisting: true)
        stage(.trainingDense)
        let denseSummary = try denseTrainer.run(progress: trainingProgress)

        // 5. Report.
        let moeSteps = try RoutingLogReader(path: moeLog).steps(0 ..< options.steps)
        let denseSteps = try RoutingLogReader(path: denseLog).steps(0 ..< options.steps)
        let shown = RoutingLogInspection.evenlySpaced(count: options.steps, limit: 6)
        let rows = shown.map { LossRow(step: $0, dense: denseSteps[$0].training?.languageModelLoss ?? .nan,
                                       moe: moeSteps[$0].training?.languageModelLoss ?? .nan) }
        let inspection = try RoutingLogInspection(path: moeLog, selection: .last(max(1, options.steps / 4)))

        let forwardBatch = moeTrainer.sampler.validationBatches(maximumBatches: 1).first?.inputs ?? [Array(corpus.tokens.prefix(options.sequenceLength).map(Int.init))]
        let denseForward = try Self.forwardTokensPerSecond(model: denseTrainer.model, sequences: forwardBatch)
        moeTrainer.model.configurableRouter?.isTraining = false
        let moeForward = try Self.forwardTokensPerSecond(model: moeTrainer.model, sequences: forwardBatch)

        return Report(lossRows: rows, denseValidationLoss: denseSummary.finalValidationLoss, moeValidationLoss: moeSummary.finalValidationLoss,
                      denseTrainingTokensPerSecond: denseSummary.tokensPerSecond, moeTrainingTokensPerSecond: moeSummary.tokensPerSecond,
                      denseForwardTokensPerSecond: denseForward, moeForwardTokensPerSecond: moeForward, inspection: inspection,
                      paths: paths)
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
