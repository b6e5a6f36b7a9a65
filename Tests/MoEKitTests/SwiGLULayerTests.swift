import Foundation
import Testing
@testable import MoEKit

@Suite struct SwiGLULayerTests {
    static func weights(hidden: Int, intermediate: Int, seed: UInt64, standardDeviation: Float = 0.5) -> SwiGLUWeights {
        SwiGLUWeights(gate: randomTensor([intermediate, hidden], seed: seed, standardDeviation: standardDeviation),
                      up: randomTensor([intermediate, hidden], seed: seed &+ 1, standardDeviation: standardDeviation),
                      down: randomTensor([hidden, intermediate], seed: seed &+ 2, standardDeviation: standardDeviation))
    }

    /// Inference (no cache) and training (cache kept) run the same forward: equal outputs, equal to
    /// the plain-loop reference.
    @Test func forwardWithAndWithoutCacheAgree() {
        let weights = Self.weights(hidden: 16, intermediate: 24, seed: 3)
        let x = randomTensor([7, 16], seed: 4)
        let inference = SwiGLULayer.forward(x, weights: weights, keepCache: false)
        let (output, cache) = SwiGLULayer.forward(x, weights: weights)
        #expect(inference.cache == nil && inference.output == output)
        #expect(isClose(output, SwiGLULayer.referenceForward(x, weights: weights), relativeTolerance: 1e-5))
        #expect(cache!.input == x && cache!.gateUp.shape == [7, 48] && cache!.activated.shape == [7, 24])
    }

    /// The GEMM backward equals the plain-loop reference backward for every gradient.
    @Test func backwardMatchesReferenceLoops() {
        let weights = Self.weights(hidden: 8, intermediate: 12, seed: 11)
        let x = randomTensor([5, 8], seed: 12)
        let dy = randomTensor([5, 8], seed: 13)
        let cache = SwiGLULayer.forward(x, weights: weights).cache!
        let fast = SwiGLULayer.backward(dy, cache: cache, weights: weights)
        let reference = SwiGLULayer.referenceBackward(dy, input: x, weights: weights)
        #expect(isClose(fast.input, reference.input, relativeTolerance: 1e-5))
        #expect(isClose(fast.weights.gate, reference.weights.gate, relativeTolerance: 1e-5))
        #expect(isClose(fast.weights.up, reference.weights.up, relativeTolerance: 1e-5))
        #expect(isClose(fast.weights.downTensor, reference.weights.downTensor, relativeTolerance: 1e-5))
    }

    /// Central finite differences in f32 of L = Σ r ⊙ y (r fixed, random) agree with the backward
    /// for x and all three weights. Small sizes and weights of std 0.5 keep L of order 1, so a step
    /// of 1e-2 has f32 rounding error ~1e-5 and truncation error ~1e-4 against gradients of order 1.
    @Test func backwardMatchesFiniteDifferences() {
        let hidden = 4, intermediate = 5, rows = 3
        let weights = Self.weights(hidden: hidden, intermediate: intermediate, seed: 21)
        let x = randomTensor([rows, hidden], seed: 22)
        let r = randomTensor([rows, hidden], seed: 23)
        func loss(_ x: Tensor, _ w: SwiGLUWeights) -> Float {
            let y = SwiGLULayer.forward(x, weights: w).output
            return zip(y.values, r.values).reduce(Float(0)) { $0 + $1.0 * $1.1 }
        }
        let cache = SwiGLULayer.forward(x, weights: weights).cache!
        let gradients = SwiGLULayer.backward(r, cache: cache, weights: weights)
        let step: Float = 1e-2
        let dx = finiteDifferenceGradient(at: x.values, step: step) { loss(Tensor(shape: x.shape, values: $0), weights) }
        #expect(isClose(dx, gradients.input.values, relativeTolerance: 1e-2))
        let dGate = finiteDifferenceGradient(at: weights.gate.values, step: step) { v in
            loss(x, SwiGLUWeights(gate: Tensor(shape: weights.gate.shape, values: v), up: weights.up, down: weights.downTensor))
        }
        #expect(isClose(dGate, gradients.weights.gate.values, relativeTolerance: 1e-2))
        let dUp = finiteDifferenceGradient(at: weights.up.values, step: step) { v in
            loss(x, SwiGLUWeights(gate: weights.gate, up: Tensor(shape: weights.up.shape, values: v), down: weights.downTensor))
        }
        #expect(isClose(dUp, gradients.weights.up.values, relativeTolerance: 1e-2))
        let dDown = finiteDifferenceGradient(at: weights.downTensor.values, step: step) { v in
            loss(x, SwiGLUWeights(gate: weights.gate, up: weights.up, down: Tensor(shape: weights.down.shape, values: v)))
        }
        #expect(isClose(dDown, gradients.weights.downTensor.values, relativeTolerance: 1e-2))
    }

    /// Hidden 1, intermediate 1, by hand: x = 1, W_g = ln 3, W_u = 2, W_d = 3, dy = 1.
    /// g = ln 3, σ(g) = 3/4, silu(g) = ¾ ln 3, u = 2, a = 1.5 ln 3, y = 4.5 ln 3 ≈ 4.9437553.
    /// da = dy·W_d = 3; dW_d = dy·a = 1.5 ln 3 ≈ 1.6479184;
    /// silu'(g) = σ(1 + g(1 − σ)) = ¾(1 + ¼ ln 3), so dg = da·u·silu'(g) = 4.5 + 1.125 ln 3 ≈ 5.7359388,
    /// du = da·silu(g) = 2.25 ln 3 ≈ 2.4718776; dW_g = dg·x ≈ 5.7359388, dW_u = du·x ≈ 2.4718776;
    /// dx = dg·W_g + du·W_u = 9 ln 3 + 1.125 ln² 3 ≈ 11.245328.
    @Test func handComputedScalarCase() {
        let weights = SwiGLUWeights(gate: Tensor(shape: [1, 1], values: [Float(log(3.0))]),
                                    up: Tensor(shape: [1, 1], values: [2]), down: Tensor(shape: [1, 1], values: [3]))
        let x = Tensor(shape: [1, 1], values: [1])
        let (y, cache) = SwiGLULayer.forward(x, weights: weights)
        #expect(abs(y.values[0] - 4.9437553) < 1e-5)
        let gradients = SwiGLULayer.backward(Tensor(shape: [1, 1], values: [1]), cache: cache!, weights: weights)
        #expect(abs(gradients.weights.downTensor.values[0] - 1.6479184) < 1e-5)
        #expect(abs(gradients.weights.gate.values[0] - 5.7359388) < 1e-5)
        #expect(abs(gradients.weights.up.values[0] - 2.4718776) < 1e-5)
        #expect(abs(gradients.input.values[0] - 11.245328) < 1e-4)
    }

    /// No rows: an empty output and zero weight gradients.
    @Test func emptyInputGivesZeroGradients() {
        let weights = Self.weights(hidden: 4, intermediate: 6, seed: 31)
        let (y, cache) = SwiGLULayer.forward(Tensor(shape: [0, 4]), weights: weights)
        #expect(y.shape == [0, 4])
        let gradients = SwiGLULayer.backward(Tensor(shape: [0, 4]), cache: cache!, weights: weights)
        #expect(gradients.input.shape == [0, 4])
        #expect(gradients.weights.gateUp.floatTensor().values.allSatisfy { $0 == 0 } && gradients.weights.downTensor.values.allSatisfy { $0 == 0 })
    }
}
