import Foundation
import Testing
@testable import MoEKit

/// The causal attention and cross-entropy training layers: fast against reference, against the
/// inference path, backward against finite differences.
@Suite struct AttentionAndCrossEntropyLayerTests {
    /// hidden 16 = 4 heads × 4 over 2 kv heads; two sequences of different lengths.
    static let geometry = CausalAttentionLayer.Geometry(heads: 4, keyValueHeads: 2, rotary: RotaryEmbedding(headDim: 4, theta: 10000, precomputedPositions: 16))
    static let sequenceLengths = [5, 3]

    static func weights(seed: UInt64) -> CausalAttentionLayer.Weights {
        CausalAttentionLayer.Weights(query: randomTensor([16, 16], seed: seed, standardDeviation: 0.4),
                                     key: randomTensor([8, 16], seed: seed + 1, standardDeviation: 0.4),
                                     value: randomTensor([8, 16], seed: seed + 2, standardDeviation: 0.4),
                                     output: randomTensor([16, 16], seed: seed + 3, standardDeviation: 0.4))
    }

    @Test func attentionForwardMatchesReferenceAndInference() {
        let x = randomTensor([8, 16], seed: 20), w = Self.weights(seed: 21)
        let fast = CausalAttentionLayer.forward(x, weights: w, geometry: Self.geometry, sequenceLengths: Self.sequenceLengths).output
        #expect(isClose(fast, CausalAttentionLayer.referenceForward(x, weights: w, geometry: Self.geometry, sequenceLengths: Self.sequenceLengths),
                        relativeTolerance: 1e-5))
        // Inference: the same layer without backward caches, each sequence with its own empty KV cache.
        var config = MiniCPMConfig(hiddenSize: 16, intermediateSize: 8, numHiddenLayers: 1, numAttentionHeads: 4, numKeyValueHeads: 2, vocabSize: 4)
        config.maxPositionEmbeddings = 16
        let spans = [CausalAttentionLayer.Span(length: 5, cache: KVCache(config: config)), CausalAttentionLayer.Span(length: 3, cache: KVCache(config: config))]
        let inference = CausalAttentionLayer.forward(x, weights: w, geometry: Self.geometry, spans: spans, layer: 0, keepCache: false)
        #expect(inference.cache == nil && isClose(fast, inference.output, relativeTolerance: 1e-6))
    }

    /// With a KV cache, a sequence run as 3 tokens then 2 more gives the rows the whole 5 give.
    @Test func attentionContinuesFromItsKVCache() {
        let x = randomTensor([5, 16], seed: 28), w = Self.weights(seed: 29)
        let whole = CausalAttentionLayer.forward(x, weights: w, geometry: Self.geometry, sequenceLengths: [5]).output
        var config = MiniCPMConfig(hiddenSize: 16, intermediateSize: 8, numHiddenLayers: 1, numAttentionHeads: 4, numKeyValueHeads: 2, vocabSize: 4)
        config.maxPositionEmbeddings = 16
        let cache = KVCache(config: config)
        let first = CausalAttentionLayer.forward(x.rows(0 ..< 3), weights: w, geometry: Self.geometry, spans: [.init(length: 3, cache: cache)],
                                                 layer: 0, keepCache: false).output
        cache.advance(by: 3)
        let second = CausalAttentionLayer.forward(x.rows(3 ..< 5), weights: w, geometry: Self.geometry, spans: [.init(length: 2, cache: cache)],
                                                  layer: 0, keepCache: false).output
        #expect(isClose(first, whole.rows(0 ..< 3), relativeTolerance: 1e-6))
        #expect(isClose(second, whole.rows(3 ..< 5), relativeTolerance: 1e-5))
    }

    @Test func attentionBackwardMatchesReference() {
        let x = randomTensor([8, 16], seed: 22), w = Self.weights(seed: 23), dy = randomTensor([8, 16], seed: 24)
        let cache = CausalAttentionLayer.forward(x, weights: w, geometry: Self.geometry, sequenceLengths: Self.sequenceLengths).cache
        let fast = CausalAttentionLayer.backward(dy, cache: cache, weights: w, geometry: Self.geometry)
        let reference = CausalAttentionLayer.referenceBackward(dy, input: x, weights: w, geometry: Self.geometry, sequenceLengths: Self.sequenceLengths)
        #expect(isClose(fast.input, reference.input, relativeTolerance: 1e-5))
        #expect(isClose(fast.weights.query.floatTensor(), reference.weights.query.floatTensor(), relativeTolerance: 1e-5))
        #expect(isClose(fast.weights.key.floatTensor(), reference.weights.key.floatTensor(), relativeTolerance: 1e-5))
        #expect(isClose(fast.weights.value.floatTensor(), reference.weights.value.floatTensor(), relativeTolerance: 1e-5))
        #expect(isClose(fast.weights.output.floatTensor(), reference.weights.output.floatTensor(), relativeTolerance: 1e-5))
    }

    /// Sequences longer than one causal query block (`queryBlockRows`), and a KV cache whose past
    /// is not a multiple of it: forward and backward equal the token-by-token reference.
    @Test func causalQueryBlocksMatchReferenceAcrossBlocks() {
        let block = CausalAttentionLayer.queryBlockRows
        let lengths = [block + 6, 2 * block + 3, 1]
        let rows = lengths.reduce(0, +)
        let x = randomTensor([rows, 16], seed: 70, standardDeviation: 0.5), w = Self.weights(seed: 71), dy = randomTensor([rows, 16], seed: 72)
        let (output, cache) = CausalAttentionLayer.forward(x, weights: w, geometry: Self.geometry, sequenceLengths: lengths)
        #expect(isClose(output, CausalAttentionLayer.referenceForward(x, weights: w, geometry: Self.geometry, sequenceLengths: lengths), relativeTolerance: 1e-5))
        let fast = CausalAttentionLayer.backward(dy, cache: cache, weights: w, geometry: Self.geometry)
        let reference = CausalAttentionLayer.referenceBackward(dy, input: x, weights: w, geometry: Self.geometry, sequenceLengths: lengths)
        #expect(isClose(fast.input, reference.input, relativeTolerance: 1e-5))
        #expect(isClose(fast.weights.query.floatTensor(), reference.weights.query.floatTensor(), relativeTolerance: 1e-5))
        #expect(isClose(fast.weights.key.floatTensor(), reference.weights.key.floatTensor(), relativeTolerance: 1e-5))
        #expect(isClose(fast.weights.value.floatTensor(), reference.weights.value.floatTensor(), relativeTolerance: 1e-5))
        // The second sequence run as a prefix of block + 5 rows, then the rest from the KV cache.
        var config = MiniCPMConfig(hiddenSize: 16, intermediateSize: 8, numHiddenLayers: 1, numAttentionHeads: 4, numKeyValueHeads: 2, vocabSize: 4)
        config.maxPositionEmbeddings = 256
        let kv = KVCache(config: config)
        let second = x.rows(lengths[0] ..< lengths[0] + lengths[1]), split = block + 5
        let head = CausalAttentionLayer.forward(second.rows(0 ..< split), weights: w, geometry: Self.geometry, spans: [.init(length: split, cache: kv)],
                                                layer: 0, keepCache: false).output
        kv.advance(by: split)
        let tail = CausalAttentionLayer.forward(second.rows(split ..< lengths[1]), weights: w, geometry: Self.geometry,
                                                spans: [.init(length: lengths[1] - split, cache: kv)], layer: 0, keepCache: false).output
        let whole = output.rows(lengths[0] ..< lengths[0] + lengths[1])
        #expect(isClose(head, whole.rows(0 ..< split), relativeTolerance: 1e-5))
        #expect(isClose(tail, whole.rows(split ..< lengths[1]), relativeTolerance: 1e-5))
    }

    @Test func attentionBackwardMatchesFiniteDifferences() {
        let x = randomTensor([8, 16], seed: 25), w = Self.weights(seed: 26), r = randomTensor([8, 16], seed: 27)
        let geometry = Self.geometry, lengths = Self.sequenceLengths
        func loss(_ x: Tensor, _ w: CausalAttentionLayer.Weights) -> Float {
            projectedLoss(CausalAttentionLayer.forward(x, weights: w, geometry: geometry, sequenceLengths: lengths).output, r)
        }
        let cache = CausalAttentionLayer.forward(x, weights: w, geometry: geometry, sequenceLengths: lengths).cache
        let gradients = CausalAttentionLayer.backward(r, cache: cache, weights: w, geometry: geometry)
        #expect(matchesFiniteDifferences(gradients.input.values, at: x.values) { loss(Tensor(shape: x.shape, values: $0), w) })
        let parts: [(WritableKeyPath<CausalAttentionLayer.Weights, Weight>, String)] = [(\.query, "q"), (\.key, "k"), (\.value, "v"), (\.output, "o")]
        for (part, name) in parts {
            let ok = matchesFiniteDifferences(gradients.weights[keyPath: part].floatTensor().values, at: w[keyPath: part].floatTensor().values) { values in
                var shifted = w
                shifted[keyPath: part] = Weight(Tensor(shape: w[keyPath: part].shape, values: values))
                return loss(x, shifted)
            }
            #expect(ok, "W\(name)")
        }
    }

    // MARK: Cross-entropy

    static let targets = [3, -1, 0, 9, 9, 2, -1]

    static func crossEntropyInputs(seed: UInt64) -> (h: Tensor, norm: Tensor, head: Tensor) {
        var norm = randomTensor([6], seed: seed + 1, standardDeviation: 0.1)
        norm.values = norm.values.map { 1 + $0 }
        return (randomTensor([7, 6], seed: seed), norm, randomTensor([10, 6], seed: seed + 2))
    }

    /// A zero head gives uniform logits: every counted token costs exactly ln V.
    @Test func uniformLogitsCostLogVocabulary() {
        let (h, norm, _) = Self.crossEntropyInputs(seed: 30)
        let output = CrossEntropyLayer.forward(h, normWeight: norm, head: Weight(Tensor(shape: [10, 6])), targets: Self.targets, divisor: 2, epsilon: 1e-5)
        #expect(output.countedTokens == 5)
        #expect(abs(output.loss - logf(10)) < 1e-6)
        #expect(output.tokenLosses[1] == 0 && output.tokenLosses[6] == 0)
    }

    @Test func crossEntropyMatchesReference() {
        let (h, norm, head) = Self.crossEntropyInputs(seed: 31)
        let reference = CrossEntropyLayer.referenceForward(h, normWeight: norm, head: head, targets: Self.targets, divisor: 2, epsilon: 1e-5)
        let referenceGradients = CrossEntropyLayer.referenceBackward(h, normWeight: norm, head: head, targets: Self.targets, divisor: 2, epsilon: 1e-5)
        // Kept dlogits, and blocks of 3 rows recomputed in backward: the same numbers.
        for (keep, blockRows) in [(true, nil), (false, 3), (true, 2)] as [(Bool, Int?)] {
            let output = CrossEntropyLayer.forward(h, normWeight: norm, head: Weight(head), targets: Self.targets, divisor: 2, epsilon: 1e-5,
                                                   keepLogitGradient: keep, blockRows: blockRows)
            #expect(abs(output.loss - reference.loss) <= 1e-5 * reference.loss)
            #expect(isClose(output.tokenLosses, reference.tokenLosses, relativeTolerance: 1e-5))
            let gradients = CrossEntropyLayer.backward(cache: output.cache, normWeight: norm, head: Weight(head))
            #expect(isClose(gradients.input, referenceGradients.input, relativeTolerance: 1e-5))
            #expect(isClose(gradients.normWeight, referenceGradients.normWeight, relativeTolerance: 1e-5))
            #expect(isClose(gradients.head, referenceGradients.head, relativeTolerance: 1e-5))
        }
    }

    @Test func crossEntropyBackwardMatchesFiniteDifferences() {
        let (h, norm, head) = Self.crossEntropyInputs(seed: 32)
        func loss(_ h: Tensor, _ norm: Tensor, _ head: Tensor) -> Float {
            CrossEntropyLayer.forward(h, normWeight: norm, head: Weight(head), targets: Self.targets, divisor: 2, epsilon: 1e-5, keepLogitGradient: false).loss
        }
        let gradients = CrossEntropyLayer.backward(cache: CrossEntropyLayer.forward(h, normWeight: norm, head: Weight(head), targets: Self.targets,
                                                                                    divisor: 2, epsilon: 1e-5).cache,
                                                   normWeight: norm, head: Weight(head))
        #expect(matchesFiniteDifferences(gradients.input.values, at: h.values, absoluteTolerance: 1e-3) { loss(Tensor(shape: h.shape, values: $0), norm, head) })
        #expect(matchesFiniteDifferences(gradients.normWeight.values, at: norm.values, absoluteTolerance: 1e-3) { loss(h, Tensor(shape: norm.shape, values: $0), head) })
        #expect(matchesFiniteDifferences(gradients.head.values, at: head.values, absoluteTolerance: 1e-3) { loss(h, norm, Tensor(shape: head.shape, values: $0)) })
    }
}
