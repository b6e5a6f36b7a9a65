import Foundation

/// The architectures whose checkpoints MoEKit reads as MiniCPM, told apart by `config.json`'s
/// `model_type`.
///
/// A Llama or Mixtral is a MiniCPM with neutral scalars: `scale_emb` 1, residual scale 1
/// (`scale_depth` = √L) and logit divisor 1 (`dim_model_base` = `hidden_size`). MoEKit computes
/// with MiniCPM's tensor names (`MiniCPMTensorNames`); `ModelCheckpoint` translates them to the
/// names stored in the files (`storedName(_:)`), so every loader reads all three unchanged.
/// Mixtral's routing (softmax → top-k → renormalise) is MiniCPM-MoE's. Qwen2-MoE is read when
/// it is a Mixtral in all but its router: no attention biases (`qkv_bias` false), no sliding window,
/// every layer sparse, and a shared expert whose weights are all zero (what `export --format
/// qwen2_moe` writes); `norm_topk_prob` false routes softmax → top-k without renormalising.
/// GLM-4.5-MoE (`glm4_moe`) is read under the same conditions (no q/k norm, full rotary,
/// `first_k_dense_replace` 0, one expert group, an all-zero shared expert): its router is
/// sigmoid → top-k of the scores plus `e_score_correction_bias` (MoEKit's auxiliary-loss-free bias,
/// `moekit_bias`) → renormalised or not → × `routed_scaling_factor`. See docs/scale-out.md.
public enum ModelArchitecture: String, Sendable, CaseIterable {
    case minicpm
    case llama
    case mixtral
    case qwen2MoE = "qwen2_moe"
    case glm4MoE = "glm4_moe"

    /// The architecture a `model_type` names; MiniCPM for any other (or none), as before.
    public init(modelType: String?) {
        self = modelType.flatMap { ModelArchitecture(rawValue: $0) } ?? .minicpm
    }

    /// Whether configs of this architecture carry MiniCPM's three scalars; the others are read
    /// with neutral ones.
    var hasMiniCPMScalars: Bool { self == .minicpm }

    /// The class name transformers registers for the architecture (`architectures` in config.json).
    public var causalLMClassName: String {
        switch self {
        case .minicpm: return "MiniCPMForCausalLM"
        case .llama: return "LlamaForCausalLM"
        case .mixtral: return "MixtralForCausalLM"
        case .qwen2MoE: return "Qwen2MoeForCausalLM"
        case .glm4MoE: return "Glm4MoeForCausalLM"
        }
    }

    /// The name a MiniCPM tensor name has in this architecture's checkpoints. Mixtral keeps its
    /// MoE block under `block_sparse_moe` (`model.layers.L.block_sparse_moe.gate.weight`,
    /// `….block_sparse_moe.experts.E.w1.weight`); every other name is MiniCPM's (which is Llama's).
    /// Qwen2-MoE names its experts' matrices like a dense MLP (`….mlp.experts.E.gate_proj.weight`,
    /// `up_proj`, `down_proj` for w1, w3, w2).
    func storedName(_ miniCPMName: String) -> String {
        switch self {
        case .minicpm, .llama:
            return miniCPMName
        case .mixtral:
            for (mine, theirs) in Self.mixtralRenames where miniCPMName.contains(mine) {
                return miniCPMName.replacingOccurrences(of: mine, with: theirs)
            }
            return miniCPMName
        case .qwen2MoE, .glm4MoE:
            if self == .glm4MoE && miniCPMName.hasSuffix(Self.miniCPMBiasSuffix) {
                return String(miniCPMName.dropLast(Self.miniCPMBiasSuffix.count)) + Self.glmBiasSuffix
            }
            guard miniCPMName.contains(".mlp.experts.") else { return miniCPMName }
            for (mine, theirs) in Self.qwen2MoERenames where miniCPMName.hasSuffix(mine) {
                return String(miniCPMName.dropLast(mine.count)) + theirs
            }
            return miniCPMName
        }
    }

    /// The MiniCPM name of a tensor stored under `storedName` (the inverse of `storedName(_:)`).
    func miniCPMName(_ storedName: String) -> String {
        switch self {
        case .minicpm, .llama:
            return storedName
        case .mixtral:
            for (mine, theirs) in Self.mixtralRenames where storedName.contains(theirs) {
                return storedName.replacingOccurrences(of: theirs, with: mine)
            }
            return storedName
        case .qwen2MoE, .glm4MoE:
            if self == .glm4MoE && storedName.hasSuffix(Self.glmBiasSuffix) {
                return String(storedName.dropLast(Self.glmBiasSuffix.count)) + Self.miniCPMBiasSuffix
            }
            guard storedName.contains(".mlp.experts.") else { return storedName }
            for (mine, theirs) in Self.qwen2MoERenames where storedName.hasSuffix(theirs) {
                return String(storedName.dropLast(theirs.count)) + mine
            }
            return storedName
        }
    }

    private static let mixtralRenames = [(".mlp.gate.", ".block_sparse_moe.gate."), (".mlp.experts.", ".block_sparse_moe.experts.")]
    private static let miniCPMBiasSuffix = ".mlp.gate.moekit_bias", glmBiasSuffix = ".mlp.gate.e_score_correction_bias"
    private static let qwen2MoERenames = [(".w1.weight", ".gate_proj.weight"), (".w3.weight", ".up_proj.weight"), (".w2.weight", ".down_proj.weight")]

    /// Qwen2-MoE's shared expert and its gate (`model.layers.L.mlp.shared_expert.*`,
    /// `….mlp.shared_expert_gate.weight`), GLM-4.5-MoE's shared experts (`….mlp.shared_experts.*`).
    /// MoEKit reads them only when all zero.
    static func isSharedExpertTensor(_ name: String) -> Bool { name.contains(".mlp.shared_expert") }

    /// The architecture `directory/config.json` declares (MiniCPM when it has none or cannot be read).
    static func declared(byDirectory directory: String) -> ModelArchitecture {
        guard let data = FileManager.default.contents(atPath: directory + "/config.json"),
              case .object(let object)? = JSONValue.parse(data) else { return .minicpm }
        return ModelArchitecture(modelType: object["model_type"]?.stringValue)
    }
}

extension MiniCPMConfig {
    /// The architecture of the file this config came from (its `model_type`).
    public var architecture: ModelArchitecture { ModelArchitecture(modelType: otherKeys["model_type"]?.stringValue) }

    /// Reads a Llama or Mixtral config's own names and defaults over what the MiniCPM reader set:
    /// neutral scalars unless the file has them, `tie_word_embeddings` false, the architecture's
    /// `rms_norm_eps` / `rope_theta` / `num_key_value_heads` defaults, `rope_parameters`
    /// (transformers 5), `num_local_experts`. Settings MiniCPM's computation cannot follow are
    /// refused naming the field. Does nothing for MiniCPM.
    mutating func adoptArchitectureFields(_ object: [String: JSONValue], path: String) throws(CheckpointError) {
        let architecture = self.architecture
        guard !architecture.hasMiniCPMScalars else { return }
        func present(_ key: String) -> JSONValue? {
            guard let value = object[key], value != .null else { return nil }
            return value
        }
        func real(_ value: JSONValue?, _ key: String) throws(CheckpointError) -> Double? {
            guard let value else { return nil }
            guard let number = value.doubleValue, number.isFinite else { throw .invalidField(path: path, field: key, reason: "must be a finite number") }
            return number
        }
        if torchDtype == nil, let name = present("dtype")?.stringValue { torchDtype = name }  // transformers 5's key
        if present("dim_model_base") == nil { dimModelBase = Double(hiddenSize) }
        if present("scale_depth") == nil { scaleDepth = Double(numHiddenLayers).squareRoot() }
        if present("tie_word_embeddings") == nil { tieWordEmbeddings = false }
        if present("rms_norm_eps") == nil { rmsNormEps = architecture == .mixtral ? 1e-5 : 1e-6 }
        if architecture == .qwen2MoE { try adoptQwen2MoEFields(present, path: path) }
        if architecture == .glm4MoE { try adoptGLM4MoEFields(present, path: path) }
        if present("num_key_value_heads") == nil && architecture == .mixtral { numKeyValueHeads = min(8, numAttentionHeads) }
        if present("max_position_embeddings") == nil && architecture == .mixtral { maxPositionEmbeddings = 4096 * 32 }
        if present("rope_theta") == nil {
            ropeTheta = architecture == .mixtral ? 1e6 : 10000
            if case .object(let rope)? = present("rope_parameters") {
                if let type = rope["rope_type"]?.stringValue, type != "default" {
                    throw .invalidField(path: path, field: "rope_parameters.rope_type", reason: "'\(type)' is not supported (MoEKit computes default RoPE)")
                }
                if let theta = try real(rope["rope_theta"], "rope_parameters.rope_theta") { ropeTheta = theta }
            }
        }
        if case .object(let scaling)? = present("rope_scaling") {
            let type = scaling["rope_type"]?.stringValue ?? scaling["type"]?.stringValue ?? "?"
            if type != "default" { throw .invalidField(path: path, field: "rope_scaling", reason: "'\(type)' is not supported (MoEKit computes default RoPE)") }
        }
        if let headDim = present("head_dim"), headDim.integerValue != Int64(hiddenSize / numAttentionHeads) {
            throw .invalidField(path: path, field: "head_dim", reason: "must be hidden_size / num_attention_heads (\(hiddenSize / numAttentionHeads)) for MoEKit")
        }
        if let act = present("hidden_act")?.stringValue, act != "silu" {
            throw .invalidField(path: path, field: "hidden_act", reason: "'\(act)' is not supported (MoEKit's MLP is SwiGLU, silu)")
        }
        for key in ["attention_bias", "mlp_bias"] where present(key)?.boolValue == true {
            throw .invalidField(path: path, field: key, reason: "true is not supported (MoEKit's projections have no bias)")
        }
        if architecture == .mixtral {
            if let window = present("sliding_window"), let size = window.integerValue, size < maxPositionEmbeddings {
                throw .invalidField(path: path, field: "sliding_window", reason: "(\(size)) is not supported (MoEKit's attention is full causal); set it to null")
            }
            guard present("num_local_experts") != nil else { throw .missingField(path: path, field: "num_local_experts") }
            guard let experts = present("num_local_experts")?.integerValue, experts >= 1, experts < Int64(Int32.max) else {
                throw .invalidField(path: path, field: "num_local_experts", reason: "must be an integer ≥ 1")
            }
            numExperts = Int(experts)
            if let k = present("num_experts_per_tok") {
                guard let value = k.integerValue, value >= 1, value < Int64(Int32.max) else {
                    throw .invalidField(path: path, field: "num_experts_per_tok", reason: "must be an integer ≥ 1")
                }
                topK = Int(value)
            } else {
                topK = 2
            }
            otherKeys["num_local_experts"] = nil
        } else if architecture == .llama && numExperts != nil {
            throw .invalidField(path: path, field: "num_experts", reason: "is set in a Llama config; an MoE is model_type 'mixtral'")
        }
    }

    /// GLM-4.5-MoE as MoEKit can compute it: see `ModelArchitecture.glm4MoE`.
    private mutating func adoptGLM4MoEFields(_ present: (String) -> JSONValue?, path: String) throws(CheckpointError) {
        if present("use_qk_norm")?.boolValue == true {
            throw .invalidField(path: path, field: "use_qk_norm", reason: "true is not supported (MoEKit's attention has no q/k norm)")
        }
        // transformers' Glm4MoeConfig defaults first_k_dense_replace to 1 and partial_rotary_factor to 0.5.
        if present("first_k_dense_replace")?.integerValue != 0 {
            throw .invalidField(path: path, field: "first_k_dense_replace", reason: "must be 0 (MoEKit's MoE models are sparse in every layer)")
        }
        for key in ["n_group", "topk_group"] where present(key).map({ $0.integerValue != 1 }) ?? false {
            throw .invalidField(path: path, field: key, reason: "must be 1 (MoEKit routes without expert groups)")
        }
        var rotary = present("partial_rotary_factor")?.doubleValue
        if case .object(let rope)? = present("rope_parameters"), let factor = rope["partial_rotary_factor"]?.doubleValue { rotary = factor }
        if rotary != 1 {
            throw .invalidField(path: path, field: "partial_rotary_factor", reason: "must be 1.0 (MoEKit rotates every dimension of a head)")
        }
        guard let experts = present("n_routed_experts")?.integerValue, experts >= 1, experts < Int64(Int32.max) else {
            throw .invalidField(path: path, field: "n_routed_experts", reason: "must be an integer ≥ 1")
        }
        numExperts = Int(experts)
        let topK = present("num_experts_per_tok")?.integerValue ?? 8
        guard topK >= 1 && topK <= experts else {
            throw .invalidField(path: path, field: "num_experts_per_tok", reason: "(\(topK)) must be between 1 and n_routed_experts (\(experts))")
        }
        self.topK = Int(topK)
        guard let expertSize = present("moe_intermediate_size")?.integerValue, expertSize >= 1, expertSize < Int64(Int32.max) else {
            throw .invalidField(path: path, field: "moe_intermediate_size", reason: "must be an integer ≥ 1")
        }
        intermediateSize = Int(expertSize)
        for key in ["n_routed_experts", "moe_intermediate_size", "num_experts_per_tok"] { otherKeys[key] = nil }
        if router == nil {
            var router = RouterConfiguration()
            router.scoring = .sigmoid
            router.weighting = (present("norm_topk_prob")?.boolValue ?? true) ? .renormalized : .unnormalized
            router.weightScale = Float(present("routed_scaling_factor")?.doubleValue ?? 1)
            router.auxiliaryLossFreeBalancing = true
            self.router = router
        }
    }

    /// Qwen2-MoE as MoEKit can compute it: see `ModelArchitecture.qwen2MoE`.
    private mutating func adoptQwen2MoEFields(_ present: (String) -> JSONValue?, path: String) throws(CheckpointError) {
        // transformers' Qwen2MoeConfig defaults qkv_bias to true and norm_topk_prob to false.
        if present("qkv_bias")?.boolValue != false {
            throw .invalidField(path: path, field: "qkv_bias", reason: "must be false (MoEKit's projections have no bias)")
        }
        if present("use_sliding_window")?.boolValue == true {
            throw .invalidField(path: path, field: "use_sliding_window", reason: "true is not supported (MoEKit's attention is full causal)")
        }
        if let step = present("decoder_sparse_step"), step.integerValue != 1 {
            throw .invalidField(path: path, field: "decoder_sparse_step", reason: "must be 1 (MoEKit's MoE models are sparse in every layer)")
        }
        if case .array(let layers)? = present("mlp_only_layers"), !layers.isEmpty {
            throw .invalidField(path: path, field: "mlp_only_layers", reason: "must be empty (MoEKit's MoE models are sparse in every layer)")
        }
        guard numExperts != nil else { throw .missingField(path: path, field: "num_experts") }
        guard let expertSize = present("moe_intermediate_size")?.integerValue, expertSize >= 1, expertSize < Int64(Int32.max) else {
            throw .invalidField(path: path, field: "moe_intermediate_size", reason: "must be an integer ≥ 1")
        }
        intermediateSize = Int(expertSize)
        otherKeys["moe_intermediate_size"] = nil
        if router == nil {
            var router = RouterConfiguration()
            router.weighting = present("norm_topk_prob")?.boolValue == true ? .renormalized : .unnormalized
            self.router = router
        }
    }

    /// The name a typed field has in this architecture's config: Mixtral's expert count is
    /// `num_local_experts`, GLM-4.5-MoE's `n_routed_experts`; every other name is MiniCPM's.
    func architectureKey(_ key: CodingKeys) -> String {
        switch (architecture, key) {
        case (.mixtral, .numExperts): return "num_local_experts"
        case (.glm4MoE, .numExperts): return "n_routed_experts"
        default: return key.rawValue
        }
    }
}
