import Foundation
import Testing
@testable import MoEKit

/// `Trainer` end to end on small models: a resumed run equals the uninterrupted one bit for bit
/// (weights, optimiser moments, log rows), OUT_DIR is a loadable Hugging Face directory with its
/// training state beside the weights, options that shape the run cannot change on resume, and the
/// log carries the training columns and per-domain counts that satisfy the schema's invariants.
@Suite struct TrainerTests {
    /// A small model directory (dense, or MoE with `experts`) and a synthetic-corpus data file.
    static func setUp(_ directory: TemporaryDirectory, experts: Int? = nil, router: RouterConfiguration? = nil) throws -> (model: String, data: String) {
        var config = SmallModels.config(experts: experts)
        config.vocabSize = SyntheticCorpus.vocabularySize
        if let router { config.otherKeys["moekit_router"] = router.jsonValue }
        let model = directory.file(experts == nil ? "dense" : "moe")
        _ = try ModelInitializer.write(config: config, to: model, dtype: .float32, seed: 3, progress: .quiet)
        let data = directory.file("corpus.bin")
        if !FileManager.default.fileExists(atPath: data) {
            try SyntheticCorpus.generate(tokens: 6000, seed: 5).write(to: data)
        }
        return (model, data)
    }

    static func options(steps: Int) -> TrainingOptions {
        var options = TrainingOptions(steps: steps, batchSize: 2, sequenceLength: 16, learningRate: 0.01)
        options.warmupSteps = 1
        options.decayFraction = 0.5
        options.validationFraction = 0.1
        options.evaluationInterval = 2
        options.validationBatches = 2
        return options
    }

    static func tensors(_ directory: String) throws -> [String: [Float]] {
        let checkpoint = try ModelCheckpoint(directory: directory)
        var result: [String: [Float]] = [:]
        for name in checkpoint.names { result[name] = try checkpoint.floatTensor(name).values }
        return result
    }

    @Test(arguments: [false, true])
    func resumedRunEqualsUninterruptedRun(moe: Bool) throws {
        let directory = TemporaryDirectory()
        var router = RouterConfiguration()
        router.logitNoise = 0.1           // noise must be reproduced on resume too
        router.auxiliaryLossFreeBalancing = true
        let (model, data) = try Self.setUp(directory, experts: moe ? 4 : nil, router: moe ? router : nil)
        let options = Self.options(steps: 6)

        let straight = directory.file("straight"), straightLog = directory.file("straight.h5")
        try Trainer(modelDirectory: model, dataPath: data, outputDirectory: straight, logPath: straightLog, options: options).run()

        var firstHalf = options
        firstHalf.saveInterval = 3
        let resumed = directory.file("resumed"), resumedLog = directory.file("resumed.h5")
        // Interrupted after step 4: the save at step 3 is the last one, the log already holds step 4.
        var seen = 0
        struct Stop: Error {}
        do {
            let interrupted = try Trainer(modelDirectory: model, dataPath: data, outputDirectory: resumed, logPath: resumedLog, options: firstHalf)
            #expect(throws: Stop.self) {
                try interrupted.run { progress in
                    seen = progress.step
                    if progress.step == 4 { throw Stop() }
                }
            }
        }
        #expect(seen == 4)
        #expect(try TrainerState(path: resumed + "/training_state/trainer_state.json").completedSteps == 3)
        let continued = try Trainer(modelDirectory: model, dataPath: data, outputDirectory: resumed, logPath: resumedLog, options: firstHalf, resume: true)
        #expect(continued.startStep == 3)
        try continued.run()

        #expect(try Self.tensors(straight) == Self.tensors(resumed))
        let straightMoments = try SafetensorsFile(path: straight + "/training_state/optimizer.safetensors")
        let resumedMoments = try SafetensorsFile(path: resumed + "/training_state/optimizer.safetensors")
        for name in straightMoments.names {
            #expect(try straightMoments.floatTensor(name).values == resumedMoments.floatTensor(name).values, "moment \(name)")
        }
        let a = try RoutingLogReader(path: straightLog), b = try RoutingLogReader(path: resumedLog)
        #expect(a.stepCount == 6 && b.stepCount == 6)
        let rowsA = try a.steps(0 ..< 6), rowsB = try b.steps(0 ..< 6)
        #expect(rowsA.map(\.step) == rowsB.map(\.step))
        #expect(rowsA.map(\.loss) == rowsB.map(\.loss))
        #expect(rowsA.map { $0.layers.map(\.expertCounts) } == rowsB.map { $0.layers.map(\.expertCounts) })
        if moe {
            // The auxiliary-loss-free bias moved and was saved with the weights.
            let bias = try Self.tensors(straight)[MiniCPMTensorNames.routerBias(0)]
            #expect(bias != nil && bias!.contains { $0 != 0 })
        }
    }

    @Test func outputIsALoadableModelDirectoryAndTheLogHasTrainingColumns() throws {
        let directory = TemporaryDirectory()
        let (model, data) = try Self.setUp(directory, experts: 4)
        let out = directory.file("out"), log = directory.file("train.h5")
        let trainer = try Trainer(modelDirectory: model, dataPath: data, outputDirectory: out, logPath: log, options: Self.options(steps: 4))
        let summary = try trainer.run()
        #expect(summary.finalLoss.isFinite && summary.finalValidationLoss != nil)
        // Loads for inference; the router configuration travels in config.json.
        let loaded = try MiniCPMModel(directory: out)
        #expect(loaded.config.numExperts == 4)
        #expect(try MiniCPMConfig(path: out + "/config.json").router != nil)
        #expect(FileManager.default.fileExists(atPath: out + "/training_state/optimizer.safetensors"))
        #expect(!FileManager.default.fileExists(atPath: out + "/optimizer.safetensors"))

        let reader = try RoutingLogReader(path: log)
        #expect(reader.header.training && reader.header.domains == SyntheticCorpus.domainNames && reader.stepCount == 4)
        let steps = try reader.steps(0 ..< 4)
        #expect(steps.allSatisfy { $0.training?.languageModelLoss.isFinite == true && $0.learningRate > 0 })
        #expect(steps[1].training?.validationLoss.isFinite == true && steps[0].training?.validationLoss.isNaN == true)
        for step in steps {
            for layer in step.layers {
                #expect(layer.domainCounts?.reduce(0, +) == step.tokens * 2)
            }
        }
        // The model's learning-rate schedule is what the log recorded.
        #expect(steps.map(\.learningRate) == (0 ..< 4).map { trainer.schedule.learningRate(at: $0) })
    }

    @Test func existingOutputIsRefusedWithoutForceAndOptionsCannotChangeOnResume() throws {
        let directory = TemporaryDirectory()
        let (model, data) = try Self.setUp(directory)
        let out = directory.file("out")
        try Trainer(modelDirectory: model, dataPath: data, outputDirectory: out, logPath: nil, options: Self.options(steps: 2)).run()
        #expect(throws: FileError.alreadyExists(path: out)) {
            try Trainer(modelDirectory: model, dataPath: data, outputDirectory: out, logPath: nil, options: Self.options(steps: 2))
        }
        var changed = Self.options(steps: 2)
        changed.batchSize = 3
        #expect(throws: TrainingError.self) {
            try Trainer(modelDirectory: model, dataPath: data, outputDirectory: out, logPath: nil, options: changed, resume: true)
        }
        do {
            _ = try Trainer(modelDirectory: model, dataPath: data, outputDirectory: out, logPath: nil, options: changed, resume: true)
        } catch let error as TrainingError {
            #expect(error.errorDescription?.contains("--batch") == true)
        }
        #expect(throws: TrainingError.self) {
            try Trainer(modelDirectory: model, dataPath: data, outputDirectory: directory.file("nothing"), logPath: nil, options: Self.options(steps: 2), resume: true)
        }
    }

    /// A resumed MoE run must route as the saved run did: a changed --router, --aux-loss or --z-loss
    /// is refused naming the option; the same options (or none, the saved config's router) resume.
    @Test func resumeRefusesAChangedRouterOrLossCoefficient() throws {
        let directory = TemporaryDirectory()
        let (model, data) = try Self.setUp(directory, experts: 4)
        let out = directory.file("out")
        var original = Self.options(steps: 4)
        original.auxiliaryLossCoefficient = 0.02
        original.saveInterval = 2
        let first = try Trainer(modelDirectory: model, dataPath: data, outputDirectory: out, logPath: nil, options: original)
        try first.save(completedSteps: 0, loss: .nan, languageModelLoss: .nan, validationLoss: .nan)
        func refusal(_ change: (inout TrainingOptions) throws -> Void) throws -> String? {
            var options = original
            try change(&options)
            do {
                _ = try Trainer(modelDirectory: model, dataPath: data, outputDirectory: out, logPath: nil, options: options, resume: true)
                return nil
            } catch let TrainingError.invalidOption(name, _) {
                return name
            }
        }
        #expect(try refusal { $0.router = try RouterConfiguration(text: "switch") } == "router")
        #expect(try refusal { $0.auxiliaryLossCoefficient = 0.05 } == "aux-loss")
        #expect(try refusal { $0.zLossCoefficient = 0.5 } == "z-loss")
        #expect(try refusal { _ in } == nil)
        #expect(try refusal { $0.auxiliaryLossCoefficient = nil } == nil)
    }

    @Test func routerOptionsOnADenseModelAreRefused() throws {
        let directory = TemporaryDirectory()
        let (model, data) = try Self.setUp(directory)
        var options = Self.options(steps: 2)
        options.auxiliaryLossCoefficient = 0.01
        #expect(throws: TrainingError.invalidOption(name: "aux-loss", reason: "\(model) is a dense model (config.json has no num_experts)")) {
            try Trainer(modelDirectory: model, dataPath: data, outputDirectory: directory.file("out"), logPath: nil, options: options)
        }
    }

    /// A dense run's log has no /routing group, only the step columns.
    @Test func denseRunLogsOnlyStepColumns() throws {
        let directory = TemporaryDirectory()
        let (model, data) = try Self.setUp(directory)
        let log = directory.file("dense.h5")
        try Trainer(modelDirectory: model, dataPath: data, outputDirectory: directory.file("out"), logPath: log, options: Self.options(steps: 3)).run()
        let reader = try RoutingLogReader(path: log)
        #expect(reader.header.isDense && reader.stepCount == 3)
    }
}
