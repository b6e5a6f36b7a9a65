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

    static func checkGradient(at logits: [Float] = fixture.logits, _ loss: ([Float]) -> LossAndGradient) {
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
    /// sum (checked against finite differences of the total, with noise data so the load term counts).
    @Test func combinedLossWeightsTermsByCoefficients() throws {
        var c = try RouterConfiguration(text: "noisy-topk:loss=per-sequence,lb=0.5,z=0.25,importance=2,load=1.5")
        let selection = Self.fixture.selection
        let (logits, offsets, deviations) = Self.loadFixture
        func evaluate(_ logits: [Float]) -> RouterLoss.Value {
            let decision = RoutingDecision(tokens: Self.tokens, experts: Self.experts, slotsPerToken: Self.topK, selectedExperts: selection,
                                           combineWeights: [Float](repeating: 0, count: selection.count),
                                           probabilities: [Float](repeating: 0, count: logits.count))
            let routed = RoutedTokens(decision: decision, logits: logits, noisyLogits: zip(logits, offsets).map(+),
                                      noiseStandardDeviations: deviations)
            return RouterLoss(configuration: c).evaluate(routed, topK: Self.topK, sequenceLengths: [3, 3])
        }
        let value = evaluate(logits)
        let load = try #require(value.load)
        #expect(abs(value.total - (0.5 * value.loadBalancing + 0.25 * value.zLoss + 2 * value.importance + 1.5 * load)) <= 1e-6 * value.total)
        Self.checkGradient(at: logits) { z in let v = evaluate(z); return LossAndGradient(value: v.total, gradient: v.gradient) }
        c = RouterConfiguration()
        #expect(evaluate(Self.fixture.logits).total == 0.01 * evaluate(Self.fixture.logits).loadBalancing)
    }

    // MARK: Load loss (Shazeer 2017, Appendix A)

    /// Load CV² on a hand-computed case: T = 2, E = 3, k = 1.
    /// Token 0: z = (1, 0, 0), σ = (1, 1, 1), ε = 0, so H = (1, 0, 0). Expert 0 is the top-1; without
    /// it the best is H_1 = 0 (the tie with expert 2 goes to the lower index), u = 1; experts 1 and 2
    /// face θ = H_0 = 1, u = −1.
    /// Token 1: z = (0, 1, 0), σ = (1, 2, 1), ε = (0, 0.5, 0), so H = (0, 2, 0). Expert 1 faces
    /// θ = H_0 = 0 (tie with expert 2, lower index), u = (1 − 0)/2 = 0.5 — the numerator uses the
    /// clean z, not H; experts 0 and 2 face θ = 2, u = −2.
    /// Load = (Φ(1) + Φ(−2), Φ(−1) + Φ(0.5), Φ(−1) + Φ(−2)) = (0.8640949, 0.8501177, 0.1814054),
    /// mean 0.6318727, population variance 0.1014929, CV² = 0.2542007.
    /// Gradient (double precision, from G_i = (2/E)((L_i − m)/m² − v/m³) = (0.1195532, 0.0962149,
    /// −1.0203628), +G_i φ(u)/σ at (t, i) and −G_i φ(u)/σ at (t, j*)). ∂/∂z_0,2 = G_2 φ(1) only, since
    /// the tie made expert 1, not 2, the j* of expert 0: this pins the tie rule.
    @Test func loadLossOnHandComputedCase() {
        let logits: [Float] = [1, 0, 0, 0, 1, 0]
        let standardDeviations: [Float] = [1, 1, 1, 1, 2, 1]
        let noisyLogits: [Float] = [1, 0, 0, 0, 2, 0]
        let loss = RouterLosses.loadLoss(logits: logits, noisyLogits: noisyLogits, noiseStandardDeviations: standardDeviations,
                                         tokens: 2, experts: 3, topK: 1)
        #expect(abs(loss.value - 0.25420068) <= 1e-5 * 0.25420068, "\(loss.value)")
        let expected: [Float] = [0.25254510, -0.00564718, -0.24689792, -0.01048218, 0.06557255, -0.05509037]
        #expect(isClose(loss.gradient, expected, relativeTolerance: 1e-5), "\(loss.gradient)")
    }

    /// Balanced loads give CV² = 0 with a zero gradient (the loss is stationary there): two tokens
    /// mirror each other, so both experts have load Φ(1) + Φ(−1) = 1. With k = E every expert is
    /// always chosen (P = 1): loads are equal and the loss is 0 too.
    @Test func balancedLoadsGiveZeroLoadLoss() {
        let noisy: [Float] = [1, 0, 0, 1]
        let loss = RouterLosses.loadLoss(logits: noisy, noisyLogits: noisy, noiseStandardDeviations: [1, 1, 1, 1], tokens: 2, experts: 2, topK: 1)
        #expect(loss.value == 0)
        #expect(loss.gradient.allSatisfy { $0 == 0 })
        let everyExpert = RouterLosses.loadLoss(logits: [3, 0, 1], noisyLogits: [3, 0, 1], noiseStandardDeviations: [1, 1, 1],
                                                tokens: 1, experts: 3, topK: 3)
        #expect(everyExpert.value == 0 && everyExpert.gradient.allSatisfy { $0 == 0 })
        // An unbalanced case is not 0 (the test above can fail).
        let skewed = RouterLosses.loadLoss(logits: [1, 0, 2, 0], noisyLogits: [1, 0, 2, 0], noiseStandardDeviations: [1, 1, 1, 1],
                                           tokens: 2, experts: 2, topK: 1)
        #expect(skewed.value > 0.1)
    }

    /// A well-conditioned noisy top-k case: each token's noisy logits H are a rotation of
    /// (−1.2, −0.4, 0.4, 1.2) shifted by 0.05·t (so they are 0.8 apart: a finite-difference step never
    /// reorders them), σ in [0.5, 1.5), ε ~ N(0, 0.5²), and the clean logits z = H − ε·σ. The noise
    /// ε·σ = H − z is what stays fixed when z moves.
    static var loadFixture: (logits: [Float], noiseOffsets: [Float], standardDeviations: [Float]) {
        let epsilon = randomTensor([tokens, experts], seed: 33, standardDeviation: 0.5).values
        let deviations = randomTensor([tokens, experts], seed: 34).values.map { 0.5 + 1 / (1 + expf(-$0)) }
        let offsets = zip(epsilon, deviations).map(*)
        let levels: [Float] = [-1.2, -0.4, 0.4, 1.2]
        var logits = [Float](repeating: 0, count: tokens * experts)
        for t in 0 ..< tokens {
            for e in 0 ..< experts { logits[t * experts + e] = levels[(e + t) % experts] + 0.05 * Float(t) - offsets[t * experts + e] }
        }
        return (logits, offsets, deviations)
    }

    /// ∂(load CV²)/∂z with ε and σ held fixed (H moves with z), k = 2 and k = 1, against central
    /// finite differences in f32, on the well-conditioned `loadFixture` (no near-ties in H, σ ≥ 0.5,
    /// u of order 1).
    @Test func loadLossGradientMatchesFiniteDifferences() throws {
        let (logits, offsets, deviations) = Self.loadFixture
        for k in [2, 1] {
            Self.checkGradient(at: logits) { z in
                let noisy = zip(z, offsets).map(+)
                return RouterLosses.loadLoss(logits: z, noisyLogits: noisy, noiseStandardDeviations: deviations,
                                             tokens: Self.tokens, experts: Self.experts, topK: k)
            }
        }
    }

    /// `load_coefficient` (text key `load`) round-trips through the `moekit_router` JSON and the
    /// text form, and defaults to 0.
    @Test func loadCoefficientRoundTripsThroughJSONAndText() throws {
        #expect(RouterConfiguration().loadCoefficient == 0)
        let parsed = try RouterConfiguration(text: "noisy-topk:load=0.01,seed=3")
        #expect(parsed.noisyTopK && parsed.loadCoefficient == 0.01 && parsed.noiseSeed == 3)
        #expect(try RouterConfiguration(text: parsed.description) == parsed)
        #expect(parsed.description.contains("load=0.01"))
        let json = parsed.jsonValue
        #expect(json.objectValue?["load_coefficient"] != nil)
        #expect(try RouterConfiguration(json: json) == parsed)
        #expect(try RouterConfiguration(json: .object(["noisy_top_k": .bool(true), "load_coefficient": .number(0.5)])).loadCoefficient == 0.5)
    }

    /// A non-zero load coefficient needs noisy top-k (the loss is defined by its noise) and token
    /// choice; the error names `load_coefficient` and the missing setting. Negative is refused.
    @Test func loadCoefficientWithoutNoisyTopKIsAnError() throws {
        let cases: [(String, String)] = [
            ("load=0.1", "'load_coefficient' needs noisy_top_k"),
            ("noisy-topk:load=0.1,mode=expert-choice,cf=1", "'load_coefficient' needs token-choice routing"),
            ("noisy-topk:load=-1", "'load_coefficient' must be a finite number ≥ 0"),
        ]
        for (text, fragment) in cases {
            do {
                _ = try RouterConfiguration(text: text)
                Issue.record("'\(text)' was accepted")
            } catch {
                #expect((error.errorDescription ?? "").contains(fragment), "'\(error.errorDescription ?? "")' lacks '\(fragment)'")
            }
        }
        #expect(throws: RouterConfigurationError.invalidField(source: "c.json", field: "load_coefficient",
                                                             reason: "needs noisy_top_k: the load loss is defined by the noise of Shazeer's noisy top-k gate")) {
            try RouterConfiguration(json: .object(["load_coefficient": .number(0.5)]), source: "c.json")
        }
        #expect(try RouterConfiguration(text: "load=0").loadCoefficient == 0)
    }

    /// A noisy top-k ConfigurableRouter in training reports the noise exactly as applied: σ =
    /// softplus(x·W_noiseᵀ), and noisy logits = clean logits + σ ⊙ ε where ε is the router's seeded
    /// N(0, 1) stream (reproduced here independently), and its selection is the top-k of the noisy
    /// logits. In evaluation, and without noisy top-k, σ is nil (with only jitter, the noisy logits
    /// are still reported). The combined loss then includes the load term.
    @Test func noisyRouterReportsTheNoiseItApplied() throws {
        let tokens = 5, experts = 4
        let rows = RouterRoutingTests.randomLogits(tokens: tokens, experts: experts, seed: 8)
        var c = try RouterConfiguration(text: "noisy-topk:seed=5,load=0.5,lb=0")
        let noiseWeight = randomTensor([experts, tokens], seed: 9)   // identity inputs: σ_t,e = softplus(W_noise[e, t])
        let routed = try RouterRoutingTests.route(c, logits: rows, training: true) { $0.noiseWeights = [noiseWeight] }
        let deviations = try #require(routed.noiseStandardDeviations)
        let noisy = try #require(routed.noisyLogits)
        var random = SeededRandom(seed: 5, stream: "router-noise")
        for t in 0 ..< tokens {
            for e in 0 ..< experts {
                let i = t * experts + e
                #expect(deviations[i] == RoutingFunctions.softplus(noiseWeight[e, t]))
                #expect(noisy[i] == routed.logits[i] + deviations[i] * Float(random.nextNormal()))
            }
            let chosen = RoutingFunctions.topK(Array(noisy[t * experts ..< (t + 1) * experts]), k: 2)
            #expect(Array(routed.decision.selectedExperts[t * 2 ..< t * 2 + 2]) == chosen)
        }
        #expect(noisy != routed.logits && Set(deviations).count > 1)

        let value = RouterLoss(configuration: c).evaluate(routed, topK: 2)
        let load = try #require(value.load)
        #expect(load > 0 && abs(value.total - 0.5 * load) <= 1e-6 * value.total)
        let expected = RouterLosses.loadLoss(logits: routed.logits, noisyLogits: noisy, noiseStandardDeviations: deviations,
                                             tokens: tokens, experts: experts, topK: 2)
        #expect(isClose(value.gradient, expected.gradient.map { 0.5 * $0 }, relativeTolerance: 1e-6))

        let evaluation = try RouterRoutingTests.route(c, logits: rows, training: false) { $0.noiseWeights = [noiseWeight] }
        #expect(evaluation.noisyLogits == nil && evaluation.noiseStandardDeviations == nil)
        let evaluated = RouterLoss(configuration: c).evaluate(evaluation, topK: 2)
        #expect(evaluated.load == nil && evaluated.total == 0 && evaluated.gradient.allSatisfy { $0 == 0 })

        c = try RouterConfiguration(text: "jitter=0.5")
        let jittered = try RouterRoutingTests.route(c, logits: rows, training: true)
        #expect(jittered.noisyLogits != nil && jittered.noiseStandardDeviations == nil)
    }
}

/// Balancing granularity (`train --balance`): the Switch loss with fractions counted elsewhere
/// (global-batch balancing) and DeepSeek-V3's sequence-wise loss on normalised scores.
@Suite struct BalancingGranularityTests {
    static let tokens = RouterLossTests.tokens, experts = RouterLossTests.experts, topK = RouterLossTests.topK

    /// The fractions-given loss is the Switch loss when the fractions are the batch's own; split
    /// into micro-batches of 2 and 4 tokens with the global fractions, the share-weighted parts add
    /// up to the global value, and each part's share-weighted gradient is the global gradient's rows.
    @Test func globalFractionsMakeMicroBatchPartsAddUpToTheGlobalLoss() {
        let (logits, selection) = RouterLossTests.fixture
        let global = RouterLosses.switchLoadBalancing(logits: logits, tokens: Self.tokens, experts: Self.experts, selectedExperts: selection,
                                                      topK: Self.topK)
        var counts = [Float](repeating: 0, count: Self.experts)
        for e in selection where e >= 0 { counts[Int(e)] += 1 }
        let fractions = counts.map { $0 / Float(Self.tokens * Self.topK) }
        let own = RouterLosses.loadBalancing(logits: logits, tokens: Self.tokens, experts: Self.experts, fractions: fractions)
        #expect(abs(own.value - global.value) <= 1e-6 * global.value)
        #expect(isClose(own.gradient, global.gradient, relativeTolerance: 1e-6))
        var value: Float = 0, gradient: [Float] = []
        for range in [0 ..< 2, 2 ..< Self.tokens] {
            let part = RouterLosses.loadBalancing(logits: Array(logits[range.lowerBound * Self.experts ..< range.upperBound * Self.experts]),
                                                  tokens: range.count, experts: Self.experts, fractions: fractions)
            let share = Float(range.count) / Float(Self.tokens)
            value += share * part.value
            gradient += part.gradient.map { share * $0 }
        }
        #expect(abs(value - global.value) <= 1e-6 * global.value)
        #expect(isClose(gradient, global.gradient, relativeTolerance: 1e-5))
    }

    /// ∂/∂z of the fractions-given loss (f fixed) against central finite differences.
    @Test func globalLoadBalancingGradientMatchesFiniteDifferences() {
        let fractions: [Float] = [0.4, 0.1, 0.3, 0.2]
        RouterLossTests.checkGradient {
            RouterLosses.loadBalancing(logits: $0, tokens: Self.tokens, experts: Self.experts, fractions: fractions)
        }
    }

    /// By hand, E = 2, k = 1, one sequence of two tokens, both routed to expert 0, sigmoid scores:
    /// z_0 = (0, 0) → s = (½, ½), s' = (½, ½); z_1 = (ln 3, −ln 3) → s = (¾, ¼), s' = (¾, ¼).
    /// f = E/(k·T)·count = (2, 0), P = (⅝, ⅜), L = 2 · ⅝ = 1.25. The softmax per-sequence loss on
    /// the same logits uses p_1 = softmax(ln 3, −ln 3) = (9/10, 1/10): P = (0.7, 0.3), L = 1.4.
    @Test func sequenceWiseLossOnNormalisedSigmoidScoresEqualsItsFormula() {
        let logits: [Float] = [0, 0, logf(3), -logf(3)]
        let sequenceWise = RouterLosses.sequenceWiseLoadBalancing(logits: logits, tokens: 2, experts: 2, scoring: .sigmoid,
                                                                  selectedExperts: [0, 0], topK: 1, sequenceLengths: [2])
        #expect(abs(sequenceWise.value - 1.25) <= 1e-6)
        let softmax = RouterLosses.perSequenceLoadBalancing(logits: logits, tokens: 2, experts: 2, selectedExperts: [0, 0], topK: 1,
                                                            sequenceLengths: [2])
        #expect(abs(softmax.value - 1.4) <= 1e-6)
        // Balanced inside each of two sequences gives 1 under sigmoid scores too.
        let balanced = RouterLosses.sequenceWiseLoadBalancing(logits: [1, 1, 1, 1, -2, -2, -2, -2], tokens: 4, experts: 2, scoring: .sigmoid,
                                                              selectedExperts: [0, 1, 1, 0], topK: 1, sequenceLengths: [2, 2])
        #expect(abs(balanced.value - 1) <= 1e-6)
    }

    /// With softmax scores s' = s, so the sequence-wise loss is the per-sequence Switch loss, value and gradient.
    @Test func sequenceWiseLossWithSoftmaxIsThePerSequenceLoss() {
        let (logits, selection) = RouterLossTests.fixture
        let a = RouterLosses.sequenceWiseLoadBalancing(logits: logits, tokens: Self.tokens, experts: Self.experts, scoring: .softmax,
                                                       selectedExperts: selection, topK: Self.topK, sequenceLengths: [2, 0, 4])
        let b = RouterLosses.perSequenceLoadBalancing(logits: logits, tokens: Self.tokens, experts: Self.experts, selectedExperts: selection,
                                                      topK: Self.topK, sequenceLengths: [2, 0, 4])
        #expect(abs(a.value - b.value) <= 1e-6 * b.value)
        #expect(isClose(a.gradient, b.gradient, relativeTolerance: 1e-5))
    }

    /// The sequence-wise gradient (through s' = s/Σs and the scoring function) against finite differences.
    @Test(arguments: RouterConfiguration.Scoring.allCases)
    func sequenceWiseLossGradientMatchesFiniteDifferences(scoring: RouterConfiguration.Scoring) {
        let selection = RouterLossTests.fixture.selection
        RouterLossTests.checkGradient {
            RouterLosses.sequenceWiseLoadBalancing(logits: $0, tokens: Self.tokens, experts: Self.experts, scoring: scoring,
                                                   selectedExperts: selection, topK: Self.topK, sequenceLengths: [2, 0, 4])
        }
    }

    /// `RouterLoss.scaled(by:)` multiplies every coefficient, so the total and its gradient scale too.
    @Test func scaledLossScalesTotalAndGradient() throws {
        var configuration = RouterConfiguration()
        configuration.zLossCoefficient = 0.25
        let (logits, selection) = RouterLossTests.fixture
        let decision = RoutingDecision(tokens: Self.tokens, experts: Self.experts, slotsPerToken: Self.topK, selectedExperts: selection,
                                       combineWeights: [Float](repeating: 0, count: selection.count),
                                       probabilities: RoutingFunctions.scores(logits, columns: Self.experts, scoring: .softmax))
        let routed = RoutedTokens(decision: decision, logits: logits)
        let loss = RouterLoss(configuration: configuration)
        let full = loss.evaluate(routed, topK: Self.topK), third = loss.scaled(by: 1.0 / 3).evaluate(routed, topK: Self.topK)
        #expect(abs(third.total - full.total / 3) <= 1e-6 * full.total)
        #expect(third.loadBalancing == full.loadBalancing)
        #expect(isClose(third.gradient, full.gradient.map { $0 / 3 }, relativeTolerance: 1e-6))
    }
}
