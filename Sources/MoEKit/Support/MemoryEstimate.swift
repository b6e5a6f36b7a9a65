import Foundation

/// A run's memory need, estimated from its sizes before anything is allocated and compared with
/// the machine's physical memory, so an option like `--tokens 100000000` or `--batch 1000000` is a
/// one-line error instead of an out-of-memory kill. The estimates are deliberately rough (f32
/// weights, gradients and AdamW moments; the largest activations kept per layer): they only need to
/// tell a run that fits from one that cannot.
public enum MemoryEstimate {
    public struct TooLarge: Error, LocalizedError, Equatable, Sendable {
        public var what: String
        public var bytes: Int
        var available: Int
        public var errorDescription: String? {
            let need = bytes == .max ? "more than \(Int.max) bytes" : ByteSize.format(bytes)
            return "\(what) needs about \(need) of memory; this machine has \(ByteSize.format(available))"
        }
    }

    /// Physical memory of the machine.
    static var available: Int { Int(clamping: ProcessInfo.processInfo.physicalMemory) }

    /// Π factors, or `Int.max` when the product overflows (or a factor is negative).
    static func product(_ factors: Int...) -> Int {
        var result = 1
        for factor in factors {
            guard factor >= 0 else { return .max }
            let (value, overflow) = result.multipliedReportingOverflow(by: factor)
            if overflow { return .max }
            result = value
        }
        return result
    }

    /// Σ terms, saturating at `Int.max`.
    public static func sum(_ terms: Int...) -> Int {
        terms.reduce(0) { total, term in
            let (value, overflow) = total.addingReportingOverflow(term)
            return overflow ? .max : value
        }
    }

    /// Throws when `bytes` exceed the machine's physical memory.
    public static func check(_ bytes: Int, for what: String) throws(TooLarge) {
        let available = available
        guard bytes <= available else { throw TooLarge(what: what, bytes: bytes, available: available) }
    }

    /// f32 bytes of a model of `config`'s shapes (every parameter once).
    public static func modelBytes(_ config: MiniCPMConfig) -> Int {
        let hidden = config.hiddenSize, intermediate = config.intermediateSize, layers = config.numHiddenLayers
        let experts = max(1, config.numExperts ?? 1)
        let attention = product(4, hidden, hidden)
        let ffn = product(3, hidden, intermediate, experts)
        let perLayer = sum(attention, ffn, product(experts, hidden))
        let embedding = product(config.tieWordEmbeddings ? 1 : 2, config.vocabSize, hidden)
        return product(4, sum(product(layers, perLayer), embedding))
    }

    /// One training step on `batch × seq` tokens: weights, gradients and two AdamW moments (4× the
    /// model), per-layer activations kept for the backward pass, and logits with their gradient.
    public static func trainingBytes(_ config: MiniCPMConfig, batch: Int, seq: Int) -> Int {
        let tokens = product(batch, seq)
        let k = config.topK ?? 1
        let perTokenPerLayer = sum(product(16, config.hiddenSize), product(4, k, config.intermediateSize))
        let activations = product(4, tokens, config.numHiddenLayers, perTokenPerLayer)
        let logits = product(4, 3, tokens, config.vocabSize)
        let attention = product(4, 2, batch, config.numAttentionHeads, seq, seq)
        return sum(product(4, modelBytes(config)), activations, logits, attention)
    }

    /// A forward pass over `tokens` tokens in sequences of at most `sequence`: one layer's
    /// activations, the KV cache, the logits, and the weights inference holds in anonymous memory —
    /// only norm gains and routers in f32; every matrix stays in the checkpoint's memory map (file
    /// pages the kernel can drop), so the 54 GB an f32 copy of the 8x2B would take is not counted.
    /// (`bench`'s in-memory models add `modelBytes` themselves.)
    public static func forwardBytes(_ config: MiniCPMConfig, tokens: Int, sequence: Int) -> Int {
        let k = config.topK ?? 1
        let perToken = sum(product(8, config.hiddenSize), product(3, k, config.intermediateSize), config.vocabSize)
        let cache = product(2, config.numHiddenLayers, sequence, config.hiddenSize)
        let scores = product(config.numAttentionHeads, sequence, sequence)
        let ownedWeights = product(4, config.numHiddenLayers, config.hiddenSize, sum(2, config.numExperts ?? 0))
        return sum(ownedWeights, product(4, tokens, perToken), product(4, cache), product(4, scores))
    }
}
