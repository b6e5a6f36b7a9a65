import Foundation

/// A loss value and its exact gradient with respect to the router logits.
public struct LossAndGradient: Sendable, Equatable {
    public var value: Float
    /// `[tokens, experts]` ∂value/∂logits.
    public var gradient: [Float]

    public init(value: Float, gradient: [Float]) {
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
public enum RouterLosses {
    // MARK: Load balancing

    /// Switch Transformer load-balancing loss, L = E · Σ_i f_i · P_i with f_i = count_i / (T·k)
    /// (the fraction of the T·k assignments that went to expert i) and P_i = (1/T) Σ_t p_t,i.
    /// Perfectly balanced routing (every count T·k/E, every P_i = 1/E) gives exactly 1; all
    /// tokens on one expert with probability 1 gives E.
    ///
    /// Gradient: ∂L/∂z_t,j = (E/T) · p_t,j · (f_j − Σ_i f_i p_t,i).
    public static func switchLoadBalancing(logits: [Float], tokens: Int, experts: Int, selectedExperts: [Int32], topK: Int) -> LossAndGradient {
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
    public static func huggingFaceLoadBalancing(logits: [Float], tokens: Int, experts: Int, selectedExperts: [Int32]) -> LossAndGradient {
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
    public static func perSequenceLoadBalancing(logits: [Float], tokens: Int, experts: Int, selectedExperts: [Int32], topK: Int,
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
    public static func zLoss(logits: [Float], tokens: Int, experts: Int) -> LossAndGradient {
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
    /// Only the importance half of the paper's auxiliary losses: its smooth "load" estimator needs
    /// the noise distribution of a noisy top-k gate and is not implemented.
    public static func importanceLoss(logits: [Float], tokens: Int, experts: Int, selectedExperts: [Int32]) -> LossAndGradient {
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
        let count = Float(experts)
        let mean = importance.reduce(0, +) / count
        guard mean > 0 else { return LossAndGradient(value: 0, gradient: gradient) }
        var variance: Float = 0
        for i in importance { variance += (i - mean) * (i - mean) }
        variance /= count
        let value = variance / (mean * mean)
        let importanceGradient = importance.map { (2 / count) * (($0 - mean) / (mean * mean) - variance / (mean * mean * mean)) }
        for t in 0 ..< tokens {
            var expected: Float = 0
            for i in 0 ..< experts { expected += gates[t * experts + i] * importanceGradient[i] }
            for j in 0 ..< experts where gates[t * experts + j] != 0 {
                gradient[t * experts + j] = gates[t * experts + j] * (importanceGradient[j] - expected)
            }
        }
        return LossAndGradient(value: value, gradient: gradient)
    }

    private static func slots(_ selectedExperts: [Int32], _ tokens: Int) -> Int {
        tokens > 0 ? selectedExperts.count / tokens : 0
    }
}
