/// The router's total auxiliary loss for one layer and one batch, weighted by the configured
/// coefficients: L = c_lb · L_lb + c_z · L_z + c_imp · L_importance + c_load · L_load, where L_lb is
/// the configured load-balancing variant (see `RouterLosses`). Its gradient with respect to the
/// logits is what a trainer adds to the router's upstream gradient before ∂/∂W_gate = gradientᵀ · inputs.
public struct RouterLoss: Sendable, Equatable {
    var loadBalancingLoss: RouterConfiguration.LoadBalancingLoss
    var loadBalancingCoefficient: Float
    var zLossCoefficient: Float
    var importanceCoefficient: Float
    var loadCoefficient: Float
    /// The router's scoring function (the sequence-wise loss normalises its scores). With `.relu`
    /// (ReMoE) the load-balancing term is ReMoE's L1 penalty `ReLURouting.l1Regularization`, and
    /// `loadBalancingCoefficient` holds its adaptive coefficient λ (see `init(router:)`).
    var scoring: RouterConfiguration.Scoring
    /// Over which tokens the load-balancing statistics are pooled (`moekit train --balance`).
    var balance: Balance = .micro
    /// `.global` only: this layer's expert counts over the whole global batch and its T_G tokens;
    /// f_i = count_i / (T_G·k) (`huggingFace`: count_i / T_G) then replaces the batch's own f_i.
    /// `nil` falls back to the batch's own counts (a global batch of one micro-batch).
    var globalExpertCounts: [Int]?
    var globalTokens = 0

    /// The granularity of load balancing under gradient accumulation (see docs/routers.md).
    public enum Balance: String, Sendable, CaseIterable {
        /// The configured load-balancing loss on each micro-batch (its own f_i and P_i).
        case micro
        /// f_i counted over the global batch (all micro-batches of one optimiser step), P_i per
        /// micro-batch: Qwen's global-batch balancing (arXiv 2501.11873), Megatron's `global_aux_loss`.
        case global
        /// DeepSeek-V3's sequence-wise loss on the normalised scores s' = s/Σs
        /// (`RouterLosses.sequenceWiseLoadBalancing`).
        case sequence
    }

    init(configuration: RouterConfiguration) {
        loadBalancingLoss = configuration.loadBalancingLoss
        loadBalancingCoefficient = configuration.loadBalancingCoefficient
        zLossCoefficient = configuration.zLossCoefficient
        importanceCoefficient = configuration.importanceCoefficient
        loadCoefficient = configuration.loadCoefficient
        scoring = configuration.scoring
        if configuration.mode == .relu { loadBalancingCoefficient = configuration.l1InitialCoefficient }
    }

    /// The loss of a router as it stands: with ReLU routing, the L1 penalty's coefficient is the
    /// router's current λ (`ConfigurableRouter.l1Coefficient`) instead of `load_balancing_coefficient`.
    public init(router: ConfigurableRouter) {
        self.init(configuration: router.configuration)
        if router.configuration.mode == .relu { loadBalancingCoefficient = router.l1Coefficient }
    }

    /// The loss with every coefficient multiplied by `share`: one micro-batch's part of a global
    /// batch's objective, share = T_m / T_G (its tokens over the global batch's).
    public func scaled(by share: Float) -> RouterLoss {
        var copy = self
        copy.loadBalancingCoefficient *= share
        copy.zLossCoefficient *= share
        copy.importanceCoefficient *= share
        copy.loadCoefficient *= share
        return copy
    }

    /// Every term unweighted, the weighted total, and the total's gradient.
    struct Value: Sendable, Equatable {
        /// c_lb · L_lb + c_z · L_z + c_imp · L_importance + c_load · L_load (the last only when `load` is set).
        var total: Float
        var loadBalancing: Float
        var zLoss: Float
        var importance: Float
        /// The load CV² loss, or `nil` when the routing carried no noisy top-k noise (evaluation,
        /// or a router without noisy top-k): the load estimator is defined by that noise.
        var load: Float?
        /// `[tokens, experts]` ∂total/∂logits.
        var gradient: [Float]
    }

    /// Evaluates the loss for a router's output. `topK` is the router's k (f_i divides counts by
    /// T·k). `sequenceLengths` (summing to the number of tokens) is used by the per-sequence
    /// variant; `nil` treats the batch as one sequence. Terms with coefficient 0 are still
    /// computed, so they can be logged.
    ///
    /// The load term needs `routed.noisyLogits` and `routed.noiseStandardDeviations`; when the
    /// router did not apply noisy top-k noise (it is not training, or has no noisy top-k) the term
    /// is left out — `Value.load` is `nil` and it adds nothing to the total or the gradient — rather
    /// than being an error, so one evaluation code path serves training and evaluation batches.
    /// (A configuration with a non-zero load coefficient but no noisy top-k is rejected by
    /// `RouterConfiguration.validate`.)
    func evaluate(_ routed: RoutedTokens, topK: Int, sequenceLengths: [Int]? = nil) -> Value {
        let decision = routed.decision
        let tokens = decision.tokens, experts = decision.experts
        let balancing: LossAndGradient
        switch (balance, loadBalancingLoss) {
        case _ where scoring == .relu:
            var fractions: [Float]?
            if balance == .global, let counts = globalExpertCounts {
                precondition(counts.count == experts && globalTokens > 0, "global balancing: \(counts.count) counts over \(globalTokens) tokens for \(experts) experts")
                fractions = counts.map { Float($0) / Float(globalTokens * topK) }
            }
            balancing = ReLURouting.l1Regularization(logits: routed.logits, tokens: tokens, experts: experts, topK: topK, fractions: fractions)
        case (.sequence, _):
            balancing = RouterLosses.sequenceWiseLoadBalancing(logits: routed.logits, tokens: tokens, experts: experts, scoring: scoring,
                                                               selectedExperts: decision.selectedExperts, topK: topK,
                                                               sequenceLengths: sequenceLengths ?? [tokens])
        case (.global, .switch) where globalExpertCounts != nil, (.global, .huggingFace) where globalExpertCounts != nil:
            let counts = globalExpertCounts ?? []
            precondition(counts.count == experts && globalTokens > 0, "global balancing: \(counts.count) counts over \(globalTokens) tokens for \(experts) experts")
            let divisor = Float(loadBalancingLoss == .switch ? globalTokens * topK : globalTokens)
            balancing = RouterLosses.loadBalancing(logits: routed.logits, tokens: tokens, experts: experts,
                                                   fractions: counts.map { Float($0) / divisor })
        case (_, .switch):
            balancing = RouterLosses.switchLoadBalancing(logits: routed.logits, tokens: tokens, experts: experts,
                                                         selectedExperts: decision.selectedExperts, topK: topK)
        case (_, .huggingFace):
            balancing = RouterLosses.huggingFaceLoadBalancing(logits: routed.logits, tokens: tokens, experts: experts,
                                                              selectedExperts: decision.selectedExperts)
        case (_, .perSequence):
            balancing = RouterLosses.perSequenceLoadBalancing(logits: routed.logits, tokens: tokens, experts: experts,
                                                              selectedExperts: decision.selectedExperts, topK: topK,
                                                              sequenceLengths: sequenceLengths ?? [tokens])
        }
        let z = RouterLosses.zLoss(logits: routed.logits, tokens: tokens, experts: experts)
        let importance = RouterLosses.importanceLoss(logits: routed.logits, tokens: tokens, experts: experts,
                                                     selectedExperts: decision.selectedExperts)
        var load: LossAndGradient?
        if let noisyLogits = routed.noisyLogits, let standardDeviations = routed.noiseStandardDeviations {
            load = RouterLosses.loadLoss(logits: routed.logits, noisyLogits: noisyLogits, noiseStandardDeviations: standardDeviations,
                                         tokens: tokens, experts: experts, topK: topK)
        }
        var gradient = [Float](repeating: 0, count: tokens * experts)
        for i in gradient.indices {
            gradient[i] = loadBalancingCoefficient * balancing.gradient[i] + zLossCoefficient * z.gradient[i]
                + importanceCoefficient * importance.gradient[i]
        }
        var total = loadBalancingCoefficient * balancing.value + zLossCoefficient * z.value + importanceCoefficient * importance.value
        if let load {
            for i in gradient.indices { gradient[i] += loadCoefficient * load.gradient[i] }
            total += loadCoefficient * load.value
        }
        return Value(total: total, loadBalancing: balancing.value, zLoss: z.value, importance: importance.value, load: load?.value,
                     gradient: gradient)
    }
}
