/// Rotary position embedding for training (rotate_half convention, `Kernels.applyRotary`).
///
/// RoPE rotates each pair `(v_i, v_{i+d/2})` by the angle `position · inv_freq_i`. A rotation is
/// orthogonal, so its transpose is its inverse: the backward pass rotates the gradient by the
/// opposite angle, `dv = R(−θ) · dv'`.
enum RotaryLayer {
    /// x `[tokens, heads · headDim]`, token t at `positions[t]` → the rotated x, same shape.
    static func forward(_ x: Tensor, heads: Int, positions: [Int], rotary: RotaryEmbedding) -> Tensor {
        var y = x
        Kernels.applyRotary(&y, heads: heads, positions: positions, rotary: rotary)
        return y
    }

    /// dy `[tokens, heads · headDim]` → dx (the inverse rotation), in place.
    static func backward(_ gradient: inout Tensor, heads: Int, positions: [Int], rotary: RotaryEmbedding) {
        Kernels.applyRotary(&gradient, heads: heads, positions: positions, rotary: rotary, inverse: true)
    }

    /// The backward pass from the definition: R(θ)ᵀ = R(−θ), i.e. the reference rotation at the
    /// negated positions (for tests).
    static func referenceBackward(_ gradient: Tensor, heads: Int, headDim: Int, positions: [Int], theta: Float) -> Tensor {
        ReferenceKernels.applyRotary(gradient, heads: heads, headDim: headDim, positions: positions.map { -$0 }, theta: theta)
    }
}
