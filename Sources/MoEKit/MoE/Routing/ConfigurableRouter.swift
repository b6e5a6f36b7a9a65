import Foundation

/// The router of `RouterConfiguration`: every scoring, weighting, noise, capacity and balancing knob.
///
/// One instance serves every MoE layer of a model (`route` takes the layer) and holds the
/// per-layer state: the auxiliary-loss-free bias `[layer][expert]` (f32), the learned noise weights
/// of noisy top-k (`[layer]` of `[E, H]`), and one seeded noise generator whose stream advances
/// with every noisy `route` call — so the same seed and the same sequence of calls give the same
/// routing, bit for bit.
///
/// With the default configuration it computes exactly MiniCPM-MoE's routing: softmax over all
/// experts in f32 → top-k (ties to the lower expert index) → the k weights divided by their sum.
public final class ConfigurableRouter: ExpertRouter {
    public let configuration: RouterConfiguration
    public let layers: Int
    public let experts: Int
    public let hiddenSize: Int
    /// Experts per token: `configuration.topK`, or the model's when that is `nil`.
    public let topK: Int
    /// Noise (input jitter, logit noise, noisy top-k) is applied only while this is set.
    var isTraining = false

    /// `[layer][expert]` auxiliary-loss-free bias, added to the scores for selection only.
    private(set) var balancingBias: [[Float]]
    /// `[layer]` of `[experts, hidden]` noise weights W_noise of noisy top-k (learned; start at
    /// zero, so the noise standard deviation starts at softplus(0) = ln 2). Empty unless
    /// `configuration.noisyTopK`.
    var noiseWeights: [Tensor]
    private var random: SeededRandom

    /// ReMoE's adaptive L1 coefficient λ (ReLU routing; one for all layers, as in the reference
    /// code). Starts at `configuration.l1InitialCoefficient`; the trainer updates it once per step
    /// (`updateL1Coefficient`) and saves it in `trainer_state.json`.
    public var l1Coefficient: Float

    /// Top-k routing uses k slots per token; expert choice and ReLU routing use E (a token may go
    /// to every expert).
    public var slotsPerToken: Int { configuration.mode == .tokenChoice ? topK : experts }

    /// ReLU routing's target sparsity 1 − k/E: the fraction of gates that should be zero.
    public var targetSparsity: Double { 1 - Double(topK) / Double(experts) }

    /// A router for a model of `layers` MoE layers with `experts` experts of `hiddenSize` inputs.
    /// `modelTopK` is the model's experts per token (`num_experts_per_tok`), used unless the
    /// configuration sets `topK`. Validates the configuration against the model.
    public init(configuration: RouterConfiguration, layers: Int, experts: Int, hiddenSize: Int, modelTopK: Int) throws(RouterConfigurationError) {
        try configuration.validate()
        let topK = configuration.topK ?? modelTopK
        guard experts >= 1, layers >= 0, hiddenSize >= 1 else {
            throw .incompatibleModel(reason: "needs at least one expert and a positive hidden size, got \(experts) experts, hidden size \(hiddenSize)")
        }
        guard topK >= 1 && topK <= experts else {
            throw .incompatibleModel(reason: "top-k \(topK) must be between 1 and the number of experts, \(experts)")
        }
        self.configuration = configuration
        self.layers = layers
        self.experts = experts
        self.hiddenSize = hiddenSize
        self.topK = topK
        balancingBias = [[Float]](repeating: [Float](repeating: 0, count: experts), count: layers)
        noiseWeights = configuration.noisyTopK ? [Tensor](repeating: Tensor(shape: [experts, hiddenSize]), count: layers) : []
        random = SeededRandom(seed: configuration.noiseSeed, stream: "router-noise")
        l1Coefficient = configuration.l1InitialCoefficient
    }

    /// A router for a MiniCPM-MoE model config. Errors when the model is dense.
    public convenience init(configuration: RouterConfiguration, model: MiniCPMConfig) throws(RouterConfigurationError) {
        guard let experts = model.numExperts else { throw .incompatibleModel(reason: "the model is dense (config.json has no num_experts)") }
        try self.init(configuration: configuration, layers: model.numHiddenLayers, experts: experts,
                      hiddenSize: model.hiddenSize, modelTopK: model.topK ?? 2)
    }

    // MARK: Routing

    public func route(inputs: Tensor, gateWeight: Tensor, layer: Int) -> RoutedTokens {
        precondition(gateWeight.rank == 2 && gateWeight.shape[0] == experts, "router: gate weight \(gateWeight.shape), expected [\(experts), hidden]")
        precondition(inputs.columns == gateWeight.shape[1], "router: inputs \(inputs.shape) do not match gate weight \(gateWeight.shape)")
        precondition(layer >= 0 && layer < layers, "router: layer \(layer) out of 0..<\(layers)")
        let tokens = inputs.rows
        let flatInputs = inputs.rank == 2 ? inputs : inputs.reshaped([tokens, inputs.columns])

        // Noise-free logits and scores: what the decision reports and the losses use.
        let logits = MatrixMultiply.product(flatInputs, gateWeight, transposeB: true).values
        let probabilities = RoutingFunctions.scores(logits, columns: experts, scoring: configuration.scoring)

        // Logits and scores the choice is made from: noisy while training.
        var selectionLogits = logits
        var selectionScores = probabilities
        var noise: NoiseApplied?
        if isTraining, configuration.inputJitter != nil || configuration.logitNoise != nil || configuration.noisyTopK {
            let applied = noisyLogits(inputs: flatInputs, cleanLogits: logits, gateWeight: gateWeight, layer: layer)
            noise = applied
            selectionLogits = applied.logits
            selectionScores = RoutingFunctions.scores(selectionLogits, columns: experts, scoring: configuration.scoring)
        }

        var decision: RoutingDecision
        switch configuration.mode {
        case .tokenChoice:
            decision = chooseExperts(logits: selectionLogits, scores: selectionScores, probabilities: probabilities, tokens: tokens, layer: layer)
        case .expertChoice:
            let capacity = RoutingFunctions.capacity(tokens: tokens, topK: topK, experts: experts, capacityFactor: configuration.capacityFactor ?? 1)
            var (selected, weights) = RoutingFunctions.expertChoice(scores: selectionScores, tokens: tokens, experts: experts, capacity: capacity)
            if configuration.weightScale != 1 { for i in weights.indices { weights[i] *= configuration.weightScale } }
            decision = RoutingDecision(tokens: tokens, experts: experts, slotsPerToken: experts, selectedExperts: selected,
                                       combineWeights: weights, probabilities: probabilities)
        case .relu:
            let (selected, weights) = ReLURouting.decide(logits: selectionLogits, tokens: tokens, experts: experts, weightScale: configuration.weightScale)
            decision = RoutingDecision(tokens: tokens, experts: experts, slotsPerToken: experts, selectedExperts: selected,
                                       combineWeights: weights, probabilities: probabilities)
        }
        return RoutedTokens(decision: decision, logits: logits, noisyLogits: noise?.logits, noiseStandardDeviations: noise?.standardDeviations,
                            inputJitterFactors: noise?.jitterFactors, noisyTopKSamples: noise?.noisyTopKSamples)
    }

    /// Token choice: top-k of (scores + bias) per token, weights from the unbiased scores, then capacity.
    private func chooseExperts(logits: [Float], scores: [Float], probabilities: [Float], tokens: Int, layer: Int) -> RoutingDecision {
        let k = topK, weighting = configuration.weighting
        let bias = configuration.auxiliaryLossFreeBalancing ? balancingBias[layer] : nil
        // Top-k on the logits for `softmaxOverSelected`, on the scores otherwise.
        let ranked = weighting == .softmaxOverSelected ? logits : scores
        var selected = RoutingFunctions.topKRows(ranked, tokens: tokens, experts: experts, k: k, bias: bias)
        var weights = [Float](repeating: 0, count: tokens * k)
        for t in 0 ..< tokens {
            let chosen = (0 ..< k).map { Int(selected[t * k + $0]) }
            switch weighting {
            case .renormalized:
                var sum: Float = 0
                for e in chosen { sum += scores[t * experts + e] }
                for (slot, e) in chosen.enumerated() { weights[t * k + slot] = scores[t * experts + e] / sum }
            case .unnormalized:
                for (slot, e) in chosen.enumerated() { weights[t * k + slot] = scores[t * experts + e] }
            case .softmaxOverSelected:
                var maximum = -Float.infinity
                for e in chosen { maximum = max(maximum, logits[t * experts + e]) }
                var sum: Float = 0
                for (slot, e) in chosen.enumerated() {
                    let exponential = expf(logits[t * experts + e] - maximum)
                    weights[t * k + slot] = exponential
                    sum += exponential
                }
                for slot in 0 ..< k { weights[t * k + slot] /= sum }
            }
            if configuration.weightScale != 1 { for slot in 0 ..< k { weights[t * k + slot] *= configuration.weightScale } }
        }
        var dropped = 0
        if let capacityFactor = configuration.capacityFactor {
            let capacity = RoutingFunctions.capacity(tokens: tokens, topK: k, experts: experts, capacityFactor: capacityFactor)
            dropped = RoutingFunctions.applyCapacity(selectedExperts: &selected, combineWeights: &weights, probabilities: probabilities,
                                                     tokens: tokens, experts: experts, capacity: capacity, policy: configuration.dropPolicy)
        }
        return RoutingDecision(tokens: tokens, experts: experts, slotsPerToken: k, selectedExperts: selected,
                               combineWeights: weights, probabilities: probabilities, droppedAssignments: dropped)
    }

    /// z̃ = (x ⊙ U(1−ε, 1+ε))·Wᵀ + σ·N(0,1) + softplus(x'·W_noiseᵀ) ⊙ N(0,1). Samples are drawn in
    /// this order: jitter for every input element, then logit noise, then noisy-top-k noise.
    /// Returns z̃, the jitter factors (with input jitter) and, with noisy top-k, its standard
    /// deviations softplus(x'·W_noiseᵀ) `[T, E]` and samples ε `[T, E]`.
    private func noisyLogits(inputs: Tensor, cleanLogits: [Float], gateWeight: Tensor, layer: Int) -> NoiseApplied {
        var jittered = inputs
        var logits = cleanLogits
        var jitterFactors: [Float]?
        if let epsilon = configuration.inputJitter {
            var factors = [Float](repeating: 1, count: jittered.count)
            for i in jittered.values.indices {
                let factor = 1 - epsilon + 2 * epsilon * Float(random.nextUniform())
                factors[i] = factor
                jittered.values[i] *= factor
            }
            jitterFactors = factors
            logits = MatrixMultiply.product(jittered, gateWeight, transposeB: true).values
        }
        if let standardDeviation = configuration.logitNoise {
            for i in logits.indices { logits[i] += Float(random.nextNormal()) * standardDeviation }
        }
        var standardDeviations: [Float]?
        var samples: [Float]?
        if configuration.noisyTopK {
            var deviations = MatrixMultiply.product(jittered, noiseWeights[layer], transposeB: true).values
            var drawn = [Float](repeating: 0, count: logits.count)
            for i in logits.indices {
                deviations[i] = RoutingFunctions.softplus(deviations[i])
                drawn[i] = Float(random.nextNormal())
                logits[i] += deviations[i] * drawn[i]
            }
            standardDeviations = deviations
            samples = drawn
        }
        return NoiseApplied(logits: logits, standardDeviations: standardDeviations, jitterFactors: jitterFactors, noisyTopKSamples: samples)
    }

    /// The noise one `route` call applied (see `RoutedTokens`).
    private struct NoiseApplied {
        var logits: [Float]
        var standardDeviations: [Float]?
        var jitterFactors: [Float]?
        var noisyTopKSamples: [Float]?
    }

    // MARK: Auxiliary-loss-free balancing

    /// Restarts the noise generator at a stream determined by `step` alone (and the configured
    /// seed), so a training step's noise does not depend on how many `route` calls came before it:
    /// a resumed run draws the same noise at step s as an uninterrupted one.
    func reseedNoise(step: Int) {
        random = SeededRandom(seed: configuration.noiseSeed, stream: "router-noise-step-\(step)")
    }

    /// One bias update per training step (DeepSeek-V3): for each layer, b_i += u · sign(mean load −
    /// load_i), where load_i = `expertCounts[layer][i]` is the number of assignments expert i
    /// received over the step and the mean is over experts. Overloaded experts go down, underloaded
    /// up; an expert exactly at the mean is unchanged. Does nothing unless the configuration turns
    /// auxiliary-loss-free balancing on.
    func updateBalancingBias(expertCounts: [[Int]]) {
        guard configuration.auxiliaryLossFreeBalancing else { return }
        precondition(expertCounts.count == layers && expertCounts.allSatisfy { $0.count == experts },
                     "bias update needs [\(layers)][\(experts)] expert counts")
        let rate = configuration.biasUpdateRate
        for layer in 0 ..< layers {
            let counts = expertCounts[layer]
            let mean = Float(counts.reduce(0, +)) / Float(experts)
            for e in 0 ..< experts {
                let load = Float(counts[e])
                if load < mean { balancingBias[layer][e] += rate } else if load > mean { balancingBias[layer][e] -= rate }
            }
        }
    }

    /// One step of ReMoE's controller (`ReLURouting.updatedCoefficient`): λ ← λ · α^sign((1 − k/E) − S)
    /// for the step's `expertCounts[layer][expert]` over `tokens` tokens. Does nothing unless the
    /// router is a ReLU router. Returns the realised sparsity S (nil without ReLU routing).
    @discardableResult
    public func updateL1Coefficient(expertCounts: [[Int]], tokens: Int) -> Double? {
        guard configuration.mode == .relu else { return nil }
        let sparsity = ReLURouting.sparsity(expertCounts: expertCounts, tokens: tokens, experts: experts)
        l1Coefficient = ReLURouting.updatedCoefficient(l1Coefficient, multiplier: configuration.l1CoefficientMultiplier,
                                                       targetSparsity: targetSparsity, realisedSparsity: sparsity)
        return sparsity
    }

    /// Replaces one layer's bias, e.g. with the `model.layers.N.mlp.gate.moekit_bias` tensor of a
    /// checkpoint (`MiniCPMTensorNames.routerBias(N)`, f32 `[experts]`).
    func setBalancingBias(_ bias: [Float], layer: Int) throws(RouterConfigurationError) {
        guard layer >= 0 && layer < layers else { throw .incompatibleModel(reason: "bias for layer \(layer), the model has \(layers) layers") }
        guard bias.count == experts else {
            throw .incompatibleModel(reason: "\(MiniCPMTensorNames.routerBias(layer)) has \(bias.count) values, the model has \(experts) experts")
        }
        guard bias.allSatisfy(\.isFinite) else { throw .incompatibleModel(reason: "\(MiniCPMTensorNames.routerBias(layer)) holds a non-finite value") }
        balancingBias[layer] = bias
    }
}


extension ConfigurableRouter {
    /// The router a model's config describes: its `moekit_router` (`MiniCPMConfig.router`) when
    /// present, else MiniCPM-MoE's softmax → top-k → renormalise; `nil` for a dense model. `source`
    /// is the model directory (errors name its config.json).
    static func described(by config: MiniCPMConfig, source: String) throws(RouterConfigurationError) -> ConfigurableRouter? {
        guard config.isMoE else { return nil }
        return try ConfigurableRouter(configuration: RouterConfiguration(modelConfig: config), model: config)
    }

    /// Loads every saved auxiliary-loss-free bias (`model.layers.N.mlp.gate.moekit_bias`) the checkpoint holds.
    func loadBalancingBiases(from checkpoint: ModelCheckpoint) throws {
        for layer in 0 ..< layers where checkpoint.contains(MiniCPMTensorNames.routerBias(layer)) {
            try setBalancingBias(checkpoint.floatTensor(MiniCPMTensorNames.routerBias(layer)).values, layer: layer)
        }
    }
}
