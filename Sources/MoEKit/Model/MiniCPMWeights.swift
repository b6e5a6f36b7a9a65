/// The four projections of one attention layer (PyTorch `[out, in]`): query `[hidden, hidden]`,
/// key and value `[kvHeads · d, hidden]`, output `[hidden, hidden]`. The same struct holds their
/// gradients.
struct AttentionWeights: Sendable {
    var query: Weight
    var key: Weight
    var value: Weight
    var output: Weight

    init(query: Weight, key: Weight, value: Weight, output: Weight) {
        precondition(query.shape.count == 2 && key.shape == value.shape && output.shape == query.shape
                     && key.columns == query.columns && query.rows == query.columns,
                     "attention shapes \(query.shape), \(key.shape), \(value.shape), \(output.shape)")
        self.query = query
        self.key = key
        self.value = value
        self.output = output
    }

    /// Owned f32 weights from tensors.
    init(query: Tensor, key: Tensor, value: Tensor, output: Tensor) {
        self.init(query: Weight(query), key: Weight(key), value: Weight(value), output: Weight(output))
    }

    /// Zeros of the same shapes (a gradient accumulator).
    func zeros() -> AttentionWeights {
        AttentionWeights(query: query.zeros(), key: key.zeros(), value: value.zeros(), output: output.zeros())
    }
}

/// The projections of a SwiGLU MLP or of one MoE expert: gate (`gate_proj` / `w1`) and up
/// (`up_proj` / `w3`) `[intermediate, hidden]`, stacked once at load into `gateUp` `[2I, H]`
/// (gate rows, then up rows; two segments, no copy), and down (`down_proj` / `w2`)
/// `[hidden, intermediate]`. The same struct holds their gradients.
public struct SwiGLUWeights: Sendable {
    var gateUp: Weight
    var down: Weight

    public var intermediateSize: Int { down.columns }
    public var hiddenSize: Int { down.rows }

    public init(gate: Weight, up: Weight, down: Weight) {
        precondition(gate.shape == up.shape && gate.shape.count == 2 && down.shape == [gate.columns, gate.rows],
                     "SwiGLU shapes \(gate.shape), \(up.shape), \(down.shape)")
        gateUp = Weight(stacking: [gate, up])
        self.down = down
    }

    /// Owned f32 weights from tensors.
    public init(gate: Tensor, up: Tensor, down: Tensor) {
        self.init(gate: Weight(gate), up: Weight(up), down: Weight(down))
    }

    /// The gate projection as an f32 tensor `[I, H]` (a copy; for references, tests and I/O).
    var gate: Tensor { gateUp.floatTensor().rows(0 ..< intermediateSize) }
    /// The up projection as an f32 tensor `[I, H]` (a copy).
    var up: Tensor { gateUp.floatTensor().rows(intermediateSize ..< 2 * intermediateSize) }
    /// The down projection as an f32 tensor `[H, I]` (a copy).
    var downTensor: Tensor { down.floatTensor() }

    /// Zeros of the same shapes (a gradient accumulator).
    func zeros() -> SwiGLUWeights {
        SwiGLUWeights(gateUp: gateUp.zeros(), down: down.zeros())
    }

    private init(gateUp: Weight, down: Weight) {
        self.gateUp = gateUp
        self.down = down
    }

    /// A 1×1 stand-in (for moving weights out of an enum payload without copying them).
    static var placeholder: SwiGLUWeights { SwiGLUWeights(gate: Tensor(shape: [1, 1]), up: Tensor(shape: [1, 1]), down: Tensor(shape: [1, 1])) }
}

/// A MiniCPM-MoE layer's weights: the router `mlp.gate.weight` `[experts, hidden]` (f32, small)
/// and the experts.
public struct MoEWeights: Sendable {
    public var router: Tensor
    public var experts: [SwiGLUWeights]
    /// The S shared experts as one SwiGLU of S·I neurons (Σ_s FFN_s(x) is that SwiGLU of x);
    /// `nil` without shared experts.
    public var shared: SwiGLUWeights?

    public init(router: Tensor, experts: [SwiGLUWeights], shared: SwiGLUWeights? = nil) {
        precondition(router.rank == 2 && router.rows == experts.count, "router \(router.shape) for \(experts.count) experts")
        self.router = router
        self.experts = experts
        self.shared = shared
    }
}

/// A decoder layer's MLP: SwiGLU, or the MoE layer.
enum FeedForwardWeights: Sendable {
    case dense(SwiGLUWeights)
    case moe(MoEWeights)
}

/// One decoder layer's weights. Norm gains are f32 vectors.
public struct DecoderLayerWeights: Sendable {
    var inputNorm: Tensor
    var attention: AttentionWeights
    var postAttentionNorm: Tensor
    var feedForward: FeedForwardWeights
}

/// Every weight of a MiniCPM or MiniCPM-MoE model, typed by layer. Checkpoint names appear only
/// where weights are read or written (`init(config:checkpoint:)`, `init(config:load:)`,
/// `namedTensors`); a step touches the typed fields.
///
/// Loaded from a checkpoint, matrices stay in their stored dtype, read in place from the
/// read-only memory map (`Weight`); norm gains and routers (vectors and `[E, H]`, a few MB at
/// full size) are converted to f32. Training works on `owned()` f32 master copies.
///
/// The head follows Hugging Face's rule: with `tie_word_embeddings` the head is the embedding
/// (`lmHead` is nil, and a stored `lm_head.weight` is ignored); otherwise `lm_head.weight`.
public struct MiniCPMWeights: Sendable {
    /// `[vocab, hidden]` `model.embed_tokens.weight`.
    var embedding: Weight
    public var layers: [DecoderLayerWeights]
    /// `[hidden]` `model.norm.weight`.
    var finalNorm: Tensor
    /// `[vocab, hidden]` an untied `lm_head.weight`; nil when tied.
    var lmHead: Weight?

    /// The output head: `lm_head`, or the embedding when tied.
    var head: Weight { lmHead ?? embedding }

    /// Reads every layout tensor of `checkpoint` (checked against `config` first by the caller),
    /// mapping matrices in their stored dtype when the checkpoint holds them contiguously, else
    /// converting them to f32.
    public init(config: MiniCPMConfig, checkpoint: ModelCheckpoint) throws {
        try self.init(config: config, source: checkpoint.directory, matrix: { name, shape in
            let info = try checkpoint.info(name)
            guard info.shape == shape else {
                throw CheckpointError.shapeMismatch(directory: checkpoint.directory, tensor: name, expected: shape, actual: info.shape)
            }
            if let type = Weight.ElementType(info.dtype), let bytes = try checkpoint.mappedBytes(name), let base = bytes.baseAddress {
                return Weight(mapping: base, shape: shape, elementType: type, owner: checkpoint)
            }
            defer { checkpoint.release(name) }
            return Weight(try checkpoint.floatTensor(name))
        }, vector: { name, shape in
            defer { checkpoint.release(name) }
            return try checkpoint.floatTensor(name)
        })
    }

    /// Builds the weights from `load(name)` for every layout entry (f32, owned; shapes checked).
    public init(config: MiniCPMConfig, source: String = "<memory>", load: (String) throws -> Tensor) throws {
        func checked(_ name: String, _ shape: [Int]) throws -> Tensor {
            let tensor = try load(name)
            guard tensor.shape == shape else { throw CheckpointError.shapeMismatch(directory: source, tensor: name, expected: shape, actual: tensor.shape) }
            return tensor
        }
        try self.init(config: config, source: source, matrix: { Weight(try checked($0, $1)) }, vector: checked)
    }

    private init(config c: MiniCPMConfig, source: String, matrix: (String, [Int]) throws -> Weight,
                 vector: (String, [Int]) throws -> Tensor) throws {
        let hidden = c.hiddenSize, kvWidth = c.numKeyValueHeads * c.headDim, intermediate = c.intermediateSize
        func swiGLU(gate: String, up: String, down: String) throws -> SwiGLUWeights {
            SwiGLUWeights(gate: try matrix(gate, [intermediate, hidden]), up: try matrix(up, [intermediate, hidden]),
                          down: try matrix(down, [hidden, intermediate]))
        }
        embedding = try matrix(MiniCPMTensorNames.embedTokens, [c.vocabSize, hidden])
        var layers: [DecoderLayerWeights] = []
        layers.reserveCapacity(c.numHiddenLayers)
        for layer in 0 ..< c.numHiddenLayers {
            let inputNorm = try vector(MiniCPMTensorNames.inputLayerNorm(layer), [hidden])
            let attention = AttentionWeights(query: try matrix(MiniCPMTensorNames.queryProjection(layer), [hidden, hidden]),
                                             key: try matrix(MiniCPMTensorNames.keyProjection(layer), [kvWidth, hidden]),
                                             value: try matrix(MiniCPMTensorNames.valueProjection(layer), [kvWidth, hidden]),
                                             output: try matrix(MiniCPMTensorNames.outputProjection(layer), [hidden, hidden]))
            let postAttentionNorm = try vector(MiniCPMTensorNames.postAttentionLayerNorm(layer), [hidden])
            let feedForward: FeedForwardWeights
            if let experts = c.numExperts {
                let router = try vector(MiniCPMTensorNames.router(layer), [experts, hidden])
                let blocks = try (0 ..< experts).map { expert in
                    try swiGLU(gate: MiniCPMTensorNames.expertGate(layer, expert), up: MiniCPMTensorNames.expertUp(layer, expert),
                               down: MiniCPMTensorNames.expertDown(layer, expert))
                }
                var shared: SwiGLUWeights?
                if c.numSharedExperts > 0 {
                    let size = c.numSharedExperts * intermediate
                    shared = SwiGLUWeights(gate: try matrix(MiniCPMTensorNames.sharedExpertsGate(layer), [size, hidden]),
                                           up: try matrix(MiniCPMTensorNames.sharedExpertsUp(layer), [size, hidden]),
                                           down: try matrix(MiniCPMTensorNames.sharedExpertsDown(layer), [hidden, size]))
                }
                feedForward = .moe(MoEWeights(router: router, experts: blocks, shared: shared))
            } else {
                feedForward = .dense(try swiGLU(gate: MiniCPMTensorNames.gateProjection(layer), up: MiniCPMTensorNames.upProjection(layer),
                                                down: MiniCPMTensorNames.downProjection(layer)))
            }
            layers.append(DecoderLayerWeights(inputNorm: inputNorm, attention: attention, postAttentionNorm: postAttentionNorm,
                                              feedForward: feedForward))
        }
        self.layers = layers
        finalNorm = try vector(MiniCPMTensorNames.finalNorm, [hidden])
        lmHead = c.tieWordEmbeddings ? nil : try matrix(MiniCPMTensorNames.lmHead, [c.vocabSize, hidden])
    }

    /// Weights from their parts (gradients built layer by layer).
    init(embedding: Weight, layers: [DecoderLayerWeights], finalNorm: Tensor, lmHead: Weight?) {
        self.embedding = embedding
        self.layers = layers
        self.finalNorm = finalNorm
        self.lmHead = lmHead
    }

    // MARK: Parameters in layout order

    /// Applies `matrix` to every matrix and `vector` to every f32 tensor, keeping the structure.
    private func mapped(matrix: (Weight) -> Weight, vector: (Tensor) -> Tensor) -> MiniCPMWeights {
        func swiGLU(_ w: SwiGLUWeights) -> SwiGLUWeights {
            var copy = w
            copy.gateUp = matrix(w.gateUp)
            copy.down = matrix(w.down)
            return copy
        }
        let layers = self.layers.map { layer in
            DecoderLayerWeights(
                inputNorm: vector(layer.inputNorm),
                attention: AttentionWeights(query: matrix(layer.attention.query), key: matrix(layer.attention.key),
                                            value: matrix(layer.attention.value), output: matrix(layer.attention.output)),
                postAttentionNorm: vector(layer.postAttentionNorm),
                feedForward: {
                    switch layer.feedForward {
                    case .dense(let w): return .dense(swiGLU(w))
                    case .moe(let moe):
                        return .moe(MoEWeights(router: vector(moe.router), experts: moe.experts.map(swiGLU), shared: moe.shared.map(swiGLU)))
                    }
                }())
        }
        return MiniCPMWeights(embedding: matrix(embedding), layers: layers, finalNorm: vector(finalNorm), lmHead: lmHead.map(matrix))
    }

    /// f32 copies of every weight the model owns (training's master copies; see `moekit train --help`).
    func owned() -> MiniCPMWeights { mapped(matrix: { $0.owned() }, vector: { $0 }) }

    /// Zeros of every parameter's shape (gradients, optimiser moments).
    func zeros() -> MiniCPMWeights { mapped(matrix: { $0.zeros() }, vector: { Tensor(shape: $0.shape) }) }

    /// Every matrix for `precision`'s arithmetic (`Weight.forCompute(_:)`; `--compute bf16`).
    public func forCompute(_ precision: ComputePrecision) -> MiniCPMWeights { mapped(matrix: { $0.forCompute(precision) }, vector: { $0 }) }

    /// Bytes of memory `forCompute(precision)` allocates (bf16 copies of every matrix not stored as
    /// bf16): what `--compute bf16` adds to a run on an f32 or f16 checkpoint.
    public func bytesAllocated(forCompute precision: ComputePrecision) -> Int {
        var total = 0
        forEachParameter(matrix: { total = MemoryEstimate.sum(total, $0.bytesAllocated(forCompute: precision)) }, vector: { _ in })
        return total
    }

    /// Every parameter tensor in `MiniCPMLayout` order (a stacked matrix gives one tensor per
    /// stacked checkpoint tensor), as f32: owned tensors as they are (no copy), mapped ones
    /// converted. With `MiniCPMLayout(config:).entries` this pairs each with its checkpoint name.
    var parameterTensors: [Tensor] {
        var result: [Tensor] = []
        forEachParameterTensor { result.append($0) }
        return result
    }

    /// Calls `body` on every parameter tensor in `MiniCPMLayout` order (see `parameterTensors`).
    func forEachParameterTensor(_ body: (Tensor) -> Void) {
        func matrix(_ w: Weight) {
            for segment in w.segments {
                switch segment {
                case .owned(let tensor): body(tensor)
                case .mapped:
                    var tensor = Tensor(uninitializedShape: w.shape.count == 1 ? [w.columns] : [segment.rows, w.columns])
                    tensor.values.withUnsafeMutableBufferPointer { Weight.decode(segment, rows: 0 ..< segment.rows, columns: w.columns, into: $0.baseAddress!) }
                    body(tensor)
                }
            }
        }
        forEachParameter(matrix: matrix, vector: body)
    }

    /// Calls `matrix` or `vector` on every parameter in `MiniCPMLayout` order.
    private func forEachParameter(matrix: (Weight) -> Void, vector: (Tensor) -> Void) {
        matrix(embedding)
        for layer in layers {
            vector(layer.inputNorm)
            matrix(layer.attention.query); matrix(layer.attention.key); matrix(layer.attention.value); matrix(layer.attention.output)
            vector(layer.postAttentionNorm)
            switch layer.feedForward {
            case .dense(let w): matrix(w.gateUp); matrix(w.down)
            case .moe(let moe):
                vector(moe.router)
                for w in moe.experts { matrix(w.gateUp); matrix(w.down) }
                if let w = moe.shared { matrix(w.gateUp); matrix(w.down) }
            }
        }
        vector(finalNorm)
        if let lmHead { matrix(lmHead) }
    }

    /// Calls `body` on every owned parameter tensor in `MiniCPMLayout` order, in place (an
    /// optimiser step). Every matrix must be owned.
    mutating func updateEachParameter(_ body: (inout Tensor) -> Void) {
        func matrix(_ w: inout Weight) { w.updateOwnedSegments(body) }
        matrix(&embedding)
        for index in layers.indices {
            body(&layers[index].inputNorm)
            matrix(&layers[index].attention.query); matrix(&layers[index].attention.key)
            matrix(&layers[index].attention.value); matrix(&layers[index].attention.output)
            body(&layers[index].postAttentionNorm)
            switch layers[index].feedForward {
            case .dense(var w):
                // Park a placeholder so `w` holds the only reference to its buffers (no copy on write).
                layers[index].feedForward = .dense(.placeholder)
                matrix(&w.gateUp); matrix(&w.down)
                layers[index].feedForward = .dense(w)
            case .moe(var moe):
                layers[index].feedForward = .dense(.placeholder)
                body(&moe.router)
                for e in moe.experts.indices { matrix(&moe.experts[e].gateUp); matrix(&moe.experts[e].down) }
                if moe.shared != nil { matrix(&moe.shared!.gateUp); matrix(&moe.shared!.down) }
                layers[index].feedForward = .moe(moe)
            }
        }
        body(&finalNorm)
        if var head = lmHead {
            lmHead = nil
            matrix(&head)
            lmHead = head
        }
    }

    /// The parameter named `name` (a `MiniCPMLayout` name of `config`) as f32: for tools and
    /// tests; steps use the typed fields.
    public func tensor(named name: String, config: MiniCPMConfig) -> Tensor? {
        guard let index = MiniCPMLayout(config: config).entries.firstIndex(where: { $0.name == name }) else { return nil }
        return parameterTensors[index]
    }

    /// Replaces the owned parameter named `name` (same shape) — for tools and tests.
    mutating func setTensor(_ tensor: Tensor, named name: String, config: MiniCPMConfig) {
        guard let target = MiniCPMLayout(config: config).entries.firstIndex(where: { $0.name == name }) else { preconditionFailure("no parameter named \(name)") }
        var index = 0
        updateEachParameter { parameter in
            if index == target {
                precondition(parameter.shape == tensor.shape, "parameter \(name) cannot change shape")
                parameter = tensor
            }
            index += 1
        }
    }

    /// The parameters by checkpoint name with their f32 values, in layout order (for saving).
    func namedTensors(config: MiniCPMConfig) -> [(name: String, tensor: Tensor)] {
        Array(zip(MiniCPMLayout(config: config).entries.map(\.name), parameterTensors)).map { (name: $0.0, tensor: $0.1) }
    }

    /// Whether every matrix is owned f32 (what training needs).
    var isOwned: Bool {
        var owned = true
        forEachParameter(matrix: { owned = owned && $0.isOwned }, vector: { _ in })
        return owned
    }

    /// The number of scalar parameters.
    public var elementCount: Int {
        var total = 0
        forEachParameter(matrix: { total += $0.elementCount }, vector: { total += $0.count })
        return total
    }

    /// Bytes of weights held as f32 in anonymous memory (the rest is read from the memory map).
    var ownedByteCount: Int {
        var total = 0
        forEachParameter(matrix: { total += $0.ownedByteCount }, vector: { total += 4 * $0.count })
        return total
    }
}
