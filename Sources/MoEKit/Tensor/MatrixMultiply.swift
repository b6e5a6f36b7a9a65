import CMoEKernels
import COpenBLAS

/// Matrix products on OpenBLAS's `cblas_sgemm` (and, for linear layers on AVX-512, CMoEKernels'
/// dot-product tiles), with a plain triple loop beside them.
enum MatrixMultiply {
    /// C = alpha · op(A) · op(B) + beta · C on raw row-major buffers.
    ///
    /// `op(A)` is `[m, k]`: A is stored `[m, k]` (leading dimension `lda` ≥ k) or, transposed,
    /// `[k, m]` (lda ≥ m). `op(B)` is `[k, n]`: B is stored `[k, n]` or, transposed, `[n, k]`.
    /// C is `[m, n]` with leading dimension `ldc` ≥ n.
    static func gemm(
        m: Int, n: Int, k: Int,
        alpha: Float = 1,
        a: UnsafePointer<Float>, lda: Int, transposeA: Bool = false,
        b: UnsafePointer<Float>, ldb: Int, transposeB: Bool = false,
        beta: Float = 0,
        c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        guard m > 0, n > 0 else { return }
        if k == 0 {
            for i in 0 ..< m { for j in 0 ..< n { c[i * ldc + j] = beta == 0 ? 0 : c[i * ldc + j] * beta } }
            return
        }
        if m * n * k <= poolSplitMaximumProducts, max(m, n) >= 2 * poolSplitMinimumRows, ParallelTiles.workerCount > 1 {
            splitOnPool(m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, transposeA: transposeA, b: b, ldb: ldb, transposeB: transposeB,
                        beta: beta, c: c, ldc: ldc)
            return
        }
        cblas_sgemm(
            CblasRowMajor,
            transposeA ? CblasTrans : CblasNoTrans,
            transposeB ? CblasTrans : CblasNoTrans,
            Int32(m), Int32(n), Int32(k),
            alpha, a, Int32(lda), b, Int32(ldb),
            beta, c, Int32(ldc))
    }

    /// Products up to this many multiply-adds (a few milliseconds) run as one single-threaded sgemm
    /// per worker of the tile pool, each on its share of C's rows (or columns, when n > m), instead
    /// of OpenBLAS's own threads. OpenBLAS's idle threads spin in `sched_yield` for a while after
    /// each multi-threaded call and took the cores from the pools that run between such small
    /// products (the tiny training step: ≈ 15% of its samples). Larger products keep OpenBLAS's threads.
    static let poolSplitMaximumProducts = 1 << 28
    /// The fewest rows (columns) of C a worker gets.
    static let poolSplitMinimumRows = 32

    /// `gemm` with C's rows (or columns) split over the tile pool's workers, one single-threaded
    /// sgemm each: every element of C sees the same sgemm over the same k.
    static func splitOnPool(m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int, transposeA: Bool,
                            b: UnsafePointer<Float>, ldb: Int, transposeB: Bool, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        let byRows = m >= n
        let extent = byRows ? m : n
        let parts = max(1, min(ParallelTiles.workerCount, extent / poolSplitMinimumRows))
        ParallelTiles.run(tiles: parts) { part, _ in
            let start = extent * part / parts, end = extent * (part + 1) / parts
            if byRows {
                cblas_sgemm(CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                            Int32(end - start), Int32(n), Int32(k), alpha, transposeA ? a + start : a + start * lda, Int32(lda),
                            b, Int32(ldb), beta, c + start * ldc, Int32(ldc))
            } else {
                cblas_sgemm(CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                            Int32(m), Int32(end - start), Int32(k), alpha, a, Int32(lda),
                            transposeB ? b + start * ldb : b + start, Int32(ldb), beta, c + start, Int32(ldc))
            }
        }
    }

    /// C `[m, n]` = alpha · A `[m, k]` · Wᵀ + beta · C for f32 rows W `[n, k]` (`ldw` apart): a
    /// linear layer. Where the CPU has AVX-512 and the shape suits them (`prefersDotProductTiles`),
    /// CMoEKernels' dot-product tiles (`moekit_gemm_f32`: A and W read as stored, nothing packed)
    /// run over blocks of `dotProductBlockRows` rows of W on the tile pool (`ParallelTiles`; inside
    /// a pool's tile, in that worker); else sgemm. sgemm packs W on every call, which costs most
    /// when few rows of A share it (an MoE expert's block): measured in docs/bf16-kernels.md.
    /// Both equal the f32 product up to the order of the additions.
    static func linear(m: Int, n: Int, k: Int, alpha: Float = 1, a: UnsafePointer<Float>, lda: Int, w: UnsafePointer<Float>, ldw: Int,
                       beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int, kernels: Int32 = kernelLevel) {
        guard m > 0, n > 0 else { return }
        guard kernels >= Int32(MOEKIT_ISA_AVX512), prefersDotProductTiles(m: m, k: k) else {
            gemm(m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: w, ldb: ldw, transposeB: true, beta: beta, c: c, ldc: ldc)
            return
        }
        let blocks = (n + dotProductBlockRows - 1) / dotProductBlockRows
        ParallelTiles.run(tiles: blocks) { block, _ in
            let start = block * dotProductBlockRows
            moekit_gemm_f32(kernels, m, start, min(n, start + dotProductBlockRows), k, alpha, a, lda, w, ldw, beta, c, ldc)
        }
    }

    /// Rows of W per tile of `linear`'s dot-product path: their k floats stay in L2/L3 while every
    /// chunk of A's rows passes over them.
    static let dotProductBlockRows = 128

    /// Where the dot-product tiles beat sgemm (measured on Zen 4, single-threaded, W streamed from
    /// memory): long rows (k ≥ 1536) at any m, and k ≥ 512 up to 128 rows of A, where sgemm's
    /// packing of W is shared by few rows. Short rows (the tiny preset's k = 128, 320) stay on sgemm.
    static func prefersDotProductTiles(m: Int, k: Int) -> Bool {
        k >= 1536 || (m <= 128 && k >= 512)
    }

    /// op(A) · op(B) for 2-D tensors, where `op` transposes when asked.
    ///
    /// `a` is `[m, k]` (or `[k, m]` with `transposeA`), `b` is `[k, n]` (or `[n, k]` with `transposeB`);
    /// the result is `[m, n]`. A linear layer `y = x · Wᵀ` with a PyTorch weight `W` `[out, in]` is
    /// `product(x, w, transposeB: true)`.
    static func product(_ a: Tensor, _ b: Tensor, transposeA: Bool = false, transposeB: Bool = false) -> Tensor {
        precondition(a.rank == 2 && b.rank == 2, "product needs matrices, got \(a.shape) and \(b.shape)")
        let m = transposeA ? a.shape[1] : a.shape[0]
        let k = transposeA ? a.shape[0] : a.shape[1]
        let kb = transposeB ? b.shape[1] : b.shape[0]
        let n = transposeB ? b.shape[0] : b.shape[1]
        precondition(k == kb, "inner dimensions differ: \(a.shape)\(transposeA ? "ᵀ" : "") · \(b.shape)\(transposeB ? "ᵀ" : "")")
        var c = k == 0 ? Tensor(shape: [m, n]) : Tensor(uninitializedShape: [m, n])
        a.values.withUnsafeBufferPointer { pa in
            b.values.withUnsafeBufferPointer { pb in
                c.values.withUnsafeMutableBufferPointer { pc in
                    gemm(m: m, n: n, k: k,
                         a: pa.baseAddress!, lda: a.shape[1], transposeA: transposeA,
                         b: pb.baseAddress!, ldb: b.shape[1], transposeB: transposeB,
                         c: pc.baseAddress!, ldc: n)
                }
            }
        }
        return c
    }

    /// The same product as `product`, by the textbook triple loop with a Double accumulator.
    static func referenceProduct(_ a: Tensor, _ b: Tensor, transposeA: Bool = false, transposeB: Bool = false) -> Tensor {
        let m = transposeA ? a.shape[1] : a.shape[0]
        let k = transposeA ? a.shape[0] : a.shape[1]
        let n = transposeB ? b.shape[0] : b.shape[1]
        var c = Tensor(shape: [m, n])
        for i in 0 ..< m {
            for j in 0 ..< n {
                var sum = 0.0
                for p in 0 ..< k {
                    let x = transposeA ? a[p, i] : a[i, p]
                    let y = transposeB ? b[j, p] : b[p, j]
                    sum += Double(x) * Double(y)
                }
                c[i, j] = Float(sum)
            }
        }
        return c
    }
}
