import Foundation

/// Multi-head causal self-attention with grouped-query heads and rotate_half RoPE, as in MiniCPM.
///
/// For a chunk of `L` new tokens of one sequence at positions `p₀ ..< p₀+L` (p₀ = tokens already
/// cached): `q = x·Wqᵀ`, `k = x·Wkᵀ`, `v = x·Wvᵀ`; RoPE on q and k; k, v appended to the cache;
/// per head h (kv head h / (heads/kv_heads)): `softmax(q_h·K_hᵀ / sqrt(d) + causal mask) · V_h`;
/// heads concatenated and projected by `Wo`.
public struct CausalSelfAttention: Sendable {
    /// `[hidden, hidden]`, `[kvDim, hidden]`, `[kvDim, hidden]`, `[hidden, hidden]` (PyTorch `[out, in]`).
    public let queryWeight: Tensor, keyWeight: Tensor, valueWeight: Tensor, outputWeight: Tensor
    public let heads: Int
    public let keyValueHeads: Int
    public let headDim: Int
    public let rotary: RotaryEmbedding

    public init(queryWeight: Tensor, keyWeight: Tensor, valueWeight: Tensor, outputWeight: Tensor,
                heads: Int, keyValueHeads: Int, rotary: RotaryEmbedding) {
        self.queryWeight = queryWeight
        self.keyWeight = keyWeight
        self.valueWeight = valueWeight
        self.outputWeight = outputWeight
        self.heads = heads
        self.keyValueHeads = keyValueHeads
        self.headDim = rotary.headDim
        self.rotary = rotary
    }

    /// One chunk of new tokens of one sequence: rows `rows` of the batch, appended to `cache`.
    public struct Chunk {
        public var rows: Range<Int>
        public var cache: KVCache
    }

    /// Attention output `[tokens, hidden]` for normalised inputs `x` `[tokens, hidden]`, the rows
    /// of each chunk belonging to one sequence whose earlier tokens are in the chunk's cache.
    public func forward(_ x: Tensor, layer: Int, chunks: [Chunk]) -> Tensor {
        var queries = MatrixMultiply.product(x, queryWeight, transposeB: true)
        var keys = MatrixMultiply.product(x, keyWeight, transposeB: true)
        let values = MatrixMultiply.product(x, valueWeight, transposeB: true)
        var positions = [Int](repeating: 0, count: x.rows)
        for chunk in chunks {
            for (offset, row) in chunk.rows.enumerated() { positions[row] = chunk.cache.length + offset }
        }
        Kernels.applyRotary(&queries, heads: heads, positions: positions, rotary: rotary)
        Kernels.applyRotary(&keys, heads: keyValueHeads, positions: positions, rotary: rotary)

        let hidden = heads * headDim
        let kvWidth = keyValueHeads * headDim
        let groupSize = heads / keyValueHeads
        let scale = 1 / Float(headDim).squareRoot()
        var context = Tensor(shape: [x.rows, hidden])
        for chunk in chunks {
            keys.values.withUnsafeBufferPointer { k in
                values.values.withUnsafeBufferPointer { v in
                    chunk.cache.append(layer: layer,
                                       keys: UnsafeBufferPointer(rebasing: k[chunk.rows.lowerBound * kvWidth ..< chunk.rows.upperBound * kvWidth]),
                                       values: UnsafeBufferPointer(rebasing: v[chunk.rows.lowerBound * kvWidth ..< chunk.rows.upperBound * kvWidth]))
                }
            }
            let queryCount = chunk.rows.count
            let past = chunk.cache.length
            let keyCount = past + queryCount
            var scores = [Float](repeating: 0, count: queryCount * keyCount)
            queries.values.withUnsafeBufferPointer { q in
                chunk.cache.keys[layer].withUnsafeBufferPointer { cachedKeys in
                    chunk.cache.values[layer].withUnsafeBufferPointer { cachedValues in
                        context.values.withUnsafeMutableBufferPointer { out in
                            scores.withUnsafeMutableBufferPointer { s in
                                for head in 0 ..< heads {
                                    let kvHead = head / groupSize
                                    // scores [L, past+L] = q_h · K_hᵀ / sqrt(d)
                                    MatrixMultiply.gemm(m: queryCount, n: keyCount, k: headDim, alpha: scale,
                                                        a: q.baseAddress! + chunk.rows.lowerBound * hidden + head * headDim, lda: hidden,
                                                        b: cachedKeys.baseAddress! + kvHead * headDim, ldb: kvWidth, transposeB: true,
                                                        c: s.baseAddress!, ldc: keyCount)
                                    Self.causalSoftmax(s.baseAddress!, queries: queryCount, keys: keyCount, past: past)
                                    // context_h [L, d] = P · V_h
                                    MatrixMultiply.gemm(m: queryCount, n: headDim, k: keyCount,
                                                        a: s.baseAddress!, lda: keyCount,
                                                        b: cachedValues.baseAddress! + kvHead * headDim, ldb: kvWidth,
                                                        c: out.baseAddress! + chunk.rows.lowerBound * hidden + head * headDim, ldc: hidden)
                                }
                            }
                        }
                    }
                }
            }
        }
        return MatrixMultiply.product(context, outputWeight, transposeB: true)
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
}
