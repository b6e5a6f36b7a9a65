import Foundation

/// The architectures `moekit export` writes.
public enum ExportFormat: String, Sendable, CaseIterable {
    /// A dense model as transformers' `LlamaForCausalLM`.
    case llama
    /// An MoE (softmax → top-k → renormalise) as transformers' `MixtralForCausalLM`.
    case mixtral
    /// An MoE with softmax → top-k, renormalised or not (`norm_topk_prob`), as transformers'
    /// `Qwen2MoeForCausalLM` with `qkv_bias` false and an all-zero shared expert (which adds exactly 0).
    case qwen2MoE = "qwen2_moe"
    /// An MoE with sigmoid scoring, optionally the auxiliary-loss-free selection bias and a weight
    /// scale (DeepSeek-V3's router) as transformers' `Glm4MoeForCausalLM` with full rotary
    /// embeddings, no q/k norm, one expert group and an all-zero shared expert.
    case glm4MoE = "glm4_moe"
    /// MiniCPM names and config (dense or MoE) with neutral scalars: the way back from Llama/Mixtral.
    case minicpm

    public var architecture: ModelArchitecture {
        switch self {
        case .llama: return .llama
        case .mixtral: return .mixtral
        case .qwen2MoE: return .qwen2MoE
        case .glm4MoE: return .glm4MoE
        case .minicpm: return .minicpm
        }
    }
}

/// How MoEKit's router maps onto the config of a Mixtral, Qwen2-MoE or GLM-4.5-MoE export, or which
/// setting that format cannot express.
///
/// Mixtral routes exactly as MiniCPM-MoE: softmax over all experts in f32, top-k, the k weights
/// divided by their sum (`softmax_over_selected` is the same function). Its training loss has one
/// load-balancing term, `router_aux_loss_coef · load_balancing_loss_func`, pooled over all layers
/// with f_i = count_i / T, so balanced routing scores k; MoEKit adds α · Switch_l per layer
/// (balanced 1 each). Matching the two at balance gives router_aux_loss_coef = α · L / k (α · L for
/// MoEKit's `hugging_face` per-layer loss, which scores k itself). Pooling makes the gradients differ
/// when layers balance differently; see docs/scale-out.md. Qwen2-MoE routes the same way and
/// also computes softmax → top-k without renormalising (`norm_topk_prob` false), with the same loss;
/// GLM-4.5-MoE computes sigmoid → top-k of the scores plus the selection bias → renormalised or not
/// → × `routed_scaling_factor` (DeepSeek-V3's router, MoEKit's `scoring: sigmoid`).
struct ExportRouting: Sendable, Equatable {
    var routerAuxiliaryLossCoefficient: Double
    /// Mixtral's `router_jitter_noise`: the same multiplicative U(1−ε, 1+ε) input jitter as `input_jitter`.
    var jitterNoise: Double
    var topK: Int
    /// Whether the k weights are renormalised (Qwen2-MoE's `norm_topk_prob`; always true for Mixtral).
    var normalizesTopK: Bool
    /// Factor on every combine weight (GLM-4.5-MoE's `routed_scaling_factor`; 1 elsewhere).
    var weightScale: Double
    /// Whether selection adds the auxiliary-loss-free bias (GLM-4.5-MoE's `e_score_correction_bias`).
    var selectionBias: Bool
    /// Training-time settings that Mixtral's config drops (the exported function is unchanged).
    var notes: [String]

    /// The routing of `configuration` for a model with `layers` MoE layers, or the refusal naming
    /// the first setting Mixtral's router cannot compute. `biasIsZero`: whether every stored
    /// auxiliary-loss-free bias (`moekit_bias`) is zero.
    init(_ configuration: RouterConfiguration, layers: Int, modelTopK: Int, biasIsZero: Bool, path: String,
                format: ExportFormat = .mixtral) throws(ExportError) {
        func refuse(_ setting: String, _ reason: String) -> ExportError {
            .inexpressibleRouter(path: path, setting: setting, format: format.rawValue, reason: reason)
        }
        let c = configuration
        let glm = format == .glm4MoE
        if c.scoring == .sigmoid && !glm {
            throw refuse("scoring: sigmoid", "Mixtral and Qwen2-MoE score experts with a softmax; use --format glm4_moe")
        }
        if c.scoring == .softmax && glm {
            throw refuse("scoring: softmax", "GLM-4.5-MoE scores experts with a sigmoid; use --format mixtral or qwen2_moe")
        }
        if c.weighting == .unnormalized && format == .mixtral {
            throw refuse("weighting: unnormalized", "Mixtral divides the top-k weights by their sum; use --format qwen2_moe (norm_topk_prob false)")
        }
        normalizesTopK = c.weighting != .unnormalized
        if c.weightScale != 1 && !glm { throw refuse("weight_scale: \(c.weightScale)", "\(format.rawValue) has no routed scaling factor; use --format glm4_moe") }
        weightScale = Double(c.weightScale)
        if c.mode == .expertChoice { throw refuse("mode: expert_choice", "its tokens choose their experts") }
        if c.mode == .relu { throw refuse("mode: relu", "ReMoE's ReLU gates activate a varying number of experts per token, which its top-k router cannot express") }
        if let factor = c.capacityFactor { throw refuse("capacity_factor: \(factor)", "it is dropless; capacity drops change the function") }
        if c.auxiliaryLossFreeBalancing && !glm {
            throw refuse("aux_loss_free_balancing", "\(format.rawValue)'s router has no selection bias; use --format glm4_moe")
        }
        selectionBias = c.auxiliaryLossFreeBalancing
        var notes: [String] = []
        if !biasIsZero && !c.auxiliaryLossFreeBalancing {
            notes.append("the moekit_bias tensors are not used by this router (aux_loss_free_balancing false) and are not exported")
        }
        if c.logitNoise != nil { notes.append("logit_noise (training only) is not in Mixtral's config") }
        if c.noisyTopK { notes.append("noisy_top_k (training only) is not in Mixtral's config") }
        if c.zLossCoefficient != 0 { notes.append("z_loss_coefficient \(c.zLossCoefficient): Mixtral's training loss has no router z-loss") }
        if c.importanceCoefficient != 0 || c.loadCoefficient != 0 { notes.append("importance/load CV² losses are not in Mixtral's training loss") }
        let k = c.topK ?? modelTopK
        let alpha = Double(c.loadBalancingCoefficient)
        switch c.loadBalancingLoss {
        case .switch, .perSequence: routerAuxiliaryLossCoefficient = alpha * Double(layers) / Double(k)
        case .huggingFace: routerAuxiliaryLossCoefficient = alpha * Double(layers)
        }
        if c.loadBalancingLoss == .perSequence { notes.append("per_sequence load balancing becomes Mixtral's per-batch pooled loss") }
        jitterNoise = Double(c.inputJitter ?? 0)
        topK = k
        self.notes = notes
    }
}

/// The config.json keys of the architectures `export` and `upcycle` write, every value explicit.
enum ArchitectureConfigKeys {
    /// Keys a Llama or Mixtral config has that MiniCPM's does not, and MiniCPM's own keys, which
    /// are dropped when changing architecture.
    static let architectureSpecific: Set<String> = [
        "model_type", "architectures", "auto_map", "head_dim", "hidden_act", "attention_bias", "attention_dropout", "mlp_bias",
        "pretraining_tp", "rope_scaling", "rope_parameters", "sliding_window", "num_local_experts", "output_router_logits",
        "router_aux_loss_coef", "router_jitter_noise", "use_cache", "dtype", "moekit_router", "scale_emb", "dim_model_base",
        "scale_depth", "num_experts", "use_mup", "qkv_bias", "use_sliding_window", "max_window_layers", "decoder_sparse_step",
        "mlp_only_layers", "shared_expert_intermediate_size", "norm_topk_prob", "moe_intermediate_size", "layer_types",
        "use_qk_norm", "partial_rotary_factor", "first_k_dense_replace", "n_group", "topk_group", "n_shared_experts",
        "routed_scaling_factor", "num_nextn_predict_layers", "n_routed_experts",
    ]

    /// The keys beyond `MiniCPMConfig`'s typed fields that make `config` (already neutral: no
    /// MiniCPM scalars) a `format` config. Token ids and `initializer_range` are kept from `keys`.
    static func otherKeys(_ keys: [String: JSONValue], config: MiniCPMConfig, format: ExportFormat,
                                 routing: ExportRouting?) -> [String: JSONValue] {
        var object = keys.filter { !architectureSpecific.contains($0.key) }
        object["model_type"] = .string(format.architecture.rawValue)
        object["architectures"] = .array([.string(format.architecture.causalLMClassName)])
        if format == .minicpm {
            // MoEKit's router record stays (MiniCPM is MoEKit's own format), as does remote code's auto_map.
            for key in ["auto_map", RouterConfiguration.configKey] where keys[key] != nil { object[key] = keys[key] }
            return object
        }
        object["head_dim"] = .integer(Int64(config.headDim))
        object["hidden_act"] = .string("silu")
        object["attention_dropout"] = .number(0)
        object["initializer_range"] = keys["initializer_range"] ?? .number(0.02)
        object["use_cache"] = .bool(true)
        for key in ["bos_token_id", "eos_token_id", "pad_token_id"] { object[key] = keys[key] ?? .null }
        object["rope_scaling"] = .null
        // transformers 5 reads RoPE from `rope_parameters`; older readers from `rope_theta` (also written).
        object["rope_parameters"] = .object(["rope_type": .string("default"), "rope_theta": .number(config.ropeTheta)])
        let auxiliaryLossCoefficient = routing?.routerAuxiliaryLossCoefficient ?? 0.01 * Double(config.numHiddenLayers) / Double(config.topK ?? 2)
        switch format {
        case .llama:
            object["attention_bias"] = .bool(false)
            object["mlp_bias"] = .bool(false)
            object["pretraining_tp"] = .integer(1)
        case .mixtral:
            object["sliding_window"] = .null
            object["output_router_logits"] = .bool(true)
            object["router_aux_loss_coef"] = .number(auxiliaryLossCoefficient)
            object["router_jitter_noise"] = .number(routing?.jitterNoise ?? 0)
        case .qwen2MoE:
            object["qkv_bias"] = .bool(false)
            object["use_sliding_window"] = .bool(false)
            object["sliding_window"] = .null
            object["max_window_layers"] = .integer(Int64(config.numHiddenLayers))
            object["decoder_sparse_step"] = .integer(1)
            object["mlp_only_layers"] = .array([])
            // One shared-expert neuron with all-zero weights: sigmoid(0·x) · down(silu(0·x) ⊙ 0·x) adds exactly 0.
            object["shared_expert_intermediate_size"] = .integer(1)
            object["norm_topk_prob"] = .bool(routing?.normalizesTopK ?? true)
            object["output_router_logits"] = .bool(true)
            object["router_aux_loss_coef"] = .number(auxiliaryLossCoefficient)
        case .glm4MoE:
            object["attention_bias"] = .bool(false)
            object["use_qk_norm"] = .bool(false)
            object["partial_rotary_factor"] = .number(1)
            object["rope_parameters"] = .object(["rope_type": .string("default"), "rope_theta": .number(config.ropeTheta),
                                                 "partial_rotary_factor": .number(1)])
            object["first_k_dense_replace"] = .integer(0)
            object["n_group"] = .integer(1)
            object["topk_group"] = .integer(1)
            // One shared expert with all-zero weights adds exactly 0 (silu(0·x) ⊙ 0·x = 0).
            object["n_shared_experts"] = .integer(1)
            object["norm_topk_prob"] = .bool(routing?.normalizesTopK ?? true)
            object["routed_scaling_factor"] = .number(routing?.weightScale ?? 1)
            object["num_nextn_predict_layers"] = .integer(0)
            object["output_router_logits"] = .bool(false)
        case .minicpm:
            break
        }
        if let dtype = config.torchDtype { object["dtype"] = .string(dtype) }
        return object
    }

    /// A dense Llama's keys turned into a Mixtral's with MoEKit's default routing (upcycle).
    static func mixtralFromLlama(_ keys: [String: JSONValue], config: MiniCPMConfig) -> [String: JSONValue] {
        otherKeys(keys, config: config, format: .mixtral, routing: nil)
    }
}
