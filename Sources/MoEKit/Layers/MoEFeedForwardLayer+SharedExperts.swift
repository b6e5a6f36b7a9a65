/// Shared experts (DeepSeekMoE, arXiv 2401.06066): S FFNs every token goes through, beside the
/// routed ones, never routed and without a combine weight:
///
///     h = x + Σ_{s=1..S} FFN_s(x) + Σ_i g_i(x) · FFN_i(x)
///
/// The S shared SwiGLUs are stored and run as one SwiGLU of S·I neurons (`MoEWeights.shared`):
/// concatenating their gate/up rows and down columns gives exactly Σ_s FFN_s(x). Kept apart from
/// the routed dispatch: the routing, its logs and its losses see the routed experts only.
extension MoEFeedForwardLayer {
    /// output += SwiGLU_shared(x) `[tokens, hidden]`; returns the backward cache when `keepCache`
    /// and there are shared experts.
    static func addSharedExperts(_ x: Tensor, weights: SwiGLUWeights?, to output: inout Tensor, keepCache: Bool,
                                 timer: StageTimer? = nil) -> SwiGLULayer.Cache? {
        guard let weights else { return nil }
        let shared = timer.measure(.expertGEMM) { SwiGLULayer.forward(x, weights: weights, keepCache: keepCache) }
        Kernels.add(shared.output, to: &output)
        return shared.cache
    }

    /// The shared experts' backward for dy = ∂L/∂output: their weight gradients, and ∂L/∂x added
    /// to `inputGradient` (the shared path adds dy's pull-back through SwiGLU_shared).
    static func sharedExpertsBackward(_ outputGradient: Tensor, cache: SwiGLULayer.Cache?, weights: SwiGLUWeights?,
                                      addingInputGradientTo inputGradient: inout Tensor) -> SwiGLUWeights? {
        guard let weights else { return nil }
        guard let cache else { preconditionFailure("shared experts: no forward cache for the backward") }
        let result = SwiGLULayer.backward(outputGradient, cache: cache, weights: weights)
        Kernels.add(result.input, to: &inputGradient)
        return result.weights
    }
}
