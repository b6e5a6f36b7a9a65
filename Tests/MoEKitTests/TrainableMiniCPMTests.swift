import Foundation
import Testing
@testable import MoEKit

/// Whole-model training pass: the loss equals the inference model's cross-entropy, gradients of
/// every tensor kind match central finite differences, and a tiny model can memorise a batch.
@Suite struct TrainableMiniCPMTests {
    static func trainable(_ config: MiniCPMConfig, weights: [String: Tensor]) throws -> MiniCPMModel {
        try MiniCPMModel(config: config, source: "<test>") { name in
            guard let tensor = weights[name] else { throw CheckpointError.missingTensor(directory: "<test>", tensor: name) }
            return tensor
        }
    }

    static func names(_ config: MiniCPMConfig) -> [String] { MiniCPMLayout(config: config).entries.map(\.name) }

    /// Sequences of `lengths` random tokens; targets are the next token, the last one and position 1 ignored.
    static func batch(lengths: [Int], vocabulary: Int, seed: UInt64) -> TrainingBatch {
        var random = SeededRandom(seed: seed)
        var inputs: [[Int]] = [], targets: [[Int]] = []
        for length in lengths {
            let tokens = (0 ... length).map { _ in Int(random.next() % UInt64(vocabulary)) }
            inputs.append(Array(tokens[..<length]))
            var next = Array(tokens[1...])
            next[next.count - 1] = -1
            if length > 2 { next[1] = -1 }
            targets.append(next)
        }
        return TrainingBatch(inputs: inputs, targets: targets)
    }

    /// Mean cross-entropy in Double from `MiniCPMModel`'s logits.
    static func inferenceLoss(_ model: MiniCPMModel, _ batch: TrainingBatch) throws -> Double {
        let logits = try model.logits(for: batch.inputs)
        var total = 0.0, counted = 0
        for (row, target) in batch.targets.flatMap({ $0 }).enumerated() where target >= 0 {
            let z = (0 ..< logits.columns).map { Double(logits[row, $0]) }
            let maximum = z.max() ?? 0
            total += maximum + log(z.reduce(0.0) { $0 + exp($1 - maximum) }) - z[target]
            counted += 1
        }
        return total / Double(counted)
    }

    static func moeConfig() -> MiniCPMConfig {
        var config = SmallModels.config(experts: 4, topK: 2)
        var router = RouterConfiguration()
        router.loadBalancingCoefficient = 0.05
        router.zLossCoefficient = 0.01
        router.store(in: &config)
        return config
    }

    @Test(arguments: [true, false])
    func denseLossEqualsInferenceCrossEntropy(tied: Bool) throws {
        let config = SmallModels.config(tied: tied)
        let weights = SmallModels.weights(for: config, seed: 40)
        let batch = Self.batch(lengths: [7, 4, 6], vocabulary: config.vocabSize, seed: 41)
        let trainable = try Self.trainable(config, weights: weights)
        let expected = try Self.inferenceLoss(SmallModels.model(config, weights: weights), batch)
        let evaluated = try trainable.evaluate(batch)
        let trained = try trainable.lossAndGradients(batch)
        #expect(abs(Double(evaluated.languageModelLoss) - expected) <= 1e-5 * expected)
        #expect(evaluated.loss == evaluated.languageModelLoss && trained.loss == evaluated.loss)
        #expect(evaluated.countedTokens == 17 - 3 - 3)
        #expect(evaluated.gradients == nil && trained.gradients != nil)
        #expect(evaluated.routing.isEmpty && evaluated.routerLosses.isEmpty)
    }

    @Test func moeLossEqualsInferenceCrossEntropyPlusRouterLosses() throws {
        let config = Self.moeConfig()
        let weights = SmallModels.weights(for: config, seed: 42)
        let batch = Self.batch(lengths: [7, 5], vocabulary: config.vocabSize, seed: 43)
        let trainable = try Self.trainable(config, weights: weights)
        let model = try SmallModels.model(config, weights: weights)
        let expected = try Self.inferenceLoss(model, batch)
        let result = try trainable.lossAndGradients(batch)
        #expect(trainable.configurableRouter?.isTraining == false)
        #expect(abs(Double(result.languageModelLoss) - expected) <= 1e-5 * expected)
        #expect(result.routerLosses.count == 2 && result.routing.count == 2)
        #expect(result.expertCounts.map { $0.reduce(0, +) } == [24, 24])
        #expect(result.routerLosses.allSatisfy { $0.total > 0 })
        #expect(abs(result.loss - result.languageModelLoss - result.routerLosses.reduce(0) { $0 + $1.total }) <= 1e-6)
        // The routing reported is the inference model's.
        let inference = try model.forward(batch.inputs, detail: .statistics)
        for layer in 0 ..< 2 {
            #expect(result.routing[layer].decision.selectedExperts.count == 12 * 2)
            #expect(inference.routing[layer].expertCounts == RoutingStatistics.record(result.routing[layer], topK: 2, detail: .statistics).expertCounts)
        }
    }

    /// Central differences of the whole loss on 3 entries of every parameter tensor. For MoE, an
    /// entry whose ±step changes any routing decision is skipped (top-k is not differentiable there).
    static func checkGradients(_ trainable: MiniCPMModel, batch: TrainingBatch, step: Float = 1e-2, seed: UInt64) throws -> (checked: Int, skipped: Int, failures: [String]) {
        let config = trainable.config
        let result = try trainable.lossAndGradients(batch)
        let gradients = try #require(result.gradients)
        let original = trainable.weights
        var random = SeededRandom(seed: seed)
        var checked = 0, skipped = 0, failures: [String] = []
        for name in Self.names(config) {
            let value = try #require(original.tensor(named: name, config: config))
            let gradient = try #require(gradients.tensor(named: name, config: config))
            for _ in 0 ..< 3 {
                let index = Int(random.next() % UInt64(value.count))
                func shifted(_ delta: Float) throws -> MiniCPMModel.StepResult {
                    var tensor = value
                    tensor.values[index] += delta
                    trainable.weights.setTensor(tensor, named: name, config: config)
                    defer { trainable.weights = original }
                    return try trainable.evaluate(batch)
                }
                let above = try shifted(step), below = try shifted(-step)
                if zip(above.routing, below.routing).contains(where: { $0.decision.selectedExperts != $1.decision.selectedExperts }) {
                    skipped += 1
                    continue
                }
                let numeric = (above.loss - below.loss) / (2 * step)
                let analytic = gradient.values[index]
                checked += 1
                if abs(numeric - analytic) > 3e-2 * max(abs(numeric), abs(analytic)) + 2e-4 {
                    failures.append("\(name)[\(index)]: analytic \(analytic), numeric \(numeric)")
                }
            }
        }
        return (checked, skipped, failures)
    }

    @Test(arguments: [true, false])
    func denseGradientsMatchFiniteDifferences(tied: Bool) throws {
        let config = SmallModels.config(tied: tied)
        let trainable = try Self.trainable(config, weights: SmallModels.weights(for: config, seed: 44))
        let check = try Self.checkGradients(trainable, batch: Self.batch(lengths: [6, 4], vocabulary: config.vocabSize, seed: 45), seed: 46)
        #expect(check.failures.isEmpty, "\(check.failures)")
        #expect(check.checked == 3 * Self.names(config).count)
    }

    @Test func moeGradientsMatchFiniteDifferences() throws {
        let config = Self.moeConfig()
        let trainable = try Self.trainable(config, weights: SmallModels.weights(for: config, seed: 47))
        let check = try Self.checkGradients(trainable, batch: Self.batch(lengths: [6, 4], vocabulary: config.vocabSize, seed: 48), seed: 49)
        #expect(check.failures.isEmpty, "\(check.failures)")
        #expect(check.checked >= 3 * Self.names(config).count * 9 / 10)
    }

    /// Plain Adam (β 0.9/0.999, ε 1e-8) on one fixed batch drives a tiny model's loss near zero.
    static func memorise(_ trainable: MiniCPMModel, batch: TrainingBatch, learningRate: Float, steps: Int) throws -> Float {
        var first = trainable.weights.zeros().parameterTensors, second = first
        var loss = Float.infinity
        for step in 1 ... steps {
            let result = try trainable.lossAndGradients(batch)
            loss = result.languageModelLoss
            if loss < 0.02 { break }
            let gradients = try #require(result.gradients)
            let correction1 = 1 - powf(0.9, Float(step)), correction2 = 1 - powf(0.999, Float(step))
            let g = gradients.parameterTensors
            var index = 0
            trainable.weights.updateEachParameter { value in
                for i in 0 ..< value.count {
                    first[index].values[i] = 0.9 * first[index].values[i] + 0.1 * g[index].values[i]
                    second[index].values[i] = 0.999 * second[index].values[i] + 0.001 * g[index].values[i] * g[index].values[i]
                    value.values[i] -= learningRate * (first[index].values[i] / correction1) / ((second[index].values[i] / correction2).squareRoot() + 1e-8)
                }
                index += 1
            }
        }
        return loss
    }

    @Test func tinyDenseModelMemorisesABatch() throws {
        let config = SmallModels.config()
        let trainable = try Self.trainable(config, weights: SmallModels.weights(for: config, seed: 50))
        let batch = Self.batch(lengths: [16, 16], vocabulary: config.vocabSize, seed: 51)
        let initial = try trainable.evaluate(batch).loss
        let final = try Self.memorise(trainable, batch: batch, learningRate: 1e-2, steps: 300)
        #expect(initial > 2)
        #expect(final < 0.05)
    }

    @Test func tinyMoEModelMemorisesABatch() throws {
        let config = Self.moeConfig()
        let trainable = try Self.trainable(config, weights: SmallModels.weights(for: config, seed: 52))
        let batch = Self.batch(lengths: [16, 16], vocabulary: config.vocabSize, seed: 53)
        let final = try Self.memorise(trainable, batch: batch, learningRate: 1e-2, steps: 300)
        #expect(final < 0.05)
    }

    @Test func badBatchesAreTypedErrors() throws {
        let config = SmallModels.config()
        let trainable = try Self.trainable(config, weights: SmallModels.weights(for: config, seed: 54))
        #expect(throws: ModelError.tokenOutOfRange(source: "batch", sequence: 1, position: 2, token: 50, vocabularySize: 50)) {
            try trainable.evaluate(TrainingBatch(inputs: [[1, 2], [3, 4, 50]], targets: [[2, 3], [4, 5, 6]]))
        }
        #expect(throws: ModelError.tokenOutOfRange(source: "batch targets", sequence: 0, position: 0, token: 60, vocabularySize: 50)) {
            try trainable.lossAndGradients(TrainingBatch(inputs: [[1, 2]], targets: [[60, -1]]))
        }
        #expect(throws: ModelError.emptySequence(source: "batch", sequence: 0)) {
            try trainable.evaluate(TrainingBatch(inputs: [[]], targets: [[]]))
        }
        #expect(throws: ModelError.sequenceTooLong(source: "batch", sequence: 0, length: 65, maximum: 64)) {
            try trainable.evaluate(TrainingBatch(inputs: [[Int](repeating: 1, count: 65)], targets: [[Int](repeating: 1, count: 65)]))
        }
    }

    @Test func loadsADirectoryWithItsRouterAndBiases() throws {
        let directory = TemporaryDirectory()
        let config = Self.moeConfig()
        let weights = SmallModels.weights(for: config, seed: 55)
        var tensors = weights
        tensors[MiniCPMTensorNames.routerBias(1)] = Tensor(shape: [4], values: [0.5, -0.5, 0, 0.25])
        try SafetensorsWriter.write(tensors.map { (name: $0.key, tensor: $0.value, dtype: SafetensorsDType.float32) }, to: directory.file("model.safetensors"))
        try config.write(to: directory.file("config.json"))
        let trainable = try MiniCPMModel(directory: directory.path, ownedFloat32Weights: true)
        #expect(trainable.configurableRouter?.configuration.zLossCoefficient == 0.01)
        #expect(trainable.configurableRouter?.balancingBias[1] == [0.5, -0.5, 0, 0.25])
        #expect(trainable.weights.isOwned)
        #expect(trainable.weights.parameterTensors == (try Self.trainable(config, weights: weights)).weights.parameterTensors)
    }
}
