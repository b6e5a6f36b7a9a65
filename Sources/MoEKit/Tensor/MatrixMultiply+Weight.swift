/// Products with a `Weight` in any stored dtype, computed in f32 on `cblas_sgemm`.
///
/// The weight is walked in blocks of whole rows. f32 rows (owned, or mapped and aligned) go to
/// sgemm in place; bf16/f16 rows are converted into an f32 scratch block of at most
/// `conversionBlockElements` floats (4 MB, per call, so concurrent callers never share it) just
/// before their GEMM. Each block's result is exact f32 arithmetic on the converted values, so the
/// product equals the f32 product of the converted weight up to sgemm's summation order.
extension MatrixMultiply {
    /// The most weight elements converted at once for one GEMM.
    static let conversionBlockElements = 1 << 20

    /// C `[m, W.rows]` = alpha · A `[m, W.columns]` · Wᵀ + beta · C: a linear layer `y = x · Wᵀ`.
    static func gemm(m: Int, a: UnsafePointer<Float>, lda: Int, timesTransposeOf w: Weight, alpha: Float = 1,
                            beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        gemm(m: m, a: a, lda: lda, timesTransposeOf: w, alpha: alpha, beta: beta, c: c, ldc: ldc, blockElements: conversionBlockElements)
    }

    /// `gemm(…, timesTransposeOf:)` converting at most `blockElements` weight elements at once (tests use small blocks).
    static func gemm(m: Int, a: UnsafePointer<Float>, lda: Int, timesTransposeOf w: Weight, alpha: Float = 1,
                     beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int, blockElements: Int) {
        guard m > 0, w.rows > 0 else { return }
        let columns = w.columns
        withScratch(for: w, blockElements: blockElements) { scratch in
            for block in w.rowBlocks(maximumRows: blockElements / max(columns, 1)) {
                Weight.withFloatRows(block.segment, rows: block.rows, columns: columns, scratch: scratch) { rows in
                    gemm(m: m, n: block.rows.count, k: columns, alpha: alpha, a: a, lda: lda, b: rows, ldb: columns, transposeB: true,
                         beta: beta, c: c + block.globalStart, ldc: ldc)
                }
            }
        }
    }

    /// C `[m, W.columns]` = alpha · A `[m, W.rows]` · W + beta · C: a linear layer's input gradient
    /// `dx = dy · W`, or logits' gradient through a head.
    static func gemm(m: Int, a: UnsafePointer<Float>, lda: Int, times w: Weight, alpha: Float = 1,
                            beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        gemm(m: m, a: a, lda: lda, times: w, alpha: alpha, beta: beta, c: c, ldc: ldc, blockElements: conversionBlockElements)
    }

    /// `gemm(…, times:)` converting at most `blockElements` weight elements at once (tests use small blocks).
    static func gemm(m: Int, a: UnsafePointer<Float>, lda: Int, times w: Weight, alpha: Float = 1,
                     beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int, blockElements: Int) {
        let columns = w.columns
        guard m > 0, columns > 0 else { return }
        var first = true
        withScratch(for: w, blockElements: blockElements) { scratch in
            for block in w.rowBlocks(maximumRows: blockElements / max(columns, 1)) {
                Weight.withFloatRows(block.segment, rows: block.rows, columns: columns, scratch: scratch) { rows in
                    // C += A[:, block] · W[block, :]
                    gemm(m: m, n: columns, k: block.rows.count, alpha: alpha, a: a + block.globalStart, lda: lda,
                         b: rows, ldb: columns, beta: first ? beta : 1, c: c, ldc: ldc)
                }
                first = false
            }
        }
        if first { gemm(m: m, n: columns, k: 0, a: a, lda: lda, b: a, ldb: columns, beta: beta, c: c, ldc: ldc) }
    }

    /// x · Wᵀ (`transposeB`, x `[m, W.columns]`) or x · W (x `[m, W.rows]`) as a new tensor.
    static func product(_ x: Tensor, _ w: Weight, transposeB: Bool = false) -> Tensor {
        let inner = transposeB ? w.columns : w.rows, outer = transposeB ? w.rows : w.columns
        precondition(x.rank == 2 && x.columns == inner && w.shape.count == 2,
                     "inner dimensions differ: \(x.shape) · \(w.shape)\(transposeB ? "ᵀ" : "")")
        var c = Tensor(shape: [x.rows, outer])
        x.values.withUnsafeBufferPointer { pa in
            c.values.withUnsafeMutableBufferPointer { pc in
                if transposeB {
                    gemm(m: x.rows, a: pa.baseAddress!, lda: inner, timesTransposeOf: w, c: pc.baseAddress!, ldc: outer)
                } else {
                    gemm(m: x.rows, a: pa.baseAddress!, lda: inner, times: w, c: pc.baseAddress!, ldc: outer)
                }
            }
        }
        return c
    }

    /// The same product by the textbook loop over the weight's elements, each converted from its
    /// stored dtype by `HalfPrecision`, with Double accumulators (for tests).
    static func referenceProduct(_ x: Tensor, _ w: Weight, transposeB: Bool = false) -> Tensor {
        referenceProduct(x, w.floatTensor(), transposeB: transposeB)
    }

    private static func withScratch(for w: Weight, blockElements: Int, _ body: (UnsafeMutablePointer<Float>) -> Void) {
        let needsScratch = w.segments.contains { !$0.isInPlaceFloat }
        let count = needsScratch ? max(1, min(w.elementCount, max(blockElements, w.columns))) : 1
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: count)
        defer { scratch.deallocate() }
        body(scratch)
    }
}
