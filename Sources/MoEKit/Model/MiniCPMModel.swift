import Foundation

/// A MiniCPM or MiniCPM-MoE decoder in f32 on OpenBLAS, computing what the published modeling
/// code computes:
///
///     h₀ = embed(tokens) · scale_emb
///     for each layer:  h += attention(rmsNorm(h)) · scale_depth/√L
///                      h += mlp(rmsNorm(h)) · scale_depth/√L        (mlp: SwiGLU, or the MoE layer)
///     logits = lm_head(rmsNorm(h) / (hidden_size / dim_model_base))   (lm_head tied to embed unless present)
///
/// Several sequences of different lengths run in one call: projections and FFNs see all their
/// tokens stacked, attention stays within each sequence. Incremental decoding appends to a `KVCache`.
public final class MiniCPMModel {
    public enum FeedForwardBlock: Sendable {
        case dense(FeedForward)
        case mixture(MoELayer)
    }

    public struct DecoderLayer: Sendable {
        public var inputNorm: [Float]
        public var attention: CausalSelfAttention
        public var postAttentionNorm: [Float]
        public var feedForward: FeedForwardBlock
    }

    /// Which rows of logits a forward call computes.
    public enum LogitRows: Sendable {
        case allTokens
        /// Only each sequence's last token (prefill for generation, benchmarks).
        case lastTokenOfEachSequence
        /// No logits (timing the decoder stack alone).
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
    public let embedding: Tensor
    public let lmHead: Tensor?
    public let finalNorm: [Float]
    public let layers: [DecoderLayer]
    /// The router every MoE layer uses: the `moekit_router` configuration of config.json when
    /// present, else MiniCPM-MoE's softmax → top-k → renormalise. Replace it to route differently.
    public var router: ExpertRouter?
    /// Tensors in the checkpoint that the config does not explain (reported, not used).
    public let unexpectedTensors: [String]

    /// Loads a Hugging Face model directory (dense or MoE, detected from config.json), checking every
    /// tensor's presence and shape first. bf16/f16 weights are converted to f32 tensor by tensor from
    /// the memory map, whose pages are released after each, so peak memory is about the f32 model.
    public convenience init(directory: String) throws {
        let config = try MiniCPMConfig(path: directory + "/config.json")
        let checkpoint = try ModelCheckpoint(directory: directory)
        let unexpected = try MiniCPMLayout(config: config).check(checkpoint)
        try self.init(config: config, source: directory, unexpectedTensors: unexpected) { name in
            defer { checkpoint.release(name) }
            return try checkpoint.floatTensor(name)
        }
        if let router = router as? ConfigurableRouter { try router.loadBalancingBiases(from: checkpoint) }
    }

    /// Routes every MoE layer with `configuration` (e.g. from `--router`), keeping any
    /// auxiliary-loss-free bias the current router holds.
    public func useRouter(_ configuration: RouterConfiguration) throws {
        let replacement = try ConfigurableRouter(configuration: configuration, model: config)
        if let current = router as? ConfigurableRouter {
            for layer in 0 ..< config.numHiddenLayers { try replacement.setBalancingBias(current.balancingBias[layer], layer: layer) }
        }
        router = replacement
    }

    /// Builds a model from a config and a tensor source (`load(name)` returns the f32 tensor for a
    /// checkpoint name; shapes are checked here too).
    public init(config: MiniCPMConfig, source: String = "<memory>", unexpectedTensors: [String] = [],
                load: (String) throws -> Tensor) throws {
        try config.validate()
        self.config = config
        self.source = source
        self.unexpectedTensors = unexpectedTensors
        let expectedShapes = Dictionary(MiniCPMLayout(config: config).entries.map { ($0.name, $0.shape) }, uniquingKeysWith: { a, _ in a })
        func tensor(_ name: String) throws -> Tensor {
            let value = try load(name)
            if let shape = expectedShapes[name], shape != value.shape {
                throw CheckpointError.shapeMismatch(directory: source, tensor: name, expected: shape, actual: value.shape)
            }
            return value
        }
        embedding = try tensor(MiniCPMTensorNames.embedTokens)
        let rotary = RotaryEmbedding(headDim: config.headDim, theta: Float(config.ropeTheta),
                                     precomputedPositions: config.maxPositionEmbeddings)
        var layers: [DecoderLayer] = []
        for index in 0 ..< config.numHiddenLayers {
            let attention = CausalSelfAttention(
                queryWeight: try tensor(MiniCPMTensorNames.queryProjection(index)),
                keyWeight: try tensor(MiniCPMTensorNames.keyProjection(index)),
                valueWeight: try tensor(MiniCPMTensorNames.valueProjection(index)),
                outputWeight: try tensor(MiniCPMTensorNames.outputProjection(index)),
                heads: config.numAttentionHeads, keyValueHeads: config.numKeyValueHeads, rotary: rotary)
            let feedForward: FeedForwardBlock
            if let experts = config.numExperts {
                var expertBlocks: [FeedForward] = []
                for expert in 0 ..< experts {
                    expertBlocks.append(FeedForward(gate: try tensor(MiniCPMTensorNames.expertGate(index, expert)),
                                                    up: try tensor(MiniCPMTensorNames.expertUp(index, expert)),
                                                    down: try tensor(MiniCPMTensorNames.expertDown(index, expert))))
                }
                feedForward = .mixture(MoELayer(gateWeight: try tensor(MiniCPMTensorNames.router(index)), experts: expertBlocks,
                                                topK: config.numExpertsPerToken ?? 2))
            } else {
                feedForward = .dense(FeedForward(gate: try tensor(MiniCPMTensorNames.gateProjection(index)),
                                                 up: try tensor(MiniCPMTensorNames.upProjection(index)),
                                                 down: try tensor(MiniCPMTensorNames.downProjection(index))))
            }
            layers.append(DecoderLayer(inputNorm: try tensor(MiniCPMTensorNames.inputLayerNorm(index)).values,
                                       attention: attention,
                                       postAttentionNorm: try tensor(MiniCPMTensorNames.postAttentionLayerNorm(index)).values,
                                       feedForward: feedForward))
        }
        self.layers = layers
        finalNorm = try tensor(MiniCPMTensorNames.finalNorm).values
        if !config.tieWordEmbeddings {
            lmHead = try tensor(MiniCPMTensorNames.lmHead)
        } else {
            lmHead = try? load(MiniCPMTensorNames.lmHead)
        }
        if let lmHead, lmHead.shape != [config.vocabSize, config.hiddenSize] {
            throw CheckpointError.shapeMismatch(directory: source, tensor: MiniCPMTensorNames.lmHead,
                                                expected: [config.vocabSize, config.hiddenSize], actual: lmHead.shape)
        }
        router = try ConfigurableRouter.described(by: config, source: source)
    }

    /// A fresh cache for incremental decoding of one sequence.
    public func makeCache() -> KVCache { KVCache(config: config) }

    /// Logits `[total tokens, vocab]` of whole sequences, stacked in input order.
    public func logits(for sequences: [[Int]]) throws -> Tensor {
        try forward(sequences, detail: .none).logits
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
        var attentionChunks: [CausalSelfAttention.Chunk] = []
        var tokenIds: [Int] = []
        for (index, chunk) in chunks.enumerated() {
            guard !chunk.tokens.isEmpty else { throw ModelError.emptySequence(source: source, sequence: index) }
            for (position, token) in chunk.tokens.enumerated() where token < 0 || token >= config.vocabSize {
                throw ModelError.tokenOutOfRange(source: source, sequence: index, position: chunk.cache.length + position,
                                                 token: token, vocabularySize: config.vocabSize)
            }
            let length = chunk.cache.length + chunk.tokens.count
            guard length <= config.maxPositionEmbeddings else {
                throw ModelError.sequenceTooLong(source: source, sequence: index, length: length, maximum: config.maxPositionEmbeddings)
            }
            attentionChunks.append(.init(rows: tokenIds.count ..< tokenIds.count + chunk.tokens.count, cache: chunk.cache))
            tokenIds += chunk.tokens
        }

        let hidden = config.hiddenSize
        var h = Tensor(shape: [tokenIds.count, hidden])
        let scaleEmb = Float(config.scaleEmb)
        for (row, token) in tokenIds.enumerated() {
            for j in 0 ..< hidden { h[row, j] = embedding[token, j] * scaleEmb }
        }
        let residualScale = config.residualScale
        var records: [RoutingRecord] = []
        for (index, layer) in layers.enumerated() {
            let attended = timer.measure(.attention) { () -> Tensor in
                let normed = Kernels.rmsNorm(h, weight: layer.inputNorm, epsilon: Float(config.rmsNormEps))
                return layer.attention.forward(normed, layer: index, chunks: attentionChunks)
            }
            Kernels.add(attended, scaledBy: residualScale, to: &h)
            let normed = timer.measure(.other) { Kernels.rmsNorm(h, weight: layer.postAttentionNorm, epsilon: Float(config.rmsNormEps)) }
            let mlpOutput: Tensor
            switch layer.feedForward {
            case .dense(let ffn):
                mlpOutput = timer.measure(.denseFFN) { ffn.forward(normed) }
            case .mixture(let moe):
                guard let router = self.router else { preconditionFailure("a MoE model without a router") }
                let result = moe.forward(normed, layer: index, router: router, detail: detail, timer: timer)
                mlpOutput = result.output
                if let record = result.record { records.append(record) }
            }
            Kernels.add(mlpOutput, scaledBy: residualScale, to: &h)
        }
        for chunk in chunks { chunk.cache.advance(by: chunk.tokens.count) }

        let logits: Tensor = timer.measure(.other) {
            let rows: Tensor
            switch logitRows {
            case .none: return Tensor(shape: [0, config.vocabSize])
            case .allTokens: rows = h
            case .lastTokenOfEachSequence:
                var last = Tensor(shape: [attentionChunks.count, hidden])
                for (index, chunk) in attentionChunks.enumerated() {
                    for j in 0 ..< hidden { last[index, j] = h[chunk.rows.upperBound - 1, j] }
                }
                rows = last
            }
            var normed = Kernels.rmsNorm(rows, weight: finalNorm, epsilon: Float(config.rmsNormEps))
            let divisor = config.logitDivisor
            normed.values.withUnsafeMutableBufferPointer { p in for i in p.indices { p[i] /= divisor } }
            return MatrixMultiply.product(normed, lmHead ?? embedding, transposeB: true)
        }
        return Output(logits: logits, routing: records)
    }
}
