import CMoEKernels
import Testing
@testable import MoEKit

/// `moekit_gemm_f32` (f32 weights, AVX-512 dot-product tiles) and `MatrixMultiply.linear`, which
/// chooses between it and sgemm, against the plain-loop reference: odd sizes around every tile
/// and vector width (4 × 6 tiles, 16 columns, 64-row chunks), leading dimensions wider than the
/// rows, α, β accumulation, and a hand-checked case.
@Suite struct DotProductGEMMTests {
    /// C = 0.5 · A · W[begin ..< end]ᵀ + 1 · C on columns begin ..< end of C preset to 1 (the rest stays 1).
    static func kernel(_ a: Tensor, _ w: Tensor, rows: Range<Int>, level: Int32) -> Tensor {
        let m = a.rows, n = w.rows, k = a.columns
        // Padded copies: lda = k + 3, ldw = k + 5, ldc = n + 2.
        let lda = k + 3, ldw = k + 5, ldc = n + 2
        var pa = [Float](repeating: .nan, count: m * lda), pw = [Float](repeating: .nan, count: n * ldw)
        for i in 0 ..< m { for p in 0 ..< k { pa[i * lda + p] = a[i, p] } }
        for j in 0 ..< n { for p in 0 ..< k { pw[j * ldw + p] = w[j, p] } }
        var c = [Float](repeating: 1, count: m * ldc)
        moekit_gemm_f32(level, m, rows.lowerBound, rows.upperBound, k, 0.5, pa, lda, pw, ldw, 1, &c, ldc)
        return Tensor(shape: [m, n], values: (0 ..< m).flatMap { i in c[i * ldc ..< i * ldc + n] })
    }

    static func expected(_ a: Tensor, _ w: Tensor, rows: Range<Int>) -> Tensor {
        let product = MatrixMultiply.referenceProduct(a, w, transposeB: true)
        var out = Tensor(shape: product.shape, repeating: 1)
        for i in 0 ..< a.rows { for j in rows { out[i, j] = 0.5 * product[i, j] + 1 } }
        return out
    }

    @Test(arguments: [(1, 1, 1), (1, 7, 15), (4, 6, 16), (5, 13, 17), (9, 12, 33), (3, 20, 100), (70, 7, 47)])
    func kernelMatchesTheReferenceOnEveryPath(m: Int, n: Int, k: Int) {
        let a = randomTensor([m, k], seed: UInt64(30 + m)), w = randomTensor([n, k], seed: UInt64(40 + n))
        for level in HalfPrecisionKernelTests.levels {
            for rows in [0 ..< n, n / 3 ..< n] where !rows.isEmpty {
                #expect(isClose(Self.kernel(a, w, rows: rows, level: level), Self.expected(a, w, rows: rows), relativeTolerance: 2e-6),
                        "level \(level) rows \(rows)")
            }
        }
    }

    /// β = 0 never reads C: a NaN there does not leak into the result.
    @Test func betaZeroIgnoresC() {
        let a = randomTensor([5, 40], seed: 1), w = randomTensor([7, 40], seed: 2)
        for level in HalfPrecisionKernelTests.levels {
            var c = [Float](repeating: .nan, count: 5 * 7)
            a.values.withUnsafeBufferPointer { pa in
                w.values.withUnsafeBufferPointer { pw in
                    moekit_gemm_f32(level, 5, 0, 7, 40, 1, pa.baseAddress!, 40, pw.baseAddress!, 40, 0, &c, 7)
                }
            }
            #expect(isClose(Tensor(shape: [5, 7], values: c), MatrixMultiply.referenceProduct(a, w, transposeB: true), relativeTolerance: 2e-6),
                    "level \(level)")
        }
    }

    /// Hand-checked: A = [[1, 2, 3], [4, 5, 6]], W = [[1, 0, -1], [2, 1, 0]] → A·Wᵀ = [[-2, 4], [-2, 13]].
    @Test func handCheckedProduct() {
        let a: [Float] = [1, 2, 3, 4, 5, 6], w: [Float] = [1, 0, -1, 2, 1, 0]
        for level in HalfPrecisionKernelTests.levels {
            var c = [Float](repeating: 0, count: 4)
            moekit_gemm_f32(level, 2, 0, 2, 3, 1, a, 3, w, 3, 0, &c, 2)
            #expect(c == [-2, 4, -2, 13], "level \(level)")
        }
    }

    /// `linear` on shapes that take the dot-product tiles on AVX-512 (k ≥ 512; several 128-row
    /// blocks on the tile pool; m past one 64-row chunk) and sgemm elsewhere, against the reference.
    @Test(arguments: [(5, 300, 520), (70, 130, 1540), (3, 9, 64)])
    func linearMatchesTheReference(m: Int, n: Int, k: Int) {
        let a = randomTensor([m, k], seed: UInt64(m), standardDeviation: 0.5), w = randomTensor([n, k], seed: UInt64(n), standardDeviation: 0.5)
        let reference = MatrixMultiply.referenceProduct(a, w, transposeB: true)
        for level in [Int32(MOEKIT_ISA_PORTABLE), MatrixMultiply.kernelLevel] {
            var c = Tensor(shape: [m, n], repeating: 2)
            a.values.withUnsafeBufferPointer { pa in
                w.values.withUnsafeBufferPointer { pw in
                    c.values.withUnsafeMutableBufferPointer { pc in
                        MatrixMultiply.linear(m: m, n: n, k: k, alpha: 1, a: pa.baseAddress!, lda: k, w: pw.baseAddress!, ldw: k, beta: 0.5,
                                              c: pc.baseAddress!, ldc: n, kernels: level)
                    }
                }
            }
            let expected = Tensor(shape: [m, n], values: reference.values.map { $0 + 1 })
            #expect(isClose(c, expected, relativeTolerance: 1e-5), "level \(level)")
        }
    }
}
