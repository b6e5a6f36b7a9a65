import Foundation
import Testing
@testable import MoEKit

/// MoEKit's training against PyTorch, as llm.c's `test_gpt2.c` checks GPT-2.
///
/// `Tests/Fixtures/training-torch/make_fixture.py` (an independent float64 PyTorch implementation of
/// MiniCPM / MiniCPM-MoE: autograd, `torch.optim.AdamW`, `clip_grad_norm_`) wrote for one fixed batch
/// (3 × 12 tokens, some targets −1) and two tiny models — `dense/` (tied head, 4 query heads over
/// 2 key/value heads) and `moe/` (4 experts top-2, untied head, 1 key/value head, Switch and z-loss)
/// — the loss and its terms, every parameter's gradient, and the losses, pre-clip gradient norms and
/// a few tensors over four AdamW steps with MoEKit's defaults (μP learning rates, decay on matrices
/// only, clipping at 1). Every tensor must match to ≤ 1e-4 relative: max|a − b| / max|b| per tensor.
/// The tests need no PyTorch; only the stable entry points (`MiniCPMModel(directory:ownedFloat32Weights:)`,
/// `lossAndGradients`, `AdamW.step`) are used. Pinned before the two model stacks became one, and
/// passing on both.
@Suite struct PyTorchTrainingFixtureTests {
    static let directory = Fixtures.path("training-torch")
    static let relativeTolerance: Float = 1e-4

    /// The expected tensors of `expected.safetensors`, and the comparisons made so far.
    final class Fixture {
        let file: SafetensorsFile
        private(set) var mismatches: [String] = []
        private(set) var compared = 0

        init() throws { file = try SafetensorsFile(path: PyTorchTrainingFixtureTests.directory + "/expected.safetensors") }

        func tensor(_ name: String) throws -> Tensor { try file.floatTensor(name) }

        /// The fixed batch: `inputs` and `targets`, `[B, T]` token ids (−1: ignored target).
        func batch() throws -> TrainingBatch {
            let inputs = try tensor("inputs"), targets = try tensor("targets")
            let rows = { (t: Tensor) in (0 ..< t.shape[0]).map { b in (0 ..< t.shape[1]).map { Int(t.values[b * t.shape[1] + $0]) } } }
            return TrainingBatch(inputs: rows(inputs), targets: rows(targets))
        }

        /// Records a mismatch when `actual` is not within the tolerance of the fixture's `name`.
        func compare(_ actual: [Float], _ name: String) throws {
            let expected = try tensor(name)
            compared += 1
            guard actual.count == expected.count else {
                mismatches.append("\(name): \(actual.count) values, PyTorch has \(expected.shape)")
                return
            }
            let got = Tensor(shape: expected.shape, values: actual)
            let relative = got.maxRelativeDifference(to: expected)
            if !(relative <= PyTorchTrainingFixtureTests.relativeTolerance) {
                mismatches.append("\(name): max relative difference \(relative), max absolute \(got.maxAbsoluteDifference(to: expected))")
            }
        }

        /// The fixture's tensor names that start with `prefix`, without it.
        func names(after prefix: String) -> Set<String> {
            Set(file.tensors.map(\.name).filter { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) })
        }
    }

    @Test(arguments: ["dense", "moe"])
    func lossAndEveryGradientMatchPyTorch(model kind: String) throws {
        let fixture = try Fixture()
        let model = try MiniCPMModel(directory: Self.directory + "/" + kind, ownedFloat32Weights: true)
        let result = try model.lossAndGradients(try fixture.batch())
        try fixture.compare([result.loss], kind + ".loss")
        try fixture.compare([result.languageModelLoss], kind + ".lm_loss")
        #expect(result.routerLosses.count == (model.config.isMoE ? model.config.numHiddenLayers : 0))
        if model.config.isMoE {
            try fixture.compare(result.routerLosses.map(\.total), kind + ".aux_loss")
            try fixture.compare(result.routerLosses.map(\.loadBalancing), kind + ".load_balancing_loss")
            try fixture.compare(result.routerLosses.map(\.zLoss), kind + ".z_loss")
        }
        let gradients = try #require(result.gradients).namedTensors(config: model.config)
        #expect(fixture.names(after: kind + ".grad.") == Set(gradients.map(\.name)), "the fixture has a gradient for every parameter and no other")
        for (name, gradient) in gradients { try fixture.compare(gradient.values, kind + ".grad." + name) }
        #expect(fixture.compared == gradients.count + (model.config.isMoE ? 5 : 2))
        #expect(fixture.mismatches.isEmpty, "\(kind) against PyTorch:\n\(fixture.mismatches.joined(separator: "\n"))")
    }

    @Test(arguments: ["dense", "moe"])
    func adamWStepsMatchPyTorch(model kind: String) throws {
        let fixture = try Fixture()
        let batch = try fixture.batch()
        let model = try MiniCPMModel(directory: Self.directory + "/" + kind, ownedFloat32Weights: true)
        var optimizer = try AdamW(parameters: model.weights, config: model.config,
                                  options: AdamWOptions(beta1: 0.9, beta2: 0.95, epsilon: 1e-8, weightDecay: 0.1, maxGradientNorm: 1),
                                  learningRateMultipliers: TensorProgramRules.learningRateMultipliers(config: model.config))
        var losses: [Float] = [], languageModelLosses: [Float] = [], gradientNorms: [Float] = []
        for learningRate in try fixture.tensor("learning_rates").values {
            let result = try model.lossAndGradients(batch)
            losses.append(result.loss)
            languageModelLosses.append(result.languageModelLoss)
            gradientNorms.append(optimizer.step(&model.weights, gradients: try #require(result.gradients), learningRate: learningRate))
        }
        let last = try model.lossAndGradients(batch)
        losses.append(last.loss)
        languageModelLosses.append(last.languageModelLoss)
        try fixture.compare(losses, kind + ".adamw.losses")
        try fixture.compare(languageModelLosses, kind + ".adamw.lm_losses")
        try fixture.compare(gradientNorms, kind + ".adamw.gradient_norms")
        let finals = fixture.names(after: kind + ".adamw.final.")
        #expect(!finals.isEmpty)
        for name in finals.sorted() {
            let parameter = try #require(model.weights.tensor(named: name, config: model.config), "the fixture pins \(name), which the model does not have")
            try fixture.compare(parameter.values, kind + ".adamw.final." + name)
        }
        #expect(fixture.mismatches.isEmpty, "\(kind) AdamW steps against PyTorch:\n\(fixture.mismatches.joined(separator: "\n"))")
    }
}
