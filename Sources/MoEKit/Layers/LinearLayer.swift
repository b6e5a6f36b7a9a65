/// A bias-free linear layer with a PyTorch `[out, in]` weight, `y = x · Wᵀ`; every product is one
/// GEMM (or one per converted block of a bf16/f16 weight, see `MatrixMultiply.gemm(…, timesTransposeOf:)`).
///
///     dX = dY · W        dW = dYᵀ · X
enum LinearLayer {
    /// x `[rows, in]`, W `[out, in]` → y `[rows, out]`.
    static func forward(_ x: Tensor, weight: Weight) -> Tensor {
        MatrixMultiply.product(x, weight, transposeB: true)
    }

    /// dy `[rows, out]` → dx `[rows, in]` = dY · W.
    static func inputGradient(_ outputGradient: Tensor, weight: Weight) -> Tensor {
        MatrixMultiply.product(outputGradient, weight, transposeB: false)
    }

    /// dy `[rows, out]`, x `[rows, in]` → dW `[out, in]` = dYᵀ · X.
    static func weightGradient(_ outputGradient: Tensor, input: Tensor) -> Tensor {
        MatrixMultiply.product(outputGradient, input, transposeA: true)
    }

    /// `dX += dY · W` into an existing `[rows, in]` gradient (several projections of one input).
    static func accumulateInputGradient(_ outputGradient: Tensor, weight: Weight, into inputGradient: inout Tensor) {
        let rows = outputGradient.rows, outputs = weight.rows, inputs = weight.columns
        precondition(outputGradient.columns == outputs && inputGradient.shape == [rows, inputs],
                     "linear backward: dy \(outputGradient.shape), W \(weight.shape), dx \(inputGradient.shape)")
        outputGradient.values.withUnsafeBufferPointer { dy in
            inputGradient.values.withUnsafeMutableBufferPointer { dx in
                MatrixMultiply.gemm(m: rows, a: dy.baseAddress!, lda: outputs, times: weight, beta: 1, c: dx.baseAddress!, ldc: inputs)
            }
        }
    }

    /// dy → (dx, dW).
    static func backward(_ outputGradient: Tensor, input: Tensor, weight: Weight) -> (input: Tensor, weight: Tensor) {
        (inputGradient(outputGradient, weight: weight), weightGradient(outputGradient, input: input))
    }
}
