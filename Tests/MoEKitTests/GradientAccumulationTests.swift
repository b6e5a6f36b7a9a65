import Foundation
import Testing
@testable import MoEKit

/// `train --accumulate N --balance micro|global|sequence`: the summed gradient of N micro-batches
/// is the gradient of the global batch's objective. Where that objective is the one a single
/// pass over the whole batch computes — global balancing, sequence-wise balancing, and micro
/// balancing without a load-balancing term — the accumulated loss and gradient equal the big
/// batch's; micro balancing with a load-balancing term is the share-weighted mean of the
/// micro-batches' own losses instead.
@Suite struct GradientAccumulationTests {
    /// A 4-expert top-2 model and its trainer with `accumulate` micro-batches; batch of 4 × 16.
    static func trainer(_ directory: TemporaryDirectory, accumulate: Int, balance: RouterLoss.Balance, router: RouterConfiguration) throws -> Trainer {
        let model = directory.file("moe"), data = directory.file("corpus.bin")
        if !FileManager.default.fileExists(atPath: model) { _ = try TrainerTests.setUp(directory, experts: 4, router: router) }
        var options = TrainingOptions(steps: 2, batchSize: 4, sequenceLength: 16, learningRate: 0.01)
        options.accumulationSteps = accumulate
        options.balance = balance
        return try Trainer(modelDirectory: model, dataPath: data, outputDirectory: directory.file("out-\(accumulate)-\(balance)"), logPath: nil,
                           options: options)
    }

    /// The sampler's first batch with a few targets ignored, so the micro-batches count different
    /// numbers of targets (the cross-entropy weights w_m are then not 1/N).
    static func batch(_ trainer: Trainer) -> TrainingBatch {
        var batch = trainer.sampler.batch(at: 0)
        for position in 0 ..< 5 { batch.targets[0][position] = -1 }
        return batch
    }

    static func router(lb: Float, z: Float, scoring: RouterConfiguration.Scoring = .softmax) -> RouterConfiguration {
        var router = RouterConfiguration()
        router.loadBalancingCoefficient = lb
        router.zLossCoefficient = z
        router.scoring = scoring
        return router
    }

    static func gradients(_ result: MiniCPMModel.StepResult) -> [Float] {
        result.gradients?.parameterTensors.flatMap(\.values) ?? []
    }

    @Test(arguments: [(RouterLoss.Balance.global, RouterConfiguration.Scoring.softmax), (.sequence, .softmax), (.sequence, .sigmoid),
                      (.micro, .softmax)])
    func accumulatedGradientEqualsOneBigBatch(balance: RouterLoss.Balance, scoring: RouterConfiguration.Scoring) throws {
        let directory = TemporaryDirectory()
        // Micro balancing equals the big batch only without a load-balancing term; the z-loss (a
        // mean over tokens) adds up exactly under every balance.
        let router = Self.router(lb: balance == .micro ? 0 : 0.5, z: 0.01, scoring: scoring)
        let whole = try Self.trainer(directory, accumulate: 1, balance: balance, router: router)
        let accumulated = try Self.trainer(directory, accumulate: 4, balance: balance, router: router)
        let batch = Self.batch(whole)
        let one = try whole.lossAndGradients(batch, step: 0)
        let four = try accumulated.lossAndGradients(batch, step: 0)
        #expect(abs(one.loss - four.loss) <= 1e-5 * abs(one.loss), "\(one.loss) vs \(four.loss)")
        #expect(abs(one.languageModelLoss - four.languageModelLoss) <= 1e-5 * one.languageModelLoss)
        #expect(one.countedTokens == four.countedTokens)
        for (a, b) in zip(one.routerLosses, four.routerLosses) {
            // (Micro balancing's load-balancing term is the micro-batches' mean, logged but weighted 0 here.)
            if balance != .micro { #expect(abs(a.loadBalancing - b.loadBalancing) <= 1e-5 * a.loadBalancing, "\(a.loadBalancing) vs \(b.loadBalancing)") }
            #expect(abs(a.zLoss - b.zLoss) <= 1e-5 * a.zLoss)
            #expect(abs(a.total - b.total) <= 1e-5 * a.total)
        }
        #expect(one.expertCounts == four.expertCounts)
        #expect(isClose(Self.gradients(four), Self.gradients(one), relativeTolerance: 1e-4))
    }

    /// Micro balancing with a load-balancing term: the accumulated loss is Σ_m share_m · L_m, each
    /// L_m the loss of micro-batch m alone, and differs from the big batch's pooled loss.
    @Test func microBalancingIsTheShareWeightedMeanOfMicroBatchLosses() throws {
        let directory = TemporaryDirectory()
        let router = Self.router(lb: 0.5, z: 0)
        let whole = try Self.trainer(directory, accumulate: 1, balance: .micro, router: router)
        let accumulated = try Self.trainer(directory, accumulate: 2, balance: .micro, router: router)
        let batch = Self.batch(whole)
        let two = try accumulated.lossAndGradients(batch, step: 0)
        let parts = Trainer.microBatches(batch, count: 2)
        for layer in two.routerLosses.indices {
            let separate = try parts.map { try whole.model.evaluate($0).routerLosses[layer].loadBalancing }
            #expect(abs(two.routerLosses[layer].loadBalancing - (separate[0] + separate[1]) / 2) <= 1e-5)
        }
        let pooled = try whole.lossAndGradients(batch, step: 0)
        #expect(abs(pooled.routerLosses[0].loadBalancing - two.routerLosses[0].loadBalancing) > 1e-4)
        #expect(!isClose(Self.gradients(two), Self.gradients(pooled), relativeTolerance: 1e-4))
    }

    /// Global balancing's first pass routes each micro-batch exactly as its forward-backward pass
    /// does, router noise included: the counts it pools are the counts the step used.
    @Test func globalBalancingCountsTheRoutingTheStepUses() throws {
        let directory = TemporaryDirectory()
        var router = Self.router(lb: 0.5, z: 0)
        router.logitNoise = 0.5
        let trainer = try Self.trainer(directory, accumulate: 2, balance: .global, router: router)
        let batch = Self.batch(trainer)
        let result = try trainer.lossAndGradients(batch, step: 3)
        trainer.model.configurableRouter?.reseedNoise(step: 3)
        var counts = [[Int]](repeating: [0, 0, 0, 0], count: 2)
        for part in Trainer.microBatches(batch, count: 2) {
            for (layer, routed) in try trainer.model.trainingRouting(part).enumerated() {
                for (expert, count) in routed.decision.expertCounts.enumerated() { counts[layer][expert] += count }
            }
        }
        #expect(counts == result.expertCounts)
        // And the pooled value is the global batch's E · Σ f_i · P_i over the concatenated routing.
        for (layer, routed) in result.routing.enumerated() {
            let expected = RouterLosses.switchLoadBalancing(logits: routed.logits, tokens: routed.decision.tokens, experts: 4,
                                                            selectedExperts: routed.decision.selectedExperts, topK: 2).value
            #expect(abs(result.routerLosses[layer].loadBalancing - expected) <= 1e-5 * expected)
        }
    }

    /// --accumulate must split the batch evenly; --balance and --accumulate cannot change on resume.
    @Test func accumulationIsValidatedAndFixedOnResume() throws {
        var options = TrainingOptions(steps: 2, batchSize: 4, sequenceLength: 8, learningRate: 0.01)
        options.accumulationSteps = 3
        #expect(throws: TrainingError.self) { try options.validate() }
        options.accumulationSteps = 2
        try options.validate()

        let directory = TemporaryDirectory()
        let (model, data) = try TrainerTests.setUp(directory, experts: 4)
        let out = directory.file("out")
        var original = TrainerTests.options(steps: 4)
        original.batchSize = 4
        original.accumulationSteps = 2
        original.balance = .global
        let first = try Trainer(modelDirectory: model, dataPath: data, outputDirectory: out, logPath: nil, options: original)
        try first.save(completedSteps: 0, loss: .nan, languageModelLoss: .nan, validationLoss: .nan)
        func refusal(_ change: (inout TrainingOptions) -> Void) throws -> String? {
            var options = original
            change(&options)
            do {
                _ = try Trainer(modelDirectory: model, dataPath: data, outputDirectory: out, logPath: nil, options: options, resume: true)
                return nil
            } catch let TrainingError.invalidOption(name, _) {
                return name
            }
        }
        #expect(try refusal { $0.balance = .micro } == "balance")
        #expect(try refusal { $0.balance = .sequence } == "balance")
        #expect(try refusal { $0.accumulationSteps = 4 } == "accumulate")
        #expect(try refusal { _ in } == nil)
    }

    /// A trainer state written before the options existed resumes as micro balancing without accumulation.
    @Test func stateWithoutTheKeysResumesAsMicroWithoutAccumulation() throws {
        let directory = TemporaryDirectory()
        let (model, data) = try TrainerTests.setUp(directory, experts: 4)
        let out = directory.file("out")
        let options = TrainerTests.options(steps: 4)
        try Trainer(modelDirectory: model, dataPath: data, outputDirectory: out, logPath: nil, options: options)
            .save(completedSteps: 0, loss: .nan, languageModelLoss: .nan, validationLoss: .nan)
        let path = out + "/" + Trainer.stateDirectoryName + "/" + TrainerState.fileName
        var state = try TrainerState(path: path)
        state.options["balance"] = nil
        state.options["accumulate"] = nil
        try state.serialized().write(to: URL(fileURLWithPath: path))
        _ = try Trainer(modelDirectory: model, dataPath: data, outputDirectory: out, logPath: nil, options: options, resume: true)
        var global = options
        global.balance = .global
        #expect(throws: TrainingError.self) {
            try Trainer(modelDirectory: model, dataPath: data, outputDirectory: out, logPath: nil, options: global, resume: true)
        }
    }
}
