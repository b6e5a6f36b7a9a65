/// The router's total auxiliary loss for one layer and one batch, weighted by the configured
/// coefficients: L = c_lb · L_lb + c_z · L_z + c_imp · L_importance + c_load · L_load, where L_lb is
/// the configured load-balancing variant (see `RouterLosses`). Its gradient with respect to the
/// logits is what a trainer adds to the router's upstream gradient before ∂/∂W_gate = gradientᵀ · inputs.
struct RouterLoss: Sendable, Equatable {
    var loadBalancingLoss: RouterConfiguration.LoadBalancingLoss
    var loadBalancingCoefficient: Float
    var zLossCoefficient: Float
    var importanceCoefficient: Float
    var loadCoefficient: Float

    init(configuration: RouterConfiguration) {
        loadBalancingLoss = configuration.loadBalancingLoss
        loadBalancingCoefficient = configuration.loadBalancingCoefficient
        zLossCoefficient = configuration.zLossCoefficient
        importanceCoefficient = configuration.importanceCoefficient
        loadCoefficient = configuration.loadCoefficient
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
        switch loadBalancingLoss {
        case .switch:
            balancing = RouterLosses.switchLoadBalancing(logits: routed.logits, tokens: tokens, experts: experts,
                                                         selectedExperts: decision.selectedExperts, topK: topK)
        case .huggingFace:
            balancing = RouterLosses.huggingFaceLoadBalancing(logits: routed.logits, tokens: tokens, experts: experts,
                                                              selectedExperts: decision.selectedExperts)
        case .perSequence:
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
