import Foundation

/// Training throughput: one training step (forward + backward + AdamW) of a dense model of the
/// given shapes and of its sparse upcycling (E experts, top-k, every expert a copy of the MLP,
/// router ~ N(0, 0.1²)), on random batches, with the achieved GFLOP/s set against a bare
/// `cblas_sgemm` measured in the same run — cases timed round-robin so drift hits all alike.
///
/// FLOPs per token of the forward pass: 2 per weight the token multiplies (q/k/v/o, k SwiGLU
/// blocks (dense: 1), the router, the head) plus 4·T·hidden per layer for the scores and P·V
/// GEMMs over the full T×T block (as computed); a training step counts 3× the forward (backward ≈
/// 2× forward) plus nothing for AdamW (memory-bound, O(parameters)).
public struct TrainingBenchmark {
    public struct Options: Sendable {
        public var config: MiniCPMConfig
        public var experts = 8
        public var topK = 2
        public var batchSize = 8
        public var sequenceLength = 128
        public var repeats = 5
        public var seed: UInt64 = 0
        public init(config: MiniCPMConfig) { self.config = config }
    }

    public let options: Options
    public init(options: Options) { self.options = options }

    /// Forward FLOPs per token at `activeExperts` SwiGLU blocks per token (0 experts: dense).
    public static func forwardFLOPsPerToken(config: MiniCPMConfig, sequenceLength: Int, activeExperts: Int, experts: Int) -> Double {
        let hidden = Double(config.hiddenSize), kvWidth = Double(config.numKeyValueHeads * config.headDim)
        let layers = Double(config.numHiddenLayers)
        let attentionWeights = 2 * hidden * hidden + 2 * hidden * kvWidth
        let mlpWeights = Double(max(activeExperts, 1)) * 3 * hidden * Double(config.intermediateSize) + (activeExperts > 0 ? Double(experts) * hidden : 0)
        return 2 * (layers * (attentionWeights + mlpWeights) + Double(config.vocabSize) * hidden) + layers * 4 * Double(sequenceLength) * hidden
    }

    /// Random parameters: matrices N(0, 0.02²) (embedding N(0, 1) scaled down by scale_emb's
    /// convention is irrelevant to timing), norms 1; for MoE every expert copies the layer's MLP.
    static func parameters(config: MiniCPMConfig, dense: [String: Tensor]?, seed: UInt64) -> [String: Tensor] {
        var result: [String: Tensor] = [:]
        for entry in MiniCPMLayout(config: config).entries {
            let name = entry.name
            if entry.shape.count == 1 {
                result[name] = Tensor(shape: entry.shape, repeating: 1)
            } else if let dense, name.contains(".mlp.experts.") {
                let layer = Int(name.split(separator: ".")[2]) ?? 0
                let source = name.hasSuffix("w1.weight") ? MiniCPMTensorNames.gateProjection(layer)
                    : name.hasSuffix("w3.weight") ? MiniCPMTensorNames.upProjection(layer) : MiniCPMTensorNames.downProjection(layer)
                result[name] = dense[source]
            } else {
                result[name] = ThroughputBenchmark.randomMatrix(entry.shape, seed: seed, stream: name,
                                                                standardDeviation: name.hasSuffix("mlp.gate.weight") ? 0.1 : 0.02)
            }
        }
        return result
    }

    /// Runs the dense, MoE and sgemm cases; results in that order.
    public func run() throws -> [ThroughputBenchmark.Result] {
        let config = options.config
        var moeConfig = config
        moeConfig.numExperts = options.experts
        moeConfig.topK = options.topK
        let denseParameters = Self.parameters(config: config, dense: nil, seed: options.seed)
        let moeParameters = Self.parameters(config: moeConfig, dense: denseParameters, seed: options.seed)
        let router = try ConfigurableRouter(configuration: RouterConfiguration(), model: moeConfig)
        let dense = try MiniCPMModel(config: config, weights: MiniCPMWeights(config: config) { denseParameters[$0]! }, router: nil)
        let moe = try MiniCPMModel(config: moeConfig, weights: MiniCPMWeights(config: moeConfig) { moeParameters[$0]! }, router: router)
        var denseOptimizer = try AdamW(parameters: dense.weights, config: config)
        var moeOptimizer = try AdamW(parameters: moe.weights, config: moeConfig)
        let denseWorkspace = GradientWorkspace(), moeWorkspace = GradientWorkspace()

        var random = SeededRandom(seed: options.seed, stream: "training-benchmark-batch")
        let inputs = (0 ..< options.batchSize).map { _ in (0 ..< options.sequenceLength).map { _ in Int(random.next() % UInt64(config.vocabSize)) } }
        let batch = TrainingBatch(inputs: inputs, targets: inputs.map { Array($0.dropFirst()) + [0] })
        let tokens = Double(options.batchSize * options.sequenceLength)

        // The ceiling: the training pass's most common GEMM shape, [B·T, hidden] × [hidden, 2·intermediate].
        let rows = options.batchSize * options.sequenceLength
        let a = ThroughputBenchmark.randomMatrix([rows, config.hiddenSize], seed: options.seed, stream: "sgemm-a", standardDeviation: 1)
        let b = ThroughputBenchmark.randomMatrix([2 * config.intermediateSize, config.hiddenSize], seed: options.seed, stream: "sgemm-b", standardDeviation: 1)
        let sgemmFLOPs = 2 * Double(rows) * Double(config.hiddenSize) * Double(2 * config.intermediateSize)

        let samples = try ThroughputBenchmark.timeInterleaved(warmups: 1, repeats: options.repeats, [
            {
                let result = try dense.lossAndGradients(batch, workspace: denseWorkspace)
                if let gradients = result.gradients { denseOptimizer.step(&dense.weights, gradients: gradients, learningRate: 1e-4) }
            },
            {
                let result = try moe.lossAndGradients(batch, workspace: moeWorkspace)
                if let gradients = result.gradients { moeOptimizer.step(&moe.weights, gradients: gradients, learningRate: 1e-4) }
            },
            { _ = MatrixMultiply.product(a, b, transposeB: true) },
        ])
        let denseFLOPs = 3 * Self.forwardFLOPsPerToken(config: config, sequenceLength: options.sequenceLength, activeExperts: 0, experts: 0) * tokens
        let moeFLOPs = 3 * Self.forwardFLOPsPerToken(config: config, sequenceLength: options.sequenceLength, activeExperts: options.topK, experts: options.experts) * tokens
        func result(_ kind: String, _ seconds: [Double], flops: Double, experts: Int?, note: String) -> ThroughputBenchmark.Result {
            ThroughputBenchmark.Result(level: "train", kind: kind, phase: "step", tokens: rows, experts: experts, topK: experts == nil ? nil : options.topK,
                                       routing: experts == nil ? nil : "learned", tokensPerSecond: ThroughputBenchmark.throughput(seconds, work: tokens),
                                       gflops: ThroughputBenchmark.throughput(seconds, work: flops / 1e9), breakdown: nil, note: note)
        }
        return [
            result("dense", samples[0], flops: denseFLOPs, experts: nil, note: "forward + backward + AdamW, \(options.batchSize)×\(options.sequenceLength) tokens"),
            result("moe", samples[1], flops: moeFLOPs, experts: options.experts, note: "forward + backward + AdamW, \(options.batchSize)×\(options.sequenceLength) tokens"),
            result("sgemm", samples[2], flops: sgemmFLOPs, experts: nil, note: "[B·T, hidden] × [hidden, 2·intermediate]"),
        ]
    }
}
