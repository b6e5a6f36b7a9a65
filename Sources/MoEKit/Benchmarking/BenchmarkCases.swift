import Foundation

/// The operands and bodies of the benchmark cases, shared by `moekit bench` (``ThroughputBenchmark``)
/// and the package-benchmark suite in `Benchmarks/`, so both time exactly the same work.
extension ThroughputBenchmark {
    /// The layer-level operands at one shape: a dense SwiGLU FFN of intermediate size I, a dense FFN
    /// of intermediate size k·I (the MoE's active FLOPs), and an MoE layer of E experts of size I with
    /// a router `[E, H]`. Weights are N(0, σ²) with MiniCPM's σ; the router N(0, 0.1²).
    ///
    /// FLOPs: a SwiGLU FFN on T tokens does 6·T·H·I (gate+up `[T, H] × [H, 2I]` is 4·T·H·I, down
    /// 2·T·H·I); the MoE layer's experts do k times that (the router's 2·T·H·E is not counted); the
    /// bare sgemm is the fused gate+up product alone, 4·T·H·I.
    public struct LayerCases: Sendable {
        public let hiddenSize: Int
        public let intermediateSize: Int
        public let experts: Int
        public let topK: Int
        public let dense: SwiGLUWeights
        let denseActive: SwiGLUWeights
        public let moe: MoEWeights
        /// `[2I, H]` the dense FFN's gate and up rows as one f32 matrix (the bare sgemm's operand).
        let gateUpMatrix: Tensor
        let seed: UInt64

        /// `computePrecision` `.bfloat16` rounds the FFN and expert weights to bf16 once (`--compute bf16`).
        public init(config: MiniCPMConfig, experts: Int, topK: Int, seed: UInt64 = 0, computePrecision: ComputePrecision = .float32) {
            let hidden = config.hiddenSize
            let std = ModelInitializer.standardDeviation(for: config)
            func ffn(_ name: String, intermediate size: Int) -> SwiGLUWeights {
                SwiGLUWeights(gate: ThroughputBenchmark.randomMatrix([size, hidden], seed: seed, stream: name + ".gate", standardDeviation: std),
                            up: ThroughputBenchmark.randomMatrix([size, hidden], seed: seed, stream: name + ".up", standardDeviation: std),
                            down: ThroughputBenchmark.randomMatrix([hidden, size], seed: seed, stream: name + ".down", standardDeviation: std))
                    .forCompute(computePrecision)
            }
            hiddenSize = hidden
            intermediateSize = config.intermediateSize
            self.experts = experts
            self.topK = topK
            self.seed = seed
            dense = ffn("dense", intermediate: config.intermediateSize)
            denseActive = ffn("dense-active", intermediate: topK * config.intermediateSize)
            moe = MoEWeights(router: ThroughputBenchmark.randomMatrix([experts, hidden], seed: seed, stream: "router", standardDeviation: 0.1),
                             experts: (0 ..< experts).map { ffn("expert\($0)", intermediate: config.intermediateSize) })
            gateUpMatrix = dense.gateUp.floatTensor()
        }

        /// The dense FFN (`dense`, or `denseActive` with `active`) on x, as inference runs it.
        public func denseForward(_ x: Tensor, active: Bool = false) -> Tensor {
            SwiGLULayer.forward(x, weights: active ? denseActive : dense, keepCache: false).output
        }

        /// The MoE layer on x with `router`, as inference runs it.
        public func moeForward(_ x: Tensor, router: ExpertRouter, timer: StageTimer? = nil) -> Tensor {
            MoEFeedForwardLayer.forward(x, weights: moe, router: router, layer: 0, loss: nil, sequenceLengths: [x.rows], keepCache: false,
                                        timer: timer).output
        }

        /// Activations `[tokens, H]`, N(0, 1).
        public func input(tokens: Int) -> Tensor {
            ThroughputBenchmark.randomMatrix([tokens, hiddenSize], seed: seed, stream: "x\(tokens)", standardDeviation: 1)
        }

        /// An output buffer for ``sgemm(_:into:)``: `[tokens, 2I]`.
        public func sgemmOutput(tokens: Int) -> Tensor { Tensor(shape: [tokens, 2 * intermediateSize]) }

        /// The machine's ceiling: one bare `cblas_sgemm` C = X · W_gate+upᵀ, `[T, H] × [H, 2I]`.
        public func sgemm(_ x: Tensor, into output: inout Tensor) {
            let tokens = x.rows, hidden = hiddenSize, width = 2 * intermediateSize
            precondition(x.columns == hidden && output.shape == [tokens, width], "sgemm operands: \(x.shape) into \(output.shape)")
            x.values.withUnsafeBufferPointer { pa in
                gateUpMatrix.values.withUnsafeBufferPointer { pb in
                    output.values.withUnsafeMutableBufferPointer { pc in
                        guard let a = pa.baseAddress, let b = pb.baseAddress, let c = pc.baseAddress else { return }
                        MatrixMultiply.gemm(m: tokens, n: width, k: hidden, a: a, lda: hidden,
                                            b: b, ldb: hidden, transposeB: true, c: c, ldc: width)
                    }
                }
            }
        }

        /// 6·T·H·I: one dense SwiGLU FFN of intermediate size I on `tokens` tokens.
        public func denseFLOPs(tokens: Int) -> Double { 6 * Double(tokens) * Double(hiddenSize) * Double(intermediateSize) }
        /// 6·T·k·H·I: the dense-active FFN, and the MoE layer's experts.
        public func activeFLOPs(tokens: Int) -> Double { Double(topK) * denseFLOPs(tokens: tokens) }
        /// 4·T·H·I: the bare sgemm `[T, H] × [H, 2I]`.
        public func sgemmFLOPs(tokens: Int) -> Double { 2 * Double(tokens) * Double(hiddenSize) * Double(2 * intermediateSize) }
    }

    /// The layer-level operands at this benchmark's shapes.
    public func makeLayerCases() -> LayerCases {
        LayerCases(config: options.config, experts: options.experts, topK: options.topK, seed: options.seed, computePrecision: options.computePrecision)
    }

    /// The router of a routing mode; `learned` is MiniCPM-MoE's routing (softmax top-k of the
    /// layer's router weights, through ``ConfigurableRouter`` with the default configuration).
    public func router(_ routing: Routing) throws -> ExpertRouter {
        let topK = options.topK
        switch routing {
        case .learned:
            return try ConfigurableRouter(configuration: RouterConfiguration(), layers: options.config.numHiddenLayers,
                                          experts: options.experts, hiddenSize: options.config.hiddenSize, modelTopK: topK)
        case .uniform: return ForcedRouter(pattern: .uniform, topK: topK)
        case .collapsed: return ForcedRouter(pattern: .collapsed, topK: topK)
        }
    }

    /// The model-level models: the checkpoints of `denseModelDirectory` and `moeModelDirectory`
    /// (mapped, in their stored dtype) when set; else a dense model of the configured shapes with
    /// MiniCPM's initialisation (norm weights 1, f32 in memory), and its sparse upcycling: every
    /// expert a copy of the dense MLP in its own memory, router N(0, 0.1²). When those copies would
    /// not fit in half the machine's memory (the 8x2B at full depth needs 54 GB in f32) the experts
    /// share the dense MLP's memory instead, and `expertsShareMemory` says so: every expert's
    /// weights are still read from DRAM for each GEMM at these sizes, but use real checkpoints for
    /// decode figures.
    public func makeModels() throws -> (dense: MiniCPMModel, moe: MiniCPMModel) {
        let (dense, moe) = try makeFloat32Models()
        if options.computePrecision != .float32 {
            dense.weights = dense.weights.forCompute(options.computePrecision)
            moe.weights = moe.weights.forCompute(options.computePrecision)
        }
        return (dense, moe)
    }

    private func makeFloat32Models() throws -> (dense: MiniCPMModel, moe: MiniCPMModel) {
        if let denseDirectory = options.denseModelDirectory, let moeDirectory = options.moeModelDirectory {
            return (try MiniCPMModel(directory: denseDirectory), try MiniCPMModel(directory: moeDirectory))
        }
        let denseConfig = options.config
        let std = ModelInitializer.standardDeviation(for: denseConfig)
        let shapes = Dictionary(MiniCPMLayout(config: denseConfig).entries.map { ($0.name, $0.shape) }, uniquingKeysWith: { a, _ in a })
        var cache: [String: Tensor] = [:]
        func denseTensor(_ name: String) throws -> Tensor {
            if let tensor = cache[name] { return tensor }
            guard let shape = shapes[name] else { throw CheckpointError.missingTensor(directory: "bench", tensor: name) }
            let tensor = shape.count == 1 ? Tensor(shape: shape, repeating: 1)
                : Self.randomMatrix(shape, seed: options.seed, stream: name, standardDeviation: std)
            cache[name] = tensor
            return tensor
        }
        let dense = try MiniCPMModel(config: denseConfig, source: "bench-dense") { try denseTensor($0) }
        var moeConfig = denseConfig
        moeConfig.numExperts = options.experts
        moeConfig.topK = options.topK
        let moe = try MiniCPMModel(config: moeConfig, source: "bench-moe") { name in
            let parts = name.split(separator: ".")
            if name.hasSuffix("mlp.gate.weight") {
                return Self.randomMatrix([options.experts, denseConfig.hiddenSize], seed: options.seed, stream: name, standardDeviation: 0.1)
            }
            if let expertsIndex = parts.firstIndex(of: "experts"), expertsIndex + 2 < parts.count, parts.count > 2, let layer = Int(parts[2]) {
                let which = parts[expertsIndex + 2]
                let denseName = which == "w1" ? MiniCPMTensorNames.gateProjection(layer)
                    : which == "w3" ? MiniCPMTensorNames.upProjection(layer) : MiniCPMTensorNames.downProjection(layer)
                var copy = try denseTensor(denseName)
                if !expertsShareMemory { copy.values[0] += 0 }  // a write makes the copy-on-write array its own memory, like a loaded checkpoint
                return copy
            }
            return try denseTensor(name)
        }
        return (dense, moe)
    }

    /// Whether the in-memory MoE model's experts share the dense MLP's memory (f32 copies would
    /// take more than half the machine's memory).
    public var expertsShareMemory: Bool {
        guard options.denseModelDirectory == nil else { return false }
        let c = options.config
        let expertBytes = 4.0 * Double(c.numHiddenLayers) * Double(options.experts) * 3 * Double(c.hiddenSize) * Double(c.intermediateSize)
        return expertBytes > 0.5 * Double(ProcessInfo.processInfo.physicalMemory)
    }

    /// The token ids of a prefill case: t ↦ (7919·t + 13) mod V.
    public func prefillSequence(tokens: Int) -> [Int] {
        (0 ..< tokens).map { ($0 * 7919 + 13) % options.config.vocabSize }
    }

    /// The prompt decoding starts from: min(128, max positions − decode steps) tokens, t ↦ (31·t + 7) mod V;
    /// nil when the model's context leaves no room for it.
    public func decodePrompt() -> [Int]? {
        let prefix = min(128, options.config.maxPositionEmbeddings - options.decodeSteps)
        guard prefix > 0 else { return nil }
        return (0 ..< prefix).map { ($0 * 31 + 7) % options.config.vocabSize }
    }

    /// Greedy decoding of `steps` tokens, one forward per token on `cache`, starting after `token`;
    /// returns the last token chosen.
    @discardableResult
    public static func decode(_ model: MiniCPMModel, cache: KVCache, after token: Int, steps: Int, timer: StageTimer? = nil) throws -> Int {
        var token = token
        for _ in 0 ..< steps {
            let logits = try model.forward([([token], cache)], logitRows: .lastTokenOfEachSequence, timer: timer).logits
            token = logits.values.indices.max { logits.values[$0] < logits.values[$1] } ?? 0
        }
        return token
    }
}
