import Foundation

/// A loss value and its exact gradient with respect to the router logits.
struct LossAndGradient: Sendable, Equatable {
    var value: Float
    /// `[tokens, experts]` ∂value/∂logits.
    var gradient: [Float]

    init(value: Float, gradient: [Float]) {
        self.value = value
        self.gradient = gradient
    }
}

/// The router's auxiliary losses, each with its exact gradient with respect to the logits z `[T, E]`.
///
/// Conventions shared by all: p_t = softmax(z_t) over all E experts, computed in f32 (also for
/// sigmoid routers: the balancing losses are defined on the softmax of the logits); the selection
/// (`selectedExperts`, `[T, slots]`, −1 for an empty slot) is a constant — counts do not vary with z,
/// so their gradient is zero, as in every published implementation. Pass the logits the router
/// reports (`RoutedTokens.logits`, noise-free) and its decision's selection (after capacity drops:
/// empty slots are not counted, matching the routing-log convention; Switch's reference code counts
/// before drops, which differs only when assignments are dropped).
enum RouterLosses {
    // MARK: Load balancing

    /// Switch Transformer load-balancing loss, L = E · Σ_i f_i · P_i with f_i = count_i / (T·k)
    /// (the fraction of the T·k assignments that went to expert i) and P_i = (1/T) Σ_t p_t,i.
    /// Perfectly balanced routing (every count T·k/E, every P_i = 1/E) gives exactly 1; all
    /// tokens on one expert with probability 1 gives E.
    ///
    /// Gradient: ∂L/∂z_t,j = (E/T) · p_t,j · (f_j − Σ_i f_i p_t,i).
    static func switchLoadBalancing(logits: [Float], tokens: Int, experts: Int, selectedExperts: [Int32], topK: Int) -> LossAndGradient {
        var gradient = [Float](repeating: 0, count: tokens * experts)
        let probabilities = RoutingFunctions.scores(logits, columns: experts, scoring: .softmax)
        let value = accumulateLoadBalancing(probabilities: probabilities, experts: experts, tokenRange: 0 ..< tokens,
                                            selectedExperts: selectedExperts, slots: slots(selectedExperts, tokens),
                                            countDivisor: Float(tokens * topK), scale: 1, gradient: &gradient)
        return LossAndGradient(value: value, gradient: gradient)
    }

    /// The Hugging Face convention (`load_balancing_loss_func` of Mixtral and MiniCPM-MoE code):
    /// the same as `switchLoadBalancing` with f_i = count_i / T (not divided by k), so balanced
    /// routing gives k and collapse gives k·E. For comparison with models trained that way.
    static func huggingFaceLoadBalancing(logits: [Float], tokens: Int, experts: Int, selectedExperts: [Int32]) -> LossAndGradient {
        var gradient = [Float](repeating: 0, count: tokens * experts)
        let probabilities = RoutingFunctions.scores(logits, columns: experts, scoring: .softmax)
        let value = accumulateLoadBalancing(probabilities: probabilities, experts: experts, tokenRange: 0 ..< tokens,
                                            selectedExperts: selectedExperts, slots: slots(selectedExperts, tokens),
                                            countDivisor: Float(tokens), scale: 1, gradient: &gradient)
        return LossAndGradient(value: value, gradient: gradient)
    }

    /// The Switch loss per sequence, averaged over sequences: the tokens are consecutive sequences
    /// of `sequenceLengths` tokens (summing to T); sequence s has its own f^s_i = count^s_i / (T_s·k)
    /// and P^s_i (mean over its tokens), L = (1/S) Σ_s E Σ_i f^s_i P^s_i. Balanced within every
    /// sequence gives 1. Gradient: (1/S)(E/T_s) · p_t,j · (f^s_j − Σ_i f^s_i p_t,i) for t in s.
    /// Empty sequences are skipped (and not counted in S).
    static func perSequenceLoadBalancing(logits: [Float], tokens: Int, experts: Int, selectedExperts: [Int32], topK: Int,
                                                sequenceLengths: [Int]) -> LossAndGradient {
        precondition(sequenceLengths.allSatisfy { $0 >= 0 } && sequenceLengths.reduce(0, +) == tokens,
                     "sequence lengths \(sequenceLengths) do not add up to \(tokens) tokens")
        var gradient = [Float](repeating: 0, count: tokens * experts)
        let probabilities = RoutingFunctions.scores(logits, columns: experts, scoring: .softmax)
        let sequences = sequenceLengths.filter { $0 > 0 }.count
        guard sequences > 0 else { return LossAndGradient(value: 0, gradient: gradient) }
        let slotCount = slots(selectedExperts, tokens)
        var value: Float = 0
        var start = 0
        for length in sequenceLengths where length > 0 {
            value += accumulateLoadBalancing(probabilities: probabilities, experts: experts, tokenRange: start ..< start + length,
                                             selectedExperts: selectedExperts, slots: slotCount, countDivisor: Float(length * topK),
                                             scale: 1 / Float(sequences), gradient: &gradient)
            start += length
        }
        return LossAndGradient(value: value / Float(sequences), gradient: gradient)
    }

    /// The Switch loss with the expert fractions given rather than counted: L = E · Σ_i f_i · P_i,
    /// P_i = (1/T) Σ_t p_t,i over these T tokens, f fixed (it carries no gradient). Global-batch
    /// balancing (`train --balance global`, Qwen arXiv 2501.11873) passes f_i = count_i / (T_G·k)
    /// counted over the whole global batch of T_G tokens; a micro-batch of T tokens then contributes
    /// (T/T_G) · L, and the contributions add up to E · Σ_i f_i · P^G_i exactly, gradient included.
    ///
    /// Gradient: ∂L/∂z_t,j = (E/T) · p_t,j · (f_j − Σ_i f_i p_t,i), as `switchLoadBalancing`.
    public static func loadBalancing(logits: [Float], tokens: Int, experts: Int, fractions: [Float]) -> LossAndGradient {
        precondition(fractions.count == experts, "load balancing: \(fractions.count) fractions for \(experts) experts")
        var gradient = [Float](repeating: 0, count: tokens * experts)
        guard tokens > 0 else { return LossAndGradient(value: 0, gradient: gradient) }
        let probabilities = RoutingFunctions.scores(logits, columns: experts, scoring: .softmax)
        var meanProbabilities = [Float](repeating: 0, count: experts)
        for t in 0 ..< tokens { for i in 0 ..< experts { meanProbabilities[i] += probabilities[t * experts + i] } }
        var value: Float = 0
        for i in 0 ..< experts { value += fractions[i] * meanProbabilities[i] / Float(tokens) }
        let outer = Float(experts) / Float(tokens)
        for t in 0 ..< tokens {
            var expected: Float = 0
            for i in 0 ..< experts { expected += fractions[i] * probabilities[t * experts + i] }
            for j in 0 ..< experts {
                gradient[t * experts + j] = outer * probabilities[t * experts + j] * (fractions[j] - expected)
            }
        }
        return LossAndGradient(value: Float(experts) * value, gradient: gradient)
    }

    /// DeepSeek-V3's sequence-wise balance loss (arXiv 2412.19437, eq. 17–20), averaged over the
    /// sequences: for sequence s of T_s tokens, with the router's scores s_t (`scoring`: softmax or
    /// sigmoid of the logits) normalised per token, s'_t,i = s_t,i / Σ_j s_t,j,
    ///
    ///     f_i = E/(k·T_s) · count_i,   P_i = (1/T_s) Σ_t s'_t,i,   L_s = Σ_i f_i · P_i,
    ///     L = (1/S) Σ_s L_s.
    ///
    /// Balanced within every sequence gives 1, as the Switch loss. For softmax s' = s and this is
    /// `perSequenceLoadBalancing`; for sigmoid routers (whose scores do not sum to 1) it is the
    /// loss DeepSeek-V3 trains with, where the softmax of the logits would be a different quantity.
    ///
    /// Gradient, with a_i = f_i/(S·T_s) for the token's sequence: ∂L/∂s_t,j = (a_j − Σ_i a_i s'_t,i) / Σ_i s_t,i,
    /// then through the scoring function (softmax: s_j (g_j − Σ_i s_i g_i); sigmoid: g_j s_j (1 − s_j)).
    /// Empty sequences are skipped (and not counted in S).
    public static func sequenceWiseLoadBalancing(logits: [Float], tokens: Int, experts: Int, scoring: RouterConfiguration.Scoring,
                                                 selectedExperts: [Int32], topK: Int, sequenceLengths: [Int]) -> LossAndGradient {
        precondition(sequenceLengths.allSatisfy { $0 >= 0 } && sequenceLengths.reduce(0, +) == tokens,
                     "sequence lengths \(sequenceLengths) do not add up to \(tokens) tokens")
        var gradient = [Float](repeating: 0, count: tokens * experts)
        let sequences = sequenceLengths.filter { $0 > 0 }.count
        guard sequences > 0 else { return LossAndGradient(value: 0, gradient: gradient) }
        let scores = RoutingFunctions.scores(logits, columns: experts, scoring: scoring)
        let slotCount = slots(selectedExperts, tokens)
        var value: Float = 0
        var start = 0
        var fractions = [Float](repeating: 0, count: experts), meanScores = fractions, scoreGradient = fractions
        for length in sequenceLengths where length > 0 {
            let range = start ..< start + length
            start += length
            for i in 0 ..< experts { fractions[i] = 0; meanScores[i] = 0 }
            for t in range {
                for slot in 0 ..< slotCount {
                    let expert = selectedExperts[t * slotCount + slot]
                    if expert >= 0 { fractions[Int(expert)] += 1 }
                }
                var sum: Float = 0
                for i in 0 ..< experts { sum += scores[t * experts + i] }
                for i in 0 ..< experts { meanScores[i] += scores[t * experts + i] / sum }
            }
            var sequenceValue: Float = 0
            for i in 0 ..< experts {
                fractions[i] *= Float(experts) / Float(topK * length)
                sequenceValue += fractions[i] * meanScores[i] / Float(length)
            }
            value += sequenceValue
            for t in range {
                var sum: Float = 0
                for i in 0 ..< experts { sum += scores[t * experts + i] }
                var expected: Float = 0
                for i in 0 ..< experts { expected += fractions[i] * scores[t * experts + i] / sum }
                let outer = 1 / (Float(sequences) * Float(length) * sum)
                for j in 0 ..< experts { scoreGradient[j] = outer * (fractions[j] - expected) }
                switch scoring {
                case .softmax:
                    var inner: Float = 0
                    for i in 0 ..< experts { inner += scoreGradient[i] * scores[t * experts + i] }
                    for j in 0 ..< experts { gradient[t * experts + j] = scores[t * experts + j] * (scoreGradient[j] - inner) }
                case .sigmoid:
                    for j in 0 ..< experts {
                        let s = scores[t * experts + j]
                        gradient[t * experts + j] = scoreGradient[j] * s * (1 - s)
                    }
                case .relu:
                    for j in 0 ..< experts where scores[t * experts + j] > 0 { gradient[t * experts + j] = scoreGradient[j] }
                }
            }
        }
        return LossAndGradient(value: value / Float(sequences), gradient: gradient)
    }

    /// E · Σ_i (count_i / countDivisor) · P_i over `tokenRange`; adds `scale` × its gradient to `gradient`.
    private static func accumulateLoadBalancing(probabilities: [Float], experts: Int, tokenRange: Range<Int>, selectedExperts: [Int32],
                                                slots: Int, countDivisor: Float, scale: Float, gradient: inout [Float]) -> Float {
        guard !tokenRange.isEmpty else { return 0 }
        let tokenCount = Float(tokenRange.count)
        var fractions = [Float](repeating: 0, count: experts)
        var meanProbabilities = [Float](repeating: 0, count: experts)
        for t in tokenRange {
            for slot in 0 ..< slots {
                let expert = selectedExperts[t * slots + slot]
                if expert >= 0 { fractions[Int(expert)] += 1 }
            }
            for i in 0 ..< experts { meanProbabilities[i] += probabilities[t * experts + i] }
        }
        var value: Float = 0
        for i in 0 ..< experts {
            fractions[i] /= countDivisor
            meanProbabilities[i] /= tokenCount
            value += fractions[i] * meanProbabilities[i]
        }
        let outer = scale * Float(experts) / tokenCount
        for t in tokenRange {
            var expected: Float = 0
            for i in 0 ..< experts { expected += fractions[i] * probabilities[t * experts + i] }
            for j in 0 ..< experts {
                let p = probabilities[t * experts + j]
                gradient[t * experts + j] += outer * p * (fractions[j] - expected)
            }
        }
        return Float(experts) * value
    }

    // MARK: z-loss

    /// Router z-loss (ST-MoE), L = (1/T) Σ_t (logsumexp_i z_t,i)², which keeps the logits small.
    /// logsumexp is computed with the row maximum subtracted. Gradient: ∂L/∂z_t,j = (2/T) · lse_t · p_t,j.
    static func zLoss(logits: [Float], tokens: Int, experts: Int) -> LossAndGradient {
        var gradient = [Float](repeating: 0, count: tokens * experts)
        guard tokens > 0 else { return LossAndGradient(value: 0, gradient: gradient) }
        var value: Float = 0
        for t in 0 ..< tokens {
            var maximum = -Float.infinity
            for j in 0 ..< experts { maximum = max(maximum, logits[t * experts + j]) }
            var sum: Float = 0
            for j in 0 ..< experts { sum += expf(logits[t * experts + j] - maximum) }
            let logSumExp = maximum + logf(sum)
            value += logSumExp * logSumExp
            let factor = 2 * logSumExp / Float(tokens)
            for j in 0 ..< experts { gradient[t * experts + j] = factor * expf(logits[t * experts + j] - maximum) / sum }
        }
        return LossAndGradient(value: value / Float(tokens), gradient: gradient)
    }

    // MARK: Importance

    /// Importance loss of Shazeer et al. (2017), L = CV²(I) = Var(I) / Mean(I)², where
    /// I_i = Σ_t g_t,i is expert i's importance and g_t the token's sparse gates: the softmax over the
    /// logits of its selected experts, 0 elsewhere (G(x) = softmax(KeepTopK(H(x), k)); equal to
    /// softmax → top-k → renormalise). Var is the population variance over the E experts (divide by
    /// E), as in the paper's tensor2tensor code, and no ε is added; when every importance is zero
    /// the loss is 0. Pass the logits the gates came from (noisy ones, to match a noisy router exactly).
    ///
    /// Gradient, with the selection held constant: with m = Mean(I), v = Var(I),
    /// G_i = ∂L/∂I_i = (2/E) · ((I_i − m)/m² − v/m³), and for j selected by token t
    /// ∂L/∂z_t,j = g_t,j · (G_j − Σ_i g_t,i G_i); 0 for unselected j.
    ///
    /// The paper's other half, the smooth load estimator of a noisy top-k gate, is `loadLoss`.
    static func importanceLoss(logits: [Float], tokens: Int, experts: Int, selectedExperts: [Int32]) -> LossAndGradient {
        var gradient = [Float](repeating: 0, count: tokens * experts)
        let slotCount = slots(selectedExperts, tokens)
        var gates = [Float](repeating: 0, count: tokens * experts)
        var importance = [Float](repeating: 0, count: experts)
        for t in 0 ..< tokens {
            var maximum = -Float.infinity
            for slot in 0 ..< slotCount {
                let e = selectedExperts[t * slotCount + slot]
                if e >= 0 { maximum = max(maximum, logits[t * experts + Int(e)]) }
            }
            guard maximum > -Float.infinity else { continue }
            var sum: Float = 0
            for slot in 0 ..< slotCount {
                let e = selectedExperts[t * slotCount + slot]
                if e >= 0 { let g = expf(logits[t * experts + Int(e)] - maximum); gates[t * experts + Int(e)] = g; sum += g }
            }
            for j in 0 ..< experts { gates[t * experts + j] /= sum; importance[j] += gates[t * experts + j] }
        }
        guard let (value, importanceGradient) = squaredCoefficientOfVariation(importance) else {
            return LossAndGradient(value: 0, gradient: gradient)
        }
        for t in 0 ..< tokens {
            var expected: Float = 0
            for i in 0 ..< experts { expected += gates[t * experts + i] * importanceGradient[i] }
            for j in 0 ..< experts where gates[t * experts + j] != 0 {
                gradient[t * experts + j] = gates[t * experts + j] * (importanceGradient[j] - expected)
            }
        }
        return LossAndGradient(value: value, gradient: gradient)
    }

    // MARK: Load

    /// Load loss of Shazeer et al. (2017, Appendix A), L = CV²(Load) = Var(Load) / Mean(Load)², for
    /// a noisy top-k gate H_t = z_t + ε_t ⊙ σ_t (z the clean logits, σ_t = softplus(x_t·W_noiseᵀ),
    /// ε ~ N(0, 1)). Load_i = Σ_t P(t, i), where P(t, i) is the probability that expert i would
    /// still be among token t's top k if only ε_t,i were drawn again:
    ///
    ///     P(t, i) = Φ((z_t,i − θ_t,i) / σ_t,i),   θ_t,i = kth_excluding(H_t, k, i),
    ///
    /// kth_excluding(v, k, i) the k-th highest component of v with component i left out, and Φ the
    /// standard normal CDF, Φ(u) = ½ erfc(−u/√2). Var and the zero handling are those of
    /// `importanceLoss`: population variance over the E experts (divide by E), no ε added, and
    /// the loss is 0 (with zero gradient) when every load is zero.
    ///
    /// Gradient with respect to the clean logits z, holding the noise samples ε and σ fixed (so
    /// H_t,j = z_t,j + ε_t,j σ_t,j moves with z_t,j, and θ_t,i is the value H_t,j* of one other
    /// expert j*): with G_i = ∂L/∂Load_i = (2/E) · ((Load_i − m)/m² − v/m³) and φ the standard
    /// normal density, ∂P(t, i)/∂z_t,i = φ(u)/σ_t,i and ∂P(t, i)/∂z_t,j* = −φ(u)/σ_t,i, so
    /// ∂L/∂z_t,i gains G_i · φ(u)/σ_t,i and ∂L/∂z_t,j* loses it. The selection (which expert is
    /// j*) is held constant, as the paper's code does.
    ///
    /// Ties in H are broken like the router's top-k: the lower expert index ranks higher. θ's
    /// value does not depend on the tie-break; its gradient goes to the one expert j* the
    /// tie-break names. When E − 1 < k (every other expert fits in the top k, so no k-th other
    /// exists) P(t, i) = 1 with zero gradient. When σ_t,i = 0 (softplus underflow) P is the step
    /// 1 if z_t,i > θ, ½ if equal, 0 otherwise, with zero gradient.
    ///
    /// NOTE: this is exact for noisy top-k as the only noise. With input jitter or logit noise as
    /// well, `noisyLogits` carries that noise too: θ comes from the noisy logits the selection
    /// saw, while the numerator uses the clean z_t,i (the router's reported logits), and the
    /// gradient treats H − z as constant. A router with an auxiliary-loss-free bias selects on
    /// biased scores; the estimator ignores the bias.
    ///
    /// - Parameters:
    ///   - logits: `[tokens, experts]` clean logits z (`RoutedTokens.logits`).
    ///   - noisyLogits: `[tokens, experts]` H, the logits the selection was made from
    ///     (`RoutedTokens.noisyLogits`).
    ///   - noiseStandardDeviations: `[tokens, experts]` σ ≥ 0 (`RoutedTokens.noiseStandardDeviations`).
    ///   - topK: the router's k, 1 ≤ k ≤ E.
    static func loadLoss(logits: [Float], noisyLogits: [Float], noiseStandardDeviations: [Float], tokens: Int, experts: Int,
                                topK: Int) -> LossAndGradient {
        var gradient = [Float](repeating: 0, count: tokens * experts)
        guard let terms = loadLossTerms(logits: logits, noisyLogits: noisyLogits, noiseStandardDeviations: noiseStandardDeviations,
                                        tokens: tokens, experts: experts, topK: topK) else {
            return LossAndGradient(value: 0, gradient: gradient)
        }
        for t in 0 ..< tokens {
            let row = t * experts
            for i in 0 ..< experts where terms.threshold[row + i] >= 0 {
                let term = terms.slope[row + i]
                gradient[row + i] += term
                gradient[row + terms.threshold[row + i]] -= term
            }
        }
        return LossAndGradient(value: terms.value, gradient: gradient)
    }

    /// The load loss with its partial derivatives kept apart, for a trainer that follows the noise
    /// into x' and W_noise (`MoEFeedForwardLayer`): ∂L/∂z with respect to the clean logits in the
    /// numerators, ∂L/∂H with respect to the noisy logits θ is read from, and ∂L/∂σ with respect to
    /// the standard deviations in the denominators, the samples ε and the selection held fixed. With
    /// u = (z_t,i − θ_t,i)/σ_t,i and θ_t,i = H_t,j*:
    ///
    ///     ∂P(t,i)/∂z_t,i = φ(u)/σ_t,i,   ∂P(t,i)/∂H_t,j* = −φ(u)/σ_t,i,   ∂P(t,i)/∂σ_t,i = −u·φ(u)/σ_t,i,
    ///
    /// each times G_i = ∂L/∂Load_i. `loadLoss`'s gradient is `logits + noisyLogits` (θ moving with z).
    /// All zero when the loss is (every load zero), and for the (t, i) `loadLoss` gives no gradient.
    static func loadLossPartials(logits: [Float], noisyLogits: [Float], noiseStandardDeviations: [Float], tokens: Int, experts: Int,
                                        topK: Int) -> (value: Float, logits: [Float], noisyLogits: [Float], standardDeviations: [Float]) {
        var numerator = [Float](repeating: 0, count: tokens * experts)
        var noisy = numerator, deviation = numerator
        guard let terms = loadLossTerms(logits: logits, noisyLogits: noisyLogits, noiseStandardDeviations: noiseStandardDeviations,
                                        tokens: tokens, experts: experts, topK: topK) else {
            return (0, numerator, noisy, deviation)
        }
        for index in 0 ..< tokens * experts where terms.threshold[index] >= 0 {
            let term = terms.slope[index]
            numerator[index] += term
            noisy[(index / experts) * experts + terms.threshold[index]] -= term
            deviation[index] -= terms.standardized[index] * term
        }
        return (terms.value, numerator, noisy, deviation)
    }

    /// The load loss's value and, per (t, i): u, the expert j* whose H is θ (−1: no gradient), and
    /// G_i · φ(u)/σ_t,i. `nil` when every load is zero (the loss is 0 with zero gradient).
    private static func loadLossTerms(logits: [Float], noisyLogits: [Float], noiseStandardDeviations: [Float], tokens: Int, experts: Int,
                                      topK: Int) -> (value: Float, standardized: [Float], threshold: [Int], slope: [Float])? {
        let count = tokens * experts
        precondition(logits.count == count && noisyLogits.count == count && noiseStandardDeviations.count == count,
                     "load loss: logits, noisy logits and noise standard deviations must all be [\(tokens), \(experts)]")
        precondition(topK >= 1 && topK <= experts, "load loss: top-k \(topK) must be in 1...\(experts)")
        // Per token and expert: u = (z − θ)/σ, the expert j* whose H is θ (−1: none), for the gradient.
        var standardized = [Float](repeating: 0, count: count)
        var threshold = [Int](repeating: -1, count: count)
        var load = [Float](repeating: 0, count: experts)
        var order = [Int](repeating: 0, count: experts)
        var rank = [Int](repeating: 0, count: experts)
        for t in 0 ..< tokens {
            let row = t * experts
            // Experts by H descending, ties to the lower index (a stable sort of 0..<E).
            for e in 0 ..< experts { order[e] = e }
            order.sort { a, b in
                let ha = noisyLogits[row + a], hb = noisyLogits[row + b]
                return ha > hb || (ha == hb && a < b)
            }
            for (position, e) in order.enumerated() { rank[e] = position }
            for i in 0 ..< experts {
                // Without i, the k-th highest is order[k] if i is itself in the top k, else order[k − 1].
                let position = rank[i] < topK ? topK : topK - 1
                guard position < experts else { load[i] += 1; continue }
                let other = order[position]
                let theta = noisyLogits[row + other]
                let z = logits[row + i], sigma = noiseStandardDeviations[row + i]
                guard sigma > 0 else { load[i] += z > theta ? 1 : (z == theta ? 0.5 : 0); continue }
                let u = (z - theta) / sigma
                standardized[row + i] = u
                threshold[row + i] = other
                load[i] += 0.5 * erfcf(-u / Float(2).squareRoot())
            }
        }
        guard let (value, loadGradient) = squaredCoefficientOfVariation(load) else { return nil }
        let inverseSquareRootTwoPi = 1 / Float(2 * Double.pi).squareRoot()
        var slope = [Float](repeating: 0, count: count)
        for t in 0 ..< tokens {
            let row = t * experts
            for i in 0 ..< experts where threshold[row + i] >= 0 {
                let u = standardized[row + i]
                let density = inverseSquareRootTwoPi * expf(-0.5 * u * u)
                slope[row + i] = loadGradient[i] * density / noiseStandardDeviations[row + i]
            }
        }
        return (value, standardized, threshold, slope)
    }

    /// CV²(x) = Var(x) / Mean(x)² with the population variance (divide by n) and its gradient
    /// ∂/∂x_i = (2/n) · ((x_i − m)/m² − v/m³); `nil` when the mean is not positive.
    private static func squaredCoefficientOfVariation(_ values: [Float]) -> (value: Float, gradient: [Float])? {
        let count = Float(values.count)
        let mean = values.reduce(0, +) / count
        guard mean > 0 else { return nil }
        var variance: Float = 0
        for x in values { variance += (x - mean) * (x - mean) }
        variance /= count
        let gradient = values.map { (2 / count) * (($0 - mean) / (mean * mean) - variance / (mean * mean * mean)) }
        return (variance / (mean * mean), gradient)
    }

    private static func slots(_ selectedExperts: [Int32], _ tokens: Int) -> Int {
        tokens > 0 ? selectedExperts.count / tokens : 0
    }
}
