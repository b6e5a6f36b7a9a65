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

/// A routing decision together with the router logits it came from.
public struct RoutedTokens: Sendable {
    public var decision: RoutingDecision
    /// `[tokens, experts]` router logits, `gate(x)` (before any noise).
    public var logits: [Float]

    public init(decision: RoutingDecision, logits: [Float]) {
        self.decision = decision
        self.logits = logits
    }
}
