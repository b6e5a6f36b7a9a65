import Foundation

/// Forward/backward of MiniCPM's SwiGLU MLP, `y = down(silu(gate(x)) ⊙ up(x))`: the one
/// implementation inference and training share.
///
/// Shapes (PyTorch `[out, in]` weights): x `[R, H]`, W_g and W_u `[I, H]`, W_d `[H, I]`.
///
///     g = x·W_gᵀ, u = x·W_uᵀ          [R, I]   (one fused GEMM against [W_g; W_u] `[2I, H]`)
///     a = silu(g) ⊙ u                [R, I]   silu(g) = g·σ(g)
///     y = a·W_dᵀ                     [R, H]
///
/// Backward, for dy = ∂L/∂y `[R, H]`, with silu'(g) = σ(g)·(1 + g·(1 − σ(g))):
///
///     da   = dy·W_d                  [R, I]      dW_d = dyᵀ·a          [H, I]
///     dg   = da ⊙ u ⊙ silu'(g)       [R, I]      du   = da ⊙ silu(g)   [R, I]
///     dx   = dg·W_g + du·W_u         [R, H]      (one GEMM: [dg | du]·[W_g; W_u])
///     dW_g = dgᵀ·x,  dW_u = duᵀ·x    [I, H]
///
/// The forward is 6·R·H·I FLOPs (three GEMM-equivalents), the backward twice that (dW_d, da, dx,
/// dW_g, dW_u): forward + backward ≈ 3 × forward. The MoE layer runs the same kernels on each
/// expert's gathered block (`forwardBlock` / `backwardBlock`).
enum SwiGLULayer {
    /// What `forward` keeps for `backward`: the input and the two activations.
    struct Cache: Sendable {
        /// `[R, H]` x.
        var input: Tensor
        /// `[R, 2I]` each row `[g | u]`, the gate and up pre-activations.
        var gateUp: Tensor
        /// `[R, I]` a = silu(g) ⊙ u, the down projection's input.
        var activated: Tensor

        init(input: Tensor, gateUp: Tensor, activated: Tensor) {
            self.input = input
            self.gateUp = gateUp
            self.activated = activated
        }
    }

    /// x `[rows, hidden]` → y `[rows, hidden]`; with `keepCache`, also g, u and a for `backward`.
    /// Inference calls it without the cache; the activations then live only in scratch.
    static func forward(_ x: Tensor, weights: SwiGLUWeights, keepCache: Bool = true) -> (output: Tensor, cache: Cache?) {
        let rows = x.rows, hidden = weights.hiddenSize, intermediate = weights.intermediateSize
        precondition(x.columns == hidden, "SwiGLU: input \(x.shape) does not match weights of hidden size \(hidden)")
        var output = Tensor(uninitializedShape: [rows, hidden])
        var gateUp = Tensor(uninitializedShape: [rows, 2 * intermediate])
        var activated = Tensor(uninitializedShape: [rows, intermediate])
        if rows > 0 {
            x.values.withUnsafeBufferPointer { input in
                gateUp.values.withUnsafeMutableBufferPointer { f in
                    activated.values.withUnsafeMutableBufferPointer { a in
                        output.values.withUnsafeMutableBufferPointer { y in
                            forwardBlock(rows: rows, input: input.baseAddress!, weights: weights,
                                         gateUp: f.baseAddress!, activated: a.baseAddress!, output: y.baseAddress!)
                        }
                    }
                }
            }
        }
        guard keepCache else { return (output, nil) }
        return (output, Cache(input: x.rank == 2 ? x : x.reshaped([rows, hidden]), gateUp: gateUp, activated: activated))
    }

    /// dy `[rows, hidden]` → dx `[rows, hidden]` and the weights' gradients (fresh, owned, with
    /// gate and up stacked as in the weights).
    static func backward(_ outputGradient: Tensor, cache: Cache, weights: SwiGLUWeights) -> (input: Tensor, weights: SwiGLUWeights) {
        let rows = cache.input.rows, hidden = weights.hiddenSize, intermediate = weights.intermediateSize
        precondition(outputGradient.count == rows * hidden, "SwiGLU backward: gradient \(outputGradient.shape) for \(rows) rows of \(hidden)")
        precondition(cache.activated.columns == intermediate || rows == 0, "SwiGLU backward: cache does not match the weights")
        var inputGradient = Tensor(shape: [rows, hidden])
        var gradients = weights.zeros()
        guard rows > 0 else { return (inputGradient, gradients) }
        var scratch = [Float].uninitialized(count: rows * 2 * intermediate)
        outputGradient.values.withUnsafeBufferPointer { dy in
            cache.input.values.withUnsafeBufferPointer { x in
                cache.gateUp.values.withUnsafeBufferPointer { f in
                    cache.activated.values.withUnsafeBufferPointer { a in
                        inputGradient.values.withUnsafeMutableBufferPointer { dx in
                            scratch.withUnsafeMutableBufferPointer { s in
                                backwardBlock(rows: rows, outputGradient: dy.baseAddress!, input: x.baseAddress!, gateUp: f.baseAddress!,
                                              activated: a.baseAddress!, weights: weights, inputGradient: dx.baseAddress!,
                                              weightGradients: &gradients, gateUpGradient: s.baseAddress!)
                            }
                        }
                    }
                }
            }
        }
        return (inputGradient, gradients)
    }

    // MARK: Kernels on raw buffers (shared with the MoE layer's per-expert blocks)

    /// Forward on one block of `rows` rows: `gateUp[rows, 2I] = x·[W_g; W_u]ᵀ`,
    /// `activated[rows, I] = silu(g) ⊙ u`, `output[rows, H] = activated·W_dᵀ`.
    static func forwardBlock(rows: Int, input: UnsafePointer<Float>, weights: SwiGLUWeights,
                             gateUp: UnsafeMutablePointer<Float>, activated: UnsafeMutablePointer<Float>, output: UnsafeMutablePointer<Float>) {
        guard rows > 0 else { return }
        let hidden = weights.hiddenSize, intermediate = weights.intermediateSize
        MatrixMultiply.gemm(m: rows, a: input, lda: hidden, timesTransposeOf: weights.gateUp, c: gateUp, ldc: 2 * intermediate)
        Kernels.swiGLU(fused: gateUp, rows: rows, width: intermediate, out: activated)
        MatrixMultiply.gemm(m: rows, a: activated, lda: intermediate, timesTransposeOf: weights.down, c: output, ldc: hidden)
    }

    /// Backward on one block of `rows` rows (see the type's formulas). `inputGradient` and the
    /// owned `weightGradients` are accumulated into (+=). `gateUpGradient` is `[rows, 2I]` scratch
    /// that ends holding `[dg | du]`.
    static func backwardBlock(rows: Int, outputGradient dy: UnsafePointer<Float>, input x: UnsafePointer<Float>,
                              gateUp: UnsafePointer<Float>, activated: UnsafePointer<Float>, weights: SwiGLUWeights,
                              inputGradient dx: UnsafeMutablePointer<Float>, weightGradients: inout SwiGLUWeights,
                              gateUpGradient d: UnsafeMutablePointer<Float>) {
        guard rows > 0 else { return }
        let hidden = weights.hiddenSize, intermediate = weights.intermediateSize, width = 2 * intermediate
        // dW_d [H, I] += dyᵀ [H, R] · a [R, I]
        weightGradients.down.updateOwnedSegments { dwd in
            dwd.values.withUnsafeMutableBufferPointer { w in
                MatrixMultiply.gemm(m: hidden, n: intermediate, k: rows, a: dy, lda: hidden, transposeA: true,
                                    b: activated, ldb: intermediate, beta: 1, c: w.baseAddress!, ldc: intermediate)
            }
        }
        // da [R, I] = dy [R, H] · W_d [H, I], written into the first half of each [dg | du] row.
        MatrixMultiply.gemm(m: rows, a: dy, lda: hidden, times: weights.down, c: d, ldc: width)
        swiGLUBackward(gateUp: gateUp, gradient: d, rows: rows, width: intermediate)
        // dx [R, H] += [dg | du] [R, 2I] · [W_g; W_u] [2I, H]
        MatrixMultiply.gemm(m: rows, a: d, lda: width, times: weights.gateUp, beta: 1, c: dx, ldc: hidden)
        // dW_g [I, H] += dgᵀ [I, R] · x [R, H];  dW_u likewise from du (each stacked segment in turn).
        var segment = 0
        weightGradients.gateUp.updateOwnedSegments { dw in
            let rowsOfSegment = dw.rows
            dw.values.withUnsafeMutableBufferPointer { w in
                MatrixMultiply.gemm(m: rowsOfSegment, n: hidden, k: rows, a: d + segment, lda: width, transposeA: true,
                                    b: x, ldb: hidden, beta: 1, c: w.baseAddress!, ldc: hidden)
            }
            segment += rowsOfSegment
        }
    }

    /// SwiGLU's gate backward, in place: each row of `gradient` `[rows, 2·width]` holds da in its
    /// first `width` columns on entry and `[dg | du]` on exit, with g, u from the matching row of
    /// `gateUp`: dg = da · u · σ(g)(1 + g(1 − σ(g))), du = da · g σ(g).
    static func swiGLUBackward(gateUp: UnsafePointer<Float>, gradient: UnsafeMutablePointer<Float>, rows: Int, width: Int) {
        Kernels.forEachRowGroup(rows, columns: width) { group in
            for r in group {
                let g = gateUp + r * 2 * width
                let u = g + width
                let dg = gradient + r * 2 * width
                let du = dg + width
                for j in 0 ..< width {
                    let gate = g[j]
                    let sigmoid = 1 / (1 + expf(-gate))
                    let da = dg[j]
                    du[j] = da * gate * sigmoid
                    dg[j] = da * u[j] * sigmoid * (1 + gate * (1 - sigmoid))
                }
            }
        }
    }

    // MARK: Reference

    /// The forward by plain loops with Double accumulators, for tests.
    static func referenceForward(_ x: Tensor, weights: SwiGLUWeights) -> Tensor {
        referencePass(x, weights: weights, outputGradient: nil).output
    }

    /// The backward by plain loops with Double accumulators (recomputing the forward), for tests.
    static func referenceBackward(_ outputGradient: Tensor, input x: Tensor, weights: SwiGLUWeights) -> (input: Tensor, weights: SwiGLUWeights) {
        let result = referencePass(x, weights: weights, outputGradient: outputGradient)
        return (result.inputGradient, result.weightGradients)
    }

    private static func referencePass(_ x: Tensor, weights: SwiGLUWeights, outputGradient: Tensor?)
        -> (output: Tensor, inputGradient: Tensor, weightGradients: SwiGLUWeights) {
        let gate = weights.gate, up = weights.up, down = weights.downTensor
        let rows = x.rows, hidden = gate.columns, intermediate = gate.rows
        var output = Tensor(shape: [rows, hidden])
        var dx = [Double](repeating: 0, count: rows * hidden)
        var dGate = [Double](repeating: 0, count: intermediate * hidden)
        var dUp = [Double](repeating: 0, count: intermediate * hidden)
        var dDown = [Double](repeating: 0, count: hidden * intermediate)
        for r in 0 ..< rows {
            var g = [Double](repeating: 0, count: intermediate), u = g, a = g
            for i in 0 ..< intermediate {
                for j in 0 ..< hidden {
                    g[i] += Double(gate[i, j]) * Double(x[r, j])
                    u[i] += Double(up[i, j]) * Double(x[r, j])
                }
                a[i] = g[i] / (1 + exp(-g[i])) * u[i]
            }
            for o in 0 ..< hidden {
                var sum = 0.0
                for i in 0 ..< intermediate { sum += Double(down[o, i]) * a[i] }
                output[r, o] = Float(sum)
            }
            guard let dy = outputGradient else { continue }
            for i in 0 ..< intermediate {
                var da = 0.0
                for o in 0 ..< hidden {
                    da += Double(dy[r, o]) * Double(down[o, i])
                    dDown[o * intermediate + i] += Double(dy[r, o]) * a[i]
                }
                let sigmoid = 1 / (1 + exp(-g[i]))
                let dg = da * u[i] * sigmoid * (1 + g[i] * (1 - sigmoid))
                let du = da * g[i] * sigmoid
                for j in 0 ..< hidden {
                    dx[r * hidden + j] += dg * Double(gate[i, j]) + du * Double(up[i, j])
                    dGate[i * hidden + j] += dg * Double(x[r, j])
                    dUp[i * hidden + j] += du * Double(x[r, j])
                }
            }
        }
        func tensor(_ values: [Double], _ shape: [Int]) -> Tensor { Tensor(shape: shape, values: values.map { Float($0) }) }
        return (output, tensor(dx, [rows, hidden]),
                SwiGLUWeights(gate: tensor(dGate, [intermediate, hidden]), up: tensor(dUp, [intermediate, hidden]),
                              down: tensor(dDown, [hidden, intermediate])))
    }
}
