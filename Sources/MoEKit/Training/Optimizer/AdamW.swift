import Foundation

/// Adam with decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay
/// Regularization", 2019), over a model's typed weights (`MiniCPMWeights`, owned f32).
///
/// One call of `step` is one update t = `stepCount` + 1. With the gradient g first clipped by the
/// global norm (`GradientClipping`: g ← c·g, c = min(1, maxNorm / (‖g‖ + 1e-6))), every element of
/// every parameter p with learning rate lr_p = lr · multiplier_p does
///
///     m ← β₁ m + (1 − β₁) g
///     v ← β₂ v + (1 − β₂) g²
///     m̂ = m / (1 − β₁ᵗ),  v̂ = v / (1 − β₂ᵗ)
///     p ← p − lr_p · ( m̂ / (√v̂ + ε) + λ_p · p )
///
/// with λ_p = `options.weightDecay` for the parameters named in `decayedParameters` and 0 for the
/// others. This is PyTorch's `torch.optim.AdamW` (the decay is multiplied by the parameter's
/// own learning rate, multiplier included, as a PyTorch parameter group's `lr` is).
///
/// Defaults: multipliers 1 (pass `TensorProgramRules.learningRateMultipliers(config:)` for
/// MiniCPM's μP), and weight decay on every tensor of rank ≥ 2 (matrices and the embedding), none
/// on rank-1 tensors (the RMSNorm gains) — see `defaultDecayedParameters(config:)`.
///
/// State for an exact resume (`save(to:)` / `init(resumingFrom:…)`): the step count and both
/// moments of every parameter. The multipliers and the decay mask are not saved; they follow from
/// the config and are passed again.
struct AdamW: Sendable {
    let options: AdamWOptions
    /// The checkpoint names of the parameters this optimiser updates, in `MiniCPMLayout` order
    /// (the order of `MiniCPMWeights.parameterTensors`; names are used for options and files only).
    let names: [String]
    /// Updates taken so far; the next `step` uses t = `stepCount` + 1 in the bias corrections.
    var stepCount: Int
    /// m, the first-moment estimate of every parameter (PyTorch's `exp_avg`), in `names` order.
    var firstMoments: [Tensor]
    /// v, the second-moment estimate of every parameter (PyTorch's `exp_avg_sq`), in `names` order.
    var secondMoments: [Tensor]
    /// lr_p / lr for every parameter, in `names` order.
    let learningRateMultipliers: [Float]
    /// Whether each parameter receives weight decay, in `names` order.
    let decayed: [Bool]

    /// A fresh optimiser for the weights of a model of `config`: zero moments, step 0.
    ///
    /// - Parameters:
    ///   - learningRateMultipliers: per-name factors on the learning rate (absent names: 1).
    ///   - decayedParameters: names that get weight decay; `nil` means `defaultDecayedParameters(config:)`.
    init(parameters: MiniCPMWeights, config: MiniCPMConfig, options: AdamWOptions = AdamWOptions(),
                learningRateMultipliers: [String: Float] = [:], decayedParameters: Set<String>? = nil) throws(TrainingError) {
        try options.validate()
        let entries = MiniCPMLayout(config: config).entries
        let names = entries.map(\.name)
        let known = Set(names)
        for (name, multiplier) in learningRateMultipliers {
            guard known.contains(name) else {
                throw .invalidOption(name: "lr-multiplier", reason: "'\(name)' names no parameter of the model")
            }
            guard multiplier.isFinite, multiplier >= 0 else {
                throw .invalidOption(name: "lr-multiplier", reason: "multiplier \(multiplier) of '\(name)' must be finite and ≥ 0")
            }
        }
        let decayedNames = decayedParameters ?? Self.defaultDecayedParameters(config: config)
        for name in decayedNames where !known.contains(name) {
            throw .invalidOption(name: "weight-decay", reason: "'\(name)' names no parameter of the model")
        }
        let zeros = entries.map { Tensor(shape: $0.shape) }
        precondition(zeros.count == parameters.parameterTensors.count, "weights do not match the config's layout")
        self.options = options
        self.names = names
        self.stepCount = 0
        self.firstMoments = zeros
        self.secondMoments = zeros
        self.learningRateMultipliers = names.map { learningRateMultipliers[$0] ?? 1 }
        self.decayed = names.map { decayedNames.contains($0) }
    }

    /// Every parameter of rank ≥ 2 (projections, experts, router, embedding, untied head): the
    /// usual LLM rule (nanoGPT, LLaMA) that leaves norm gains and other vectors undecayed.
    /// NOTE: OpenBMB's own MiniCPM training code passes one `weight_decay` to every parameter,
    /// norms included; pass every layout name to reproduce that.
    static func defaultDecayedParameters(config: MiniCPMConfig) -> Set<String> {
        Set(MiniCPMLayout(config: config).entries.filter { $0.shape.count >= 2 }.map(\.name))
    }

    /// lr_p / lr for `name`.
    func learningRateMultiplier(_ name: String) -> Float { names.firstIndex(of: name).map { learningRateMultipliers[$0] } ?? 1 }

    /// The moments of the parameter named `name` (tests and tools).
    func moments(of name: String) -> (first: Tensor, second: Tensor)? {
        names.firstIndex(of: name).map { (firstMoments[$0], secondMoments[$0]) }
    }

    /// One AdamW update of `parameters` (owned f32) from `gradients` (same structure) at base
    /// learning rate `learningRate` (the schedule's value for this step). Clips first when
    /// `options.maxGradientNorm` is set. Returns the global gradient norm before clipping.
    ///
    /// A non-finite gradient norm (NaN/∞ somewhere in the gradients) leaves the parameters, the
    /// moments and `stepCount` untouched and is returned as it is: the caller decides whether to
    /// skip the batch or stop.
    @discardableResult
    mutating func step(_ parameters: inout MiniCPMWeights, gradients: MiniCPMWeights, learningRate: Float) -> Float {
        let gradientTensors = gradients.parameterTensors
        precondition(gradientTensors.count == names.count, "gradients must match the weights this optimiser was made for")
        let norm = GradientClipping.globalNorm(gradientTensors)
        guard norm.isFinite else { return norm }
        let clip = GradientClipping.coefficient(norm: norm, maxNorm: options.maxGradientNorm)
        stepCount += 1
        let t = Double(stepCount)
        let biasCorrection1 = Float(1 - Foundation.pow(Double(options.beta1), t))
        let biasCorrection2 = Float(1 - Foundation.pow(Double(options.beta2), t))
        let options = self.options
        // Every parameter, moment and gradient buffer at once (moved out, so uniquely referenced),
        // then one pool of chunks over all of them: small tensors share the cores too.
        var parameterValues: [[Float]] = []
        parameters.updateEachParameter { parameter in
            precondition(gradientTensors[parameterValues.count].shape == parameter.shape,
                         "gradient of \(names[parameterValues.count]) has shape \(gradientTensors[parameterValues.count].shape), parameter \(parameter.shape)")
            parameterValues.append(parameter.values)
            parameter.values = []
        }
        var firstValues = firstMoments.indices.map { index in defer { firstMoments[index].values = [] }; return firstMoments[index].values }
        var secondValues = secondMoments.indices.map { index in defer { secondMoments[index].values = [] }; return secondMoments[index].values }
        let chunks = Self.chunks(counts: parameterValues.map(\.count))
        let constants = (0 ..< names.count).map { index in
            Constants(gradientScale: clip, learningRate: learningRate * learningRateMultipliers[index],
                      weightDecay: decayed[index] ? options.weightDecay : 0, beta1: options.beta1, beta2: options.beta2,
                      epsilon: options.epsilon, biasCorrection1: biasCorrection1, biasCorrection2: biasCorrection2)
        }
        withMutableBaseAddresses(&parameterValues) { p in
            withMutableBaseAddresses(&firstValues) { m in
                withMutableBaseAddresses(&secondValues) { v in
                    withBaseAddresses(gradientTensors.map(\.values)) { g in
                        // Element-wise, so the chunks on every core give exactly the serial loop's values.
                        ParallelTiles.run(tiles: chunks.count) { index, _ in
                            let (tensor, range) = chunks[index]
                            Self.updateElements(range, parameter: p[tensor], firstMoment: m[tensor], secondMoment: v[tensor],
                                                gradient: g[tensor], constants[tensor])
                        }
                    }
                }
            }
        }
        var index = 0
        parameters.updateEachParameter { parameter in
            parameter.values = parameterValues[index]
            index += 1
        }
        for index in firstMoments.indices {
            firstMoments[index].values = firstValues[index]
            secondMoments[index].values = secondValues[index]
        }
        return norm
    }

    /// Elements per work item of the update's loop (memory-bound; items of every tensor run as one
    /// pool on every core).
    static let elementsPerChunk = 1 << 14

    /// (tensor, element range) work items covering tensors of `counts` elements in chunks of `elementsPerChunk`.
    static func chunks(counts: [Int]) -> [(tensor: Int, range: Range<Int>)] {
        counts.enumerated().flatMap { tensor, count in
            stride(from: 0, to: count, by: elementsPerChunk).map { (tensor, $0 ..< min(count, $0 + elementsPerChunk)) }
        }
    }

    /// One tensor's hyper-parameters for `updateElements` (bias corrections as 1 − βᵗ).
    struct Constants {
        var gradientScale: Float, learningRate: Float, weightDecay: Float, beta1: Float, beta2: Float, epsilon: Float
        var biasCorrection1: Float, biasCorrection2: Float
    }

    /// The element loop of `step` for one tensor (bias corrections precomputed as 1 − βᵗ).
    static func update(parameter: inout [Float], firstMoment: inout [Float], secondMoment: inout [Float], gradient: [Float],
                       gradientScale: Float, learningRate: Float, weightDecay: Float, beta1: Float, beta2: Float, epsilon: Float,
                       biasCorrection1: Float, biasCorrection2: Float) {
        let count = parameter.count
        precondition(firstMoment.count == count && secondMoment.count == count && gradient.count == count)
        let constants = Constants(gradientScale: gradientScale, learningRate: learningRate, weightDecay: weightDecay, beta1: beta1, beta2: beta2,
                                  epsilon: epsilon, biasCorrection1: biasCorrection1, biasCorrection2: biasCorrection2)
        parameter.withUnsafeMutableBufferPointer { p in
            firstMoment.withUnsafeMutableBufferPointer { m in
                secondMoment.withUnsafeMutableBufferPointer { v in
                    gradient.withUnsafeBufferPointer { g in
                        let chunks = Self.chunks(counts: [count])
                        ParallelTiles.run(tiles: chunks.count) { index, _ in
                            updateElements(chunks[index].range, parameter: p.baseAddress!, firstMoment: m.baseAddress!, secondMoment: v.baseAddress!,
                                           gradient: g.baseAddress!, constants)
                        }
                    }
                }
            }
        }
    }

    /// The update of elements `range` of one tensor, arranged as PyTorch's AdamW arranges it, with the
    /// same value as the formula but one square root, one division and no per-element bias-correction
    /// divisions: p ← p·(1 − lr·λ) − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε).
    @inline(__always)
    static func updateElements(_ range: Range<Int>, parameter p: UnsafeMutablePointer<Float>, firstMoment m: UnsafeMutablePointer<Float>,
                               secondMoment v: UnsafeMutablePointer<Float>, gradient g: UnsafePointer<Float>, _ c: Constants) {
        let beta1 = c.beta1, beta2 = c.beta2, oneMinusBeta1 = 1 - beta1, oneMinusBeta2 = 1 - beta2
        let stepSize = c.learningRate / c.biasCorrection1
        let inverseSqrtBiasCorrection2 = 1 / c.biasCorrection2.squareRoot()
        let decayFactor = 1 - c.learningRate * c.weightDecay
        let gradientScale = c.gradientScale, epsilon = c.epsilon
        // 16 lanes at a time, each lane the scalar loop's operations in the same order (so the same values).
        typealias Lanes = SIMD16<Float>
        var i = range.lowerBound
        while i + Lanes.scalarCount <= range.upperBound {
            func load(_ x: UnsafePointer<Float>) -> Lanes { UnsafeRawPointer(x + i).loadUnaligned(as: Lanes.self) }
            let gi = load(g) * gradientScale
            let mi = beta1 * load(m) + oneMinusBeta1 * gi
            let vi = beta2 * load(v) + oneMinusBeta2 * gi * gi
            UnsafeMutableRawPointer(m + i).storeBytes(of: mi, as: Lanes.self)
            UnsafeMutableRawPointer(v + i).storeBytes(of: vi, as: Lanes.self)
            let denominator = vi.squareRoot() * inverseSqrtBiasCorrection2 + epsilon
            let updated = load(p) * decayFactor - stepSize * mi / denominator
            UnsafeMutableRawPointer(p + i).storeBytes(of: updated, as: Lanes.self)
            i += Lanes.scalarCount
        }
        for i in i ..< range.upperBound {
            let gi = g[i] * gradientScale
            let mi = beta1 * m[i] + oneMinusBeta1 * gi
            let vi = beta2 * v[i] + oneMinusBeta2 * gi * gi
            m[i] = mi
            v[i] = vi
            let denominator = vi.squareRoot() * inverseSqrtBiasCorrection2 + epsilon
            p[i] = p[i] * decayFactor - stepSize * mi / denominator
        }
    }

    /// The same update written as the formula reads, in f64 on plain arrays: the reference the
    /// fast loop is tested against. Returns (p, m, v) after one step t.
    static func referenceUpdate(parameter: [Float], firstMoment: [Float], secondMoment: [Float], gradient: [Float],
                                gradientScale: Float, learningRate: Float, weightDecay: Float, beta1: Float, beta2: Float,
                                epsilon: Float, step t: Int) -> (parameter: [Double], firstMoment: [Double], secondMoment: [Double]) {
        let b1 = Double(beta1), b2 = Double(beta2)
        var p = parameter.map(Double.init), m = firstMoment.map(Double.init), v = secondMoment.map(Double.init)
        for i in p.indices {
            let g = Double(gradient[i]) * Double(gradientScale)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            let mHat = m[i] / (1 - Foundation.pow(b1, Double(t)))
            let vHat = v[i] / (1 - Foundation.pow(b2, Double(t)))
            p[i] = p[i] - Double(learningRate) * (mHat / (vHat.squareRoot() + Double(epsilon)) + Double(weightDecay) * p[i])
        }
        return (p, m, v)
    }
}
