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
        var index = 0
        let options = self.options
        parameters.updateEachParameter { parameter in
            let gradient = gradientTensors[index]
            precondition(gradient.shape == parameter.shape, "gradient of \(names[index]) has shape \(gradient.shape), parameter \(parameter.shape)")
            Self.update(parameter: &parameter.values, firstMoment: &firstMoments[index].values,
                        secondMoment: &secondMoments[index].values, gradient: gradient.values, gradientScale: clip,
                        learningRate: learningRate * learningRateMultipliers[index], weightDecay: decayed[index] ? options.weightDecay : 0,
                        beta1: options.beta1, beta2: options.beta2,
                        epsilon: options.epsilon, biasCorrection1: biasCorrection1, biasCorrection2: biasCorrection2)
            index += 1
        }
        return norm
    }

    /// Elements per work item of the update's loop (memory-bound: large chunks, run on every core).
    static let elementsPerChunk = 1 << 16

    /// The element loop of `step` for one tensor (bias corrections precomputed as 1 − βᵗ).
    ///
    /// Arranged as PyTorch's AdamW arranges it, with the same value as the formula but one square
    /// root, one division and no per-element bias-correction divisions:
    /// p ← p·(1 − lr·λ) − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε).
    static func update(parameter: inout [Float], firstMoment: inout [Float], secondMoment: inout [Float], gradient: [Float],
                       gradientScale: Float, learningRate: Float, weightDecay: Float, beta1: Float, beta2: Float, epsilon: Float,
                       biasCorrection1: Float, biasCorrection2: Float) {
        let count = parameter.count
        precondition(firstMoment.count == count && secondMoment.count == count && gradient.count == count)
        let oneMinusBeta1 = 1 - beta1, oneMinusBeta2 = 1 - beta2
        let stepSize = learningRate / biasCorrection1
        let inverseSqrtBiasCorrection2 = 1 / biasCorrection2.squareRoot()
        let decayFactor = 1 - learningRate * weightDecay
        parameter.withUnsafeMutableBufferPointer { p in
            firstMoment.withUnsafeMutableBufferPointer { m in
                secondMoment.withUnsafeMutableBufferPointer { v in
                    gradient.withUnsafeBufferPointer { g in
                        // Element-wise, so chunks on both cores give exactly the serial loop's values.
                        let chunks = (count + elementsPerChunk - 1) / elementsPerChunk
                        ParallelTiles.run(tiles: chunks) { chunk, _ in
                            for i in chunk * elementsPerChunk ..< min(count, (chunk + 1) * elementsPerChunk) {
                                let gi = g[i] * gradientScale
                                let mi = beta1 * m[i] + oneMinusBeta1 * gi
                                let vi = beta2 * v[i] + oneMinusBeta2 * gi * gi
                                m[i] = mi
                                v[i] = vi
                                let denominator = vi.squareRoot() * inverseSqrtBiasCorrection2 + epsilon
                                p[i] = p[i] * decayFactor - stepSize * mi / denominator
                            }
                        }
                    }
                }
            }
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
