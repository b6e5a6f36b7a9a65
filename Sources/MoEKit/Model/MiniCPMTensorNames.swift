/// Checkpoint tensor names of MiniCPM and MiniCPM-MoE, exactly as the published checkpoints spell them.
enum MiniCPMTensorNames {
    static let embedTokens = "model.embed_tokens.weight"
    static let finalNorm = "model.norm.weight"
    static let lmHead = "lm_head.weight"

    static func layer(_ layer: Int) -> String { "model.layers.\(layer)" }
    static func inputLayerNorm(_ layer: Int) -> String { "\(Self.layer(layer)).input_layernorm.weight" }
    static func postAttentionLayerNorm(_ layer: Int) -> String { "\(Self.layer(layer)).post_attention_layernorm.weight" }
    static func queryProjection(_ layer: Int) -> String { "\(Self.layer(layer)).self_attn.q_proj.weight" }
    static func keyProjection(_ layer: Int) -> String { "\(Self.layer(layer)).self_attn.k_proj.weight" }
    static func valueProjection(_ layer: Int) -> String { "\(Self.layer(layer)).self_attn.v_proj.weight" }
    static func outputProjection(_ layer: Int) -> String { "\(Self.layer(layer)).self_attn.o_proj.weight" }
    /// Dense MLP: `mlp.gate_proj`, `mlp.up_proj`, `mlp.down_proj`.
    static func gateProjection(_ layer: Int) -> String { "\(Self.layer(layer)).mlp.gate_proj.weight" }
    static func upProjection(_ layer: Int) -> String { "\(Self.layer(layer)).mlp.up_proj.weight" }
    static func downProjection(_ layer: Int) -> String { "\(Self.layer(layer)).mlp.down_proj.weight" }
    /// MoE router, `[experts, hidden]`.
    static func router(_ layer: Int) -> String { "\(Self.layer(layer)).mlp.gate.weight" }
    /// MoE expert weights: w1 = gate_proj `[intermediate, hidden]`, w3 = up_proj, w2 = down_proj `[hidden, intermediate]`.
    static func expertGate(_ layer: Int, _ expert: Int) -> String { "\(Self.layer(layer)).mlp.experts.\(expert).w1.weight" }
    static func expertUp(_ layer: Int, _ expert: Int) -> String { "\(Self.layer(layer)).mlp.experts.\(expert).w3.weight" }
    static func expertDown(_ layer: Int, _ expert: Int) -> String { "\(Self.layer(layer)).mlp.experts.\(expert).w2.weight" }
    /// Shared experts (DeepSeekMoE), stored as DeepSeek-V2/V3 store them (vLLM's `deepseek_v2.py`,
    /// transformers' `DeepseekV3MoE`): the S shared FFNs as one SwiGLU of S·I neurons,
    /// `mlp.shared_experts.gate_proj`/`up_proj` `[S·I, hidden]` and `down_proj` `[hidden, S·I]`.
    static func sharedExpertsGate(_ layer: Int) -> String { "\(Self.layer(layer)).mlp.shared_experts.gate_proj.weight" }
    static func sharedExpertsUp(_ layer: Int) -> String { "\(Self.layer(layer)).mlp.shared_experts.up_proj.weight" }
    static func sharedExpertsDown(_ layer: Int) -> String { "\(Self.layer(layer)).mlp.shared_experts.down_proj.weight" }
    /// MoEKit's auxiliary-loss-free balancing bias, `[experts]` f32 (ignored by other loaders).
    static func routerBias(_ layer: Int) -> String { "\(Self.layer(layer)).mlp.gate.moekit_bias" }
}

/// The tensors a config implies, with shapes, and the parameter counts that follow.
public struct MiniCPMLayout: Sendable {
    public let config: MiniCPMConfig

    public init(config: MiniCPMConfig) { self.config = config }

    struct Entry: Sendable, Equatable {
        let name: String
        let shape: [Int]
        var elementCount: Int { shape.reduce(1, *) }
    }

    /// Every tensor of the checkpoint in layer order.
    var entries: [Entry] {
        let c = config
        let hidden = c.hiddenSize, kvDim = c.numKeyValueHeads * c.headDim
        var result: [Entry] = [Entry(name: MiniCPMTensorNames.embedTokens, shape: [c.vocabSize, hidden])]
        for layer in 0 ..< c.numHiddenLayers {
            result.append(Entry(name: MiniCPMTensorNames.inputLayerNorm(layer), shape: [hidden]))
            result.append(Entry(name: MiniCPMTensorNames.queryProjection(layer), shape: [hidden, hidden]))
            result.append(Entry(name: MiniCPMTensorNames.keyProjection(layer), shape: [kvDim, hidden]))
            result.append(Entry(name: MiniCPMTensorNames.valueProjection(layer), shape: [kvDim, hidden]))
            result.append(Entry(name: MiniCPMTensorNames.outputProjection(layer), shape: [hidden, hidden]))
            result.append(Entry(name: MiniCPMTensorNames.postAttentionLayerNorm(layer), shape: [hidden]))
            if let experts = c.numExperts {
                result.append(Entry(name: MiniCPMTensorNames.router(layer), shape: [experts, hidden]))
                for expert in 0 ..< experts {
                    result.append(Entry(name: MiniCPMTensorNames.expertGate(layer, expert), shape: [c.intermediateSize, hidden]))
                    result.append(Entry(name: MiniCPMTensorNames.expertUp(layer, expert), shape: [c.intermediateSize, hidden]))
                    result.append(Entry(name: MiniCPMTensorNames.expertDown(layer, expert), shape: [hidden, c.intermediateSize]))
                }
                if c.numSharedExperts > 0 {
                    let shared = c.numSharedExperts * c.intermediateSize
                    result.append(Entry(name: MiniCPMTensorNames.sharedExpertsGate(layer), shape: [shared, hidden]))
                    result.append(Entry(name: MiniCPMTensorNames.sharedExpertsUp(layer), shape: [shared, hidden]))
                    result.append(Entry(name: MiniCPMTensorNames.sharedExpertsDown(layer), shape: [hidden, shared]))
                }
            } else {
                result.append(Entry(name: MiniCPMTensorNames.gateProjection(layer), shape: [c.intermediateSize, hidden]))
                result.append(Entry(name: MiniCPMTensorNames.upProjection(layer), shape: [c.intermediateSize, hidden]))
                result.append(Entry(name: MiniCPMTensorNames.downProjection(layer), shape: [hidden, c.intermediateSize]))
            }
        }
        result.append(Entry(name: MiniCPMTensorNames.finalNorm, shape: [hidden]))
        if !c.tieWordEmbeddings { result.append(Entry(name: MiniCPMTensorNames.lmHead, shape: [c.vocabSize, hidden])) }
        return result
    }

    /// Parameter counts: all, without the embedding (and untied head), and active per token (an MoE
    /// token uses the router, k of the E routed experts and every shared expert).
    public struct ParameterCounts: Sendable, Equatable, Codable {
        public var total: Int
        public var nonEmbedding: Int
        public var activePerToken: Int
        public var activeNonEmbedding: Int
    }

    public var parameterCounts: ParameterCounts {
        let c = config
        var total = 0, embedding = 0, inactive = 0
        for entry in entries {
            total += entry.elementCount
            if entry.name == MiniCPMTensorNames.embedTokens || entry.name == MiniCPMTensorNames.lmHead { embedding += entry.elementCount }
        }
        if let experts = c.numExperts {
            let perExpert = 3 * c.hiddenSize * c.intermediateSize
            inactive = c.numHiddenLayers * (experts - (c.topK ?? 2)) * perExpert
        }
        return ParameterCounts(total: total, nonEmbedding: total - embedding, activePerToken: total - inactive,
                               activeNonEmbedding: total - embedding - inactive)
    }

    /// Checks a checkpoint against the config: every expected tensor present with the right shape
    /// and a float dtype. Returns the names of tensors the config does not explain (MoEKit's own
    /// `moekit_bias` tensors and an `lm_head.weight` of the right shape beside tied embeddings,
    /// which the model then uses, are explained).
    @discardableResult
    public func check(_ checkpoint: ModelCheckpoint) throws(CheckpointError) -> [String] {
        var expected = entries
        if config.tieWordEmbeddings && checkpoint.contains(MiniCPMTensorNames.lmHead) {
            expected.append(Entry(name: MiniCPMTensorNames.lmHead, shape: [config.vocabSize, config.hiddenSize]))
        }
        if let experts = config.numExperts {
            for layer in 0 ..< config.numHiddenLayers where checkpoint.contains(MiniCPMTensorNames.routerBias(layer)) {
                expected.append(Entry(name: MiniCPMTensorNames.routerBias(layer), shape: [experts]))
            }
        }
        for entry in expected {
            let info = try checkpoint.info(entry.name)
            guard info.shape == entry.shape else {
                throw .shapeMismatch(directory: checkpoint.directory, tensor: entry.name, expected: entry.shape, actual: info.shape)
            }
            guard info.dtype.isConvertibleToFloat else {
                throw checkpoint.unsupportedDType(entry.name)
            }
        }
        let expectedNames = Set(expected.map(\.name))
        return checkpoint.names.filter { !expectedNames.contains($0) }
    }
}
