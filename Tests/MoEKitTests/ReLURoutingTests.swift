import Foundation
import Testing
@testable import MoEKit

/// ReMoE's ReLU routing (arXiv 2412.14711): gates g = ReLU(z), every expert with g > 0 active,
/// the load-balanced L1 penalty L_reg = E · Σ_e f_e · ḡ_e with f_e = count_e/(T·k), and the
/// controller λ ← λ · α^sign((1 − k/E) − S). The layer's gradients are checked with every other
/// router in `MoEFeedForwardLayerTests` (cases `reluRouting`, `reluRoutingScaledWithJitter`).
@Suite struct ReLURoutingTests {
    /// T = 2 tokens, E = 3 experts, k = 1, logits z = [[1, −1, 2], [0.5, 0, −3]] (gate weight = I,
    /// inputs = z). By hand: g = [[1, 0, 2], [0.5, 0, 0]] — z = 0 is inactive — so token 0 has 2
    /// active experts and token 1 has 1. count = (2, 0, 1), f = count/(T·k) = (1, 0, 0.5),
    /// ḡ = (0.75, 0, 1), L_reg = 3 · (1·0.75 + 0 + 0.5·1) = 3.75; ∂L/∂z_t,e = (E/T)·f_e = 1.5·f_e
    /// where z > 0: (1.5, 0, 0.75) for token 0, (1.5, 0, 0) for token 1. Realised sparsity
    /// S = 1 − 3/6 = 0.5 < target 1 − 1/3, so λ = 1e-8 grows to 1.2e-8.
    @Test func gatesPenaltyAndOneControllerStepByHand() throws {
        let logits: [Float] = [1, -1, 2, 0.5, 0, -3]
        let router = try ConfigurableRouter(configuration: RouterConfiguration(text: "remoe"), layers: 1, experts: 3, hiddenSize: 3, modelTopK: 1)
        #expect(router.slotsPerToken == 3)
        #expect(router.l1Coefficient == 1e-8)
        let identity = Tensor(shape: [3, 3], values: [1, 0, 0, 0, 1, 0, 0, 0, 1])
        let routed = router.route(inputs: Tensor(shape: [2, 3], values: logits), gateWeight: identity, layer: 0)
        #expect(routed.decision.selectedExperts == [0, -1, 2, 0, -1, -1])
        #expect(routed.decision.combineWeights == [1, 0, 2, 0.5, 0, 0])
        #expect(routed.decision.probabilities == [1, 0, 2, 0.5, 0, 0])
        #expect(routed.decision.expertCounts == [2, 0, 1])

        let penalty = ReLURouting.l1Regularization(logits: logits, tokens: 2, experts: 3, topK: 1)
        #expect(abs(penalty.value - 3.75) < 1e-6)
        #expect(penalty.gradient == [1.5, 0, 0.75, 1.5, 0, 0])

        // RouterLoss weights the penalty by the router's current λ.
        let value = RouterLoss(router: router).evaluate(routed, topK: 1)
        #expect(abs(value.loadBalancing - 3.75) < 1e-6)
        #expect(isClose([value.total], [1e-8 * 3.75 + 0 * value.zLoss], relativeTolerance: 1e-6))

        let sparsity = try #require(router.updateL1Coefficient(expertCounts: [routed.decision.expertCounts], tokens: 2))
        #expect(sparsity == 0.5)
        #expect(abs(router.targetSparsity - 2.0 / 3) < 1e-12)
        #expect(isClose([router.l1Coefficient], [1.2e-8], relativeTolerance: 1e-6))
    }

    /// The controller's three branches: below target ×α, above ÷α, on target unchanged; sparsity
    /// pools every layer.
    @Test func controllerMovesTowardTheTarget() {
        #expect(ReLURouting.updatedCoefficient(1, multiplier: 1.2, targetSparsity: 0.75, realisedSparsity: 0.5) == 1.2)
        #expect(ReLURouting.updatedCoefficient(1.2, multiplier: 1.2, targetSparsity: 0.75, realisedSparsity: 0.9) == 1.2 / 1.2)
        #expect(ReLURouting.updatedCoefficient(2, multiplier: 1.2, targetSparsity: 0.75, realisedSparsity: 0.75) == 2)
        // Two layers of 4 tokens × 4 experts: 4 + 8 active of 32 gates.
        #expect(ReLURouting.sparsity(expertCounts: [[1, 1, 1, 1], [2, 2, 2, 2]], tokens: 4, experts: 4) == 1 - 12.0 / 32)
    }

    /// The penalty's gradient matches central differences away from z = 0 (counts held fixed, as
    /// the definition holds them), and global fractions replace the batch's own.
    @Test func penaltyGradientMatchesFiniteDifferences() {
        let logits = randomTensor([5, 4], seed: 7).values.map { abs($0) < 0.05 ? $0 + 0.2 : $0 }
        let analytic = ReLURouting.l1Regularization(logits: logits, tokens: 5, experts: 4, topK: 2)
        var counts = [Float](repeating: 0, count: 4)
        for i in logits.indices where logits[i] > 0 { counts[i % 4] += 1 }
        let fractions = counts.map { $0 / Float(5 * 2) }
        let numeric = finiteDifferenceGradient(at: logits, step: 1e-3) {
            ReLURouting.l1Regularization(logits: $0, tokens: 5, experts: 4, topK: 2, fractions: fractions).value
        }
        #expect(isClose(numeric, analytic.gradient, relativeTolerance: 1e-2, absoluteTolerance: 1e-3))
        let global = ReLURouting.l1Regularization(logits: logits, tokens: 5, experts: 4, topK: 2, fractions: [0.25, 0.25, 0.25, 0.25])
        var meanGateSum: Float = 0
        for value in logits where value > 0 { meanGateSum += value / 5 }
        #expect(abs(global.value - 4 * 0.25 * meanGateSum) < 1e-5)
    }

    /// `remoe` is mode relu + scoring relu with λ₀ = 1e-8, α = 1.2 (the reference code's defaults);
    /// the text round-trips; contradictory settings are refused naming the field.
    @Test func configurationPresetAndValidation() throws {
        let c = try RouterConfiguration(text: "remoe")
        #expect(c.mode == .relu && c.scoring == .relu && c.l1InitialCoefficient == 1e-8 && c.l1CoefficientMultiplier == 1.2)
        #expect(c.description == "remoe")
        #expect(try RouterConfiguration(text: "remoe:l1-init=1e-6,l1-multiplier=1.5").description == "remoe:l1-init=1e-06,l1-multiplier=1.5")
        for (text, field) in [("mode=relu", "scoring"), ("scoring=relu", "scoring"), ("remoe:cf=1", "capacity_factor"),
                              ("remoe:l1-multiplier=1", "l1_coefficient_multiplier"), ("remoe:aux-free=true", "aux_loss_free_balancing")] {
            #expect {
                try RouterConfiguration(text: text)
            } throws: { error in
                "\(error)".contains(field)
            }
        }
    }

    /// λ is trainer state: written to trainer_state.json when present, absent from other runs' files.
    @Test func trainerStateKeepsTheCoefficient() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("moekit-relu-state-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/trainer_state.json"
        var state = TrainerState(completedSteps: 3, options: [:], data: "d", initialModel: "m", tokensSeen: 10, lastLoss: 1,
                                 lastLanguageModelLoss: 1, lastValidationLoss: .nan, l1Coefficient: 2.5e-7)
        try state.serialized().write(to: URL(fileURLWithPath: path))
        #expect(try TrainerState(path: path).l1Coefficient == 2.5e-7)
        state.l1Coefficient = nil
        try state.serialized().write(to: URL(fileURLWithPath: path))
        #expect(try TrainerState(path: path).l1Coefficient == nil)
        #expect(!String(decoding: state.serialized(), as: UTF8.self).contains("relu_l1_coefficient"))
    }
}
