import Foundation

/// Every routing knob of a MoE model, in one record.
///
/// Stored in `config.json` under the key `moekit_router` (snake_case keys below; other tools ignore
/// the key), given on the command line as `--router TEXT` (see `RouterConfiguration(text:)`).
/// Absent keys take the defaults, which are MiniCPM-MoE's own routing: softmax over all experts →
/// top-k → the k weights renormalised to sum to 1, no noise, no capacity limit (dropless),
/// Switch load-balancing loss with coefficient 0.01, no z-loss.
///
/// Where each step happens, for one token with inputs x and gate weight W `[E, H]`:
///
///     x' = x ⊙ U(1−ε, 1+ε)                         input jitter (training only)
///     z  = x'·Wᵀ                                    logits
///     z̃  = z + σ·N(0,1) + softplus(x'·W_noiseᵀ)⊙N(0,1)   logit noise, noisy top-k (training only)
///     s  = softmax(z̃) or sigmoid(z̃)                 scores
///     chosen = top-k of (s + b)                     b: auxiliary-loss-free bias (selection only)
///     w  = s[chosen], renormalised or not, × weightScale
///
/// The `logits` and `probabilities` a router reports are those of the noise-free inputs, without
/// bias: z = x·Wᵀ and its scores. Losses are computed from them.
public struct RouterConfiguration: Codable, Sendable, Equatable {
    // MARK: Scoring and weighting

    /// How logits become scores.
    public enum Scoring: String, Codable, Sendable, CaseIterable {
        /// Softmax over all experts, in f32 (MiniCPM-MoE, Mixtral, Switch).
        case softmax
        /// Element-wise logistic sigmoid, σ(z) = 1 / (1 + e^(−z)) (DeepSeek-V3).
        case sigmoid
        /// Element-wise ReLU, g = max(z, 0) (ReMoE). Only with `mode = .relu`, which it defines.
        case relu
    }

    /// How the chosen experts' scores become combine weights.
    public enum Weighting: String, Codable, Sendable, CaseIterable {
        /// The k chosen scores divided by their sum, so the weights sum to 1. With softmax scoring
        /// this is softmax → top-k → renormalise (MiniCPM-MoE, Mixtral); with sigmoid scoring,
        /// sigmoid → top-k → renormalise (DeepSeek-V3).
        case renormalized
        /// The k chosen scores as they are: softmax → top-k (Switch Transformer, ST-MoE), or
        /// sigmoid → top-k.
        case unnormalized
        /// Top-k on the logits, then a softmax over the k chosen logits. Softmax scoring only. It
        /// equals `renormalized` exactly in real arithmetic (e^(z_i) / Σ_chosen e^(z_j) is the
        /// renormalised softmax, and softmax is monotonic, so the same experts are chosen); in f32
        /// the two differ by rounding only. Kept for comparison with code written this way.
        case softmaxOverSelected = "softmax_over_selected"
    }

    /// Softmax (default) or sigmoid.
    public var scoring: Scoring = .softmax
    /// Renormalised (default), unnormalised, or softmax over the chosen logits.
    public var weighting: Weighting = .renormalized
    /// Experts per token. `nil` (default) uses the model's `num_experts_per_tok`.
    public var topK: Int?
    /// Every combine weight is multiplied by this after weighting (DeepSeek's `routed_scaling_factor`).
    /// Default 1.
    public var weightScale: Float = 1

    // MARK: Noise (training only, seeded)

    /// ε of the multiplicative input jitter: each input element is multiplied by an independent
    /// U(1−ε, 1+ε) sample before the gate (Switch Transformer uses ε = 1e-2). `nil`: no jitter.
    public var inputJitter: Float?
    /// Standard deviation σ of Gaussian noise added to each logit. `nil`: none.
    public var logitNoise: Float?
    /// Shazeer et al. (2017) noisy top-k: adds softplus(x·W_noiseᵀ) ⊙ N(0,1) to the logits, with a
    /// learned noise weight W_noise `[E, H]` per layer held by the router (initialised to zero, so
    /// the noise starts with standard deviation ln 2). Default false.
    public var noisyTopK: Bool = false
    /// Seed of the router's noise generator; the same seed gives the same noisy routing. Default 0.
    public var noiseSeed: UInt64 = 0

    // MARK: Token choice or expert choice

    /// Who chooses.
    public enum Mode: String, Codable, Sendable, CaseIterable {
        /// Each token chooses its top-k experts (default).
        case tokenChoice = "token_choice"
        /// Each expert chooses its top-C tokens by score, C = capacity (Zhou et al. 2022). Needs
        /// `capacityFactor`; C = ceil(T·k/E · cf) with k the model's top-k, at most T. Each chosen
        /// token is weighted by its score (× `weightScale`); `weighting` does not apply. NOTE: non-causal — a token's routing depends on the other tokens of the
        /// batch, including later ones — so it is not for autoregressive decoding.
        case expertChoice = "expert_choice"
        /// ReMoE (Wang et al., ICLR 2025, arXiv 2412.14711): g = ReLU(z), every expert with g > 0
        /// is active with combine weight c·g (no top-k, no softmax), so the number of active
        /// experts varies per token. Needs `scoring = .relu`. Sparsity is steered toward 1 − k/E
        /// by the load-balanced L1 penalty L_reg with the adaptive coefficient λ
        /// (`ConfigurableRouter.l1Coefficient`), which replaces the load-balancing loss
        /// (`load_balancing_coefficient` is not used). Decisions have E slots, −1 for inactive experts.
        case relu
    }

    /// Token choice (default) or expert choice.
    public var mode: Mode = .tokenChoice

    // MARK: Capacity and dropping

    /// Which assignments an expert over capacity keeps.
    public enum DropPolicy: String, Codable, Sendable, CaseIterable {
        /// Each expert keeps its assignments of highest router probability (ties: earlier token).
        case probability
        /// First come, first served: every token's first choice in token order, then every
        /// token's second choice, and so on (GShard, Switch), so later tokens are dropped first.
        case position
    }

    /// Capacity factor cf: each expert takes at most C = ceil(T·k/E · cf) assignments of a batch of
    /// T tokens. `nil` (default): dropless, no limit. Dropped assignments leave an empty slot
    /// (expert −1, weight 0; the remaining weights are not renormalised) and are counted in
    /// `RoutingDecision.droppedAssignments`; a token with no expert left passes through the
    /// residual unchanged. Applied in training and in evaluation alike.
    public var capacityFactor: Double?
    /// Which assignments are dropped when over capacity. Default `.probability`.
    public var dropPolicy: DropPolicy = .probability

    // MARK: Auxiliary-loss-free balancing (DeepSeek-V3)

    /// A per-layer, per-expert f32 bias b added to the scores for selection only (weights come
    /// from the unbiased scores), updated once per step by b_i += u · sign(mean load − load_i).
    /// Saved with the model as `model.layers.N.mlp.gate.moekit_bias`. With `softmaxOverSelected`
    /// weighting the selection is made on the logits, so the bias is added to the logits. Default false.
    public var auxiliaryLossFreeBalancing: Bool = false
    /// u, the bias update rate. Default 1e-3 (DeepSeek-V3).
    public var biasUpdateRate: Float = 1e-3

    // MARK: ReMoE's adaptive L1 coefficient (mode = .relu)

    /// λ₀, the L1 coefficient at step 0. Default 1e-8 (ReMoE's `--moe-relu-l1-reg-coeff-init`).
    public var l1InitialCoefficient: Float = 1e-8
    /// α > 1: after each step λ ← λ · α^sign((1 − k/E) − S), S the step's realised sparsity.
    /// Default 1.2 (ReMoE's `--moe-relu-l1-reg-coeff-multiplier`).
    public var l1CoefficientMultiplier: Float = 1.2

    // MARK: Losses

    /// Which load-balancing loss `RouterLoss` computes (see `RouterLosses`).
    public enum LoadBalancingLoss: String, Codable, Sendable, CaseIterable {
        /// E · Σ f_i · P_i with f_i = count_i / (T·k): balanced gives 1, collapse gives E.
        case `switch`
        /// The Hugging Face `load_balancing_loss_func` convention, f_i = count_i / T: balanced gives k.
        case huggingFace = "hugging_face"
        /// The Switch loss per sequence, averaged over sequences.
        case perSequence = "per_sequence"
    }

    /// Which load-balancing loss. Default `.switch`.
    public var loadBalancingLoss: LoadBalancingLoss = .switch
    /// Coefficient of the load-balancing loss. Default 0.01 (MiniCPM-MoE; Switch Transformer).
    public var loadBalancingCoefficient: Float = 0.01
    /// Coefficient of the router z-loss, mean over tokens of (logsumexp z)². Default 0;
    /// 1e-3 (ST-MoE) is a good starting point when logits grow.
    public var zLossCoefficient: Float = 0
    /// Coefficient of the importance CV² loss (Shazeer et al. 2017). Default 0.
    public var importanceCoefficient: Float = 0
    /// Coefficient of the load CV² loss (Shazeer et al. 2017, Appendix A): the CV² of each expert's
    /// smooth load Σ_t Φ((z_t,i − kth_excluding(H_t, k, i)) / σ_t,i) under noisy top-k (see
    /// `RouterLosses.loadLoss`). Default 0. A non-zero value needs `noisyTopK` and token-choice
    /// routing; the term is computed only for calls that applied the noise (training).
    public var loadCoefficient: Float = 0

    /// MiniCPM-MoE's routing with every default.
    public init() {}

    /// MiniCPM-MoE's routing with every default (the same as `init()`).
    public static let miniCPMMoE = RouterConfiguration()

    // MARK: Codable

    enum CodingKeys: String, CodingKey, CaseIterable {
        case scoring
        case weighting
        case topK = "top_k"
        case weightScale = "weight_scale"
        case inputJitter = "input_jitter"
        case logitNoise = "logit_noise"
        case noisyTopK = "noisy_top_k"
        case noiseSeed = "noise_seed"
        case mode
        case capacityFactor = "capacity_factor"
        case dropPolicy = "drop_policy"
        case auxiliaryLossFreeBalancing = "aux_loss_free_balancing"
        case biasUpdateRate = "bias_update_rate"
        case l1InitialCoefficient = "l1_initial_coefficient"
        case l1CoefficientMultiplier = "l1_coefficient_multiplier"
        case loadBalancingLoss = "load_balancing_loss"
        case loadBalancingCoefficient = "load_balancing_coefficient"
        case zLossCoefficient = "z_loss_coefficient"
        case importanceCoefficient = "importance_coefficient"
        case loadCoefficient = "load_coefficient"
    }

    /// Decodes the record; absent keys take their defaults. Does not validate (see `validate`).
    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        scoring = try container.decodeIfPresent(Scoring.self, forKey: .scoring) ?? scoring
        weighting = try container.decodeIfPresent(Weighting.self, forKey: .weighting) ?? weighting
        topK = try container.decodeIfPresent(Int.self, forKey: .topK)
        weightScale = try container.decodeIfPresent(Float.self, forKey: .weightScale) ?? weightScale
        inputJitter = try container.decodeIfPresent(Float.self, forKey: .inputJitter)
        logitNoise = try container.decodeIfPresent(Float.self, forKey: .logitNoise)
        noisyTopK = try container.decodeIfPresent(Bool.self, forKey: .noisyTopK) ?? noisyTopK
        noiseSeed = try container.decodeIfPresent(UInt64.self, forKey: .noiseSeed) ?? noiseSeed
        mode = try container.decodeIfPresent(Mode.self, forKey: .mode) ?? mode
        capacityFactor = try container.decodeIfPresent(Double.self, forKey: .capacityFactor)
        dropPolicy = try container.decodeIfPresent(DropPolicy.self, forKey: .dropPolicy) ?? dropPolicy
        auxiliaryLossFreeBalancing = try container.decodeIfPresent(Bool.self, forKey: .auxiliaryLossFreeBalancing) ?? auxiliaryLossFreeBalancing
        biasUpdateRate = try container.decodeIfPresent(Float.self, forKey: .biasUpdateRate) ?? biasUpdateRate
        l1InitialCoefficient = try container.decodeIfPresent(Float.self, forKey: .l1InitialCoefficient) ?? l1InitialCoefficient
        l1CoefficientMultiplier = try container.decodeIfPresent(Float.self, forKey: .l1CoefficientMultiplier) ?? l1CoefficientMultiplier
        loadBalancingLoss = try container.decodeIfPresent(LoadBalancingLoss.self, forKey: .loadBalancingLoss) ?? loadBalancingLoss
        loadBalancingCoefficient = try container.decodeIfPresent(Float.self, forKey: .loadBalancingCoefficient) ?? loadBalancingCoefficient
        zLossCoefficient = try container.decodeIfPresent(Float.self, forKey: .zLossCoefficient) ?? zLossCoefficient
        importanceCoefficient = try container.decodeIfPresent(Float.self, forKey: .importanceCoefficient) ?? importanceCoefficient
        loadCoefficient = try container.decodeIfPresent(Float.self, forKey: .loadCoefficient) ?? loadCoefficient
    }

    // MARK: Validation

    /// Checks every field and the relations between them; the error names the field.
    /// `source` names where the configuration came from (a file path or "--router"), for messages.
    public func validate(source: String = "router configuration") throws(RouterConfigurationError) {
        func fail(_ key: CodingKeys, _ reason: String) -> RouterConfigurationError {
            .invalidField(source: source, field: key.rawValue, reason: reason)
        }
        if let topK, topK < 1 { throw fail(.topK, "must be at least 1, got \(topK)") }
        guard weightScale.isFinite && weightScale > 0 else { throw fail(.weightScale, "must be a positive number, got \(weightScale)") }
        if let inputJitter, !(inputJitter >= 0 && inputJitter < 1) { throw fail(.inputJitter, "must be in [0, 1), got \(inputJitter)") }
        if let logitNoise, !(logitNoise >= 0 && logitNoise.isFinite) { throw fail(.logitNoise, "must be a finite number ≥ 0, got \(logitNoise)") }
        if let capacityFactor, !(capacityFactor > 0 && capacityFactor.isFinite) {
            throw fail(.capacityFactor, "must be a positive number, got \(capacityFactor)")
        }
        guard biasUpdateRate.isFinite && biasUpdateRate > 0 else { throw fail(.biasUpdateRate, "must be a positive number, got \(biasUpdateRate)") }
        for (key, value) in [(CodingKeys.loadBalancingCoefficient, loadBalancingCoefficient), (.zLossCoefficient, zLossCoefficient),
                             (.importanceCoefficient, importanceCoefficient), (.loadCoefficient, loadCoefficient)] where !(value >= 0 && value.isFinite) {
            throw fail(key, "must be a finite number ≥ 0, got \(value)")
        }
        if loadCoefficient != 0 {
            guard noisyTopK else {
                throw fail(.loadCoefficient, "needs noisy_top_k: the load loss is defined by the noise of Shazeer's noisy top-k gate")
            }
            guard mode == .tokenChoice else {
                throw fail(.loadCoefficient, "needs token-choice routing: the load loss estimates whether an expert stays in a token's top k")
            }
        }
        guard l1InitialCoefficient.isFinite && l1InitialCoefficient > 0 else {
            throw fail(.l1InitialCoefficient, "must be a positive number, got \(l1InitialCoefficient)")
        }
        guard l1CoefficientMultiplier.isFinite && l1CoefficientMultiplier > 1 else {
            throw fail(.l1CoefficientMultiplier, "must be a number > 1, got \(l1CoefficientMultiplier)")
        }
        if (mode == .relu) != (scoring == .relu) {
            throw mode == .relu ? fail(.scoring, "must be relu with ReLU routing (mode relu), got \(scoring.rawValue)")
                : fail(.scoring, "relu is ReMoE's ReLU routing and needs mode relu (the 'remoe' preset sets both)")
        }
        if mode == .relu {
            if noisyTopK { throw fail(.noisyTopK, "has no effect with ReLU routing (no top-k)") }
            if capacityFactor != nil { throw fail(.capacityFactor, "is not supported with ReLU routing (ReMoE is dropless)") }
            if auxiliaryLossFreeBalancing { throw fail(.auxiliaryLossFreeBalancing, "is not supported with ReLU routing (its L1 penalty balances the load)") }
            if weighting == .softmaxOverSelected { throw fail(.weighting, "'softmax_over_selected' is a top-k weighting; ReLU routing weights by the gates") }
        }
        if weighting == .softmaxOverSelected && scoring != .softmax {
            throw fail(.weighting, "'softmax_over_selected' needs softmax scoring, not \(scoring.rawValue)")
        }
        if mode == .expertChoice {
            guard capacityFactor != nil else { throw fail(.capacityFactor, "is required by expert-choice routing (each expert takes C = ceil(T·k/E·cf) tokens)") }
            if auxiliaryLossFreeBalancing {
                throw fail(.auxiliaryLossFreeBalancing, "has no effect with expert-choice routing (a per-expert bias does not change an expert's ranking of tokens)")
            }
            if weighting == .softmaxOverSelected {
                throw fail(.weighting, "'softmax_over_selected' is a token-choice weighting; expert choice weights by the scores")
            }
        }
    }

    // MARK: config.json

    /// The key of `config.json` that holds the router configuration.
    public static let configKey = "moekit_router"

    /// The configuration a model's config holds (`MiniCPMConfig.router`, read and validated with
    /// the config), or the defaults (MiniCPM-MoE routing) when it has none.
    public init(modelConfig: MiniCPMConfig) {
        self = modelConfig.router ?? RouterConfiguration()
    }

    /// Decodes a `moekit_router` JSON object and validates it.
    public init(json: JSONValue, source: String = "config.json") throws(RouterConfigurationError) {
        guard case .object(let object) = json else {
            throw .invalidField(source: source, field: Self.configKey, reason: "must be a JSON object")
        }
        let known = Set(CodingKeys.allCases.map(\.rawValue))
        if let unknown = object.keys.sorted().first(where: { !known.contains($0) }) {
            throw .invalidField(source: source, field: "\(Self.configKey).\(unknown)", reason: "is not a router setting (known: \(known.sorted().joined(separator: ", ")))")
        }
        do {
            self = try JSONValueDecoder.decode(RouterConfiguration.self, from: json)
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context) {
            throw .invalidField(source: source, field: Self.fieldName(context), reason: "has the wrong type (\(context.debugDescription))")
        } catch let DecodingError.dataCorrupted(context) {
            throw .invalidField(source: source, field: Self.fieldName(context), reason: context.debugDescription)
        } catch {
            throw .invalidField(source: source, field: Self.configKey, reason: "\(error)")
        }
        try validate(source: source)
    }

    private static func fieldName(_ context: DecodingError.Context) -> String {
        ([configKey] + context.codingPath.map(\.stringValue)).joined(separator: ".")
    }

    /// The configuration as the JSON object stored under `moekit_router` (every field written;
    /// whole numbers without a fraction, as `JSONEncoder` writes them: `JSONValueEncoder`).
    public var jsonValue: JSONValue {
        do { return try JSONValueEncoder.encode(self) } catch {
            preconditionFailure("a router configuration always encodes: \(error)")
        }
    }

    /// Stores this configuration under `moekit_router` in a model's config (written with it).
    public func store(in modelConfig: inout MiniCPMConfig) {
        modelConfig.router = self
    }
}
