import Foundation

/// MiniCPM's causal self-attention (grouped-query heads, rotate_half RoPE) over a batch of
/// sequences, with its backward pass: the one implementation inference (with KV caches) and
/// training share.
///
/// A batch of sequences of lengths `T_s` is stacked as `x [N = Σ T_s, hidden]`; attention stays
/// within each sequence, whose positions start at 0. Per sequence and query head h (key/value head
/// g = h / (heads / kvHeads)):
///
///     q = RoPE(x·Wqᵀ), k = RoPE(x·Wkᵀ), v = x·Wvᵀ
///     S = q_h · k_gᵀ / √d,  P = softmax(S + causal mask),  c_h = P · v_g,  y = c · Woᵀ
///
/// Backward, per sequence and head:
///
///     dP = dc_h · v_gᵀ,   dv_g += Pᵀ · dc_h
///     dS = P ⊙ (dP − rowsum(P ⊙ dP)) / √d
///     dq_h = dS · k_g,    dk_g += dSᵀ · q_h         (heads sharing g sum into it)
///
/// then RoPE's inverse on dq, dk, and the four projections' GEMMs. The products run per (sequence,
/// head) in causal query blocks (`attendCausally`: a block of rows reads only the keys it can see,
/// about half the full T×T work at long T), the (sequence, head) pairs — (sequence, kv head) in
/// the backward, whose heads sum into one dk, dv — as one pool of tiles over the cores
/// (`ParallelTiles`), each tile's GEMMs single-threaded.
enum CausalAttentionLayer {
    /// The four projections; see `AttentionWeights`.
    typealias Weights = AttentionWeights

    /// Head layout: `heads` query heads, `keyValueHeads` key/value heads, RoPE frequencies (head size).
    struct Geometry: Sendable {
        var heads: Int
        var keyValueHeads: Int
        var rotary: RotaryEmbedding
        var headDim: Int { rotary.headDim }

        init(heads: Int, keyValueHeads: Int, rotary: RotaryEmbedding) {
            precondition(heads > 0 && keyValueHeads > 0 && heads % keyValueHeads == 0, "\(heads) heads over \(keyValueHeads) kv heads")
            self.heads = heads
            self.keyValueHeads = keyValueHeads
            self.rotary = rotary
        }

        /// A model's attention geometry. RoPE's cos/sin are computed for the positions a call
        /// uses, never for all of `max_position_embeddings`.
        init(config: MiniCPMConfig) {
            self.init(heads: config.numAttentionHeads, keyValueHeads: config.numKeyValueHeads,
                      rotary: RotaryEmbedding(headDim: config.headDim, theta: Float(config.ropeTheta)))
        }

        /// This geometry with RoPE's cos/sin precomputed for positions 0 ..< the longest span's end,
        /// when that table is no larger than the per-call tables of the spans' rows (a batch of whole
        /// sequences, a prefill): every layer's q and k (and their backward) then read one table
        /// instead of computing their own. A decode step deep into a long context keeps computing
        /// just its rows' cos/sin. The values are the same either way.
        func precomputingRotary(forSpans spans: [Span]) -> Geometry {
            let longest = spans.map { ($0.cache?.length ?? 0) + $0.length }.max() ?? 0
            let rows = spans.reduce(0) { $0 + $1.length }
            guard longest > rotary.precomputedPositions, longest <= rows else { return self }
            var geometry = self
            geometry.rotary = RotaryEmbedding(headDim: rotary.headDim, theta: rotary.theta, precomputedPositions: longest)
            return geometry
        }
    }

    /// One sequence's rows of a batch: `length` new tokens, continuing what `cache` holds (its
    /// keys and values for this layer get the new rows) or, without a cache, starting at position 0.
    struct Span {
        var length: Int
        var cache: KVCache?

        init(length: Int, cache: KVCache? = nil) {
            self.length = length
            self.cache = cache
        }
    }

    /// What `forward` keeps for `backward`.
    struct Cache: Sendable {
        /// `[N, hidden]` the input x.
        var input: Tensor
        /// `[N, hidden]` queries after RoPE.
        var queries: Tensor
        /// `[N, kvHeads · d]` keys after RoPE.
        var keys: Tensor
        /// `[N, kvHeads · d]` values.
        var values: Tensor
        /// Per sequence s, per head h, `[T_s, T_s]` attention probabilities (zeros above the diagonal),
        /// blocks in (s, h) order.
        var probabilities: [Float]
        /// `[N, hidden]` the heads' outputs before the output projection.
        var context: Tensor
        var sequenceLengths: [Int]
        /// `[N]` each row's position within its sequence.
        var positions: [Int]
    }

    /// Each row's position within its sequence (sequences stacked in order).
    static func positions(sequenceLengths: [Int]) -> [Int] {
        sequenceLengths.flatMap { 0 ..< $0 }
    }

    /// x `[N, hidden]` (sequences of `sequenceLengths` stacked, each from position 0) → y `[N, hidden]`,
    /// keeping what `backward` needs.
    static func forward(_ x: Tensor, weights: Weights, geometry: Geometry, sequenceLengths: [Int]) -> (output: Tensor, cache: Cache) {
        let result = forward(x, weights: weights, geometry: geometry, spans: sequenceLengths.map { Span(length: $0) }, layer: 0, keepCache: true)
        return (result.output, result.cache!)
    }

    /// x `[N, hidden]`, the rows of each span one sequence's new tokens → y `[N, hidden]`. Spans
    /// with a KV cache attend to its earlier tokens too and append their keys and values to it at
    /// `layer` (the caller advances the caches after the last layer). `keepCache` (training: spans
    /// without KV caches only) keeps what `backward` needs.
    static func forward(_ x: Tensor, weights: Weights, geometry: Geometry, spans: [Span], layer: Int,
                               keepCache: Bool) -> (output: Tensor, cache: Cache?) {
        let rows = x.rows, d = geometry.headDim, heads = geometry.heads
        let hidden = heads * d, kvWidth = geometry.keyValueHeads * d, groupSize = heads / geometry.keyValueHeads
        precondition(x.columns == hidden && weights.query.shape == [hidden, hidden] && weights.key.shape == [kvWidth, hidden],
                     "attention: x \(x.shape), Wq \(weights.query.shape), Wk \(weights.key.shape) for \(heads)×\(d) over \(geometry.keyValueHeads) kv heads")
        precondition(spans.reduce(0) { $0 + $1.length } == rows && spans.allSatisfy { $0.length > 0 }, "spans \(spans.map(\.length)) for \(rows) rows")
        precondition(!keepCache || spans.allSatisfy { $0.cache == nil }, "training attention runs whole sequences, without KV caches")
        var positions: [Int] = []
        positions.reserveCapacity(rows)
        for span in spans { positions += (span.cache?.length ?? 0) ..< (span.cache?.length ?? 0) + span.length }
        let queries = RotaryLayer.forward(LinearLayer.forward(x, weight: weights.query), heads: heads, positions: positions, rotary: geometry.rotary)
        let keys = RotaryLayer.forward(LinearLayer.forward(x, weight: weights.key), heads: geometry.keyValueHeads, positions: positions, rotary: geometry.rotary)
        let values = LinearLayer.forward(x, weight: weights.value)
        let scale = 1 / Float(d).squareRoot()
        // Each span's first row, and the offset of its probability blocks (training keeps them).
        var starts: [Int] = [], probabilityOffsets: [Int] = []
        var start = 0, offset = 0
        for span in spans {
            starts.append(start)
            probabilityOffsets.append(offset)
            if let cache = span.cache {
                keys.values.withUnsafeBufferPointer { k in
                    values.values.withUnsafeBufferPointer { v in
                        cache.append(layer: layer, keys: UnsafeBufferPointer(rebasing: k[start * kvWidth ..< (start + span.length) * kvWidth]),
                                     values: UnsafeBufferPointer(rebasing: v[start * kvWidth ..< (start + span.length) * kvWidth]))
                    }
                }
            }
            start += span.length
            offset += heads * span.length * span.length
        }
        var probabilities = [Float].uninitialized(count: keepCache ? offset : 0)
        let longestKeys = spans.map { ($0.cache?.length ?? 0) + $0.length }.max() ?? 0
        let workers = ParallelTiles.workerCount
        let scratchPerWorker = keepCache ? 0 : queryBlockRows * longestKeys
        var scratch = [Float].uninitialized(count: max(1, workers * scratchPerWorker))
        var context = Tensor(uninitializedShape: [rows, hidden])
        queries.values.withUnsafeBufferPointer { q in
            keys.values.withUnsafeBufferPointer { batchKeys in
                values.values.withUnsafeBufferPointer { batchValues in
                    context.values.withUnsafeMutableBufferPointer { c in
                        probabilities.withUnsafeMutableBufferPointer { p in
                            scratch.withUnsafeMutableBufferPointer { s in
                                // One tile per (span, head); in each, causal query blocks (see `attendCausally`).
                                ParallelTiles.run(tiles: spans.count * heads, workers: workers) { tile, worker in
                                    let index = tile / heads, head = tile % heads, span = spans[index]
                                    let length = span.length, past = span.cache?.length ?? 0, first = starts[index]
                                    let probabilityBlock = keepCache ? p.baseAddress! + probabilityOffsets[index] + head * length * length : nil
                                    func attend(_ k: UnsafePointer<Float>, _ v: UnsafePointer<Float>) {
                                        attendCausally(queries: q.baseAddress! + first * hidden + head * d, queryStride: hidden, length: length, past: past,
                                                       keys: k + (head / groupSize) * d, values: v + (head / groupSize) * d, keyStride: kvWidth, headDim: d,
                                                       scale: scale, probabilities: probabilityBlock, scratch: s.baseAddress! + worker * scratchPerWorker,
                                                       context: c.baseAddress! + first * hidden + head * d, contextStride: hidden)
                                    }
                                    // Keys and values: the cache's (past + new rows) or this span's rows of the batch.
                                    if let cache = span.cache {
                                        cache.keys[layer].withUnsafeBufferPointer { k in cache.values[layer].withUnsafeBufferPointer { v in attend(k.baseAddress!, v.baseAddress!) } }
                                    } else {
                                        attend(batchKeys.baseAddress! + first * kvWidth, batchValues.baseAddress! + first * kvWidth)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let output = LinearLayer.forward(context, weight: weights.output)
        guard keepCache else { return (output, nil) }
        return (output, Cache(input: x, queries: queries, keys: keys, values: values, probabilities: probabilities,
                              context: context, sequenceLengths: spans.map(\.length), positions: positions))
    }

    /// Query rows per block of the causal kernel: block i₀ ..< i₁ reads keys 0 ..< past + i₁ only,
    /// so the scores and P·V GEMMs cost about half of the full T×T block at long T.
    static let queryBlockRows = 64

    /// One head of one sequence: `length` query rows at positions past ..< past + length against
    /// keys and values 0 ..< past + length (row strides `queryStride`, `keyStride`), in causal query
    /// blocks: S = q·kᵀ·scale on the visible keys, P = softmax, c = P·v. With `probabilities`
    /// (`[length, length]`, past = 0: training) P is kept there, zeros above the diagonal; without,
    /// each block's scores live in `scratch` (`queryBlockRows · (past + length)` floats).
    static func attendCausally(queries q: UnsafePointer<Float>, queryStride: Int, length: Int, past: Int,
                               keys k: UnsafePointer<Float>, values v: UnsafePointer<Float>, keyStride: Int, headDim d: Int, scale: Float,
                               probabilities: UnsafeMutablePointer<Float>?, scratch: UnsafeMutablePointer<Float>,
                               context c: UnsafeMutablePointer<Float>, contextStride: Int) {
        precondition(probabilities == nil || past == 0, "kept probabilities are for whole sequences")
        let stride = probabilities == nil ? past + length : length
        for blockStart in Swift.stride(from: 0, to: length, by: queryBlockRows) {
            let blockEnd = min(length, blockStart + queryBlockRows), blockRows = blockEnd - blockStart, visible = past + blockEnd
            let scores = probabilities.map { $0 + blockStart * length } ?? scratch
            // S [rows, visible] = q · kᵀ / √d
            MatrixMultiply.gemm(m: blockRows, n: visible, k: d, alpha: scale, a: q + blockStart * queryStride, lda: queryStride,
                                b: k, ldb: keyStride, transposeB: true, c: scores, ldc: stride)
            causalSoftmax(scores, queries: blockRows, keys: visible, past: past + blockStart, stride: stride)
            if probabilities != nil {
                for r in 0 ..< blockRows { (scores + r * stride + visible).update(repeating: 0, count: stride - visible) }
            }
            // c [rows, d] = P · v
            MatrixMultiply.gemm(m: blockRows, n: d, k: visible, a: scores, lda: stride, b: v, ldb: keyStride,
                                c: c + blockStart * contextStride, ldc: contextStride)
        }
    }

    /// Row i (the token at position past + i) keeps keys 0 ... past + i: softmax over those, zeros
    /// up to `keys`. Rows are `stride` apart.
    static func causalSoftmax(_ scores: UnsafeMutablePointer<Float>, queries: Int, keys: Int, past: Int, stride: Int? = nil) {
        let stride = stride ?? keys
        for i in 0 ..< queries {
            let row = scores + i * stride
            let visible = past + i + 1
            Kernels.softmaxRows(UnsafeMutableBufferPointer(start: row, count: visible), columns: visible)
            for j in visible ..< keys { row[j] = 0 }
        }
    }

    /// dy `[N, hidden]` → dx `[N, hidden]` and the four weights' gradients (fresh tensors).
    static func backward(_ outputGradient: Tensor, cache: Cache, weights: Weights, geometry: Geometry) -> (input: Tensor, weights: Weights) {
        let rows = cache.input.rows, d = geometry.headDim, heads = geometry.heads, kvHeads = geometry.keyValueHeads
        let hidden = heads * d, kvWidth = kvHeads * d, groupSize = heads / kvHeads
        precondition(outputGradient.shape == [rows, hidden], "attention backward: dy \(outputGradient.shape) for \(rows) rows of \(hidden)")
        let scale = 1 / Float(d).squareRoot()
        let (contextGradient, outputWeightGradient) = LinearLayer.backward(outputGradient, input: cache.context, weight: weights.output)
        var queryGradient = Tensor(uninitializedShape: [rows, hidden])
        var keyGradient = Tensor(shape: [rows, kvWidth])
        var valueGradient = Tensor(shape: [rows, kvWidth])
        let longest = cache.sequenceLengths.max() ?? 0
        let workers = ParallelTiles.workerCount, scratchPerWorker = queryBlockRows * longest
        var scratch = [Float].uninitialized(count: workers * scratchPerWorker)
        var starts: [Int] = [], probabilityOffsets: [Int] = []
        var start = 0, offset = 0
        for length in cache.sequenceLengths {
            starts.append(start)
            probabilityOffsets.append(offset)
            start += length
            offset += heads * length * length
        }
        contextGradient.values.withUnsafeBufferPointer { dc in
            cache.queries.values.withUnsafeBufferPointer { q in
                cache.keys.values.withUnsafeBufferPointer { k in
                    cache.values.values.withUnsafeBufferPointer { v in
                        cache.probabilities.withUnsafeBufferPointer { p in
                            queryGradient.values.withUnsafeMutableBufferPointer { dq in
                                keyGradient.values.withUnsafeMutableBufferPointer { dk in
                                    valueGradient.values.withUnsafeMutableBufferPointer { dv in
                                        scratch.withUnsafeMutableBufferPointer { s in
                                            // One tile per (sequence, kv head): the heads sharing it sum into dk_g and dv_g.
                                            ParallelTiles.run(tiles: cache.sequenceLengths.count * kvHeads, workers: workers) { tile, worker in
                                                let sequence = tile / kvHeads, kvHead = tile % kvHeads
                                                let length = cache.sequenceLengths[sequence], first = starts[sequence]
                                                let kvOffset = first * kvWidth + kvHead * d
                                                for head in kvHead * groupSize ..< (kvHead + 1) * groupSize {
                                                    let headOffset = first * hidden + head * d
                                                    attendCausallyBackward(probabilities: p.baseAddress! + probabilityOffsets[sequence] + head * length * length,
                                                                           length: length, contextGradient: dc.baseAddress! + headOffset,
                                                                           queries: q.baseAddress! + headOffset, queryStride: hidden,
                                                                           keys: k.baseAddress! + kvOffset, values: v.baseAddress! + kvOffset, keyStride: kvWidth,
                                                                           headDim: d, scale: scale, scratch: s.baseAddress! + worker * scratchPerWorker,
                                                                           queryGradient: dq.baseAddress! + headOffset, keyGradient: dk.baseAddress! + kvOffset,
                                                                           valueGradient: dv.baseAddress! + kvOffset)
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        RotaryLayer.backward(&queryGradient, heads: heads, positions: cache.positions, rotary: geometry.rotary)
        RotaryLayer.backward(&keyGradient, heads: kvHeads, positions: cache.positions, rotary: geometry.rotary)
        var inputGradient = LinearLayer.inputGradient(queryGradient, weight: weights.query)
        LinearLayer.accumulateInputGradient(keyGradient, weight: weights.key, into: &inputGradient)
        LinearLayer.accumulateInputGradient(valueGradient, weight: weights.value, into: &inputGradient)
        let gradients = Weights(query: LinearLayer.weightGradient(queryGradient, input: cache.input),
                                key: LinearLayer.weightGradient(keyGradient, input: cache.input),
                                value: LinearLayer.weightGradient(valueGradient, input: cache.input),
                                output: outputWeightGradient)
        return (inputGradient, gradients)
    }

    /// The backward of `attendCausally` for one head of one sequence (past = 0), in the same causal
    /// query blocks: for block rows i₀ ..< i₁ and visible keys 0 ..< i₁,
    ///
    ///     dP = dc·vᵀ,  dv += Pᵀ·dc,  dS = P ⊙ (dP − rowsum(P ⊙ dP))·scale,  dq = dS·k,  dk += dSᵀ·q
    ///
    /// dq is written; dk and dv are accumulated (+=). `scratch` holds `queryBlockRows · length` floats.
    static func attendCausallyBackward(probabilities: UnsafePointer<Float>, length: Int, contextGradient dc: UnsafePointer<Float>,
                                       queries q: UnsafePointer<Float>, queryStride: Int, keys k: UnsafePointer<Float>, values v: UnsafePointer<Float>,
                                       keyStride: Int, headDim d: Int, scale: Float, scratch: UnsafeMutablePointer<Float>,
                                       queryGradient dq: UnsafeMutablePointer<Float>, keyGradient dk: UnsafeMutablePointer<Float>,
                                       valueGradient dv: UnsafeMutablePointer<Float>) {
        for blockStart in Swift.stride(from: 0, to: length, by: queryBlockRows) {
            let blockEnd = min(length, blockStart + queryBlockRows), blockRows = blockEnd - blockStart, visible = blockEnd
            let attention = probabilities + blockStart * length
            let dcBlock = dc + blockStart * queryStride
            // dP [rows, visible] = dc · vᵀ
            MatrixMultiply.gemm(m: blockRows, n: visible, k: d, a: dcBlock, lda: queryStride, b: v, ldb: keyStride, transposeB: true,
                                c: scratch, ldc: visible)
            // dv [visible, d] += Pᵀ · dc
            MatrixMultiply.gemm(m: visible, n: d, k: blockRows, a: attention, lda: length, transposeA: true, b: dcBlock, ldb: queryStride,
                                beta: 1, c: dv, ldc: keyStride)
            for r in 0 ..< blockRows {
                let i = blockStart + r, p = attention + r * length, g = scratch + r * visible
                var dot: Float = 0
                for j in 0 ... i { dot += p[j] * g[j] }
                for j in 0 ... i { g[j] = scale * p[j] * (g[j] - dot) }
                for j in (i + 1) ..< visible { g[j] = 0 }
            }
            // dq [rows, d] = dS · k
            MatrixMultiply.gemm(m: blockRows, n: d, k: visible, a: scratch, lda: visible, b: k, ldb: keyStride,
                                c: dq + blockStart * queryStride, ldc: queryStride)
            // dk [visible, d] += dSᵀ · q
            MatrixMultiply.gemm(m: visible, n: d, k: blockRows, a: scratch, lda: visible, transposeA: true, b: q + blockStart * queryStride,
                                ldb: queryStride, beta: 1, c: dk, ldc: keyStride)
        }
    }
}
