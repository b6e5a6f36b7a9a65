import Foundation
import Testing
@testable import MoEKit

/// The router's auxiliary losses: values on hand-made cases and gradients against finite differences.
@Suite struct RouterLossTests {
    /// Token t of 4 chooses experts t and t+1 (mod 4): every expert gets 2 of the 8 assignments.
    static let balancedSelection: [Int32] = [0, 1, 1, 2, 2, 3, 3, 0]

    /// Perfectly balanced routing (uniform probabilities, equal counts) gives Switch loss exactly 1.
    @Test func balancedRoutingGivesSwitchLossOne() {
        let loss = RouterLosses.switchLoadBalancing(logits: [Float](repeating: 0, count: 16), tokens: 4, experts: 4,
                                                    selectedExperts: Self.balancedSelection, topK: 2)
        #expect(loss.value == 1)
        // At the balanced point the loss is stationary.
        #expect(loss.gradient.allSatisfy { abs($0) < 1e-7 })
    }

    /// The Hugging Face convention (f_i = count_i / T) gives k for balanced routing.
    @Test func balancedRoutingGivesKInHuggingFaceConvention() {
        let loss = RouterLosses.huggingFaceLoadBalancing(logits: [Float](repeating: 0, count: 16), tokens: 4, experts: 4,
                                                         selectedExperts: Self.balancedSelection)
        #expect(loss.value == 2)
    }

    /// Total collapse (every token on expert 0 with probability ≈ 1) gives E.
    @Test func collapsedRoutingGivesE() {
        let tokens = 5, experts = 4
        var logits = [Float](repeating: 0, count: tokens * experts)
        for t in 0 ..< tokens { logits[t * experts] = 30 }
        let loss = RouterLosses.switchLoadBalancing(logits: logits, tokens: tokens, experts: experts,
                                                    selectedExperts: [Int32](repeating: 0, count: tokens), topK: 1)
        #expect(abs(loss.value - Float(experts)) <= 1e-5)
        let perSequence = RouterLosses.perSequenceLoadBalancing(logits: logits, tokens: tokens, experts: experts,
                                                                selectedExperts: [Int32](repeating: 0, count: tokens), topK: 1,
                                                                sequenceLengths: [2, 3])
        #expect(abs(perSequence.value - Float(experts)) <= 1e-5)
    }

    /// The per-sequence variant balances within each sequence: two sequences each balanced inside
    /// give 1, while the same counts pooled over a batch whose halves are each collapsed give 1 for
    /// the batch loss but E for the per-sequence loss.
    @Test func perSequenceLossSeesImbalanceWithinSequences() {
        let tokens = 4, experts = 2
        // Sequence 0 (tokens 0, 1) all on expert 0, sequence 1 all on expert 1, probabilities ≈ one-hot.
        let logits: [Float] = [30, 0, 30, 0, 0, 30, 0, 30]
        let selection: [Int32] = [0, 0, 1, 1]
        let batch = RouterLosses.switchLoadBalancing(logits: logits, tokens: tokens, experts: experts, selectedExperts: selection, topK: 1)
        let perSequence = RouterLosses.perSequenceLoadBalancing(logits: logits, tokens: tokens, experts: experts,
                                                                selectedExperts: selection, topK: 1, sequenceLengths: [2, 2])
        #expect(abs(batch.value - 1) <= 1e-5)
        #expect(abs(perSequence.value - 2) <= 1e-5)
        let balancedInside = RouterLosses.perSequenceLoadBalancing(logits: [Float](repeating: 0, count: 8), tokens: 4, experts: 2,
                                                                   selectedExperts: [0, 1, 1, 0], topK: 1, sequenceLengths: [2, 2])
        #expect(balancedInside.value == 1)
    }

    /// z-loss = mean over tokens of (logsumexp z)², by hand: logits (0, ln 3) and (ln 2, ln 2) both
    /// have lse = ln 4, logits (1, 1) have lse = 1 + ln 2.
    @Test func zLossEqualsItsFormula() {
        let logits: [Float] = [0, logf(3), logf(2), logf(2), 1, 1]
        let loss = RouterLosses.zLoss(logits: logits, tokens: 3, experts: 2)
        let ln4 = Float(log(4.0)), third = Float(1 + log(2.0))
        let expected = (ln4 * ln4 + ln4 * ln4 + third * third) / 3
        #expect(abs(loss.value - expected) <= 1e-6 * expected)
        // ∂/∂z_0,1 = (2/T) · lse_0 · p_0,1 = (2/3) · ln 4 · 3/4.
        #expect(abs(loss.gradient[1] - 2 / 3 * ln4 * 0.75) <= 1e-6)
    }

    /// Importance CV² by hand: two tokens, E = 2, k = 1, both on expert 0 with gate 1 →
    /// I = (2, 0), mean 1, population variance 1, CV² = 1; balanced importance gives 0.
    @Test func importanceLossIsCoefficientOfVariationSquared() {
        let collapsed = RouterLosses.importanceLoss(logits: [1, 0, 2, 0], tokens: 2, experts: 2, selectedExperts: [0, 0])
        #expect(abs(collapsed.value - 1) <= 1e-6)
        let balanced = RouterLosses.importanceLoss(logits: [1, 0, 0, 1], tokens: 2, experts: 2, selectedExperts: [0, 1])
        #expect(balanced.value == 0)
        // k = 2 of 2: every gate is the token's full softmax; I = Σ_t softmax(z_t).
        let logits: [Float] = [1, 0, 0.5, 0]
        let full = RouterLosses.importanceLoss(logits: logits, tokens: 2, experts: 2, selectedExperts: [0, 1, 0, 1])
        let p = Kernels.softmaxRows(Tensor(shape: [2, 2], values: logits)).values
        let importance = [p[0] + p[2], p[1] + p[3]]
        let mean = (importance[0] + importance[1]) / 2
        let variance = ((importance[0] - mean) * (importance[0] - mean) + (importance[1] - mean) * (importance[1] - mean)) / 2
        #expect(abs(full.value - variance / (mean * mean)) <= 1e-6)
    }

    // MARK: Gradients against central finite differences

    static let tokens = 6, experts = 4, topK = 2
    /// Logits of magnitude ~1 and their (fixed) top-2 selection, with one dropped slot.
    static var fixture: (logits: [Float], selection: [Int32]) {
        let logits = randomTensor([tokens, experts], seed: 21).values
        var selection = [Int32]()
        for t in 0 ..< tokens { selection += RoutingFunctions.topK(Array(logits[t * experts ..< (t + 1) * experts]), k: topK) }
        selection[5] = -1
        return (logits, selection)
    }

    static func checkGradient(_ loss: ([Float]) -> LossAndGradient) {
        let (logits, _) = fixture
        let analytic = loss(logits).gradient
        let numeric = finiteDifferenceGradient(at: logits, step: 1e-2) { loss($0).value }
        #expect(analytic.contains { $0 != 0 })
        #expect(isClose(numeric, analytic, relativeTolerance: 1e-3), "numeric \(numeric) vs analytic \(analytic)")
    }

    /// ∂(Switch loss)/∂logits = (E/T) p_t,j (f_j − Σ_i f_i p_t,i), against finite differences.
    @Test func switchLossGradientMatchesFiniteDifferences() {
        let selection = Self.fixture.selection
        Self.checkGradient { RouterLosses.switchLoadBalancing(logits: $0, tokens: Self.tokens, experts: Self.experts, selectedExperts: selection, topK: Self.topK) }
    }

    /// The Hugging Face convention's gradient against finite differences.
    @Test func huggingFaceLossGradientMatchesFiniteDifferences() {
        let selection = Self.fixture.selection
        Self.checkGradient { RouterLosses.huggingFaceLoadBalancing(logits: $0, tokens: Self.tokens, experts: Self.experts, selectedExperts: selection) }
    }

    /// The per-sequence variant's gradient against finite differences (sequences of 2 and 4 tokens).
    @Test func perSequenceLossGradientMatchesFiniteDifferences() {
        let selection = Self.fixture.selection
        Self.checkGradient {
            RouterLosses.perSequenceLoadBalancing(logits: $0, tokens: Self.tokens, experts: Self.experts, selectedExperts: selection,
                                                  topK: Self.topK, sequenceLengths: [2, 0, 4])
        }
    }

    /// ∂(z-loss)/∂logits = (2/T) lse_t p_t,j, against finite differences.
    @Test func zLossGradientMatchesFiniteDifferences() {
        Self.checkGradient { RouterLosses.zLoss(logits: $0, tokens: Self.tokens, experts: Self.experts) }
    }

    /// The importance CV² gradient (selection held constant) against finite differences.
    @Test func importanceLossGradientMatchesFiniteDifferences() {
        let selection = Self.fixture.selection
        Self.checkGradient { RouterLosses.importanceLoss(logits: $0, tokens: Self.tokens, experts: Self.experts, selectedExperts: selection) }
    }

    /// The combined loss is the coefficient-weighted sum of its terms, and its gradient the same
    /// sum (checked against finite differences of the total).
    @Test func combinedLossWeightsTermsByCoefficients() throws {
        var c = try RouterConfiguration(text: "loss=per-sequence,lb=0.5,z=0.25,importance=2")
        let selection = Self.fixture.selection
        func evaluate(_ logits: [Float]) -> RouterLoss.Value {
            let decision = RoutingDecision(tokens: Self.tokens, experts: Self.experts, slotsPerToken: Self.topK, selectedExperts: selection,
                                           combineWeights: [Float](repeating: 0, count: selection.count),
                                           probabilities: [Float](repeating: 0, count: logits.count))
            return RouterLoss(configuration: c).evaluate(RoutedTokens(decision: decision, logits: logits), topK: Self.topK, sequenceLengths: [3, 3])
        }
        let value = evaluate(Self.fixture.logits)
        #expect(abs(value.total - (0.5 * value.loadBalancing + 0.25 * value.zLoss + 2 * value.importance)) <= 1e-6 * value.total)
        Self.checkGradient { logits in let v = evaluate(logits); return LossAndGradient(value: v.total, gradient: v.gradient) }
        c = RouterConfiguration()
        #expect(evaluate(Self.fixture.logits).total == 0.01 * evaluate(Self.fixture.logits).loadBalancing)
    }
}
