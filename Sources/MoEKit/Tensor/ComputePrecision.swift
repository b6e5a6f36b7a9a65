import CMoEKernels

/// The arithmetic of products with a `Weight`.
///
/// - `float32` (the default): the weight's elements are widened to f32 exactly and multiplied with
///   f32 activations in f32. Every fidelity tolerance in the tests holds for it.
/// - `bfloat16` (opt-in, `--compute bf16`): activations are rounded to bf16 (nearest, ties to even)
///   once per product, weights are bf16 (read in place when stored so, else rounded once by
///   `Weight.forCompute(_:)`), products of two bf16 values are exact and summed in f32 — the
///   AVX512-BF16 `vdpbf16ps` instruction. Its error against f32 is measured in
///   docs/bf16-kernels.md. Without AVX512-BF16 the same arithmetic runs on f32 units (slower).
public enum ComputePrecision: String, Sendable, CaseIterable {
    case float32 = "f32"
    case bfloat16 = "bf16"

    /// Whether this CPU has the AVX512-BF16 dot product (`vdpbf16ps`) that makes `bfloat16` fast.
    public static let cpuHasBFloat16DotProduct: Bool = moekit_cpu_has_avx512_bf16() == 1
}

extension SwiGLUWeights {
    /// Both projections for `precision`'s arithmetic (`Weight.forCompute(_:)`).
    public func forCompute(_ precision: ComputePrecision) -> SwiGLUWeights {
        var copy = self
        copy.gateUp = gateUp.forCompute(precision)
        copy.down = down.forCompute(precision)
        return copy
    }
}

extension MoEWeights {
    /// Every expert for `precision`'s arithmetic; the router stays f32.
    public func forCompute(_ precision: ComputePrecision) -> MoEWeights {
        MoEWeights(router: router, experts: experts.map { $0.forCompute(precision) })
    }
}
