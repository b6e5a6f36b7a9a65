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
/// then RoPE's inverse on dq, dk, and the four projections' GEMMs. Every product is one GEMM per
/// (sequence, head), as in `CausalSelfAttention`.
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
        var probabilities = [Float].uninitialized(count: keepCache ? spans.reduce(0) { $0 + heads * $1.length * $1.length } : 0)
        let largestScores = spans.map { $0.length * ((($0.cache?.length) ?? 0) + $0.length) }.max() ?? 0
        var scratch = [Float].uninitialized(count: keepCache ? 0 : largestScores)
        var context = Tensor(uninitializedShape: [rows, hidden])
        var start = 0, block = 0
        for span in spans {
            let length = span.length, past = span.cache?.length ?? 0, keyCount = past + length
            if let cache = span.cache {
                keys.values.withUnsafeBufferPointer { k in
                    values.values.withUnsafeBufferPointer { v in
                        cache.append(layer: layer, keys: UnsafeBufferPointer(rebasing: k[start * kvWidth ..< (start + length) * kvWidth]),
                                     values: UnsafeBufferPointer(rebasing: v[start * kvWidth ..< (start + length) * kvWidth]))
                    }
                }
            }
            // Keys and values: the cache's (past + new rows) or this span's rows of the batch.
            func withKeysAndValues(_ body: (UnsafePointer<Float>, UnsafePointer<Float>) -> Void) {
                if let cache = span.cache {
                    cache.keys[layer].withUnsafeBufferPointer { k in cache.values[layer].withUnsafeBufferPointer { v in body(k.baseAddress!, v.baseAddress!) } }
                } else {
                    keys.values.withUnsafeBufferPointer { k in
                        values.values.withUnsafeBufferPointer { v in body(k.baseAddress! + start * kvWidth, v.baseAddress! + start * kvWidth) }
                    }
                }
            }
            withKeysAndValues { k, v in
                queries.values.withUnsafeBufferPointer { q in
                    context.values.withUnsafeMutableBufferPointer { c in
                        probabilities.withUnsafeMutableBufferPointer { p in
                            scratch.withUnsafeMutableBufferPointer { s in
                                for head in 0 ..< heads {
                                    let kvHead = head / groupSize
                                    let attention = keepCache ? p.baseAddress! + block : s.baseAddress!
                                    // S [T, past + T] = q_h · k_gᵀ / √d, then the causal softmax
                                    MatrixMultiply.gemm(m: length, n: keyCount, k: d, alpha: scale,
                                                        a: q.baseAddress! + start * hidden + head * d, lda: hidden,
                                                        b: k + kvHead * d, ldb: kvWidth, transposeB: true,
                                                        c: attention, ldc: keyCount)
                                    causalSoftmax(attention, queries: length, keys: keyCount, past: past)
                                    // c_h [T, d] = P · v_g
                                    MatrixMultiply.gemm(m: length, n: d, k: keyCount, a: attention, lda: keyCount,
                                                        b: v + kvHead * d, ldb: kvWidth,
                                                        c: c.baseAddress! + start * hidden + head * d, ldc: hidden)
                                    if keepCache { block += length * length }
                                }
                            }
                        }
                    }
                }
            }
            start += length
        }
        let output = LinearLayer.forward(context, weight: weights.output)
        guard keepCache else { return (output, nil) }
        return (output, Cache(input: x, queries: queries, keys: keys, values: values, probabilities: probabilities,
                              context: context, sequenceLengths: spans.map(\.length), positions: positions))
    }

    /// Row i (the token at position past + i) keeps keys 0 ... past + i: softmax over those, zeros after.
    static func causalSoftmax(_ scores: UnsafeMutablePointer<Float>, queries: Int, keys: Int, past: Int) {
        for i in 0 ..< queries {
            let row = scores + i * keys
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
        var scratch = [Float].uninitialized(count: longest * longest)
        contextGradient.values.withUnsafeBufferPointer { dc in
            cache.queries.values.withUnsafeBufferPointer { q in
                cache.keys.values.withUnsafeBufferPointer { k in
                    cache.values.values.withUnsafeBufferPointer { v in
                        cache.probabilities.withUnsafeBufferPointer { p in
                            queryGradient.values.withUnsafeMutableBufferPointer { dq in
                                keyGradient.values.withUnsafeMutableBufferPointer { dk in
                                    valueGradient.values.withUnsafeMutableBufferPointer { dv in
                                        scratch.withUnsafeMutableBufferPointer { s in
                                            var start = 0, block = 0
                                            for length in cache.sequenceLengths {
                                                for head in 0 ..< heads {
                                                    let kvHead = head / groupSize
                                                    let attention = p.baseAddress! + block
                                                    let scores = s.baseAddress!
                                                    let dcHead = dc.baseAddress! + start * hidden + head * d
                                                    // dP [T, T] = dc_h · v_gᵀ
                                                    MatrixMultiply.gemm(m: length, n: length, k: d, a: dcHead, lda: hidden,
                                                                        b: v.baseAddress! + start * kvWidth + kvHead * d, ldb: kvWidth, transposeB: true,
                                                                        c: scores, ldc: length)
                                                    // dv_g [T, d] += Pᵀ · dc_h
                                                    MatrixMultiply.gemm(m: length, n: d, k: length, a: attention, lda: length, transposeA: true,
                                                                        b: dcHead, ldb: hidden, beta: 1,
                                                                        c: dv.baseAddress! + start * kvWidth + kvHead * d, ldc: kvWidth)
                                                    softmaxBackward(probabilities: attention, gradient: scores, size: length, scale: scale)
                                                    // dq_h [T, d] = dS · k_g
                                                    MatrixMultiply.gemm(m: length, n: d, k: length, a: scores, lda: length,
                                                                        b: k.baseAddress! + start * kvWidth + kvHead * d, ldb: kvWidth,
                                                                        c: dq.baseAddress! + start * hidden + head * d, ldc: hidden)
                                                    // dk_g [T, d] += dSᵀ · q_h
                                                    MatrixMultiply.gemm(m: length, n: d, k: length, a: scores, lda: length, transposeA: true,
                                                                        b: q.baseAddress! + start * hidden + head * d, ldb: hidden, beta: 1,
                                                                        c: dk.baseAddress! + start * kvWidth + kvHead * d, ldc: kvWidth)
                                                    block += length * length
                                                }
                                                start += length
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

    /// Causal softmax backward in place: `gradient` holds dP `[T, T]` and becomes
    /// dS = scale · P ⊙ (dP − Σ_j P_ij dP_ij); entries above the diagonal (P = 0) become 0.
    static func softmaxBackward(probabilities: UnsafePointer<Float>, gradient: UnsafeMutablePointer<Float>, size: Int, scale: Float) {
        for i in 0 ..< size {
            let p = probabilities + i * size
            let g = gradient + i * size
            var dot: Float = 0
            for j in 0 ... i { dot += p[j] * g[j] }
            for j in 0 ... i { g[j] = scale * p[j] * (g[j] - dot) }
            for j in (i + 1) ..< size { g[j] = 0 }
        }
    }
}
