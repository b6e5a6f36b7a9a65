import Foundation

/// A MiniCPM or MiniCPM-MoE decoder, computing what the published modeling code computes:
///
///     h₀ = embed(tokens) · scale_emb
///     for each layer:  h += attention(rmsNorm(h)) · scale_depth/√L
///                      h += mlp(rmsNorm(h)) · scale_depth/√L        (mlp: SwiGLU, or the MoE layer)
///     logits = rmsNorm(h) / (hidden_size / dim_model_base) · headᵀ    (head = lm_head, or embed when tied)
///     L = mean cross-entropy over targets ≥ 0  +  Σ_MoE layers (the router's weighted auxiliary loss)
///
/// One model serves inference and training, through the same layers (`Layers/`: each a
/// forward/backward pair beside a plain-loop reference):
/// - inference (`forward`) runs the decoder without backward caches, with an optional KV cache per
///   sequence; several sequences of different lengths run in one call, one layer at a time over
///   all their tokens, so each layer's weights are read once per call;
/// - training (`lossAndGradients`) runs the same decoder keeping what each layer's backward needs,
///   then walks the layers back.
///
/// Weights are typed per layer (`MiniCPMWeights`). Loaded from a directory they stay in their stored
/// dtype, read in place from the memory map (compute is f32, converted block by block before each
/// GEMM); `init(directory:ownedFloat32Weights: true)` makes f32 master copies for training.
public final class MiniCPMModel {
    /// Which rows of logits a forward call computes.
    public enum LogitRows: Sendable {
        case allTokens
        /// Only each sequence's last token (prefill for generation, benchmarks).
        case lastTokenOfEachSequence
        /// No logits (tracing, timing the decoder stack alone).
        case none
    }

    public struct Output {
        /// `[rows, vocab]`, rows per `LogitRows`, sequences stacked in input order.
        public var logits: Tensor
        /// One record per MoE layer (in layer order) when routing detail was asked for.
        public var routing: [RoutingRecord]
    }

    public let config: MiniCPMConfig
    public let source: String
    /// The weights (an optimiser updates them in place between training steps).
    public var weights: MiniCPMWeights
    /// The router every MoE layer uses: the `moekit_router` configuration of config.json when
    /// present, else MiniCPM-MoE's softmax → top-k → renormalise. Replace it to route differently
    /// (training needs a `ConfigurableRouter`).
    public var router: ExpertRouter?
    /// Tensors in the checkpoint that the config does not explain (reported, not used).
    public let unexpectedTensors: [String]
    let geometry: CausalAttentionLayer.Geometry

    /// Loads a Hugging Face model directory (dense or MoE, detected from config.json), checking every
    /// tensor's presence and shape first. Matrices stay in their stored dtype in the read-only
    /// memory map; with `ownedFloat32Weights` (training) every weight is copied to f32.
    public convenience init(directory: String, ownedFloat32Weights: Bool = false) throws {
        let config = try MiniCPMConfig(path: directory + "/config.json")
        try config.validate()
        let checkpoint = try ModelCheckpoint(directory: directory)
        let unexpected = try MiniCPMLayout(config: config).check(checkpoint)
        var weights = try MiniCPMWeights(config: config, checkpoint: checkpoint)
        if ownedFloat32Weights { weights = weights.owned() }
        let router = try ConfigurableRouter.described(by: config, source: directory)
        try router?.loadBalancingBiases(from: checkpoint)
        try self.init(config: config, weights: weights, router: router, source: directory, unexpectedTensors: unexpected)
    }

    /// Builds a model from a config and a tensor source (`load(name)` returns the f32 tensor for a
    /// checkpoint name; shapes are checked), routed as config.json describes.
    public convenience init(config: MiniCPMConfig, source: String = "<memory>", unexpectedTensors: [String] = [],
                            load: (String) throws -> Tensor) throws {
        try config.validate()
        let weights = try MiniCPMWeights(config: config, source: source, load: load)
        try self.init(config: config, weights: weights, router: try ConfigurableRouter.described(by: config, source: source),
                      source: source, unexpectedTensors: unexpectedTensors)
    }

    /// A model over `weights`; a MoE model needs a router for its layers and experts.
    public init(config: MiniCPMConfig, weights: MiniCPMWeights, router: ExpertRouter?, source: String = "<memory>",
                unexpectedTensors: [String] = []) throws {
        try config.validate()
        if config.isMoE {
            guard router != nil else { throw ModelError.missingRouter(source: source) }
            if let router = router as? ConfigurableRouter {
                precondition(router.layers == config.numHiddenLayers && router.experts == config.numExperts && router.hiddenSize == config.hiddenSize,
                             "router for \(router.layers) layers × \(router.experts) experts of \(router.hiddenSize), model has \(config.numHiddenLayers) × \(config.numExperts ?? 0) of \(config.hiddenSize)")
            }
        }
        self.config = config
        self.weights = weights
        self.router = config.isMoE ? router : nil
        self.source = source
        self.unexpectedTensors = unexpectedTensors
        geometry = CausalAttentionLayer.Geometry(config: config)
    }

    /// The router as a `ConfigurableRouter` (what training and `useRouter` work with).
    public var configurableRouter: ConfigurableRouter? { router as? ConfigurableRouter }

    /// Routes every MoE layer with `configuration` (e.g. from `--router`), keeping any
    /// auxiliary-loss-free bias the current router holds.
    public func useRouter(_ configuration: RouterConfiguration) throws {
        let replacement = try ConfigurableRouter(configuration: configuration, model: config)
        if let current = configurableRouter {
            for layer in 0 ..< config.numHiddenLayers { try replacement.setBalancingBias(current.balancingBias[layer], layer: layer) }
        }
        router = replacement
    }

    /// A fresh cache for incremental decoding of one sequence.
    public func makeCache() -> KVCache { KVCache(config: config) }

    // MARK: Inference

    /// Logits `[total tokens, vocab]` of whole sequences, stacked in input order.
    public func logits(for sequences: [[Int]]) throws -> Tensor {
        try forward(sequences, detail: .none).logits
    }

    /// Logits `[total tokens, vocab]` of whole sequences run in batches of whole sequences of at most
    /// `batchTokens` tokens (a longer sequence is a batch of its own). Each batch runs one layer at a
    /// time over all its tokens, so every layer's weights are read once per batch, and memory holds
    /// one batch's activations and one layer's working set besides the logits.
    public func logits(for sequences: [[Int]], batchTokens: Int, source: String = "input") throws -> Tensor {
        precondition(batchTokens >= 1, "batchTokens must be at least 1")
        guard !sequences.isEmpty else { throw ModelError.emptyInput(source: source) }
        var batches: [Range<Int>] = []
        var start = 0, tokens = 0
        for (index, sequence) in sequences.enumerated() {
            if index > start && tokens + sequence.count > batchTokens {
                batches.append(start ..< index)
                start = index
                tokens = 0
            }
            tokens += sequence.count
        }
        batches.append(start ..< sequences.count)
        var logits = Tensor(uninitializedShape: [sequences.reduce(0) { $0 + $1.count }, config.vocabSize])
        var row = 0
        for batch in batches {
            let part = try forward(Array(sequences[batch]), source: source).logits
            logits.values.withUnsafeMutableBufferPointer { out in
                part.values.withUnsafeBufferPointer { (out.baseAddress! + row * config.vocabSize).update(from: $0.baseAddress!, count: $0.count) }
            }
            row += part.rows
        }
        return logits
    }

    /// Runs whole sequences (each from position 0).
    public func forward(_ sequences: [[Int]], detail: RoutingRecord.Detail = .none, logitRows: LogitRows = .allTokens,
                        timer: StageTimer? = nil, source: String = "input") throws -> Output {
        guard !sequences.isEmpty else { throw ModelError.emptyInput(source: source) }
        return try forward(sequences.map { ($0, makeCache()) }, detail: detail, logitRows: logitRows, timer: timer, source: source)
    }

    /// Runs new tokens of several sequences, each continuing from what its cache holds; the caches
    /// grow by the new tokens. The logits of a prefix followed by one more token equal the full
    /// forward's last row.
    public func forward(_ chunks: [(tokens: [Int], cache: KVCache)], detail: RoutingRecord.Detail = .none,
                        logitRows: LogitRows = .allTokens, timer: StageTimer? = nil, source: String = "input") throws -> Output {
        for (index, chunk) in chunks.enumerated() {
            try check(chunk.tokens, sequence: index, past: chunk.cache.length, source: source)
        }
        let spans = chunks.map { CausalAttentionLayer.Span(length: $0.tokens.count, cache: $0.cache) }
        let pass = decoder(tokens: chunks.flatMap(\.tokens), spans: spans, training: false, detail: detail, timer: timer)
        for chunk in chunks { chunk.cache.advance(by: chunk.tokens.count) }

        let logits: Tensor = timer.measure(.other) {
            let rows: Tensor
            switch logitRows {
            case .none: return Tensor(shape: [0, config.vocabSize])
            case .allTokens: rows = pass.hidden
            case .lastTokenOfEachSequence:
                var last = Tensor(shape: [chunks.count, config.hiddenSize])
                var end = 0
                for (index, chunk) in chunks.enumerated() {
                    end += chunk.tokens.count
                    for j in 0 ..< config.hiddenSize { last[index, j] = pass.hidden[end - 1, j] }
                }
                rows = last
            }
            return CrossEntropyLayer.logits(rows, normWeight: weights.finalNorm, head: weights.head, divisor: config.logitDivisor,
                                            epsilon: Float(config.rmsNormEps))
        }
        return Output(logits: logits, routing: pass.records)
    }

    // MARK: Training

    /// What one forward (and backward) pass over a batch gives.
    struct StepResult: Sendable {
        /// The training objective: `languageModelLoss + Σ routerLosses[i].total`.
        var loss: Float
        /// Mean next-token cross-entropy over the targets ≥ 0.
        var languageModelLoss: Float
        /// How many targets the language-model loss averages over.
        var countedTokens: Int
        /// Per MoE layer (in layer order): the router's auxiliary losses, weighted total and terms.
        var routerLosses: [RouterLoss.Value]
        /// Per MoE layer (in layer order): the routing of the batch's N tokens (for statistics and
        /// the auxiliary-loss-free bias update).
        var routing: [RoutedTokens]
        /// ∂loss/∂weights, typed as the weights are (`lossAndGradients` only).
        var gradients: MiniCPMWeights?

        /// `[MoE layer][expert]` assignments each expert received (after drops): what
        /// `ConfigurableRouter.updateBalancingBias(expertCounts:)` takes.
        var expertCounts: [[Int]] { routing.map(\.decision.expertCounts) }
    }

    /// The loss of a batch, forward only, with the router in evaluation mode (no noise).
    func evaluate(_ batch: TrainingBatch) throws -> StepResult {
        try step(batch, routerTraining: false, gradients: false)
    }

    /// The loss of a batch and its gradient with respect to every weight; the router is in
    /// training mode (noise on, when configured) during the pass. The weights must be owned f32
    /// (`init(directory:ownedFloat32Weights: true)` or `weights.owned()`).
    ///
    /// With `microBatch`, the batch is one micro-batch of a global batch (gradient accumulation):
    /// the loss and gradients are this micro-batch's part of the global objective (see
    /// `MicroBatch`), so the parts of all micro-batches add up to the global batch's.
    ///
    /// With a `workspace` (kept by a trainer from step to step), the `[vocab, hidden]` gradients
    /// are written into last step's buffers instead of fresh ones; the results are the same bit
    /// for bit (see `GradientWorkspace`). The first training or evaluation pass sets glibc to keep
    /// freed blocks below 32 MB for the next step (`AllocatorTuning`, process-wide).
    func lossAndGradients(_ batch: TrainingBatch, microBatch: MicroBatch = .whole, workspace: GradientWorkspace? = nil) throws -> StepResult {
        try step(batch, routerTraining: true, gradients: true, microBatch: microBatch, workspace: workspace)
    }

    /// The routing of a batch as `lossAndGradients` would route it (router in training mode, so
    /// with the same noise when its stream is at the same point), forward only: what global-batch
    /// balancing counts before the micro-batches' backward passes.
    func trainingRouting(_ batch: TrainingBatch) throws -> [RoutedTokens] {
        try step(batch, routerTraining: true, gradients: false, microBatch: .whole).routing
    }

    /// How one micro-batch enters a global batch's objective under gradient accumulation.
    ///
    /// The global objective is J = Σ_m w_m · CE_m + Σ_layers aux, with w_m = counted_m / counted_G
    /// (so Σ_m w_m · CE_m is the mean cross-entropy over every target of the global batch), and the
    /// router losses weighted by share_m = T_m / T_G (a mean over tokens, like the z-loss, becomes
    /// the global mean). Global balancing replaces each micro-batch's f_i by the global batch's,
    /// which makes Σ_m share_m · E·Σ_i f_i·P^m_i = E·Σ_i f_i·P^G_i exactly. Values and gradients of
    /// the returned `StepResult` are already weighted (`loss`, `routerLosses`); `languageModelLoss`
    /// is the micro-batch's own mean.
    public struct MicroBatch: Sendable {
        /// w_m, the weight of this micro-batch's mean cross-entropy.
        public var languageModelWeight: Float
        /// share_m = T_m / T_G, the weight of every router loss term.
        public var share: Float
        public var balance: RouterLoss.Balance
        /// `.global`: per MoE layer, the expert counts over the whole global batch (`nil`: this batch's own).
        public var globalExpertCounts: [[Int]]?
        /// T_G, the global batch's tokens.
        public var globalTokens: Int

        public init(languageModelWeight: Float, share: Float, balance: RouterLoss.Balance, globalExpertCounts: [[Int]]? = nil, globalTokens: Int = 0) {
            self.languageModelWeight = languageModelWeight
            self.share = share
            self.balance = balance
            self.globalExpertCounts = globalExpertCounts
            self.globalTokens = globalTokens
        }

        /// The whole batch is the global batch, balanced per batch.
        public static let whole = MicroBatch(languageModelWeight: 1, share: 1, balance: .micro)

        /// The router loss of MoE layer `index` (counted among MoE layers) for this micro-batch.
        func routerLoss(_ base: RouterLoss, moeLayer index: Int) -> RouterLoss {
            var loss = base.scaled(by: share)
            loss.balance = balance
            if balance == .global, let counts = globalExpertCounts {
                precondition(index < counts.count, "global balancing: no counts for MoE layer \(index)")
                loss.globalExpertCounts = counts[index]
                loss.globalTokens = globalTokens
            }
            return loss
        }
    }

    private func step(_ batch: TrainingBatch, routerTraining: Bool, gradients: Bool, microBatch: MicroBatch = .whole,
                      workspace: GradientWorkspace? = nil) throws -> StepResult {
        _ = AllocatorTuning.retainFreedMemory
        let router = try trainingRouter()
        let wasTraining = router?.isTraining ?? false
        router?.isTraining = routerTraining
        defer { router?.isTraining = wasTraining }
        let pass = try trainingForward(batch, keepCaches: gradients, microBatch: microBatch)
        return StepResult(loss: pass.loss, languageModelLoss: pass.crossEntropy.loss, countedTokens: pass.crossEntropy.countedTokens,
                          routerLosses: pass.decoder.routerLosses, routing: pass.decoder.routed,
                          gradients: gradients ? backward(pass, languageModelWeight: microBatch.languageModelWeight, workspace: workspace) : nil)
    }

    private func trainingRouter() throws(ModelError) -> ConfigurableRouter? {
        guard config.isMoE else { return nil }
        guard let router = configurableRouter else { throw ModelError.missingRouter(source: source) }
        return router
    }

    // MARK: The decoder

    private enum FeedForwardCache {
        case dense(SwiGLULayer.Cache)
        case moe(MoEFeedForwardLayer.Cache, shared: SwiGLULayer.Cache?)
    }

    private struct LayerCache {
        var inputNorm: RMSNormLayer.Cache
        var attention: CausalAttentionLayer.Cache
        var postAttentionNorm: RMSNormLayer.Cache
        var feedForward: FeedForwardCache
    }

    private struct DecoderPass {
        /// `[N, hidden]` the last layer's output.
        var hidden: Tensor
        /// The attention geometry the layers ran with (RoPE's cos/sin for this call's positions; backward reuses it).
        var geometry: CausalAttentionLayer.Geometry
        /// Backward caches per layer (training with caches kept).
        var layers: [LayerCache] = []
        /// Per MoE layer: routing records (inference with detail), routings and auxiliary losses (training).
        var records: [RoutingRecord] = []
        var routed: [RoutedTokens] = []
        var routerLosses: [RouterLoss.Value] = []
    }

    /// The decoder stack over `tokens`, the rows of each span one sequence. Training passes
    /// `training` (auxiliary losses evaluated; with `keepCaches`, every layer's backward cache kept).
    private func decoder(tokens: [Int], spans: [CausalAttentionLayer.Span], training: Bool, keepCaches: Bool = false,
                         microBatch: MicroBatch = .whole, detail: RoutingRecord.Detail = .none, timer: StageTimer? = nil) -> DecoderPass {
        let epsilon = Float(config.rmsNormEps), residualScale = config.residualScale
        let sequenceLengths = spans.map(\.length)
        let routerLoss = training ? configurableRouter.map { RouterLoss(router: $0) } : nil
        var moeLayer = 0
        var h = timer.measure(.other) { EmbeddingLayer.forward(tokens: tokens, embedding: weights.embedding, scale: Float(config.scaleEmb)) }
        let geometry = self.geometry.precomputingRotary(forSpans: spans)
        var pass = DecoderPass(hidden: Tensor(shape: [0, 0]), geometry: geometry)
        for (index, layer) in weights.layers.enumerated() {
            let (attentionInput, inputNorm) = timer.measure(.attention) { RMSNormLayer.forward(h, weight: layer.inputNorm, epsilon: epsilon) }
            let attention = timer.measure(.attention) {
                CausalAttentionLayer.forward(attentionInput, weights: layer.attention, geometry: geometry, spans: spans, layer: index,
                                             keepCache: keepCaches)
            }
            Kernels.add(attention.output, scaledBy: residualScale, to: &h)
            let (mlpInput, postAttentionNorm) = timer.measure(.other) { RMSNormLayer.forward(h, weight: layer.postAttentionNorm, epsilon: epsilon) }
            let mlpOutput: Tensor
            let feedForward: FeedForwardCache?
            switch layer.feedForward {
            case .dense(let swiGLU):
                let result = timer.measure(.denseFFN) { SwiGLULayer.forward(mlpInput, weights: swiGLU, keepCache: keepCaches) }
                mlpOutput = result.output
                feedForward = result.cache.map { .dense($0) }
            case .moe(let moe):
                guard let router else { preconditionFailure("a MoE model without a router") }
                let loss = routerLoss.map { microBatch.routerLoss($0, moeLayer: moeLayer) }
                moeLayer += 1
                let result = MoEFeedForwardLayer.forward(mlpInput, weights: moe, router: router, layer: index, loss: loss,
                                                         sequenceLengths: sequenceLengths, keepCache: keepCaches, timer: timer)
                var output = result.output
                let sharedCache = MoEFeedForwardLayer.addSharedExperts(mlpInput, weights: moe.shared, to: &output, keepCache: keepCaches, timer: timer)
                mlpOutput = output
                feedForward = result.cache.map { .moe($0, shared: sharedCache) }
                if training {
                    pass.routed.append(result.routed)
                    if let loss = result.auxiliaryLoss { pass.routerLosses.append(loss) }
                } else if detail != .none {
                    pass.records.append(timer.measure(.routingStatistics) {
                        RoutingStatistics.record(result.routed, topK: configurableRouter?.configuration.mode == .relu ? configurableRouter?.topK ?? 1 : router.slotsPerToken,
                                                 detail: detail, variableActiveExperts: configurableRouter?.configuration.mode == .relu)
                    })
                }
            }
            Kernels.add(mlpOutput, scaledBy: residualScale, to: &h)
            if keepCaches, let attentionCache = attention.cache, let feedForward {
                pass.layers.append(LayerCache(inputNorm: inputNorm, attention: attentionCache, postAttentionNorm: postAttentionNorm,
                                              feedForward: feedForward))
            }
        }
        pass.hidden = h
        return pass
    }

    private struct TrainingPass {
        var tokens: [Int]
        var decoder: DecoderPass
        var crossEntropy: CrossEntropyLayer.Output
        var loss: Float
    }

    private func trainingForward(_ batch: TrainingBatch, keepCaches: Bool, microBatch: MicroBatch) throws -> TrainingPass {
        for (index, sequence) in batch.inputs.enumerated() { try check(sequence, sequence: index, past: 0, source: "batch") }
        guard !batch.inputs.isEmpty else { throw ModelError.emptyInput(source: "batch") }
        for (index, targets) in batch.targets.enumerated() {
            for (position, target) in targets.enumerated() where target >= config.vocabSize {
                throw ModelError.tokenOutOfRange(source: "batch targets", sequence: index, position: position, token: target, vocabularySize: config.vocabSize)
            }
        }
        let tokens = batch.inputs.flatMap { $0 }
        let pass = decoder(tokens: tokens, spans: batch.inputs.map { CausalAttentionLayer.Span(length: $0.count) }, training: true,
                           keepCaches: keepCaches, microBatch: microBatch)
        let crossEntropy = CrossEntropyLayer.forward(pass.hidden, normWeight: weights.finalNorm, head: weights.head,
                                                     targets: batch.targets.flatMap { $0 }, divisor: config.logitDivisor,
                                                     epsilon: Float(config.rmsNormEps), keepLogitGradient: keepCaches)
        let loss = microBatch.languageModelWeight * crossEntropy.loss + pass.routerLosses.reduce(0) { $0 + $1.total }
        return TrainingPass(tokens: tokens, decoder: pass, crossEntropy: crossEntropy, loss: loss)
    }

    /// ∂/∂weights of languageModelWeight · CE + Σ router losses (their weights are inside them);
    /// the `[vocab, hidden]` gradients in `workspace`'s buffers when given, which then keeps them.
    private func backward(_ pass: TrainingPass, languageModelWeight: Float, workspace: GradientWorkspace?) -> MiniCPMWeights {
        let residualScale = config.residualScale
        let tableShape = [config.vocabSize, config.hiddenSize]
        var headBuffer = workspace?.takeHeadGradient(shape: tableShape)
        var output = CrossEntropyLayer.backward(cache: pass.crossEntropy.cache, normWeight: weights.finalNorm, head: weights.head,
                                                headGradientBuffer: &headBuffer)
        if languageModelWeight != 1 {
            Kernels.scale(&output.input, by: languageModelWeight)
            Kernels.scale(&output.head, by: languageModelWeight)
            Kernels.scale(&output.normWeight, by: languageModelWeight)
        }
        var layerGradients: [DecoderLayerWeights] = []
        var dh = output.input
        for index in weights.layers.indices.reversed() {
            let cache = pass.decoder.layers[index], layer = weights.layers[index]
            // h ← h + s · mlp(rmsNorm(h))
            var mlpGradient = dh
            Kernels.scale(&mlpGradient, by: residualScale)
            let mlpInputGradient: Tensor
            let feedForwardGradient: FeedForwardWeights
            switch (cache.feedForward, layer.feedForward) {
            case (.dense(let ffnCache), .dense(let swiGLU)):
                let result = SwiGLULayer.backward(mlpGradient, cache: ffnCache, weights: swiGLU)
                mlpInputGradient = result.input
                feedForwardGradient = .dense(result.weights)
            case (.moe(let moeCache, let sharedCache), .moe(let moe)):
                let result = MoEFeedForwardLayer.backward(mlpGradient, cache: moeCache, weights: moe)
                var inputGradient = result.input
                let shared = MoEFeedForwardLayer.sharedExpertsBackward(mlpGradient, cache: sharedCache, weights: moe.shared, addingInputGradientTo: &inputGradient)
                mlpInputGradient = inputGradient
                feedForwardGradient = .moe(MoEWeights(router: result.gateWeight, experts: result.experts, shared: shared))
            default:
                preconditionFailure("layer \(index): cache and weights disagree on the MLP kind")
            }
            let postNorm = RMSNormLayer.backward(mlpInputGradient, cache: cache.postAttentionNorm, weight: layer.postAttentionNorm)
            Kernels.add(postNorm.input, to: &dh)
            // h ← h + s · attention(rmsNorm(h))
            var attentionGradient = dh
            Kernels.scale(&attentionGradient, by: residualScale)
            let attention = CausalAttentionLayer.backward(attentionGradient, cache: cache.attention, weights: layer.attention,
                                                          geometry: pass.decoder.geometry)
            let inputNorm = RMSNormLayer.backward(attention.input, cache: cache.inputNorm, weight: layer.inputNorm)
            Kernels.add(inputNorm.input, to: &dh)
            layerGradients.append(DecoderLayerWeights(inputNorm: inputNorm.weight, attention: attention.weights,
                                                      postAttentionNorm: postNorm.weight, feedForward: feedForwardGradient))
        }
        let tied = weights.lmHead == nil
        var embeddingGradient: Tensor
        if tied {
            embeddingGradient = output.head
            output.head = Tensor(shape: [0])    // `embeddingGradient` holds the only reference: added to in place
        } else {
            embeddingGradient = workspace?.takeZeroEmbeddingGradient(shape: tableShape) ?? Tensor(shape: tableShape)
        }
        EmbeddingLayer.backward(dh, tokens: pass.tokens, scale: Float(config.scaleEmb), into: &embeddingGradient)
        if let workspace {
            workspace.headGradient = tied ? embeddingGradient : output.head
            if !tied {
                workspace.embeddingGradient = embeddingGradient
                workspace.embeddingRows = pass.tokens
            }
        }
        return MiniCPMWeights(embedding: Weight(embeddingGradient), layers: layerGradients.reversed(), finalNorm: output.normWeight,
                              lmHead: tied ? nil : Weight(output.head))
    }

    // MARK: Input checks

    /// Tokens inside the vocabulary, no empty sequence, none longer than max_position_embeddings.
    private func check(_ tokens: [Int], sequence index: Int, past: Int, source: String) throws(ModelError) {
        guard !tokens.isEmpty else { throw ModelError.emptySequence(source: source, sequence: index) }
        for (position, token) in tokens.enumerated() where token < 0 || token >= config.vocabSize {
            throw ModelError.tokenOutOfRange(source: source, sequence: index, position: past + position, token: token, vocabularySize: config.vocabSize)
        }
        let length = past + tokens.count
        guard length <= config.maxPositionEmbeddings else {
            throw ModelError.sequenceTooLong(source: source, sequence: index, length: length, maximum: config.maxPositionEmbeddings)
        }
    }
}
