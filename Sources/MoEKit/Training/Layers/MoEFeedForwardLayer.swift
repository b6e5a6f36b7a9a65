// PINNED INTERFACE — implemented on branch `moe` (helper "moe"). Bodies here are placeholders
// so other branches compile against the signatures; they must be replaced before any issue closes.

/// Forward/backward of the MiniCPM-MoE layer for training: router → top-k dispatch → SwiGLU
/// experts → weighted combine, plus the router's auxiliary losses (`RouterLoss`, coefficients
/// included) whose gradient flows into the gate weight together with the gradient through the
/// combine weights.
public enum MoEFeedForwardLayer {
    /// What `forward` keeps for `backward`.
    public struct Cache: Sendable {
        public init() {}
    }

    public struct Output: Sendable {
        /// `[tokens, hidden]` Σ_j w_j · expert_j(x).
        public var output: Tensor
        /// The routing (decision, clean logits, noise) — for logs and the auxiliary-loss-free bias.
        public var routed: RoutedTokens
        /// The weighted auxiliary loss of this layer and its terms; `total` is added to the training loss.
        public var auxiliaryLoss: RouterLoss.Value
        public var cache: Cache
    }

    public struct Gradients: Sendable {
        /// `[tokens, hidden]` ∂L/∂x (through the experts and through the router).
        public var input: Tensor
        /// `[experts, hidden]` ∂L/∂W_gate: combine-weight path plus the auxiliary losses' gradient.
        public var gateWeight: Tensor
        /// Per expert; experts that received no token have zero gradients.
        public var experts: [SwiGLUWeights]
    }

    /// x `[tokens, hidden]` of `sequenceLengths` (summing to tokens; used by the per-sequence loss).
    /// Throws `TrainingError` for router configurations it cannot differentiate.
    public static func forward(_ x: Tensor, gateWeight: Tensor, experts: [SwiGLUWeights], router: ConfigurableRouter,
                               layer: Int, loss: RouterLoss, sequenceLengths: [Int]) throws -> Output {
        fatalError("MoEFeedForwardLayer.forward: implemented on branch moe")
    }

    /// dy `[tokens, hidden]` → gradients; the auxiliary loss's logit gradient is added with weight 1
    /// (its coefficients are already inside `RouterLoss`).
    public static func backward(_ outputGradient: Tensor, cache: Cache, gateWeight: Tensor, experts: [SwiGLUWeights]) -> Gradients {
        fatalError("MoEFeedForwardLayer.backward: implemented on branch moe")
    }
}
