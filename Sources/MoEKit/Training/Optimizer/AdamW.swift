import Foundation

/// Adam with decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay
/// Regularization", 2019), over a `ParameterSet` keyed by checkpoint names.
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
/// with λ_p = `options.weightDecay` for the parameters in `decayedParameters` and 0 for the
/// others. This is PyTorch's `torch.optim.AdamW` (the decay is multiplied by the parameter's
/// own learning rate, multiplier included, as a PyTorch parameter group's `lr` is).
///
/// Defaults: multipliers 1 (pass `TensorProgramRules.learningRateMultipliers(config:names:)` for
/// MiniCPM's μP), and weight decay on every tensor of rank ≥ 2 (matrices and the embedding), none
/// on rank-1 tensors (the RMSNorm gains) — see `defaultDecayedParameters(in:)`.
///
/// State for an exact resume (`save(to:)` / `init(resumingFrom:…)`): the step count and both
/// moments of every parameter. The multipliers and the decay mask are not saved; they follow from
/// the config and are passed again.
public struct AdamW: Sendable {
    public let options: AdamWOptions
    /// The parameter names this optimiser updates, in the parameter set's order.
    public let names: [String]
    /// Updates taken so far; the next `step` uses t = `stepCount` + 1 in the bias corrections.
    public internal(set) var stepCount: Int
    /// m, the first-moment estimate of every parameter (PyTorch's `exp_avg`).
    public internal(set) var firstMoments: [String: Tensor]
    /// v, the second-moment estimate of every parameter (PyTorch's `exp_avg_sq`).
    public internal(set) var secondMoments: [String: Tensor]
    /// lr_p / lr for every parameter (missing names mean 1).
    public let learningRateMultipliers: [String: Float]
    /// The parameters that receive weight decay.
    public let decayedParameters: Set<String>

    /// A fresh optimiser for `parameters`: zero moments, step 0.
    ///
    /// - Parameters:
    ///   - learningRateMultipliers: per-name factors on the learning rate (absent names: 1).
    ///   - decayedParameters: names that get weight decay; `nil` means `defaultDecayedParameters(in:)`.
    public init(parameters: ParameterSet, options: AdamWOptions = AdamWOptions(),
                learningRateMultipliers: [String: Float] = [:], decayedParameters: Set<String>? = nil) throws(TrainingError) {
        try options.validate()
        for (name, multiplier) in learningRateMultipliers {
            guard parameters.tensors[name] != nil else {
                throw .invalidOption(name: "lr-multiplier", reason: "'\(name)' names no parameter of the model")
            }
            guard multiplier.isFinite, multiplier >= 0 else {
                throw .invalidOption(name: "lr-multiplier", reason: "multiplier \(multiplier) of '\(name)' must be finite and ≥ 0")
            }
        }
        let decayed = decayedParameters ?? Self.defaultDecayedParameters(in: parameters)
        for name in decayed where parameters.tensors[name] == nil {
            throw .invalidOption(name: "weight-decay", reason: "'\(name)' names no parameter of the model")
        }
        self.options = options
        self.names = parameters.names
        self.stepCount = 0
        let zeros = parameters.zeros().tensors
        self.firstMoments = zeros
        self.secondMoments = zeros
        self.learningRateMultipliers = learningRateMultipliers
        self.decayedParameters = decayed
    }

    /// Every parameter of rank ≥ 2 (projections, experts, router, embedding, untied head): the
    /// usual LLM rule (nanoGPT, LLaMA) that leaves norm gains and other vectors undecayed.
    /// NOTE: OpenBMB's own MiniCPM training code passes one `weight_decay` to every parameter,
    /// norms included; pass `Set(parameters.names)` to reproduce that.
    public static func defaultDecayedParameters(in parameters: ParameterSet) -> Set<String> {
        Set(parameters.names.filter { parameters[$0].rank >= 2 })
    }

    /// lr_p / lr for `name`.
    public func learningRateMultiplier(_ name: String) -> Float { learningRateMultipliers[name] ?? 1 }

    /// One AdamW update of `parameters` from `gradients` (same names and shapes) at base learning
    /// rate `learningRate` (the schedule's value for this step). Clips first when
    /// `options.maxGradientNorm` is set. Returns the global gradient norm before clipping.
    ///
    /// A non-finite gradient norm (NaN/∞ somewhere in the gradients) leaves the parameters, the
    /// moments and `stepCount` untouched and is returned as it is: the caller decides whether to
    /// skip the batch or stop.
    @discardableResult
    public mutating func step(_ parameters: inout ParameterSet, gradients: ParameterSet, learningRate: Float) -> Float {
        precondition(parameters.names == names && gradients.names == names, "parameters and gradients must be the set this optimiser was made for")
        let norm = GradientClipping.globalNorm(gradients)
        guard norm.isFinite else { return norm }
        let clip = GradientClipping.coefficient(norm: norm, maxNorm: options.maxGradientNorm)
        stepCount += 1
        let t = Double(stepCount)
        let biasCorrection1 = Float(1 - Foundation.pow(Double(options.beta1), t))
        let biasCorrection2 = Float(1 - Foundation.pow(Double(options.beta2), t))
        for name in names {
            let gradient = gradients[name]
            precondition(gradient.shape == parameters[name].shape, "gradient of \(name) has shape \(gradient.shape), parameter \(parameters[name].shape)")
            let rate = learningRate * learningRateMultiplier(name)
            let decay = decayedParameters.contains(name) ? options.weightDecay : 0
            Self.update(parameter: &parameters.tensors[name]!.values, firstMoment: &firstMoments[name]!.values,
                        secondMoment: &secondMoments[name]!.values, gradient: gradient.values, gradientScale: clip,
                        learningRate: rate, weightDecay: decay, beta1: options.beta1, beta2: options.beta2,
                        epsilon: options.epsilon, biasCorrection1: biasCorrection1, biasCorrection2: biasCorrection2)
        }
        return norm
    }

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
                        for i in 0 ..< count {
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
