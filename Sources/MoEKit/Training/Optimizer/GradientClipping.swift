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
                    let (tensor, range) = chunks[index]
                    sums[index] = Self.sumOfSquares(values[tensor] + range.lowerBound, count: range.count)
                }
            }
        }
        var sumOfSquares = 0.0
        for partial in partials { sumOfSquares += partial }
        return Float(sumOfSquares.squareRoot())
    }

    /// Σ x_i² in f64 over `count` values, in eight interleaved partial sums (i mod 8) added pairwise
    /// at the end: independent additions the core overlaps, where one running sum waits on each
    /// add's latency. The order is fixed, so the value is too.
    static func sumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> Double {
        var s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0, s4 = 0.0, s5 = 0.0, s6 = 0.0, s7 = 0.0
        var i = 0
        while i + 8 <= count {
            let a0 = Double(x[i]), a1 = Double(x[i + 1]), a2 = Double(x[i + 2]), a3 = Double(x[i + 3])
            let a4 = Double(x[i + 4]), a5 = Double(x[i + 5]), a6 = Double(x[i + 6]), a7 = Double(x[i + 7])
            s0 += a0 * a0; s1 += a1 * a1; s2 += a2 * a2; s3 += a3 * a3
            s4 += a4 * a4; s5 += a5 * a5; s6 += a6 * a6; s7 += a7 * a7
            i += 8
        }
        var tail = 0.0
        while i < count { tail += Double(x[i]) * Double(x[i]); i += 1 }
        return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)) + tail
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
