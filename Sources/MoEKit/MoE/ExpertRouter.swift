/// A router: turns a MoE layer's inputs into a routing decision.
///
/// The MoE layer calls `route` once per forward call with the normalised hidden states and the
/// layer's router weight (`mlp.gate.weight`). Routers may keep state (an auxiliary-loss-free bias,
/// a noise generator), so they are classes.
public protocol ExpertRouter: AnyObject {
    /// Experts per token the decision's slots hold (k for top-k routing).
    var slotsPerToken: Int { get }

    /// Routes `inputs` `[tokens, hidden]` of layer `layer` with `gateWeight` `[experts, hidden]`.
    /// Returns the decision and the router logits `[tokens, experts]` the losses need.
    func route(inputs: Tensor, gateWeight: Tensor, layer: Int) -> RoutedTokens
}

/// A routing decision together with the router logits it came from, and the noise the selection
/// saw while training.
public struct RoutedTokens: Sendable {
    var decision: RoutingDecision
    /// `[tokens, experts]` router logits, `gate(x)` (before any noise).
    public var logits: [Float]
    /// `[tokens, experts]` the noisy logits z̃ the selection was made from (input jitter, logit
    /// noise and noisy top-k noise all applied, see `RouterConfiguration`); `nil` when no noise
    /// was applied (evaluation, or a router without noise).
    var noisyLogits: [Float]?
    /// `[tokens, experts]` σ = softplus(x'·W_noiseᵀ), the standard deviations of Shazeer's noisy
    /// top-k noise exactly as applied (z̃ gained σ ⊙ ε with ε ~ N(0, 1)); `nil` unless noisy top-k
    /// noise was applied. When set, `noisyLogits` is set too. The load loss needs both
    /// (`RouterLosses.loadLoss`).
    var noiseStandardDeviations: [Float]?
    /// `[tokens, hidden]` the input jitter factors f ~ U(1−ε, 1+ε) applied (x' = x ⊙ f, the inputs
    /// the noisy logits came from); `nil` unless input jitter was applied. The training backward
    /// needs them (∂z̃/∂W uses x', ∂x' /∂x is f).
    var inputJitterFactors: [Float]?
    /// `[tokens, experts]` the standard normal samples ε of noisy top-k (z̃ gained σ ⊙ ε); `nil`
    /// unless noisy top-k noise was applied. The training backward needs them for ∂z̃/∂σ = ε.
    var noisyTopKSamples: [Float]?

    public init(decision: RoutingDecision, logits: [Float], noisyLogits: [Float]? = nil, noiseStandardDeviations: [Float]? = nil,
                inputJitterFactors: [Float]? = nil, noisyTopKSamples: [Float]? = nil) {
        self.decision = decision
        self.logits = logits
        self.noisyLogits = noisyLogits
        self.noiseStandardDeviations = noiseStandardDeviations
        self.inputJitterFactors = inputJitterFactors
        self.noisyTopKSamples = noisyTopKSamples
    }
}
