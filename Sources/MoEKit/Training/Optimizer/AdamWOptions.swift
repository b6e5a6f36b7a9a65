/// The hyperparameters of `AdamW` that are the same for every parameter.
///
/// Defaults are MiniCPM's: β = (0.9, 0.95) as OpenBMB's training code passes to its Adam
/// optimiser, ε = 1e-8, weight decay 0.1 (applied only to the parameters `AdamW` is told to
/// decay, by default every tensor of rank ≥ 2), gradients clipped to a global L2 norm of 1.
struct AdamWOptions: Sendable, Equatable {
    /// Decay of the first-moment (mean) estimate, β₁.
    var beta1: Float
    /// Decay of the second-moment (uncentred variance) estimate, β₂.
    var beta2: Float
    /// Added to √v̂ in the denominator, ε.
    var epsilon: Float
    /// Decoupled weight decay λ: decayed parameters lose `lr · λ · p` every step (Loshchilov & Hutter).
    var weightDecay: Float
    /// Gradients are rescaled so their global L2 norm is at most this; `nil` turns clipping off.
    var maxGradientNorm: Float?

    init(beta1: Float = 0.9, beta2: Float = 0.95, epsilon: Float = 1e-8, weightDecay: Float = 0.1,
                maxGradientNorm: Float? = 1.0) {
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
        self.maxGradientNorm = maxGradientNorm
    }

    /// Checks every field's range: 0 ≤ β < 1, ε > 0, λ ≥ 0, clip norm > 0, all finite.
    func validate() throws(TrainingError) {
        guard beta1.isFinite, beta1 >= 0, beta1 < 1 else { throw .invalidOption(name: "beta1", reason: "must be in [0, 1), got \(beta1)") }
        guard beta2.isFinite, beta2 >= 0, beta2 < 1 else { throw .invalidOption(name: "beta2", reason: "must be in [0, 1), got \(beta2)") }
        guard epsilon.isFinite, epsilon > 0 else { throw .invalidOption(name: "epsilon", reason: "must be positive, got \(epsilon)") }
        guard weightDecay.isFinite, weightDecay >= 0 else {
            throw .invalidOption(name: "weight-decay", reason: "must be ≥ 0, got \(weightDecay)")
        }
        if let maxGradientNorm {
            guard maxGradientNorm.isFinite, maxGradientNorm > 0 else {
                throw .invalidOption(name: "clip", reason: "the maximum gradient norm must be positive, got \(maxGradientNorm)")
            }
        }
    }
}
