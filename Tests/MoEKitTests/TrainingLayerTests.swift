import Foundation
import Testing
@testable import MoEKit

/// Σ r ⊙ y in Double: a scalar loss whose gradient with respect to y is r.
func projectedLoss(_ y: Tensor, _ r: Tensor) -> Float {
    precondition(y.shape == r.shape)
    return Float(zip(y.values, r.values).reduce(0.0) { $0 + Double($1.0) * Double($1.1) })
}

/// `true` when an analytic gradient agrees with central finite differences of `loss` around `point`
/// (f32 throughout, so the tolerance is loose: 2% of the largest entry plus `absoluteTolerance`).
func matchesFiniteDifferences(_ analytic: [Float], at point: [Float], step: Float = 1e-2, relativeTolerance: Float = 2e-2,
                              absoluteTolerance: Float = 1e-4, _ loss: ([Float]) -> Float) -> Bool {
    let numeric = finiteDifferenceGradient(at: point, step: step, loss)
    let ok = isClose(analytic, numeric, relativeTolerance: relativeTolerance, absoluteTolerance: absoluteTolerance)
    if !ok {
        let worst = analytic.indices.max { abs(analytic[$0] - numeric[$0]) < abs(analytic[$1] - numeric[$1]) } ?? 0
        print("gradient mismatch at \(worst): analytic \(analytic[worst]), numeric \(numeric[worst]); max |g| \(numeric.map(abs).max() ?? 0)")
    }
    return ok
}

/// Embedding, RMSNorm, linear and RoPE training layers: fast against reference, backward against
/// finite differences and hand-checked cases.
@Suite struct TrainingLayerTests {
    /// The check itself has teeth: a gradient 10% off, or one entry wrong, is rejected.
    @Test func finiteDifferenceCheckRejectsWrongGradients() {
        let x = randomTensor([3, 4], seed: 19), w = randomTensor([5, 4], seed: 14), r = randomTensor([3, 5], seed: 15)
        let loss = { (values: [Float]) in projectedLoss(LinearLayer.forward(Tensor(shape: x.shape, values: values), weight: Weight(w)), r) }
        let dx = LinearLayer.inputGradient(r, weight: Weight(w)).values
        #expect(matchesFiniteDifferences(dx, at: x.values, loss))
        #expect(!matchesFiniteDifferences(dx.map { $0 * 1.1 }, at: x.values, loss))
        var oneWrong = dx
        oneWrong[5] += 0.1 * (dx.map(abs).max() ?? 1)
        #expect(!matchesFiniteDifferences(oneWrong, at: x.values, loss))
    }

    // MARK: Embedding

    @Test func embeddingForwardMatchesReference() {
        let table = randomTensor([7, 5], seed: 1)
        let tokens = [3, 0, 6, 3]
        #expect(EmbeddingLayer.forward(tokens: tokens, embedding: Weight(table), scale: 12) == EmbeddingLayer.referenceForward(tokens: tokens, embedding: table, scale: 12))
    }

    /// Hand case: tokens (1, 3, 1), scale 2 → row 1 gets 2·(dh₀ + dh₂), row 3 gets 2·dh₁, others stay 0.
    @Test func embeddingBackwardScatterAddsRepeatedTokens() {
        let dh = Tensor(shape: [3, 2], values: [1, 2, 10, 20, 100, 200])
        var gradient = Tensor(shape: [4, 2])
        EmbeddingLayer.backward(dh, tokens: [1, 3, 1], scale: 2, into: &gradient)
        #expect(gradient.values == [0, 0, 202, 404, 0, 0, 20, 40])
        #expect(gradient == EmbeddingLayer.referenceBackward(dh, tokens: [1, 3, 1], scale: 2, vocabularySize: 4))
    }

    // MARK: RMSNorm

    @Test func rmsNormForwardEqualsInferenceKernel() {
        let x = randomTensor([6, 16], seed: 2)
        let w = randomTensor([16], seed: 3)
        #expect(RMSNormLayer.forward(x, weight: w, epsilon: 1e-5).output == Kernels.rmsNorm(x, weight: w.values, epsilon: 1e-5))
    }

    @Test func rmsNormBackwardMatchesReference() {
        let x = randomTensor([5, 12], seed: 4), w = randomTensor([12], seed: 5), dy = randomTensor([5, 12], seed: 6)
        let fast = RMSNormLayer.backward(dy, cache: RMSNormLayer.forward(x, weight: w, epsilon: 1e-5).cache, weight: w)
        let reference = RMSNormLayer.referenceBackward(dy, input: x, weight: w, epsilon: 1e-5)
        #expect(isClose(fast.input, reference.input, relativeTolerance: 1e-5))
        #expect(isClose(fast.weight, reference.weight, relativeTolerance: 1e-5))
    }

    /// Rows wider than one row group's 16k elements (groups of 8 rows at d = 2048): the row groups run
    /// on every core and their parts of dw are added in order; dx and dw still match the reference.
    @Test func rmsNormBackwardOverSeveralRowGroupsMatchesReference() {
        let rows = 19, d = 2048
        #expect(Kernels.rowsPerGroup(columns: d) < rows)
        let x = randomTensor([rows, d], seed: 7), w = randomTensor([d], seed: 8), dy = randomTensor([rows, d], seed: 9)
        let fast = RMSNormLayer.backward(dy, cache: RMSNormLayer.forward(x, weight: w, epsilon: 1e-5).cache, weight: w)
        let reference = RMSNormLayer.referenceBackward(dy, input: x, weight: w, epsilon: 1e-5)
        #expect(isClose(fast.input, reference.input, relativeTolerance: 1e-5))
        #expect(isClose(fast.weight, reference.weight, relativeTolerance: 1e-5))
        #expect(isClose(RMSNormLayer.forward(x, weight: w, epsilon: 1e-5).output, ReferenceKernels.rmsNorm(x, weight: w.values, epsilon: 1e-5),
                        relativeTolerance: 1e-5))
    }

    /// A geometry with RoPE's cos/sin precomputed for a batch's positions rotates exactly as the
    /// per-call tables do (forward and inverse).
    @Test func precomputedRotaryTableGivesTheSameRotation() {
        let geometry = CausalAttentionLayer.Geometry(heads: 2, keyValueHeads: 1, rotary: RotaryEmbedding(headDim: 8, theta: 10000))
        let spans = [CausalAttentionLayer.Span(length: 7), CausalAttentionLayer.Span(length: 4)]
        let precomputed = geometry.precomputingRotary(forSpans: spans)
        #expect(precomputed.rotary.precomputedPositions == 7)
        let positions = CausalAttentionLayer.positions(sequenceLengths: spans.map(\.length))
        for inverse in [false, true] {
            var perCall = randomTensor([positions.count, 16], seed: 10), table = perCall
            Kernels.applyRotary(&perCall, heads: 2, positions: positions, rotary: geometry.rotary, inverse: inverse)
            Kernels.applyRotary(&table, heads: 2, positions: positions, rotary: precomputed.rotary, inverse: inverse)
            #expect(perCall == table)
        }
    }

    @Test func rmsNormBackwardMatchesFiniteDifferences() {
        let x = randomTensor([3, 8], seed: 7), w = randomTensor([8], seed: 8), r = randomTensor([3, 8], seed: 9)
        let gradients = RMSNormLayer.backward(r, cache: RMSNormLayer.forward(x, weight: w, epsilon: 1e-5).cache, weight: w)
        #expect(matchesFiniteDifferences(gradients.input.values, at: x.values) { values in
            projectedLoss(RMSNormLayer.forward(Tensor(shape: x.shape, values: values), weight: w, epsilon: 1e-5).output, r)
        })
        #expect(matchesFiniteDifferences(gradients.weight.values, at: w.values) { values in
            projectedLoss(RMSNormLayer.forward(x, weight: Tensor(shape: w.shape, values: values), epsilon: 1e-5).output, r)
        })
    }

    // MARK: Linear

    @Test func linearBackwardMatchesReferenceProducts() {
        let x = randomTensor([5, 6], seed: 10), w = randomTensor([4, 6], seed: 11), dy = randomTensor([5, 4], seed: 12)
        #expect(isClose(LinearLayer.forward(x, weight: Weight(w)), MatrixMultiply.referenceProduct(x, w, transposeB: true), relativeTolerance: 1e-5))
        let (dx, dw) = LinearLayer.backward(dy, input: x, weight: Weight(w))
        #expect(isClose(dx, MatrixMultiply.referenceProduct(dy, w), relativeTolerance: 1e-5))
        #expect(isClose(dw, MatrixMultiply.referenceProduct(dy, x, transposeA: true), relativeTolerance: 1e-5))
        var accumulated = dx
        LinearLayer.accumulateInputGradient(dy, weight: Weight(w), into: &accumulated)
        var doubled = dx
        Kernels.scale(&doubled, by: 2)
        #expect(isClose(accumulated, doubled, relativeTolerance: 1e-6))
    }

    @Test func linearBackwardMatchesFiniteDifferences() {
        let x = randomTensor([3, 4], seed: 13), w = randomTensor([5, 4], seed: 14), r = randomTensor([3, 5], seed: 15)
        let (dx, dw) = LinearLayer.backward(r, input: x, weight: Weight(w))
        #expect(matchesFiniteDifferences(dx.values, at: x.values) { projectedLoss(LinearLayer.forward(Tensor(shape: x.shape, values: $0), weight: Weight(w)), r) })
        #expect(matchesFiniteDifferences(dw.values, at: w.values) { projectedLoss(LinearLayer.forward(x, weight: Weight(Tensor(shape: w.shape, values: $0))), r) })
    }

    // MARK: RoPE

    static let rotary = RotaryEmbedding(headDim: 8, theta: 10000, precomputedPositions: 16)

    @Test func rotaryBackwardInvertsForward() {
        let x = randomTensor([5, 16], seed: 16)
        let positions = [0, 1, 2, 7, 11]
        var back = RotaryLayer.forward(x, heads: 2, positions: positions, rotary: Self.rotary)
        #expect(back != x)
        RotaryLayer.backward(&back, heads: 2, positions: positions, rotary: Self.rotary)
        #expect(isClose(back, x, relativeTolerance: 1e-6))
    }

    @Test func rotaryBackwardMatchesReferenceAndFiniteDifferences() {
        let x = randomTensor([4, 16], seed: 17), r = randomTensor([4, 16], seed: 18)
        let positions = [3, 0, 9, 40]  // 40 is beyond the precomputed table
        var gradient = r
        RotaryLayer.backward(&gradient, heads: 2, positions: positions, rotary: Self.rotary)
        #expect(isClose(gradient, RotaryLayer.referenceBackward(r, heads: 2, headDim: 8, positions: positions, theta: 10000), relativeTolerance: 1e-5))
        #expect(matchesFiniteDifferences(gradient.values, at: x.values) {
            projectedLoss(RotaryLayer.forward(Tensor(shape: x.shape, values: $0), heads: 2, positions: positions, rotary: Self.rotary), r)
        })
    }
}
