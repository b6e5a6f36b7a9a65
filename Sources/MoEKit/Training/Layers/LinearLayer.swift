/// A bias-free linear layer with a PyTorch `[out, in]` weight, `y = x · Wᵀ`; every product is one GEMM.
///
///     dX = dY · W        dW = dYᵀ · X
public enum LinearLayer {
    /// x `[rows, in]`, W `[out, in]` → y `[rows, out]`.
    public static func forward(_ x: Tensor, weight: Tensor) -> Tensor {
        MatrixMultiply.product(x, weight, transposeB: true)
    }

    /// dy `[rows, out]` → dx `[rows, in]` = dY · W.
    public static func inputGradient(_ outputGradient: Tensor, weight: Tensor) -> Tensor {
        MatrixMultiply.product(outputGradient, weight)
    }

    /// dy `[rows, out]`, x `[rows, in]` → dW `[out, in]` = dYᵀ · X.
    public static func weightGradient(_ outputGradient: Tensor, input: Tensor) -> Tensor {
        MatrixMultiply.product(outputGradient, input, transposeA: true)
    }

    /// `dX += dY · W` into an existing `[rows, in]` gradient (several projections of one input).
    public static func accumulateInputGradient(_ outputGradient: Tensor, weight: Tensor, into inputGradient: inout Tensor) {
        let rows = outputGradient.rows, outputs = weight.rows, inputs = weight.columns
        precondition(outputGradient.columns == outputs && inputGradient.shape == [rows, inputs],
                     "linear backward: dy \(outputGradient.shape), W \(weight.shape), dx \(inputGradient.shape)")
        outputGradient.values.withUnsafeBufferPointer { dy in
            weight.values.withUnsafeBufferPointer { w in
                inputGradient.values.withUnsafeMutableBufferPointer { dx in
                    MatrixMultiply.gemm(m: rows, n: inputs, k: outputs, a: dy.baseAddress!, lda: outputs,
                                        b: w.baseAddress!, ldb: inputs, beta: 1, c: dx.baseAddress!, ldc: inputs)
                }
            }
        }
    }

    /// dy → (dx, dW).
    public static func backward(_ outputGradient: Tensor, input: Tensor, weight: Tensor) -> (input: Tensor, weight: Tensor) {
        (inputGradient(outputGradient, weight: weight), weightGradient(outputGradient, input: input))
    }
}
