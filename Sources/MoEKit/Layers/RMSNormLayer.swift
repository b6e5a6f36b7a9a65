/// MiniCPM's RMSNorm for training: `y = x · r ⊙ w` with `r = 1 / sqrt(mean(x²) + eps)` per row.
///
/// Backward, per row of width d with `g = dy ⊙ w`:
///
///     dx = r · g − (r³ / d) · (Σ_j g_j x_j) · x
///     dw = Σ_rows dy ⊙ x · r
enum RMSNormLayer {
    /// What `forward` keeps for `backward`: the input and each row's r.
    struct Cache: Sendable {
        /// `[rows, d]` the input x.
        var input: Tensor
        /// `[rows]` r = 1 / sqrt(mean(x²) + eps).
        var inverseRMS: [Float]
    }

    /// x `[rows, d]`, weight `[d]` → y `[rows, d]`: the inference kernel `Kernels.rmsNorm`, keeping r.
    static func forward(_ x: Tensor, weight: Tensor, epsilon: Float) -> (output: Tensor, cache: Cache) {
        let (y, inverseRMS) = Kernels.rmsNormKeepingScales(x, weight: weight.values, epsilon: epsilon)
        return (y, Cache(input: x, inverseRMS: inverseRMS))
    }

    /// dy `[rows, d]` → dx `[rows, d]` and dw `[d]`.
    static func backward(_ outputGradient: Tensor, cache: Cache, weight: Tensor) -> (input: Tensor, weight: Tensor) {
        let x = cache.input
        let d = x.columns, rows = x.rows
        precondition(outputGradient.shape == x.shape, "RMSNorm backward: dy \(outputGradient.shape) vs x \(x.shape)")
        var dx = Tensor(uninitializedShape: x.shape)
        // Row groups on every core, each summing its own part of dw; the parts are added in group order.
        let groupRows = Kernels.rowsPerGroup(columns: d), groups = (rows + groupRows - 1) / groupRows
        var partialWeightGradients = [Float](repeating: 0, count: groups * d)
        x.values.withUnsafeBufferPointer { px in
            outputGradient.values.withUnsafeBufferPointer { pdy in
                weight.values.withUnsafeBufferPointer { pw in
                    dx.values.withUnsafeMutableBufferPointer { pdx in
                        partialWeightGradients.withUnsafeMutableBufferPointer { partials in
                            Kernels.forEachRowGroup(rows, columns: d) { group in
                                let pdw = partials.baseAddress! + (group.lowerBound / groupRows) * d
                                for r in group {
                                    let row = px.baseAddress! + r * d
                                    let dy = pdy.baseAddress! + r * d
                                    let out = pdx.baseAddress! + r * d
                                    let inverse = cache.inverseRMS[r]
                                    var dot: Float = 0
                                    for j in 0 ..< d {
                                        dot += dy[j] * pw[j] * row[j]
                                        pdw[j] += dy[j] * row[j] * inverse
                                    }
                                    let correction = inverse * inverse * inverse * dot / Float(d)
                                    for j in 0 ..< d { out[j] = inverse * dy[j] * pw[j] - correction * row[j] }
                                }
                            }
                        }
                    }
                }
            }
        }
        var dw = Tensor(shape: [d])
        for group in 0 ..< groups {
            for j in 0 ..< d { dw.values[j] += partialWeightGradients[group * d + j] }
        }
        return (dx, dw)
    }

    /// dx and dw by the chain rule written out with the full Jacobian ∂y_j/∂x_k = w_j (r δ_jk − r³ x_j x_k / d),
    /// in Double (for tests).
    static func referenceBackward(_ outputGradient: Tensor, input x: Tensor, weight: Tensor, epsilon: Float) -> (input: Tensor, weight: Tensor) {
        let d = x.columns
        var dx = Tensor(shape: x.shape)
        var dw = [Double](repeating: 0, count: d)
        for r in 0 ..< x.rows {
            var sumSquares = 0.0
            for j in 0 ..< d { sumSquares += Double(x[r, j]) * Double(x[r, j]) }
            let inverse = 1 / (sumSquares / Double(d) + Double(epsilon)).squareRoot()
            for k in 0 ..< d {
                var sum = 0.0
                for j in 0 ..< d {
                    let jacobian = Double(weight.values[j]) * ((j == k ? inverse : 0) - inverse * inverse * inverse * Double(x[r, j]) * Double(x[r, k]) / Double(d))
                    sum += Double(outputGradient[r, j]) * jacobian
                }
                dx[r, k] = Float(sum)
            }
            for j in 0 ..< d { dw[j] += Double(outputGradient[r, j]) * Double(x[r, j]) * inverse }
        }
        return (dx, Tensor(shape: [d], values: dw.map { Float($0) }))
    }
}
