/// How the experts of each MoE layer are built from the dense MLP.
public enum UpcycleMethod: String, Sendable, CaseIterable, Codable {
    /// Sparse upcycling (MiniCPM-MoE's recipe): every expert is an exact copy of the dense MLP,
    /// `w1 = gate_proj`, `w3 = up_proj`, `w2 = down_proj`.
    case copy
    /// `copy` plus seeded Gaussian noise: `W_e = W + ε_e`, `ε_e ~ N(0, (S · std(W))²)`, a different
    /// draw for every expert and matrix.
    case noise
    /// LLaMA-MoE neuron partitioning: the `I` intermediate neurons are split into `E` disjoint
    /// groups of `I/E`; expert `e` keeps its group's rows of `gate_proj`/`up_proj` and columns of
    /// `down_proj`, the latter scaled by `E` (see `ExpertConstruction.partitionOutputScale`).
    case partition
    /// Megatron-Core fine-grained ("granular") upcycling: the dense FFN is cut into `G` contiguous
    /// slices of `I/G` neurons, replicated `E/G` times; every matrix of every expert is scaled by
    /// `G^(1/3)` and the router rows are repeated per group of `G` experts.
    case granular
    /// Drop-Upcycling (Nakamura et al., ICLR 2025): `copy`, then in every expert a seeded random
    /// `⌊r·I⌋` of the intermediate neurons redrawn from `N(μ, σ²)` of the weights they replace
    /// (see `DropUpcycling`).
    case drop
}

/// How the router weight `mlp.gate.weight` `[E, hidden]` is initialised.
public enum RouterInitialization: String, Sendable, CaseIterable, Codable {
    /// N(0, σ²), σ = `--router-std` (0.1 by default: the MiniCPM paper's N(0, variance 0.01)).
    case normal
    /// U(−1/√hidden, +1/√hidden), PyTorch's default for `nn.Linear`.
    case uniform
    /// All zeros: every expert gets probability 1/E until training moves the router.
    case zero
    /// Zero-mean uniform with standard deviation σ = `--router-std`: U(−√3·σ, +√3·σ). Drop-Upcycling's
    /// reference code (`torch_rand_002`, σ = 0.02).
    case uniformStd = "uniform-std"
}

/// How `partition` groups the intermediate neurons.
public enum NeuronGrouping: String, Sendable, CaseIterable, Codable {
    /// A seeded random permutation cut into `E` consecutive blocks.
    case random
    /// Balanced k-means on each neuron's concatenated `gate_proj` and `up_proj` rows.
    case cluster
}

/// Every knob of an upcycling run, grouped as the CLI groups them.
public struct UpcycleOptions: Sendable, Equatable {
    // MARK: Mixture
    /// Experts per MoE layer, `E` ≥ 2.
    public var experts: Int
    /// Experts per token, `1 ≤ K ≤ E`.
    public var topK: Int

    // MARK: Expert construction
    public var method: UpcycleMethod = .copy
    /// `noise`: the noise std relative to each matrix's own std.
    public var noiseStandardDeviation: Double = 0.01
    /// `granular`: fine-grained experts per dense FFN, `G`; must divide `intermediate_size` and `E`.
    public var granularity: Int = 1
    /// `partition`: how neurons are grouped.
    public var partitionBy: NeuronGrouping = .random
    /// `drop`: the share r of each expert's intermediate neurons redrawn, 0 ≤ r ≤ 1.
    public var dropRatio: Double = DropUpcycling.defaultRatio
    /// S, shared experts per MoE layer (DeepSeekMoE), each a copy of the dense MLP; with S > 0 every
    /// expert's and shared expert's `W2` is scaled by 1/(S + 1) so the output keeps the dense
    /// function (docs/upcycling.md, "Shared experts"). `copy`, `noise` and `drop` only.
    public var sharedExperts: Int = 0
    public static let maximumSharedExperts = 64

    // MARK: Routing the output runs
    /// Stored in the output config as `moekit_router`; `nil` keeps MiniCPM-MoE's routing.
    public var router: RouterConfiguration?
    /// Whether `W2` absorbs the routing's output factor (`RoutingWeightScale`).
    public var weightScaling: WeightScaling = .none

    // MARK: Router
    public var routerInitialization: RouterInitialization = .normal
    /// `normal`: the router std σ.
    public var routerStandardDeviation: Double = 0.1

    // MARK: Output
    /// Seed for every random stream (router, noise, partition), each derived by tensor name.
    public var seed: UInt64 = 0
    /// Storage type of every output tensor; `nil` keeps each tensor's dense type.
    public var dtype: SafetensorsDType?
    /// Maximum shard size in bytes.
    public var maximumShardBytes: Int = ShardedSafetensorsWriter.defaultShardSize
    /// Tokens for the function check (0 disables it).
    public var verifyTokens: Int = 16
    /// Replace an existing output directory.
    public var replaceExisting: Bool = false
    public var progress: ProgressReporter.Style = .automatic

    public init(experts: Int, topK: Int) {
        self.experts = experts
        self.topK = topK
    }

    /// The router initialisation each method's source uses: Drop-Upcycling's reference code draws
    /// a zero-mean uniform of std 0.02; every other method MiniCPM-MoE's N(0, 0.1²).
    public static func paperRouter(for method: UpcycleMethod) -> (initialization: RouterInitialization, standardDeviation: Double) {
        method == .drop ? (.uniformStd, DropUpcycling.routerStandardDeviation) : (.normal, 0.1)
    }

    /// The factor `W2` absorbs for the routing (1 without `--weight-scale auto`).
    public func routingWeightScale() throws(UpcycleError) -> Float {
        guard weightScaling == .auto else { return 1 }
        return try RoutingWeightScale.factor(router: router ?? RouterConfiguration(), experts: experts, topK: topK)
    }

    /// Whether the routing's combine weights sum to 1 for every token, so copied experts
    /// reproduce the dense MLP exactly.
    public var routingWeightsSumToOne: Bool {
        guard let router else { return true }
        return router.mode == .tokenChoice && router.weighting != .unnormalized && router.weightScale == 1 && router.capacityFactor == nil
    }

    /// The relative logit difference `copy` must stay within under `--verify`.
    public static let copyTolerance: Float = 1e-5

    /// Checks the options that do not depend on the checkpoint.
    /// `--verify` runs both models on this many tokens at most (one sequence).
    public static let maximumVerifyTokens = 4096

    public func validate() throws(UpcycleError) {
        guard experts >= 2 else { throw .invalidOption(option: "--experts", reason: "must be at least 2, got \(experts)") }
        guard experts <= ConfigLimits.numExperts else {
            throw .invalidOption(option: "--experts", reason: "must be at most \(ConfigLimits.numExperts), got \(experts)")
        }
        guard topK >= 1 else { throw .invalidOption(option: "--top-k", reason: "must be at least 1, got \(topK)") }
        guard topK <= experts else { throw .invalidOption(option: "--top-k", reason: "(\(topK)) cannot exceed --experts (\(experts))") }
        guard noiseStandardDeviation.isFinite, noiseStandardDeviation >= 0 else {
            throw .invalidOption(option: "--noise-std", reason: "must be a finite number ≥ 0, got \(noiseStandardDeviation)")
        }
        guard routerStandardDeviation.isFinite, routerStandardDeviation >= 0 else {
            throw .invalidOption(option: "--router-std", reason: "must be a finite number ≥ 0, got \(routerStandardDeviation)")
        }
        guard granularity >= 1 else { throw .invalidOption(option: "--granularity", reason: "must be at least 1, got \(granularity)") }
        if method == .granular {
            guard experts % granularity == 0 else {
                throw .invalidOption(option: "--granularity", reason: "(\(granularity)) must divide --experts (\(experts)): the experts are E/G copies of G slices")
            }
        } else if granularity != 1 {
            throw .invalidOption(option: "--granularity", reason: "only applies to --method granular")
        }
        guard dropRatio.isFinite, dropRatio >= 0, dropRatio <= 1 else {
            throw .invalidOption(option: "--drop-ratio", reason: "must be between 0 and 1, got \(dropRatio)")
        }
        if method != .drop && dropRatio != DropUpcycling.defaultRatio {
            throw .invalidOption(option: "--drop-ratio", reason: "only applies to --method drop")
        }
        guard sharedExperts >= 0, sharedExperts <= Self.maximumSharedExperts else {
            throw .invalidOption(option: "--shared-experts", reason: "must be in 0...\(Self.maximumSharedExperts), got \(sharedExperts)")
        }
        if sharedExperts > 0 && (method == .partition || method == .granular) {
            throw .invalidOption(option: "--shared-experts", reason: "shared experts are copies of the dense MLP, so the routed experts must be full-size too: use --method copy, noise or drop")
        }
        _ = try routingWeightScale()
        if let dtype, !dtype.isWritable {
            throw .invalidOption(option: "--dtype", reason: "MoEKit writes bf16, f16 or f32, not \(dtype.rawValue)")
        }
        guard maximumShardBytes > 0 else { throw .invalidOption(option: "--shard-size", reason: "must be positive") }
        guard verifyTokens <= Self.maximumVerifyTokens else {
            throw .invalidOption(option: "--verify", reason: "must be at most \(Self.maximumVerifyTokens), got \(verifyTokens)")
        }
        guard verifyTokens >= 0 else { throw .invalidOption(option: "--verify", reason: "must be ≥ 0 (0 disables), got \(verifyTokens)") }
    }
}
