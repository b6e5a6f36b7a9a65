/// Token embedding as MiniCPM scales it: `h₀[t] = embed[token_t] · scale_emb`.
enum EmbeddingLayer {
    /// tokens `[N]` (each in `0 ..< vocab`), embedding `[vocab, hidden]` (any stored dtype) → h₀ `[N, hidden]`.
    static func forward(tokens: [Int], embedding: Weight, scale: Float) -> Tensor {
        let hidden = embedding.columns
        var output = Tensor(uninitializedShape: [tokens.count, hidden])
        output.values.withUnsafeMutableBufferPointer { out in
            for (row, token) in tokens.enumerated() {
                precondition(token >= 0 && token < embedding.rows, "token \(token) outside the vocabulary \(embedding.rows)")
                embedding.copyRow(token, scaledBy: scale, into: out.baseAddress! + row * hidden)
            }
        }
        return output
    }

    /// dh₀ `[N, hidden]` → scatter-adds `scale · dh₀[t]` into row `token_t` of `embeddingGradient`
    /// `[vocab, hidden]` (a token seen twice receives both rows).
    static func backward(_ outputGradient: Tensor, tokens: [Int], scale: Float, into embeddingGradient: inout Tensor) {
        let hidden = embeddingGradient.columns
        precondition(outputGradient.shape == [tokens.count, hidden], "embedding backward: dh₀ \(outputGradient.shape) for \(tokens.count) tokens of \(hidden)")
        outputGradient.values.withUnsafeBufferPointer { dh in
            embeddingGradient.values.withUnsafeMutableBufferPointer { table in
                for (row, token) in tokens.enumerated() {
                    let source = dh.baseAddress! + row * hidden
                    let destination = table.baseAddress! + token * hidden
                    for j in 0 ..< hidden { destination[j] += scale * source[j] }
                }
            }
        }
    }

    /// The forward pass by index arithmetic (for tests).
    static func referenceForward(tokens: [Int], embedding: Tensor, scale: Float) -> Tensor {
        var output = Tensor(shape: [tokens.count, embedding.columns])
        for (row, token) in tokens.enumerated() {
            for j in 0 ..< embedding.columns { output[row, j] = embedding[token, j] * scale }
        }
        return output
    }

    /// ∂L/∂embed from its definition: row v sums scale · dh₀[t] over the positions t holding token v.
    static func referenceBackward(_ outputGradient: Tensor, tokens: [Int], scale: Float, vocabularySize: Int) -> Tensor {
        let hidden = outputGradient.columns
        var gradient = Tensor(shape: [vocabularySize, hidden])
        for v in 0 ..< vocabularySize {
            for j in 0 ..< hidden {
                var sum = 0.0
                for (row, token) in tokens.enumerated() where token == v { sum += Double(scale) * Double(outputGradient[row, j]) }
                gradient[v, j] = Float(sum)
            }
        }
        return gradient
    }
}
