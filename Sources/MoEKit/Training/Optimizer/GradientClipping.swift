/// Gradient clipping by the global L2 norm, as `torch.nn.utils.clip_grad_norm_` does it.
///
/// The norm is taken over every gradient of the set together, ‖g‖ = √(Σ_tensors Σ_i g_i²)
/// (accumulated in f64). When ‖g‖ > `maxNorm` every gradient is multiplied by
/// `maxNorm / (‖g‖ + 1e-6)`; otherwise nothing changes. The 1e-6 is PyTorch's, so a clipped
/// norm comes out a hair under `maxNorm`.
enum GradientClipping {
    /// The global L2 norm of all gradients (f64 accumulation): each tensor summed in fixed chunks,
    /// the chunks of every tensor one pool on every core, their sums added in order (so the value
    /// does not depend on the cores).
    static func globalNorm(_ gradients: [Tensor]) -> Float {
        let chunk = 1 << 16
        let chunks = gradients.enumerated().flatMap { tensor, gradient in
            stride(from: 0, to: gradient.count, by: chunk).map { (tensor: tensor, range: $0 ..< min(gradient.count, $0 + chunk)) }
        }
        var partials = [Double](repeating: 0, count: chunks.count)
        withBaseAddresses(gradients.map(\.values)) { values in
            partials.withUnsafeMutableBufferPointer { sums in
                ParallelTiles.run(tiles: chunks.count) { index, _ in
                    let (tensor, range) = chunks[index], x = values[tensor]
                    var partial = 0.0
                    for i in range { partial += Double(x[i]) * Double(x[i]) }
                    sums[index] = partial
                }
            }
        }
        var sumOfSquares = 0.0
        for partial in partials { sumOfSquares += partial }
        return Float(sumOfSquares.squareRoot())
    }

    /// The factor the gradients are multiplied by: `min(1, maxNorm / (norm + 1e-6))`, and 1 for a
    /// non-finite norm (nothing sensible can be scaled; the caller skips such a step).
    static func coefficient(norm: Float, maxNorm: Float?) -> Float {
        guard let maxNorm, norm.isFinite else { return 1 }
        return min(1, maxNorm / (norm + 1e-6))
    }

    /// Scales `gradients` in place to a global norm of at most `maxNorm`; returns the norm before
    /// clipping (the figure to log).
    @discardableResult
    static func clip(_ gradients: inout MiniCPMWeights, maxNorm: Float) -> Float {
        let norm = globalNorm(gradients.parameterTensors)
        let scale = coefficient(norm: norm, maxNorm: maxNorm)
        guard scale < 1 else { return norm }
        gradients.updateEachParameter { Kernels.scale(&$0, by: scale) }
        return norm
    }
}
