import Foundation
import COpenBLAS
import Testing
@testable import MoEKit

/// Every optimised kernel agrees with its plain twin in `ReferenceKernels` on random inputs, and
/// with a case worked out by hand.
@Suite struct KernelsTests {
    // MARK: RMSNorm

    /// `x · rsqrt(mean(x²) + eps) · weight` agrees with the Double-accumulating reference.
    @Test func rmsNormMatchesReference() {
        let x = randomTensor([6, 48], seed: 1, standardDeviation: 3)
        let weight = randomTensor([48], seed: 2).values
        let fast = Kernels.rmsNorm(x, weight: weight, epsilon: 1e-5)
        let reference = ReferenceKernels.rmsNorm(x, weight: weight, epsilon: 1e-5)
        #expect(isClose(fast, reference, relativeTolerance: 1e-5))
    }

    /// [3, 4] with weight [1, 2], eps 0: rms = sqrt(12.5), y = [3/√12.5, 8/√12.5] = [0.848528, 2.262742].
    @Test func rmsNormHandCase() {
        let y = Kernels.rmsNorm(Tensor(shape: [1, 2], values: [3, 4]), weight: [1, 2], epsilon: 0)
        #expect(isClose(y.values, [0.8485281, 2.2627417], relativeTolerance: 1e-6))
        // eps matters when the row is zero: y = 0, not NaN.
        let zero = Kernels.rmsNorm(Tensor(shape: [1, 2], values: [0, 0]), weight: [1, 1], epsilon: 1e-6)
        #expect(zero.values == [0, 0])
    }

    // MARK: Softmax

    /// Row softmax agrees with the reference, rows sum to 1.
    @Test func softmaxRowsMatchesReference() {
        let x = randomTensor([5, 17], seed: 3, standardDeviation: 4)
        let fast = Kernels.softmaxRows(x)
        #expect(isClose(fast, ReferenceKernels.softmaxRows(x), relativeTolerance: 1e-6))
        for r in 0 ..< 5 { #expect(abs(fast.row(r).reduce(0, +) - 1) < 1e-6) }
    }

    /// softmax([0, ln 3]) = [1/4, 3/4]; huge equal logits give [1/2, 1/2] (the max is subtracted first).
    @Test func softmaxHandCases() {
        let y = Kernels.softmaxRows(Tensor(shape: [2, 2], values: [0, Float(log(3.0)), 1000, 1000]))
        #expect(isClose(y.values, [0.25, 0.75, 0.5, 0.5], relativeTolerance: 1e-6))
    }

    // MARK: SiLU and SwiGLU

    /// In-place SiLU agrees with the reference over a range including large |x|.
    @Test func siluMatchesReference() {
        var values = randomTensor([200], seed: 4, standardDeviation: 6).values + [0, 50, -50, 100, -100]
        let expected = values.map(ReferenceKernels.silu)
        values.withUnsafeMutableBufferPointer { Kernels.silu($0) }
        #expect(isClose(values, expected, relativeTolerance: 1e-6))
    }

    /// silu(0) = 0; σ(ln 3) = 3/4 so silu(ln 3) = 0.75 ln 3; silu(−ln 3) = −0.25 ln 3.
    @Test func siluHandCase() {
        let ln3 = Float(log(3.0))
        var values: [Float] = [0, ln3, -ln3]
        values.withUnsafeMutableBufferPointer { Kernels.silu($0) }
        #expect(isClose(values, [0, 0.75 * ln3, -0.25 * ln3], relativeTolerance: 1e-6))
    }

    /// `silu(gate) · up` over `[gate | up]` rows agrees with the reference SiLU times up: a few
    /// short rows (one row group), and rows of several row groups (run on every core).
    @Test(arguments: [(3, 11, false), (9, 4096, true)])
    func swiGLUMatchesReference(rows: Int, width: Int, severalRowGroups: Bool) {
        #expect((Kernels.rowsPerGroup(columns: width) < rows) == severalRowGroups)
        let fused = randomTensor([rows, 2 * width], seed: UInt64(rows), standardDeviation: 2)
        var out = [Float](repeating: .nan, count: rows * width)
        fused.values.withUnsafeBufferPointer { f in
            out.withUnsafeMutableBufferPointer { Kernels.swiGLU(fused: f.baseAddress!, rows: rows, width: width, out: $0.baseAddress!) }
        }
        var expected: [Float] = []
        for r in 0 ..< rows { for j in 0 ..< width { expected.append(ReferenceKernels.silu(fused[r, j]) * fused[r, width + j]) } }
        #expect(isClose(out, expected, relativeTolerance: 1e-6))
    }

    /// gate [0, ln 3], up [5, 4]: [0, 0.75 ln 3 · 4] = [0, 3 ln 3].
    @Test func swiGLUHandCase() {
        let ln3 = Float(log(3.0))
        let fused: [Float] = [0, ln3, 5, 4]
        var out: [Float] = [.nan, .nan]
        fused.withUnsafeBufferPointer { f in out.withUnsafeMutableBufferPointer { Kernels.swiGLU(fused: f.baseAddress!, rows: 1, width: 2, out: $0.baseAddress!) } }
        #expect(isClose(out, [0, 3 * ln3], relativeTolerance: 1e-6))
    }

    // MARK: RoPE

    /// rotate_half RoPE agrees with the reference built from the definition, over several heads and
    /// out-of-order positions.
    @Test func applyRotaryMatchesReference() {
        let heads = 3, headDim = 16
        let positions = [0, 5, 2, 37, 1]
        let x = randomTensor([positions.count, heads * headDim], seed: 6)
        var fast = x
        Kernels.applyRotary(&fast, heads: heads, positions: positions, rotary: RotaryEmbedding(headDim: headDim, theta: 10000))
        let reference = ReferenceKernels.applyRotary(x, heads: heads, headDim: headDim, positions: positions, theta: 10000)
        #expect(isClose(fast, reference, relativeTolerance: 1e-5))
        // The precomputed table (what models use) gives bit-identical results to the on-demand one.
        var precomputed = x
        Kernels.applyRotary(&precomputed, heads: heads, positions: positions, rotary: RotaryEmbedding(headDim: headDim, theta: 10000, precomputedPositions: 64))
        #expect(precomputed == fast)
    }

    /// headDim 4, θ = 10000: inv_freq = [1, 1/100]. v = [1, 0, 0, 0] at position 1 pairs (0, 2):
    /// [cos 1, 0, sin 1, 0]; v = [0, 1, 0, 0] at 1 → [0, cos 0.01, 0, sin 0.01]; position 0 is the identity.
    @Test func applyRotaryHandCase() {
        var x = Tensor(shape: [3, 4], values: [1, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4])
        Kernels.applyRotary(&x, heads: 1, positions: [1, 1, 0], rotary: RotaryEmbedding(headDim: 4, theta: 10000))
        let expected: [Float] = [Float(cos(1.0)), 0, Float(sin(1.0)), 0, 0, Float(cos(0.01)), 0, Float(sin(0.01)), 1, 2, 3, 4]
        #expect(isClose(x.values, expected, relativeTolerance: 1e-6))
        #expect(RotaryEmbedding(headDim: 4, theta: 10000).inverseFrequencies == [1, 0.01])
    }

    // MARK: add and scale

    /// `a += s · b` and `x *= s` agree with the per-element definition; hand case [1, 2] + 3·[10, 20] = [31, 62].
    @Test func addAndScaleMatchDefinition() {
        let a = randomTensor([4, 9], seed: 7), b = randomTensor([4, 9], seed: 8)
        var sum = a
        Kernels.add(b, scaledBy: 0.5, to: &sum)
        #expect(sum.values == zip(a.values, b.values).map { $0 + 0.5 * $1 })
        var scaled = a
        Kernels.scale(&scaled, by: -3)
        #expect(scaled.values == a.values.map { $0 * -3 })

        var hand = Tensor(shape: [2], values: [1, 2])
        Kernels.add(Tensor(shape: [2], values: [10, 20]), scaledBy: 3, to: &hand)
        #expect(hand.values == [31, 62])
        Kernels.add(Tensor(shape: [2], values: [1, 1]), to: &hand)
        #expect(hand.values == [32, 63])
        Kernels.scale(&hand, by: 0.5)
        #expect(hand.values == [16, 31.5])
    }

    // MARK: Matrix products

    /// `product` on cblas_sgemm agrees with the triple loop for every transpose combination.
    @Test(arguments: [(false, false), (true, false), (false, true), (true, true)])
    func productMatchesReferenceForEveryTransposeCombination(transposeA: Bool, transposeB: Bool) {
        let m = 7, k = 13, n = 5
        let a = randomTensor(transposeA ? [k, m] : [m, k], seed: 9)
        let b = randomTensor(transposeB ? [n, k] : [k, n], seed: 10)
        let fast = MatrixMultiply.product(a, b, transposeA: transposeA, transposeB: transposeB)
        let reference = MatrixMultiply.referenceProduct(a, b, transposeA: transposeA, transposeB: transposeB)
        #expect(fast.shape == [m, n])
        #expect(isClose(fast, reference, relativeTolerance: 1e-5))
    }

    /// Products split over the tile pool (by C's rows when m ≥ n, else by its columns; padded
    /// leading dimensions, α and β) equal one sgemm over the whole: each element of C sees the
    /// same sgemm over the same k.
    @Test(arguments: [(false, false), (true, false), (false, true), (true, true)])
    func productSplitOnThePoolEqualsOneSgemm(transposeA: Bool, transposeB: Bool) {
        for (m, n, k) in [(97, 40, 33), (40, 131, 17)] {
            let rowsA = transposeA ? k : m, columnsA = transposeA ? m : k
            let rowsB = transposeB ? n : k, columnsB = transposeB ? k : n
            let a = randomTensor([rowsA, columnsA + 3], seed: 11), b = randomTensor([rowsB, columnsB + 2], seed: 12)
            let start = randomTensor([m, n + 1], seed: 13)
            var whole = start, split = start
            a.values.withUnsafeBufferPointer { pa in
                b.values.withUnsafeBufferPointer { pb in
                    whole.values.withUnsafeMutableBufferPointer { pc in
                        cblas_sgemm(CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                                    Int32(m), Int32(n), Int32(k), 0.5, pa.baseAddress!, Int32(columnsA + 3), pb.baseAddress!, Int32(columnsB + 2),
                                    0.25, pc.baseAddress!, Int32(n + 1))
                    }
                    split.values.withUnsafeMutableBufferPointer { pc in
                        MatrixMultiply.splitOnPool(m: m, n: n, k: k, alpha: 0.5, a: pa.baseAddress!, lda: columnsA + 3, transposeA: transposeA,
                                                   b: pb.baseAddress!, ldb: columnsB + 2, transposeB: transposeB, beta: 0.25,
                                                   c: pc.baseAddress!, ldc: n + 1)
                    }
                }
            }
            #expect(isClose(split, whole, relativeTolerance: 1e-6), "m \(m) n \(n) k \(k)")
        }
    }

    /// A = [[1, 2], [3, 4]], B = [[5, 6], [7, 8]]: AB = [[19, 22], [43, 50]], AᵀB = [[26, 30], [38, 44]],
    /// ABᵀ = [[17, 23], [39, 53]], AᵀBᵀ = [[23, 31], [34, 46]].
    @Test func productHandCases() {
        let a = Tensor(shape: [2, 2], values: [1, 2, 3, 4]), b = Tensor(shape: [2, 2], values: [5, 6, 7, 8])
        #expect(MatrixMultiply.product(a, b).values == [19, 22, 43, 50])
        #expect(MatrixMultiply.product(a, b, transposeA: true).values == [26, 30, 38, 44])
        #expect(MatrixMultiply.product(a, b, transposeB: true).values == [17, 23, 39, 53])
        #expect(MatrixMultiply.product(a, b, transposeA: true, transposeB: true).values == [23, 31, 34, 46])
        // A linear layer y = x · Wᵀ with W [out 3, in 2].
        let x = Tensor(shape: [1, 2], values: [1, -1])
        let w = Tensor(shape: [3, 2], values: [1, 0, 0, 1, 2, 3])
        #expect(MatrixMultiply.product(x, w, transposeB: true).values == [1, -1, -1])
    }

    /// `gemm` with beta accumulates into C and honours leading dimensions larger than the width.
    @Test func gemmAccumulatesWithStrides() {
        // A is the left 2×2 block of a 2×3 buffer (lda 3); C starts at 1 and beta = 2.
        let a: [Float] = [1, 2, 99, 3, 4, 99]
        let b: [Float] = [5, 6, 7, 8]
        var c: [Float] = [1, 1, 1, 1]
        a.withUnsafeBufferPointer { pa in
            b.withUnsafeBufferPointer { pb in
                c.withUnsafeMutableBufferPointer { pc in
                    MatrixMultiply.gemm(m: 2, n: 2, k: 2, a: pa.baseAddress!, lda: 3, b: pb.baseAddress!, ldb: 2, beta: 2, c: pc.baseAddress!, ldc: 2)
                }
            }
        }
        #expect(c == [21, 24, 45, 52])
    }
}
