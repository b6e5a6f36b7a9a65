import Foundation

/// Plain, obviously-correct twins of `Kernels` (Double accumulation, index arithmetic, no pointers).
/// Tests compare every optimised kernel against these.
enum ReferenceKernels {
    static func rmsNorm(_ x: Tensor, weight: [Float], epsilon: Float) -> Tensor {
        var y = x
        for r in 0 ..< x.rows {
            var sumSquares = 0.0
            for j in 0 ..< x.columns { sumSquares += Double(x[r, j]) * Double(x[r, j]) }
            let inverseRMS = 1 / (sumSquares / Double(x.columns) + Double(epsilon)).squareRoot()
            for j in 0 ..< x.columns { y[r, j] = Float(Double(x[r, j]) * inverseRMS * Double(weight[j])) }
        }
        return y
    }

    static func silu(_ x: Float) -> Float {
        Float(Double(x) / (1 + exp(-Double(x))))
    }

    static func softmaxRows(_ x: Tensor) -> Tensor {
        var y = x
        for r in 0 ..< x.rows {
            let row = (0 ..< x.columns).map { Double(x[r, $0]) }
            let maximum = row.max() ?? 0
            let exps = row.map { exp($0 - maximum) }
            let sum = exps.reduce(0, +)
            for j in 0 ..< x.columns { y[r, j] = Float(exps[j] / sum) }
        }
        return y
    }

    /// rotate_half RoPE computed from the definition: `v · cos(cat(f, f)) + rotate_half(v) · sin(cat(f, f))`.
    static func applyRotary(_ x: Tensor, heads: Int, headDim: Int, positions: [Int], theta: Float) -> Tensor {
        var y = x
        let half = headDim / 2
        for (t, position) in positions.enumerated() {
            for h in 0 ..< heads {
                let base = h * headDim
                let v = (0 ..< headDim).map { Double(x[t, base + $0]) }
                let rotated = (0 ..< headDim).map { $0 < half ? -v[$0 + half] : v[$0 - half] }
                for i in 0 ..< headDim {
                    let inverseFrequency = 1 / pow(Double(theta), Double(2 * (i % half)) / Double(headDim))
                    let angle = Double(position) * inverseFrequency
                    y[t, base + i] = Float(v[i] * cos(angle) + rotated[i] * sin(angle))
                }
            }
        }
        return y
    }
}
