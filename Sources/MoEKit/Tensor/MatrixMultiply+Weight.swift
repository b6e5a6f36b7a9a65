import CMoEKernels
import Dispatch

/// Products with a `Weight` in any stored dtype.
///
/// f32 compute (the default, `ComputePrecision.float32`):
/// - **few rows** (m ≤ `halfPrecisionGEMVRows`, decode): bf16/f16 rows are read in place by the
///   `CMoEKernels` GEMV (AVX-512, AVX2 or portable C, chosen at run time), each element widened to
///   f32 exactly, output rows split over the BLAS threads: the weight is streamed once from memory,
///   with no scratch copy;
/// - **more rows**: the weight is walked in blocks of whole rows. f32 rows (owned, or mapped and
///   aligned) go to sgemm in place; bf16/f16 rows are converted into an f32 scratch block of at most
///   `conversionBlockElements` floats (4 MB, per call, so concurrent callers never share it) just
///   before their GEMM.
/// Either way the product equals the f32 product of the widened weight up to the order of the f32
/// additions.
///
/// bf16 compute (`Weight.forCompute(.bfloat16)`): the activations are rounded to bf16 once per
/// call, then multiplied with the bf16 weight with exact products and f32 sums — by AVX512-BF16's
/// `vdpbf16ps` for more rows, by the f32 GEMV on the rounded activations for few rows (the same
/// arithmetic), and on f32 units where the CPU lacks AVX512-BF16. See docs/bf16-kernels.md.
extension MatrixMultiply {
    /// The most weight elements converted at once for one GEMM.
    static let conversionBlockElements = 1 << 20

    /// Up to this many rows of activations, products with bf16/f16 weights read the weight in place
    /// (GEMV kernel) instead of converting blocks for sgemm. Measured in docs/bf16-kernels.md.
    public static let halfPrecisionGEMVRows = 16

    /// The `CMoEKernels` instruction-set level this CPU runs (`MOEKIT_ISA_*`).
    static let kernelLevel = moekit_kernels_isa()

    /// C `[m, W.rows]` = alpha · A `[m, W.columns]` · Wᵀ + beta · C: a linear layer `y = x · Wᵀ`.
    static func gemm(m: Int, a: UnsafePointer<Float>, lda: Int, timesTransposeOf w: Weight, alpha: Float = 1,
                            beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        gemm(m: m, a: a, lda: lda, timesTransposeOf: w, alpha: alpha, beta: beta, c: c, ldc: ldc, blockElements: conversionBlockElements)
    }

    /// `gemm(…, timesTransposeOf:)` converting at most `blockElements` weight elements at once (tests
    /// use small blocks), with the GEMV for up to `gemvRows` rows and the kernels of level `kernels`
    /// (tests run every level the CPU has).
    static func gemm(m: Int, a: UnsafePointer<Float>, lda: Int, timesTransposeOf w: Weight, alpha: Float = 1,
                     beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int, blockElements: Int,
                     gemvRows: Int = halfPrecisionGEMVRows, kernels: Int32 = kernelLevel, dotProduct: Bool = ComputePrecision.cpuHasBFloat16DotProduct) {
        guard m > 0, w.rows > 0 else { return }
        let columns = w.columns
        if w.computePrecision == .bfloat16 {
            bfloat16Product(m: m, a: a, lda: lda, w: w, alpha: alpha, beta: beta, c: c, ldc: ldc, blockElements: blockElements,
                            gemvRows: gemvRows, kernels: kernels, dotProduct: dotProduct)
            return
        }
        withScratch(for: w, blockElements: blockElements) { scratch in
            for block in w.rowBlocks(maximumRows: blockElements / max(columns, 1), wholeHalfSegments: m <= gemvRows) {
                if m <= gemvRows, case .mapped(let base, _, let type) = block.segment, type != .float32 {
                    halfGEMV(m: m, a: a, lda: lda, weight: base, type: type, rows: block.rows, columns: columns, alpha: alpha,
                             beta: beta, c: c + block.globalStart - block.rows.lowerBound, ldc: ldc, kernels: kernels)
                    continue
                }
                Weight.withFloatRows(block.segment, rows: block.rows, columns: columns, scratch: scratch) { rows in
                    linear(m: m, n: block.rows.count, k: columns, alpha: alpha, a: a, lda: lda, w: rows, ldw: columns,
                           beta: beta, c: c + block.globalStart, ldc: ldc, kernels: kernels)
                }
            }
        }
    }

    /// C[:, rows] = alpha · A · W[rows]ᵀ + beta · C[:, rows] on the 16-bit rows at `weight` (row r
    /// of the segment at `weight + r · columns` elements; `c` points at the segment's column 0),
    /// the rows split over the BLAS threads.
    private static func halfGEMV(m: Int, a: UnsafePointer<Float>, lda: Int, weight: UnsafeRawPointer, type: Weight.ElementType,
                                 rows: Range<Int>, columns: Int, alpha: Float, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
                                 kernels: Int32) {
        let operands = KernelOperands(a: UnsafeRawPointer(a), weight: weight, c: c)
        let typeCode = type == .bfloat16 ? Int32(MOEKIT_WEIGHT_BF16) : Int32(MOEKIT_WEIGHT_F16)
        forEachRowRange(rows, multipleOf: 4, minimumRows: 64) { range in
            moekit_gemv_f32_half(kernels, m, range.lowerBound, range.upperBound, columns, alpha, operands.a.assumingMemoryBound(to: Float.self),
                                 lda, operands.weight, columns, typeCode, beta, operands.c, ldc)
        }
    }

    /// bf16 compute: A rounded to bf16 once (`roundedToBFloat16`), then the product on the rounded A.
    private static func bfloat16Product(m: Int, a: UnsafePointer<Float>, lda: Int, w: Weight, alpha: Float, beta: Float,
                                        c: UnsafeMutablePointer<Float>, ldc: Int, blockElements: Int, gemvRows: Int, kernels: Int32,
                                        dotProduct: Bool) {
        let rounded = roundedToBFloat16(m: m, a: a, lda: lda, columns: w.columns, kernels: kernels)
        rounded.withUnsafeBufferPointer { r in
            gemm(m: m, bfloat16A: r.baseAddress!, lda: w.columns, timesTransposeOf: w, alpha: alpha, beta: beta, c: c, ldc: ldc,
                 blockElements: blockElements, gemvRows: gemvRows, kernels: kernels, dotProduct: dotProduct)
        }
    }

    /// A `[m, columns]` (rows `lda` apart) rounded to bf16 (nearest, ties to even), rows packed `columns` apart.
    static func roundedToBFloat16(m: Int, a: UnsafePointer<Float>, lda: Int, columns: Int, kernels: Int32 = kernelLevel) -> [UInt16] {
        [UInt16](unsafeUninitializedCapacity: m * columns) { r, initialized in
            for i in 0 ..< m { moekit_round_to_bf16(kernels, a + i * lda, r.baseAddress! + i * columns, columns) }
            initialized = m * columns
        }
    }

    /// bf16 compute on an A already rounded to bf16 (`[m, W.columns]`, rows `lda` apart): callers
    /// that multiply the same rows by many weight slices (`GroupedSwiGLU`'s tiles) round them once.
    /// `vdpbf16ps` on bf16 weights — the dot-product tiles, or for up to `gemvRows` rows the GEMV
    /// that reads W's rows one at a time (decode) — or, on a CPU without AVX512-BF16, the f32 path
    /// on the widened A, whose products with bf16 weights are exact in f32 too.
    static func gemm(m: Int, bfloat16A r: UnsafePointer<UInt16>, lda: Int, timesTransposeOf w: Weight, alpha: Float = 1, beta: Float = 0,
                     c: UnsafeMutablePointer<Float>, ldc: Int, blockElements: Int = conversionBlockElements, gemvRows: Int = halfPrecisionGEMVRows,
                     kernels: Int32 = kernelLevel, dotProduct: Bool = ComputePrecision.cpuHasBFloat16DotProduct) {
        guard m > 0, w.rows > 0 else { return }
        let columns = w.columns
        let bf16Segments = w.segments.allSatisfy { if case .mapped(_, _, .bfloat16) = $0 { return true } else { return false } }
        guard dotProduct, bf16Segments else {
            var widened = [Float](repeating: 0, count: m * columns)
            for i in 0 ..< m {
                for j in 0 ..< columns { widened[i * columns + j] = HalfPrecision.float(fromBFloat16: r[i * lda + j]) }
            }
            widened.withUnsafeBufferPointer { x in
                gemm(m: m, a: x.baseAddress!, lda: columns, timesTransposeOf: w.forCompute(.float32), alpha: alpha, beta: beta, c: c, ldc: ldc,
                     blockElements: blockElements, gemvRows: gemvRows, kernels: kernels, dotProduct: dotProduct)
            }
            return
        }
        var start = 0
        for segment in w.segments {
            guard case .mapped(let base, let rows, _) = segment else { preconditionFailure("bf16 segments are mapped") }
            let operands = KernelOperands(a: UnsafeRawPointer(r), weight: base, c: c + start)
            if m <= gemvRows {
                forEachRowRange(0 ..< rows, multipleOf: 4, minimumRows: 64) { range in
                    moekit_gemv_bf16_dpbf16(m, range.lowerBound, range.upperBound, columns, alpha, operands.a.assumingMemoryBound(to: UInt16.self),
                                            lda, operands.weight, columns, beta, operands.c, ldc)
                }
            } else {
                forEachRowRange(0 ..< rows, multipleOf: 6, minimumRows: 12) { range in
                    moekit_gemm_bf16_dpbf16(m, range.lowerBound, range.upperBound, columns, alpha, operands.a.assumingMemoryBound(to: UInt16.self),
                                            lda, operands.weight, columns, beta, operands.c, ldc)
                }
            }
            start += rows
        }
    }

    /// Pointers handed to the kernel threads (each writes its own output columns).
    private struct KernelOperands: @unchecked Sendable {
        let a: UnsafeRawPointer
        let weight: UnsafeRawPointer
        let c: UnsafeMutablePointer<Float>
    }

    /// Calls `body` on consecutive parts of `rows`, one per BLAS thread (`BLAS.threadCount`), each a
    /// multiple of `multipleOf` rows but the last, and none smaller than `minimumRows`.
    static func forEachRowRange(_ rows: Range<Int>, multipleOf unit: Int, minimumRows: Int, _ body: @Sendable (Range<Int>) -> Void) {
        let threads = min(BLAS.threadCount, max(1, rows.count / max(minimumRows, 1)))
        guard threads > 1 else {
            body(rows)
            return
        }
        let perThread = (rows.count + threads - 1) / threads
        let size = (perThread + unit - 1) / unit * unit
        WorkerPool.shared.run(parts: threads) { thread in
            let first = rows.lowerBound + thread * size
            let range = first ..< min(rows.upperBound, first + size)
            if !range.isEmpty { body(range) }
        }
    }

    /// C `[m, W.columns]` = alpha · A `[m, W.rows]` · W + beta · C: a linear layer's input gradient
    /// `dx = dy · W`, or logits' gradient through a head. Always f32 compute on the widened weight
    /// (training owns f32 weights; this orientation is no decode path).
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
