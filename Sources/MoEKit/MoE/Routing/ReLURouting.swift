import Foundation

/// ReMoE's ReLU routing (Wang et al., ICLR 2025, arXiv 2412.14711; reference code thu-ml/ReMoE on
/// Megatron-LM): the gate g = ReLU(x·Wᵀ) `[T, E]`, active experts {e : g_t,e > 0}, combine weights g
/// itself, and sparsity controlled by a load-balanced L1 penalty whose coefficient adapts per step.
/// See docs/routers.md, "ReMoE".
enum ReLURouting {
    /// Each token's active experts in E slots: slot e holds e when z_t,e > 0 and −1 otherwise;
    /// weight c · z_t,e or 0. `logits` `[T, E]`.
    static func decide(logits: [Float], tokens: Int, experts: Int, weightScale: Float) -> (selectedExperts: [Int32], combineWeights: [Float]) {
        precondition(logits.count == tokens * experts, "ReLU routing: \(logits.count) logits for [\(tokens), \(experts)]")
        var selected = [Int32](repeating: -1, count: tokens * experts)
        var weights = [Float](repeating: 0, count: tokens * experts)
        for i in logits.indices where logits[i] > 0 {
            selected[i] = Int32(i % experts)
            weights[i] = weightScale * logits[i]
        }
        return (selected, weights)
    }

    /// The load-balanced L1 penalty (the paper's Eq. 7; `apply_l1_reg` in the reference code, which
    /// reuses Megatron's Switch loss on the ReLU gates):
    ///
    ///     L_reg = E · Σ_e f_e · ḡ_e,   f_e = count_e / (T·k),   ḡ_e = (1/T) Σ_t g_t,e,   g = ReLU(z)
    ///
    /// count_e is the number of tokens with g_t,e > 0 (held constant, no gradient), k the target
    /// active experts per token. `fractions` replaces f (global balancing passes counts over the
    /// global batch divided by T_G·k); `nil` counts this batch. With balanced counts (f_e = 1/E)
    /// L_reg = Σ_e ḡ_e, the mean L1 norm of a token's gates; loaded experts are penalised more.
    ///
    /// Gradient: ∂L_reg/∂z_t,e = (E/T) · f_e for z_t,e > 0, else 0 (ReLU's derivative at 0 taken as 0).
    static func l1Regularization(logits: [Float], tokens: Int, experts: Int, topK: Int, fractions: [Float]? = nil) -> LossAndGradient {
        precondition(logits.count == tokens * experts, "ReLU L1: \(logits.count) logits for [\(tokens), \(experts)]")
        var gradient = [Float](repeating: 0, count: tokens * experts)
        guard tokens > 0 else { return LossAndGradient(value: 0, gradient: gradient) }
        var f: [Float]
        if let fractions {
            precondition(fractions.count == experts, "ReLU L1: \(fractions.count) fractions for \(experts) experts")
            f = fractions
        } else {
            f = [Float](repeating: 0, count: experts)
            for i in logits.indices where logits[i] > 0 { f[i % experts] += 1 }
            for e in 0 ..< experts { f[e] /= Float(tokens * topK) }
        }
        var meanGates = [Float](repeating: 0, count: experts)
        for i in logits.indices where logits[i] > 0 { meanGates[i % experts] += logits[i] }
        var value: Float = 0
        for e in 0 ..< experts { value += f[e] * meanGates[e] / Float(tokens) }
        let outer = Float(experts) / Float(tokens)
        for i in logits.indices where logits[i] > 0 { gradient[i] = outer * f[i % experts] }
        return LossAndGradient(value: Float(experts) * value, gradient: gradient)
    }

    /// Realised sparsity of a step: the fraction of (token, expert) gates that are zero, over every
    /// layer, S = 1 − Σ_layers Σ_e count_e / (L·T·E), from `expertCounts[layer][e]` of `tokens` tokens.
    static func sparsity(expertCounts: [[Int]], tokens: Int, experts: Int) -> Double {
        guard !expertCounts.isEmpty, tokens > 0, experts > 0 else { return 0 }
        let active = expertCounts.reduce(0) { $0 + $1.reduce(0, +) }
        return 1 - Double(active) / Double(expertCounts.count * tokens * experts)
    }

    /// The paper's Eq. 8: λ_{i+1} = λ_i · α^sign((1 − k/E) − S_i). Too few zero gates (S below the
    /// target) raise λ; too many lower it; exactly on target keeps it.
    static func updatedCoefficient(_ coefficient: Float, multiplier: Float, targetSparsity: Double, realisedSparsity: Double) -> Float {
        if realisedSparsity < targetSparsity { return coefficient * multiplier }
        if realisedSparsity > targetSparsity { return coefficient / multiplier }
        return coefficient
    }
}
