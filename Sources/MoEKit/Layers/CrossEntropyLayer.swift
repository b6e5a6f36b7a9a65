import Foundation

/// MiniCPM's output head and the language-modelling loss:
///
///     z = rmsNorm(h; w_norm) / (hidden / dim_model_base)
///     logits = z · headᵀ                       (head = lm_head, or the tied embedding)
///     L = (1/M) Σ_{t: target_t ≥ 0} (logsumexp(logits_t) − logits_t[target_t])
///
/// over the M rows whose target is not negative (negative targets are ignored and not counted).
/// Backward: dlogits = (softmax(logits) − onehot(target)) / M on counted rows, 0 elsewhere;
/// dz = dlogits · head, dhead = dlogitsᵀ · z, then RMSNorm's backward on dz / divisor.
///
/// Logits are computed block of rows by block, so a `[N, vocab]` matrix is only held whole when
/// it is small (`keptLogitLimit`); otherwise `backward` recomputes each block's logits from z and
/// the saved log-sum-exps.
enum CrossEntropyLayer {
    /// The most logits (rows × vocab) for which `forward` keeps dlogits whole for `backward`
    /// (128 MB in f32: 2×128 tokens at MiniCPM-1B's 73k vocabulary, a sixth of its head gradient);
    /// larger batches recompute them block by block. Keeping them saves the backward a third GEMM
    /// over the head and lets ∂L/∂head be one GEMM that writes the `[vocab, hidden]` gradient once.
    static let keptLogitLimit = 1 << 25
    /// The most logits computed at once in one block when they are not kept (unless `forward` is
    /// given `blockRows`); kept logits are computed in one block.
    static let blockLogitLimit = 1 << 21

    /// What `forward` keeps for `backward`.
    struct Cache: Sendable {
        var norm: RMSNormLayer.Cache
        /// `[N, hidden]` z = rmsNorm(h) / divisor.
        var scaledNormed: Tensor
        var targets: [Int]
        var countedTokens: Int
        var divisor: Float
        /// `[N]` logsumexp of each row's logits.
        var logSumExp: [Float]
        /// `[N, vocab]` dlogits when the batch is small enough to keep them (see `keptLogitLimit`).
        var logitGradient: Tensor?
        /// Rows per block of logits.
        var blockRows: Int
    }

    struct Output: Sendable {
        /// The mean cross-entropy over counted tokens (0 when none is counted).
        var loss: Float
        /// `[N]` each token's cross-entropy (0 for ignored targets).
        var tokenLosses: [Float]
        /// M, the number of targets ≥ 0.
        var countedTokens: Int
        var cache: Cache
    }

    struct Gradients: Sendable {
        /// `[N, hidden]` ∂L/∂h.
        var input: Tensor
        /// `[hidden]` ∂L/∂w_norm.
        var normWeight: Tensor
        /// `[vocab, hidden]` ∂L/∂head (tied: the caller adds it into the embedding's gradient).
        var head: Tensor
    }

    /// h `[N, hidden]`, final-norm weight `[hidden]`, head `[vocab, hidden]`, targets `[N]` (each
    /// `< vocab`; negative = ignored).
    static func forward(_ h: Tensor, normWeight: Tensor, head: Weight, targets: [Int], divisor: Float, epsilon: Float,
                               keepLogitGradient: Bool = true, blockRows requestedBlockRows: Int? = nil) -> Output {
        let rows = h.rows, hidden = h.columns, vocabulary = head.rows
        precondition(head.columns == hidden && targets.count == rows, "cross-entropy: h \(h.shape), head \(head.shape), \(targets.count) targets")
        let (scaledNormed, normCache) = headInput(h, normWeight: normWeight, divisor: divisor, epsilon: epsilon)
        let counted = targets.reduce(0) { $0 + ($1 >= 0 ? 1 : 0) }
        let inverseCount = counted > 0 ? 1 / Float(counted) : 0
        let keeps = keepLogitGradient && rows * vocabulary <= keptLogitLimit
        var kept = keeps ? Tensor(uninitializedShape: [rows, vocabulary]) : nil
        let blockRows = max(1, min(rows, requestedBlockRows ?? (keeps ? rows : max(1, blockLogitLimit / max(vocabulary, 1)))))
        var scratch = keeps ? [] : [Float].uninitialized(count: blockRows * vocabulary)
        var logSumExp = [Float].uninitialized(count: rows)
        var tokenLosses = [Float](repeating: 0, count: rows)
        for target in targets { precondition(target < vocabulary, "target \(target) outside the vocabulary \(vocabulary)") }
        logSumExp.withUnsafeMutableBufferPointer { lses in
            tokenLosses.withUnsafeMutableBufferPointer { losses in
                for block in blocks(rows: rows, size: blockRows) {
                    func process(_ logits: UnsafeMutablePointer<Float>) {
                        computeLogits(scaledNormed, head: head, rows: block, into: logits)
                        // Rows are independent: groups of rows on every core.
                        Kernels.forEachRowGroup(block.count, columns: vocabulary) { offsets in
                            for offset in offsets {
                                let row = block.lowerBound + offset, z = logits + offset * vocabulary
                                let lse = logSumExpOfRow(z, count: vocabulary)
                                lses[row] = lse
                                let target = targets[row]
                                if target >= 0 { losses[row] = lse - z[target] }
                                if keeps { writeLogitGradient(z, count: vocabulary, logSumExp: lse, target: target, inverseCount: inverseCount) }
                            }
                        }
                    }
                    if keeps {
                        kept!.values.withUnsafeMutableBufferPointer { process($0.baseAddress! + block.lowerBound * vocabulary) }
                    } else {
                        scratch.withUnsafeMutableBufferPointer { process($0.baseAddress!) }
                    }
                }
            }
        }
        var total = 0.0
        for (row, target) in targets.enumerated() where target >= 0 { total += Double(tokenLosses[row]) }
        let cache = Cache(norm: normCache, scaledNormed: scaledNormed, targets: targets, countedTokens: counted, divisor: divisor,
                          logSumExp: logSumExp, logitGradient: kept, blockRows: blockRows)
        return Output(loss: counted > 0 ? Float(total / Double(counted)) : 0, tokenLosses: tokenLosses, countedTokens: counted, cache: cache)
    }

    /// Logits `[N, vocab]` = z · headᵀ for h `[N, hidden]`: what inference returns, from the same
    /// z the loss uses.
    static func logits(_ h: Tensor, normWeight: Tensor, head: Weight, divisor: Float, epsilon: Float) -> Tensor {
        MatrixMultiply.product(headInput(h, normWeight: normWeight, divisor: divisor, epsilon: epsilon).z, head, transposeB: true)
    }

    /// z = rmsNorm(h) / divisor, with RMSNorm's cache.
    static func headInput(_ h: Tensor, normWeight: Tensor, divisor: Float, epsilon: Float) -> (z: Tensor, norm: RMSNormLayer.Cache) {
        var (z, norm) = RMSNormLayer.forward(h, weight: normWeight, epsilon: epsilon)
        Kernels.scale(&z, by: 1 / divisor)
        return (z, norm)
    }

    /// ∂L/∂h, ∂L/∂w_norm and ∂L/∂head. A `headGradientBuffer` (`[vocab, hidden]`, any contents;
    /// see `GradientWorkspace`) is moved out (left nil) and becomes ∂L/∂head instead of a fresh tensor.
    static func backward(cache: Cache, normWeight: Tensor, head: Weight, headGradientBuffer: inout Tensor?) -> Gradients {
        let rows = cache.scaledNormed.rows, hidden = cache.scaledNormed.columns, vocabulary = head.rows
        precondition(headGradientBuffer == nil || headGradientBuffer?.shape == [vocabulary, hidden], "cross-entropy backward: head buffer shape")
        var scaledGradient: Tensor
        var headGradient: Tensor
        if let logitGradient = cache.logitGradient {
            // dz = dlogits · head, dhead = dlogitsᵀ · z (β = 0: the buffer is overwritten)
            scaledGradient = MatrixMultiply.product(logitGradient, head, transposeB: false)
            headGradient = headGradientBuffer ?? Tensor(uninitializedShape: [vocabulary, hidden])
            headGradientBuffer = nil
            logitGradient.values.withUnsafeBufferPointer { g in
                cache.scaledNormed.values.withUnsafeBufferPointer { z in
                    headGradient.values.withUnsafeMutableBufferPointer { dw in
                        MatrixMultiply.gemm(m: vocabulary, n: hidden, k: rows, a: g.baseAddress!, lda: vocabulary, transposeA: true,
                                            b: z.baseAddress!, ldb: hidden, c: dw.baseAddress!, ldc: hidden)
                    }
                }
            }
        } else {
            scaledGradient = Tensor(uninitializedShape: [rows, hidden])
            if var buffer = headGradientBuffer {
                headGradientBuffer = nil
                buffer.values.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
                headGradient = buffer
            } else {
                headGradient = Tensor(shape: [vocabulary, hidden])
            }
            let inverseCount = cache.countedTokens > 0 ? 1 / Float(cache.countedTokens) : 0
            var scratch = [Float].uninitialized(count: cache.blockRows * vocabulary)
            scratch.withUnsafeMutableBufferPointer { s in
                let logits = s.baseAddress!
                for block in blocks(rows: rows, size: cache.blockRows) {
                    computeLogits(cache.scaledNormed, head: head, rows: block, into: logits)
                    Kernels.forEachRowGroup(block.count, columns: vocabulary) { offsets in
                        for offset in offsets {
                            let row = block.lowerBound + offset
                            writeLogitGradient(logits + offset * vocabulary, count: vocabulary, logSumExp: cache.logSumExp[row],
                                               target: cache.targets[row], inverseCount: inverseCount)
                        }
                    }
                    cache.scaledNormed.values.withUnsafeBufferPointer { z in
                        scaledGradient.values.withUnsafeMutableBufferPointer { dz in
                            headGradient.values.withUnsafeMutableBufferPointer { dw in
                                // dz[block] = dlogits · head;  dhead += dlogitsᵀ · z[block]
                                MatrixMultiply.gemm(m: block.count, a: logits, lda: vocabulary, times: head,
                                                    c: dz.baseAddress! + block.lowerBound * hidden, ldc: hidden)
                                MatrixMultiply.gemm(m: vocabulary, n: hidden, k: block.count, a: logits, lda: vocabulary, transposeA: true,
                                                    b: z.baseAddress! + block.lowerBound * hidden, ldb: hidden, beta: 1,
                                                    c: dw.baseAddress!, ldc: hidden)
                            }
                        }
                    }
                }
            }
        }
        Kernels.scale(&scaledGradient, by: 1 / cache.divisor)
        let (inputGradient, normGradient) = RMSNormLayer.backward(scaledGradient, cache: cache.norm, weight: normWeight)
        return Gradients(input: inputGradient, normWeight: normGradient, head: headGradient)
    }

    /// ∂L/∂h, ∂L/∂w_norm and ∂L/∂head in fresh tensors.
    static func backward(cache: Cache, normWeight: Tensor, head: Weight) -> Gradients {
        var noBuffer: Tensor?
        return backward(cache: cache, normWeight: normWeight, head: head, headGradientBuffer: &noBuffer)
    }

    // MARK: Pieces

    private static func blocks(rows: Int, size: Int) -> [Range<Int>] {
        stride(from: 0, to: rows, by: size).map { $0 ..< min(rows, $0 + size) }
    }

    /// logits[block] `[block.count, vocab]` = z[block] · headᵀ.
    private static func computeLogits(_ z: Tensor, head: Weight, rows block: Range<Int>, into logits: UnsafeMutablePointer<Float>) {
        let hidden = z.columns
        z.values.withUnsafeBufferPointer { pz in
            MatrixMultiply.gemm(m: block.count, a: pz.baseAddress! + block.lowerBound * hidden, lda: hidden, timesTransposeOf: head,
                                c: logits, ldc: head.rows)
        }
    }

    private static func logSumExpOfRow(_ z: UnsafePointer<Float>, count: Int) -> Float {
        var maximum = -Float.infinity
        for j in 0 ..< count { maximum = max(maximum, z[j]) }
        var sum: Float = 0
        for j in 0 ..< count { sum += expf(z[j] - maximum) }
        return maximum + logf(sum)
    }

    /// Overwrites a row of logits with its gradient (softmax − onehot) / M, or zeros for an ignored target.
    private static func writeLogitGradient(_ z: UnsafeMutablePointer<Float>, count: Int, logSumExp: Float, target: Int, inverseCount: Float) {
        guard target >= 0 else {
            z.update(repeating: 0, count: count)
            return
        }
        for j in 0 ..< count { z[j] = expf(z[j] - logSumExp) * inverseCount }
        z[target] -= inverseCount
    }

    // MARK: Reference

    /// The loss and per-token losses from the definition, in Double over all logits at once (for tests).
    static func referenceForward(_ h: Tensor, normWeight: Tensor, head: Tensor, targets: [Int], divisor: Float, epsilon: Float)
        -> (loss: Float, tokenLosses: [Float]) {
        let logits = referenceLogits(h, normWeight: normWeight, head: head, divisor: divisor, epsilon: epsilon)
        var tokenLosses = [Float](repeating: 0, count: h.rows)
        var total = 0.0, counted = 0
        for (row, target) in targets.enumerated() where target >= 0 {
            let z = (0 ..< head.rows).map { Double(logits[row, $0]) }
            let maximum = z.max() ?? 0
            let lse = maximum + Foundation.log(z.reduce(0.0) { $0 + Foundation.exp($1 - maximum) })
            tokenLosses[row] = Float(lse - z[target])
            total += lse - z[target]
            counted += 1
        }
        return (counted > 0 ? Float(total / Double(counted)) : 0, tokenLosses)
    }

    /// The gradients from the definition with whole matrices and the reference product (for tests).
    static func referenceBackward(_ h: Tensor, normWeight: Tensor, head: Tensor, targets: [Int], divisor: Float, epsilon: Float) -> Gradients {
        let logits = referenceLogits(h, normWeight: normWeight, head: head, divisor: divisor, epsilon: epsilon)
        let counted = Double(targets.filter { $0 >= 0 }.count)
        var logitGradient = Tensor(shape: logits.shape)
        for (row, target) in targets.enumerated() where target >= 0 {
            let z = (0 ..< head.rows).map { Double(logits[row, $0]) }
            let maximum = z.max() ?? 0
            let sum = z.reduce(0.0) { $0 + Foundation.exp($1 - maximum) }
            for j in 0 ..< head.rows {
                logitGradient[row, j] = Float((Foundation.exp(z[j] - maximum) / sum - (j == target ? 1 : 0)) / counted)
            }
        }
        var z = ReferenceKernels.rmsNorm(h, weight: normWeight.values, epsilon: epsilon)
        Kernels.scale(&z, by: 1 / divisor)
        var scaledGradient = MatrixMultiply.referenceProduct(logitGradient, head)
        Kernels.scale(&scaledGradient, by: 1 / divisor)
        let norm = RMSNormLayer.referenceBackward(scaledGradient, input: h, weight: normWeight, epsilon: epsilon)
        return Gradients(input: norm.input, normWeight: norm.weight,
                         head: MatrixMultiply.referenceProduct(logitGradient, z, transposeA: true))
    }

    private static func referenceLogits(_ h: Tensor, normWeight: Tensor, head: Tensor, divisor: Float, epsilon: Float) -> Tensor {
        var z = ReferenceKernels.rmsNorm(h, weight: normWeight.values, epsilon: epsilon)
        Kernels.scale(&z, by: 1 / divisor)
        return MatrixMultiply.referenceProduct(z, head, transposeB: true)
    }
}
