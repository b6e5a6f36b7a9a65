import Foundation

/// The element-wise and row-wise kernels a transformer needs, on row-major f32 buffers.
///
/// Each kernel has a plain twin in `ReferenceKernels`; tests compare the two.
enum Kernels {
    /// RMSNorm of each row: `y = x · rsqrt(mean(x²) + eps) · weight` (MiniCPM/Llama: no +1 offset).
    ///
    /// `x` is `[rows, d]`, `weight` is `[d]`; the mean of squares is accumulated in f32, as the
    /// published modeling code does after `.to(torch.float32)`.
    static func rmsNorm(_ x: Tensor, weight: [Float], epsilon: Float) -> Tensor {
        rmsNormKeepingScales(x, weight: weight, epsilon: epsilon).output
    }

    /// `rmsNorm`, also returning each row's r = 1 / sqrt(mean(x²) + eps) `[rows]` (what the
    /// training backward pass needs).
    static func rmsNormKeepingScales(_ x: Tensor, weight: [Float], epsilon: Float) -> (output: Tensor, inverseRMS: [Float]) {
        let d = x.columns, rows = x.rows
        precondition(weight.count == d, "RMSNorm weight has \(weight.count) values for rows of \(d)")
        var y = Tensor(uninitializedShape: x.shape)
        var scales = [Float].uninitialized(count: rows)
        x.values.withUnsafeBufferPointer { px in
            weight.withUnsafeBufferPointer { pw in
                y.values.withUnsafeMutableBufferPointer { py in
                    scales.withUnsafeMutableBufferPointer { ps in
                        forEachRowGroup(rows, columns: d) { group in
                            for r in group {
                                let row = px.baseAddress! + r * d
                                let out = py.baseAddress! + r * d
                                var sumSquares: Float = 0
                                for j in 0 ..< d { sumSquares += row[j] * row[j] }
                                let inverseRMS = 1 / (sumSquares / Float(d) + epsilon).squareRoot()
                                ps[r] = inverseRMS
                                for j in 0 ..< d { out[j] = row[j] * inverseRMS * pw[j] }
                            }
                        }
                    }
                }
            }
        }
        return (y, scales)
    }

    /// Calls `body` on consecutive groups of the rows `0 ..< rows` (rows of `columns` elements), as
    /// one pool of tiles on every core (`ParallelTiles`; inside a tile, serially). A group holds
    /// about 16k elements (at least one row), so the grouping depends on the shape alone: a kernel
    /// that sums per group and then over groups in order gives the same value on any core count.
    static func forEachRowGroup(_ rows: Int, columns: Int, _ body: (Range<Int>) -> Void) {
        let groupRows = rowsPerGroup(columns: columns)
        let groups = (rows + groupRows - 1) / groupRows
        ParallelTiles.run(tiles: groups) { group, _ in body(group * groupRows ..< min(rows, (group + 1) * groupRows)) }
    }

    /// Rows per group of `forEachRowGroup`.
    static func rowsPerGroup(columns: Int) -> Int { max(1, (1 << 14) / max(columns, 1)) }

    /// SiLU, `x · σ(x) = x / (1 + e^(−x))`, in place.
    @inlinable
    static func silu(_ x: UnsafeMutableBufferPointer<Float>) {
        for i in x.indices { let v = x[i]; x[i] = v / (1 + expf(-v)) }
    }

    /// SwiGLU's gate: for each row of `[rows, 2·width]` laid out as `[gate | up]`, writes
    /// `silu(gate) · up` into the first `width` columns of `out` (`[rows, width]`).
    static func swiGLU(fused: UnsafePointer<Float>, rows: Int, width: Int, out: UnsafeMutablePointer<Float>) {
        forEachRowGroup(rows, columns: width) { group in
            for r in group {
                let gate = fused + r * 2 * width
                let up = gate + width
                let o = out + r * width
                for j in 0 ..< width {
                    let g = gate[j]
                    o[j] = g / (1 + expf(-g)) * up[j]
                }
            }
        }
    }

    /// Softmax of each row of `[rows, n]`, in place, with the row maximum subtracted first.
    static func softmaxRows(_ x: UnsafeMutableBufferPointer<Float>, columns n: Int) {
        guard n > 0 else { return }
        let rows = x.count / n
        for r in 0 ..< rows {
            let row = x.baseAddress! + r * n
            var maximum = -Float.infinity
            for j in 0 ..< n { maximum = max(maximum, row[j]) }
            var sum: Float = 0
            for j in 0 ..< n { let e = expf(row[j] - maximum); row[j] = e; sum += e }
            let inverse = 1 / sum
            for j in 0 ..< n { row[j] *= inverse }
        }
    }

    /// Softmax of each row of a tensor.
    static func softmaxRows(_ x: Tensor) -> Tensor {
        var y = x
        y.values.withUnsafeMutableBufferPointer { softmaxRows($0, columns: x.columns) }
        return y
    }

    /// `a += scale · b`, element-wise.
    static func add(_ b: Tensor, scaledBy scale: Float = 1, to a: inout Tensor) {
        precondition(a.count == b.count, "add: \(a.shape) and \(b.shape) differ")
        a.values.withUnsafeMutableBufferPointer { pa in
            b.values.withUnsafeBufferPointer { pb in
                for i in 0 ..< pa.count { pa[i] += scale * pb[i] }
            }
        }
    }

    /// `x *= scale`, element-wise.
    static func scale(_ x: inout Tensor, by scale: Float) {
        x.values.withUnsafeMutableBufferPointer { p in
            for i in 0 ..< p.count { p[i] *= scale }
        }
    }

    /// Rotary position embedding, rotate_half convention (Llama/MiniCPM), in place.
    ///
    /// `x` is `[tokens, heads · headDim]`; token `t` is at position `positions[t]`. For each head
    /// vector `v` with halves `v₁ = v[..<d/2]`, `v₂ = v[d/2...]`:
    /// `v' = v · cos + rotate_half(v) · sin`, `rotate_half(v) = [−v₂, v₁]`, with
    /// `cos, sin` of `cat(freqs, freqs)`, `freqs = position · inv_freq`, `inv_freq_i = 1 / θ^(2i/d)`.
    ///
    /// With `inverse` it rotates by the opposite angles (sin → −sin): the rotation is orthogonal, so
    /// this is both its inverse and its transpose, i.e. RoPE's backward pass.
    static func applyRotary(_ x: inout Tensor, heads: Int, positions: [Int], rotary: RotaryEmbedding, inverse: Bool = false) {
        let headDim = rotary.headDim
        let half = headDim / 2
        precondition(x.columns == heads * headDim && x.rows == positions.count, "RoPE: shape \(x.shape) vs \(heads)×\(headDim), \(positions.count) positions")
        // cos/sin of the precomputed table, or computed for exactly these rows' positions (a table
        // up to the largest position would cost O(max position) per call: a decode step deep into a
        // long context, or a hostile max_position_embeddings).
        let needed = (positions.max() ?? 0) + 1
        let precomputed = needed <= rotary.precomputedPositions
        let table = precomputed ? (cos: rotary.cosines, sin: rotary.sines) : rotary.table(for: positions)
        let columns = x.columns
        let sinSign: Float = inverse ? -1 : 1
        x.values.withUnsafeMutableBufferPointer { px in
            table.cos.withUnsafeBufferPointer { pc in
                table.sin.withUnsafeBufferPointer { ps in
                    for (t, position) in positions.enumerated() {
                        let row = precomputed ? position : t
                        let c = pc.baseAddress! + row * half
                        let s = ps.baseAddress! + row * half
                        for h in 0 ..< heads {
                            let v = px.baseAddress! + t * columns + h * headDim
                            for i in 0 ..< half {
                                let a = v[i], b = v[i + half], sine = sinSign * s[i]
                                v[i] = a * c[i] - b * sine
                                v[i + half] = b * c[i] + a * sine
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Rotary embedding frequencies for one head size, as the published modeling code builds them in f32.
struct RotaryEmbedding: Sendable {
    let headDim: Int
    let theta: Float
    /// `inv_freq_i = 1 / θ^(2i/d)` for `i` in `0 ..< d/2`, computed in f32.
    let inverseFrequencies: [Float]
    /// Positions whose cos/sin are precomputed (a model precomputes `max_position_embeddings`, so
    /// no forward call or decode step recomputes them).
    let precomputedPositions: Int
    let cosines: [Float]
    let sines: [Float]

    init(headDim: Int, theta: Float, precomputedPositions: Int = 0) {
        precondition(headDim > 0 && headDim % 2 == 0, "rotary head size must be even, got \(headDim)")
        self.headDim = headDim
        self.theta = theta
        let inverseFrequencies = (0 ..< headDim / 2).map { i in
            1 / powf(theta, Float(2 * i) / Float(headDim))
        }
        self.inverseFrequencies = inverseFrequencies
        self.precomputedPositions = max(0, precomputedPositions)
        (cosines, sines) = Self.table(upTo: max(0, precomputedPositions), headDim: headDim, inverseFrequencies: inverseFrequencies)
    }

    /// cos and sin of `position · inv_freq_i`, `[positions, d/2]` each (the second half of
    /// `cat(freqs, freqs)` repeats the first, so half the table suffices).
    func table(upTo positions: Int) -> (cos: [Float], sin: [Float]) {
        Self.table(upTo: positions, headDim: headDim, inverseFrequencies: inverseFrequencies)
    }

    /// cos and sin of `positions[r] · inv_freq_i`, `[positions.count, d/2]` each: row r for row r's position.
    func table(for positions: [Int]) -> (cos: [Float], sin: [Float]) {
        let half = headDim / 2
        var cosines = [Float](repeating: 0, count: positions.count * half)
        var sines = [Float](repeating: 0, count: positions.count * half)
        for (row, p) in positions.enumerated() {
            for i in 0 ..< half {
                let angle = Float(p) * inverseFrequencies[i]  // f32 product, as torch.outer in f32
                cosines[row * half + i] = Float(Foundation.cos(Double(angle)))
                sines[row * half + i] = Float(Foundation.sin(Double(angle)))
            }
        }
        return (cosines, sines)
    }

    static func table(upTo positions: Int, headDim: Int, inverseFrequencies: [Float]) -> (cos: [Float], sin: [Float]) {
        let half = headDim / 2
        var cosines = [Float](repeating: 0, count: positions * half)
        var sines = [Float](repeating: 0, count: positions * half)
        for p in 0 ..< positions {
            for i in 0 ..< half {
                let angle = Float(p) * inverseFrequencies[i]  // f32 product, as torch.outer in f32
                cosines[p * half + i] = Float(Foundation.cos(Double(angle)))
                sines[p * half + i] = Float(Foundation.sin(Double(angle)))
            }
        }
        return (cosines, sines)
    }
}
