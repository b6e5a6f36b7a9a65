import Foundation

/// A MiniCPM or MiniCPM-MoE model being trained: its parameters by checkpoint name, the router
/// of its MoE layers, and the whole model's forward and backward pass.
///
/// The forward pass is `MiniCPMModel`'s, over B sequences stacked as `[N = Σ T_b, hidden]`:
///
///     h₀ = embed(tokens) · scale_emb
///     for each layer:  h += attention(rmsNorm(h)) · scale_depth/√L
///                      h += mlp(rmsNorm(h)) · scale_depth/√L        (SwiGLU, or the MoE layer)
///     logits = rmsNorm(h) / (hidden / dim_model_base) · headᵀ       (head = lm_head, or embed when tied)
///     L = mean cross-entropy over targets ≥ 0  +  Σ_MoE layers (the router's weighted auxiliary loss)
///
/// `lossAndGradients` runs it keeping what each layer's backward needs, then walks the layers
/// back (each a `*Layer` forward/backward pair under `Training/Layers/`). A tied head's gradient
/// is added into the embedding's.
public final class TrainableMiniCPM {
    /// The trained values (an optimiser updates them in place between steps).
    public var parameters: ParameterSet
    /// The router of every MoE layer (`nil` for a dense model). Its auxiliary-loss-free bias is
    /// state the trainer updates from `StepResult.routing`.
    public let router: ConfigurableRouter?
    /// The auxiliary losses of the router's configuration (their coefficients included).
    public let routerLoss: RouterLoss?
    public var config: MiniCPMConfig { parameters.config }

    private let geometry: CausalAttentionLayer.Geometry

    /// A model over `parameters`; a MoE model needs a router for its layers and experts.
    public init(parameters: ParameterSet, router: ConfigurableRouter?) {
        let config = parameters.config
        if config.isMoE {
            guard let router else { preconditionFailure("a MoE model needs a router") }
            precondition(router.layers == config.numHiddenLayers && router.experts == config.numExperts && router.hiddenSize == config.hiddenSize,
                         "router for \(router.layers) layers × \(router.experts) experts of \(router.hiddenSize), model has \(config.numHiddenLayers) × \(config.numExperts ?? 0) of \(config.hiddenSize)")
        } else {
            precondition(router == nil, "a dense model has no router")
        }
        self.parameters = parameters
        self.router = router
        routerLoss = router.map { RouterLoss(configuration: $0.configuration) }
        geometry = CausalAttentionLayer.Geometry(config: config)
    }

    /// Loads a Hugging Face model directory in f32, with the router its config.json describes and
    /// any saved auxiliary-loss-free biases (as `MiniCPMModel(directory:)` does).
    public convenience init(directory: String) throws {
        let parameters = try ParameterSet(directory: directory)
        let router = try ConfigurableRouter.described(by: parameters.config, source: directory)
        if let router { try router.loadBalancingBiases(from: ModelCheckpoint(directory: directory)) }
        self.init(parameters: parameters, router: router)
    }

    /// What one forward (and backward) pass over a batch gives.
    public struct StepResult: Sendable {
        /// The training objective: `languageModelLoss + Σ routerLosses[i].total`.
        public var loss: Float
        /// Mean next-token cross-entropy over the targets ≥ 0.
        public var languageModelLoss: Float
        /// How many targets the language-model loss averages over.
        public var countedTokens: Int
        /// Per MoE layer (in layer order): the router's auxiliary losses, weighted total and terms.
        public var routerLosses: [RouterLoss.Value]
        /// Per MoE layer (in layer order): the routing of the batch's N tokens (for statistics and
        /// the auxiliary-loss-free bias update).
        public var routing: [RoutedTokens]
        /// ∂loss/∂parameters by parameter name (`lossAndGradients` only).
        public var gradients: ParameterSet?

        /// `[MoE layer][expert]` assignments each expert received (after drops): what
        /// `ConfigurableRouter.updateBalancingBias(expertCounts:)` takes.
        public var expertCounts: [[Int]] { routing.map(\.decision.expertCounts) }
    }

    /// The loss of a batch, forward only, with the router in evaluation mode (no noise).
    public func evaluate(_ batch: TrainingBatch) throws -> StepResult {
        let wasTraining = router?.isTraining ?? false
        router?.isTraining = false
        defer { router?.isTraining = wasTraining }
        let pass = try forward(batch, keepCaches: false)
        return StepResult(loss: pass.loss, languageModelLoss: pass.crossEntropy.loss, countedTokens: pass.crossEntropy.countedTokens,
                          routerLosses: pass.routerLosses, routing: pass.routing, gradients: nil)
    }

    /// The loss of a batch and its gradient with respect to every parameter; the router is in
    /// training mode (noise on, when configured) during the pass.
    public func lossAndGradients(_ batch: TrainingBatch) throws -> StepResult {
        let wasTraining = router?.isTraining ?? false
        router?.isTraining = true
        defer { router?.isTraining = wasTraining }
        let pass = try forward(batch, keepCaches: true)
        let gradients = try backward(pass)
        return StepResult(loss: pass.loss, languageModelLoss: pass.crossEntropy.loss, countedTokens: pass.crossEntropy.countedTokens,
                          routerLosses: pass.routerLosses, routing: pass.routing, gradients: gradients)
    }

    // MARK: Forward

    private enum FeedForwardCache {
        case dense(SwiGLULayer.Cache)
        case mixture(MoEFeedForwardLayer.Cache)
    }

    private struct LayerCache {
        var inputNorm: RMSNormLayer.Cache
        var attention: CausalAttentionLayer.Cache
        var postAttentionNorm: RMSNormLayer.Cache
        var feedForward: FeedForwardCache
    }

    private struct ForwardPass {
        var tokens: [Int]
        var layers: [LayerCache]
        var crossEntropy: CrossEntropyLayer.Output
        var routerLosses: [RouterLoss.Value]
        var routing: [RoutedTokens]
        var loss: Float
    }

    private func forward(_ batch: TrainingBatch, keepCaches: Bool) throws -> ForwardPass {
        try validate(batch)
        let c = config
        let tokens = batch.inputs.flatMap { $0 }
        let sequenceLengths = batch.inputs.map(\.count)
        let epsilon = Float(c.rmsNormEps), residualScale = c.residualScale
        var h = EmbeddingLayer.forward(tokens: tokens, embedding: parameters[MiniCPMTensorNames.embedTokens], scale: Float(c.scaleEmb))
        var caches: [LayerCache] = []
        var routerLosses: [RouterLoss.Value] = []
        var routing: [RoutedTokens] = []
        for layer in 0 ..< c.numHiddenLayers {
            let (attentionInput, inputNorm) = RMSNormLayer.forward(h, weight: parameters[MiniCPMTensorNames.inputLayerNorm(layer)], epsilon: epsilon)
            let (attended, attention) = CausalAttentionLayer.forward(attentionInput, weights: attentionWeights(layer), geometry: geometry,
                                                                     sequenceLengths: sequenceLengths)
            Kernels.add(attended, scaledBy: residualScale, to: &h)
            let (mlpInput, postAttentionNorm) = RMSNormLayer.forward(h, weight: parameters[MiniCPMTensorNames.postAttentionLayerNorm(layer)], epsilon: epsilon)
            let mlpOutput: Tensor
            let feedForward: FeedForwardCache
            if let router, let routerLoss {
                let result = try MoEFeedForwardLayer.forward(mlpInput, gateWeight: parameters[MiniCPMTensorNames.router(layer)],
                                                             experts: expertWeights(layer), router: router, layer: layer, loss: routerLoss,
                                                             sequenceLengths: sequenceLengths)
                mlpOutput = result.output
                feedForward = .mixture(result.cache)
                routerLosses.append(result.auxiliaryLoss)
                routing.append(result.routed)
            } else {
                let result = SwiGLULayer.forward(mlpInput, weights: denseWeights(layer))
                mlpOutput = result.output
                feedForward = .dense(result.cache)
            }
            Kernels.add(mlpOutput, scaledBy: residualScale, to: &h)
            if keepCaches {
                caches.append(LayerCache(inputNorm: inputNorm, attention: attention, postAttentionNorm: postAttentionNorm, feedForward: feedForward))
            }
        }
        let crossEntropy = CrossEntropyLayer.forward(h, normWeight: parameters[MiniCPMTensorNames.finalNorm], head: head,
                                                     targets: batch.targets.flatMap { $0 }, divisor: c.logitDivisor, epsilon: epsilon,
                                                     keepLogitGradient: keepCaches)
        let loss = crossEntropy.loss + routerLosses.reduce(0) { $0 + $1.total }
        return ForwardPass(tokens: tokens, layers: caches, crossEntropy: crossEntropy, routerLosses: routerLosses, routing: routing, loss: loss)
    }

    // MARK: Backward

    private func backward(_ pass: ForwardPass) throws -> ParameterSet {
        let c = config
        let residualScale = c.residualScale
        var gradients: [String: Tensor] = [:]
        let output = CrossEntropyLayer.backward(cache: pass.crossEntropy.cache, normWeight: parameters[MiniCPMTensorNames.finalNorm], head: head)
        gradients[MiniCPMTensorNames.finalNorm] = output.normWeight
        var dh = output.input
        for layer in (0 ..< c.numHiddenLayers).reversed() {
            let cache = pass.layers[layer]
            // h ← h + s · mlp(rmsNorm(h))
            var mlpGradient = dh
            Kernels.scale(&mlpGradient, by: residualScale)
            let mlpInputGradient: Tensor
            switch cache.feedForward {
            case .dense(let ffnCache):
                let weights = denseWeights(layer)
                let result = SwiGLULayer.backward(mlpGradient, cache: ffnCache, weights: weights)
                mlpInputGradient = result.input
                gradients[MiniCPMTensorNames.gateProjection(layer)] = result.weights.gate
                gradients[MiniCPMTensorNames.upProjection(layer)] = result.weights.up
                gradients[MiniCPMTensorNames.downProjection(layer)] = result.weights.down
            case .mixture(let moeCache):
                let result = MoEFeedForwardLayer.backward(mlpGradient, cache: moeCache, gateWeight: parameters[MiniCPMTensorNames.router(layer)],
                                                          experts: expertWeights(layer))
                mlpInputGradient = result.input
                gradients[MiniCPMTensorNames.router(layer)] = result.gateWeight
                for (expert, weights) in result.experts.enumerated() {
                    gradients[MiniCPMTensorNames.expertGate(layer, expert)] = weights.gate
                    gradients[MiniCPMTensorNames.expertUp(layer, expert)] = weights.up
                    gradients[MiniCPMTensorNames.expertDown(layer, expert)] = weights.down
                }
            }
            let postNorm = RMSNormLayer.backward(mlpInputGradient, cache: cache.postAttentionNorm,
                                                 weight: parameters[MiniCPMTensorNames.postAttentionLayerNorm(layer)])
            gradients[MiniCPMTensorNames.postAttentionLayerNorm(layer)] = postNorm.weight
            Kernels.add(postNorm.input, to: &dh)
            // h ← h + s · attention(rmsNorm(h))
            var attentionGradient = dh
            Kernels.scale(&attentionGradient, by: residualScale)
            let attention = CausalAttentionLayer.backward(attentionGradient, cache: cache.attention, weights: attentionWeights(layer), geometry: geometry)
            gradients[MiniCPMTensorNames.queryProjection(layer)] = attention.weights.query
            gradients[MiniCPMTensorNames.keyProjection(layer)] = attention.weights.key
            gradients[MiniCPMTensorNames.valueProjection(layer)] = attention.weights.value
            gradients[MiniCPMTensorNames.outputProjection(layer)] = attention.weights.output
            let inputNorm = RMSNormLayer.backward(attention.input, cache: cache.inputNorm, weight: parameters[MiniCPMTensorNames.inputLayerNorm(layer)])
            gradients[MiniCPMTensorNames.inputLayerNorm(layer)] = inputNorm.weight
            Kernels.add(inputNorm.input, to: &dh)
        }
        var embeddingGradient = c.tieWordEmbeddings ? output.head : Tensor(shape: [c.vocabSize, c.hiddenSize])
        if !c.tieWordEmbeddings { gradients[MiniCPMTensorNames.lmHead] = output.head }
        EmbeddingLayer.backward(dh, tokens: pass.tokens, scale: Float(c.scaleEmb), into: &embeddingGradient)
        gradients[MiniCPMTensorNames.embedTokens] = embeddingGradient
        return try ParameterSet(config: c) { name in
            guard let gradient = gradients[name] else { preconditionFailure("no gradient computed for \(name)") }
            return gradient
        }
    }

    // MARK: Parameters by layer

    private var head: Tensor {
        config.tieWordEmbeddings ? parameters[MiniCPMTensorNames.embedTokens] : parameters[MiniCPMTensorNames.lmHead]
    }

    private func attentionWeights(_ layer: Int) -> CausalAttentionLayer.Weights {
        CausalAttentionLayer.Weights(query: parameters[MiniCPMTensorNames.queryProjection(layer)], key: parameters[MiniCPMTensorNames.keyProjection(layer)],
                                     value: parameters[MiniCPMTensorNames.valueProjection(layer)], output: parameters[MiniCPMTensorNames.outputProjection(layer)])
    }

    private func denseWeights(_ layer: Int) -> SwiGLUWeights {
        SwiGLUWeights(gate: parameters[MiniCPMTensorNames.gateProjection(layer)], up: parameters[MiniCPMTensorNames.upProjection(layer)],
                      down: parameters[MiniCPMTensorNames.downProjection(layer)])
    }

    private func expertWeights(_ layer: Int) -> [SwiGLUWeights] {
        (0 ..< (config.numExperts ?? 0)).map { expert in
            SwiGLUWeights(gate: parameters[MiniCPMTensorNames.expertGate(layer, expert)], up: parameters[MiniCPMTensorNames.expertUp(layer, expert)],
                          down: parameters[MiniCPMTensorNames.expertDown(layer, expert)])
        }
    }

    // MARK: Input checks

    /// Tokens and targets inside the vocabulary, no empty sequence, none longer than max_position_embeddings.
    private func validate(_ batch: TrainingBatch, source: String = "batch") throws {
        let c = config
        guard !batch.inputs.isEmpty else { throw ModelError.emptyInput(source: source) }
        for (index, sequence) in batch.inputs.enumerated() {
            guard !sequence.isEmpty else { throw ModelError.emptySequence(source: source, sequence: index) }
            guard sequence.count <= c.maxPositionEmbeddings else {
                throw ModelError.sequenceTooLong(source: source, sequence: index, length: sequence.count, maximum: c.maxPositionEmbeddings)
            }
            for (position, token) in sequence.enumerated() where token < 0 || token >= c.vocabSize {
                throw ModelError.tokenOutOfRange(source: source, sequence: index, position: position, token: token, vocabularySize: c.vocabSize)
            }
            for (position, target) in batch.targets[index].enumerated() where target >= c.vocabSize {
                throw ModelError.tokenOutOfRange(source: source + " targets", sequence: index, position: position, token: target, vocabularySize: c.vocabSize)
            }
        }
    }
}
