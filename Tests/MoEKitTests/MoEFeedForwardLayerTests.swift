import Foundation
import Testing
@testable import MoEKit

/// The training MoE layer: forward equals the inference layer, backward equals the plain-loop
/// reference and central finite differences for every router configuration it trains.
@Suite struct MoEFeedForwardLayerTests {
    static let tokens = 6, hidden = 8, intermediate = 12, experts = 4, topK = 2

    /// One router configuration and everything a forward call needs; `forward()` builds a fresh
    /// router each time, so noisy configurations see the same noise (same `noiseSeed`) on every call.
    struct Setup: Sendable {
        var x = randomTensor([tokens, hidden], seed: 1)
        var gateWeight = randomTensor([MoEFeedForwardLayerTests.experts, hidden], seed: 2, standardDeviation: 0.5)
        var experts = (0 ..< MoEFeedForwardLayerTests.experts).map {
            ExpertTensors(SwiGLULayerTests.weights(hidden: hidden, intermediate: intermediate, seed: 10 + 3 * UInt64($0)))
        }
        var configuration = RouterConfiguration()
        var training = false
        var noiseWeight: Tensor?
        var bias: [Float]?
        var sequenceLengths = [tokens]

        func router() throws -> ConfigurableRouter {
            let router = try ConfigurableRouter(configuration: configuration, layers: 1, experts: MoEFeedForwardLayerTests.experts,
                                                hiddenSize: hidden, modelTopK: topK)
            router.isTraining = training
            if let noiseWeight { router.noiseWeights[0] = noiseWeight }
            if let bias { try router.setBalancingBias(bias, layer: 0) }
            return router
        }

        /// The layer's weights built from the tensors.
        var weights: MoEWeights { MoEWeights(router: gateWeight, experts: experts.map(\.weights)) }

        func forward() throws -> MoEFeedForwardLayer.Output {
            MoEFeedForwardLayer.forward(x, weights: weights, router: try router(), layer: 0,
                                        loss: RouterLoss(configuration: configuration), sequenceLengths: sequenceLengths)
        }
    }

    /// One expert's three projections as plain tensors (finite differences perturb them one by one).
    struct ExpertTensors: Sendable {
        var gate: Tensor, up: Tensor, down: Tensor
        init(_ weights: SwiGLUWeights) { (gate, up, down) = (weights.gate, weights.up, weights.downTensor) }
        var weights: SwiGLUWeights { SwiGLUWeights(gate: gate, up: up, down: down) }
    }

    /// The router configurations the layer is checked on (every scoring × weighting, scale,
    /// capacity with both drop policies, expert choice, loss-free bias, each kind of noise, every loss).
    enum Case: String, CaseIterable, Sendable {
        case miniCPMDefault, unnormalizedWithZAndImportanceLoss, softmaxOverSelectedScaled, sigmoidRenormalizedScaled,
             sigmoidUnnormalizedWithBias, capacityByProbability, capacityByPosition, softmaxOverSelectedWithCapacity,
             expertChoiceSoftmax, expertChoiceSigmoidScaled, inputJitterAndLogitNoise, noisyTopKWithLoadLoss,
             noisyTopKWithJitterAndLoadLoss, perSequenceLoss, reluRouting, reluRoutingScaledWithJitter

        var setup: Setup {
            var setup = Setup()
            var c = RouterConfiguration()
            switch self {
            case .miniCPMDefault: break
            case .unnormalizedWithZAndImportanceLoss:
                c.weighting = .unnormalized; c.zLossCoefficient = 0.05; c.importanceCoefficient = 0.1
            case .softmaxOverSelectedScaled:
                c.weighting = .softmaxOverSelected; c.weightScale = 2
            case .sigmoidRenormalizedScaled:
                c.scoring = .sigmoid; c.weightScale = 2.5; c.loadBalancingLoss = .huggingFace; c.loadBalancingCoefficient = 0.1
            case .sigmoidUnnormalizedWithBias:
                c.scoring = .sigmoid; c.weighting = .unnormalized; c.auxiliaryLossFreeBalancing = true
                setup.bias = [0.15, -0.2, 0.05, 0]
            case .capacityByProbability:
                c.capacityFactor = 0.5
            case .capacityByPosition:
                c.capacityFactor = 0.5; c.dropPolicy = .position; c.scoring = .sigmoid
            case .softmaxOverSelectedWithCapacity:
                c.weighting = .softmaxOverSelected; c.capacityFactor = 0.5
            case .expertChoiceSoftmax:
                c.mode = .expertChoice; c.capacityFactor = 1; c.zLossCoefficient = 0.05
            case .expertChoiceSigmoidScaled:
                c.mode = .expertChoice; c.capacityFactor = 1.5; c.scoring = .sigmoid; c.weightScale = 1.5
            case .inputJitterAndLogitNoise:
                c.inputJitter = 0.2; c.logitNoise = 0.3; c.noiseSeed = 1; setup.training = true
            case .noisyTopKWithLoadLoss:
                c.noisyTopK = true; c.loadCoefficient = 0.5; c.importanceCoefficient = 0.1; c.logitNoise = 0.1; c.noiseSeed = 3
                setup.training = true
                setup.noiseWeight = randomTensor([experts, hidden], seed: 44, standardDeviation: 0.3)
            case .noisyTopKWithJitterAndLoadLoss:
                c.noisyTopK = true; c.loadCoefficient = 0.5; c.inputJitter = 0.2; c.noiseSeed = 5; c.weighting = .unnormalized
                setup.training = true
                setup.noiseWeight = randomTensor([experts, hidden], seed: 45, standardDeviation: 0.3)
            case .perSequenceLoss:
                c.loadBalancingLoss = .perSequence; c.loadBalancingCoefficient = 0.2
                setup.sequenceLengths = [2, 4]
            case .reluRouting:
                c.mode = .relu; c.scoring = .relu; c.l1InitialCoefficient = 0.3; c.zLossCoefficient = 0.05
            case .reluRoutingScaledWithJitter:
                c.mode = .relu; c.scoring = .relu; c.l1InitialCoefficient = 0.2; c.weightScale = 2; c.inputJitter = 0.2; c.noiseSeed = 2
                setup.training = true
            }
            setup.configuration = c
            return setup
        }
    }

    static func dot(_ a: Tensor, _ b: Tensor) -> Float {
        zip(a.values, b.values).reduce(Float(0)) { $0 + $1.0 * $1.1 }
    }

    // MARK: Forward

    /// The training forward (caches kept, loss evaluated) gives inference's output (no cache, no
    /// loss) for an identical router, and its auxiliary loss is `RouterLoss.evaluate` of the same routing.
    @Test(arguments: [Case.miniCPMDefault, .capacityByPosition, .expertChoiceSigmoidScaled, .inputJitterAndLogitNoise, .noisyTopKWithLoadLoss])
    func forwardEqualsInferenceLayer(_ testCase: Case) throws {
        let setup = testCase.setup
        let output = try setup.forward()
        let inference = MoEFeedForwardLayer.forward(setup.x, weights: setup.weights, router: try setup.router(), layer: 0, loss: nil,
                                                    sequenceLengths: setup.sequenceLengths, keepCache: false)
        #expect(inference.cache == nil && inference.auxiliaryLoss == nil)
        #expect(isClose(output.output, inference.output, relativeTolerance: 1e-6))
        let routed = try setup.router().route(inputs: setup.x, gateWeight: setup.gateWeight, layer: 0)
        #expect(output.routed.decision == routed.decision)
        #expect(output.auxiliaryLoss == RouterLoss(configuration: setup.configuration)
            .evaluate(routed, topK: Self.topK, sequenceLengths: setup.sequenceLengths))
    }

    /// Each configuration exercises what it names: capacity cases drop, noise cases carry noise.
    @Test func casesExerciseTheirFeature() throws {
        for testCase in [Case.capacityByProbability, .capacityByPosition, .softmaxOverSelectedWithCapacity] {
            #expect(try testCase.setup.forward().routed.decision.droppedAssignments > 0, "\(testCase)")
        }
        let jittered = try Case.noisyTopKWithJitterAndLoadLoss.setup.forward().routed
        #expect(jittered.inputJitterFactors != nil && jittered.noisyTopKSamples != nil && jittered.noiseStandardDeviations != nil)
        #expect(try Case.noisyTopKWithLoadLoss.setup.forward().auxiliaryLoss?.load != nil)
        #expect(try Case.expertChoiceSoftmax.setup.forward().routed.decision.slotsPerToken == Self.experts)
        for relu in [Case.reluRouting, .reluRoutingScaledWithJitter] {
            let decision = try relu.setup.forward().routed.decision
            let active = (0 ..< Self.tokens).map { t in (0 ..< Self.experts).filter { decision.selectedExperts[t * Self.experts + $0] >= 0 }.count }
            #expect(Set(active).count > 1, "\(relu): active experts per token vary, got \(active)")
        }
        let biased = Case.sigmoidUnnormalizedWithBias.setup
        var unbiased = biased
        unbiased.bias = nil
        #expect(try biased.forward().routed.decision.selectedExperts != unbiased.forward().routed.decision.selectedExperts)
    }

    // MARK: Backward

    /// The grouped GEMM backward equals the token-by-token, Jacobian-based reference.
    @Test(arguments: Case.allCases)
    func backwardMatchesReference(_ testCase: Case) throws {
        let setup = testCase.setup
        let output = try setup.forward()
        let dy = randomTensor([Self.tokens, Self.hidden], seed: 77)
        let fast = MoEFeedForwardLayer.backward(dy, cache: output.cache!, weights: setup.weights)
        let reference = MoEFeedForwardLayer.referenceBackward(dy, cache: output.cache!, gateWeight: setup.gateWeight, experts: setup.weights.experts)
        #expect(isClose(fast.input, reference.input, relativeTolerance: 1e-5), "\(testCase): input")
        #expect(isClose(fast.gateWeight, reference.gateWeight, relativeTolerance: 1e-5), "\(testCase): gate weight")
        for e in 0 ..< Self.experts {
            #expect(isClose(fast.experts[e].gate, reference.experts[e].gate, relativeTolerance: 1e-5), "\(testCase): expert \(e) gate")
            #expect(isClose(fast.experts[e].up, reference.experts[e].up, relativeTolerance: 1e-5), "\(testCase): expert \(e) up")
            #expect(isClose(fast.experts[e].downTensor, reference.experts[e].downTensor, relativeTolerance: 1e-5), "\(testCase): expert \(e) down")
        }
        #expect((fast.noiseWeight == nil) == (setup.noiseWeight == nil), "\(testCase): noise weight gradient present")
        if let noise = fast.noiseWeight, let expected = reference.noiseWeight {
            #expect(isClose(noise, expected, relativeTolerance: 1e-5), "\(testCase): noise weight")
        }
    }

    /// Central finite differences in f32 of L = Σ r ⊙ y + aux.total (r fixed, random) with respect
    /// to x, the gate weight, every expert weight and (noisy top-k) the noise weight agree with the
    /// backward to 1% of each tensor's largest gradient. Every evaluation routes with a fresh router
    /// of the same seed (identical noise), and the selection — including capacity drops — must not
    /// change under any perturbation, so no difference crosses a selection boundary. Step 1e-2:
    /// L is of order 10, so f32 rounding contributes ~1e-4 to a difference quotient.
    @Test(arguments: Case.allCases)
    func backwardMatchesFiniteDifferences(_ testCase: Case) throws {
        let setup = testCase.setup
        let r = randomTensor([Self.tokens, Self.hidden], seed: 99)
        let base = try setup.forward()
        let gradients = MoEFeedForwardLayer.backward(r, cache: base.cache!, weights: setup.weights)
        let selection = base.routed.decision.selectedExperts
        var selectionChanged = false
        func loss(_ s: Setup) -> Float {
            guard let output = try? s.forward() else { return .nan }
            if output.routed.decision.selectedExperts != selection { selectionChanged = true }
            return Self.dot(output.output, r) + output.auxiliaryLoss!.total
        }
        let step: Float = 1e-2
        func check(_ name: String, _ point: Tensor, _ analytic: Tensor, _ set: (inout Setup, Tensor) -> Void) {
            let numeric = finiteDifferenceGradient(at: point.values, step: step) { values in
                var s = setup
                set(&s, Tensor(shape: point.shape, values: values))
                return loss(s)
            }
            let scale = analytic.values.reduce(Float(0)) { max($0, abs($1)) }
            let worst = zip(numeric, analytic.values).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
            #expect(isClose(numeric, analytic.values, relativeTolerance: 1e-2, absoluteTolerance: 1e-4),
                    "\(testCase): \(name) max |fd − analytic| \(worst) against max |analytic| \(scale)")
        }
        check("x", setup.x, gradients.input) { $0.x = $1 }
        check("gate weight", setup.gateWeight, gradients.gateWeight) { $0.gateWeight = $1 }
        for e in 0 ..< Self.experts {
            check("expert \(e) gate", setup.experts[e].gate, gradients.experts[e].gate) { $0.experts[e].gate = $1 }
            check("expert \(e) up", setup.experts[e].up, gradients.experts[e].up) { $0.experts[e].up = $1 }
            check("expert \(e) down", setup.experts[e].down, gradients.experts[e].downTensor) { $0.experts[e].down = $1 }
        }
        if let noiseWeight = setup.noiseWeight {
            let analytic = try #require(gradients.noiseWeight)
            #expect(analytic.values.contains { $0 != 0 })
            check("noise weight", noiseWeight, analytic) { $0.noiseWeight = $1 }
        }
        #expect(!selectionChanged, "\(testCase): a perturbation changed the selection; pick inputs further from a tie")
    }

    /// Renormalised top-2 of E = 3 by hand. Logits (0, ln 2, ln 3) give p = (1/6, 1/3, 1/2); the
    /// top 2 are experts 2 and 1, S = 5/6, w = (3/5, 2/5). With ∂L/∂w = (1, 0):
    /// ∂L/∂s_i = (1/S)(dw_i − Σ_j dw_j w_j) = (6/5)(1 − 3/5) = 12/25 for expert 2 and
    /// (6/5)(0 − 3/5) = −18/25 for expert 1; ⟨∂L/∂s, p⟩ = 12/25·1/2 − 18/25·1/3 = 0, so
    /// ∂L/∂z = p ⊙ ∂L/∂s = (0, −6/25, 6/25) = (0, −0.24, 0.24). With ∂L/∂w = (0, 1) the signs swap.
    /// When the capacity limit drops expert 2 (weight 0, ∂L/∂w = 0) the remaining weight is still
    /// s_1/S = 2/5 — S keeps the dropped score — so ∂L/∂w = (0, 1) again gives (0, 0.24, −0.24).
    @Test func renormalizedTopTwoGradientByHand() throws {
        let router = try ConfigurableRouter(configuration: RouterConfiguration(), layers: 1, experts: 3, hiddenSize: 1, modelTopK: 2)
        let gate = Tensor(shape: [3, 1], values: [0, Float(log(2.0)), Float(log(3.0))])
        let routed = router.route(inputs: Tensor(shape: [2, 1], values: [1, 1]), gateWeight: gate, layer: 0)
        #expect(routed.decision.selectedExperts == [2, 1, 2, 1])
        #expect(isClose(routed.decision.combineWeights, [0.6, 0.4, 0.6, 0.4], relativeTolerance: 1e-6))
        let gradient = MoEFeedForwardLayer.selectionLogitGradient(combineWeightGradient: [1, 0, 0, 1], routed: routed,
                                                                  configuration: RouterConfiguration(), balancingBias: nil)
        #expect(isClose(gradient, [0, -0.24, 0.24, 0, 0.24, -0.24], absoluteTolerance: 1e-6))

        var dropped = routed
        dropped.decision = RoutingDecision(tokens: 2, experts: 3, slotsPerToken: 2, selectedExperts: [-1, 1, 2, 1],
                                           combineWeights: [0, 0.4, 0.6, 0.4], probabilities: routed.decision.probabilities,
                                           droppedAssignments: 1)
        let droppedGradient = MoEFeedForwardLayer.selectionLogitGradient(combineWeightGradient: [0, 1, 0, 0], routed: dropped,
                                                                         configuration: RouterConfiguration(), balancingBias: nil)
        #expect(isClose(droppedGradient, [0, 0.24, -0.24, 0, 0, 0], absoluteTolerance: 1e-6))
    }

    /// The layer never moves the auxiliary-loss-free bias: the trainer updates it once per step.
    @Test func forwardAndBackwardLeaveTheBiasAlone() throws {
        let setup = Case.sigmoidUnnormalizedWithBias.setup
        let router = try setup.router()
        let before = router.balancingBias
        let output = MoEFeedForwardLayer.forward(setup.x, weights: setup.weights, router: router,
                                                 layer: 0, loss: RouterLoss(configuration: setup.configuration),
                                                 sequenceLengths: setup.sequenceLengths)
        _ = MoEFeedForwardLayer.backward(randomTensor([Self.tokens, Self.hidden], seed: 3), cache: output.cache!, weights: setup.weights)
        #expect(router.balancingBias == before)
    }

    /// An expert that receives no token gets exactly zero gradients.
    @Test func unusedExpertHasZeroGradients() throws {
        var setup = Setup()
        // Positive inputs and expert 3's gate row at −5: its logit is far below the others, never in a top 2.
        setup.x = Tensor(shape: setup.x.shape, values: setup.x.values.map { abs($0) })
        for h in 0 ..< Self.hidden { setup.gateWeight[3, h] = -5 }
        let output = try setup.forward()
        #expect(output.routed.decision.expertCounts[3] == 0)
        let gradients = MoEFeedForwardLayer.backward(randomTensor([Self.tokens, Self.hidden], seed: 4), cache: output.cache!, weights: setup.weights)
        #expect(gradients.experts[3].gateUp.floatTensor().values.allSatisfy { $0 == 0 } && gradients.experts[3].downTensor.values.allSatisfy { $0 == 0 })
    }

    // MARK: Load loss partials

    /// The split load-loss partials add up to `loadLoss`'s gradient (numerator + θ parts), and
    /// the σ part matches central differences of the loss in σ (z and H held fixed).
    @Test func loadLossPartialsMatchLoadLossAndFiniteDifferences() {
        let tokens = 5, experts = 4, topK = 2
        let logits = randomTensor([tokens, experts], seed: 61).values
        let noise = randomTensor([tokens, experts], seed: 62).values
        let deviations = randomTensor([tokens, experts], seed: 63).values.map { 0.5 + abs($0) }
        let noisy = (0 ..< logits.count).map { logits[$0] + noise[$0] * deviations[$0] }
        let full = RouterLosses.loadLoss(logits: logits, noisyLogits: noisy, noiseStandardDeviations: deviations,
                                         tokens: tokens, experts: experts, topK: topK)
        let partials = RouterLosses.loadLossPartials(logits: logits, noisyLogits: noisy, noiseStandardDeviations: deviations,
                                                     tokens: tokens, experts: experts, topK: topK)
        #expect(partials.value == full.value)
        #expect(isClose(zip(partials.logits, partials.noisyLogits).map(+), full.gradient, relativeTolerance: 1e-6))
        let numeric = finiteDifferenceGradient(at: deviations, step: 1e-3) { sigma in
            RouterLosses.loadLoss(logits: logits, noisyLogits: noisy, noiseStandardDeviations: sigma,
                                  tokens: tokens, experts: experts, topK: topK).value
        }
        #expect(isClose(numeric, partials.standardDeviations, relativeTolerance: 1e-2, absoluteTolerance: 1e-5))
    }

    // MARK: Timing (not an assertion; run with MOEKIT_TIMING=1)

    /// Forward and forward + backward at tokens 512, hidden 256, intermediate 640, E 8, k 2.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["MOEKIT_TIMING"] != nil))
    func printTimings() throws {
        let tokens = 512, hidden = 256, intermediate = 640, experts = 8
        let x = randomTensor([tokens, hidden], seed: 1)
        let gate = randomTensor([experts, hidden], seed: 2, standardDeviation: 0.05)
        let weights = (0 ..< experts).map { SwiGLULayerTests.weights(hidden: hidden, intermediate: intermediate, seed: 10 + 3 * UInt64($0), standardDeviation: 0.05) }
        let router = try ConfigurableRouter(configuration: RouterConfiguration(), layers: 1, experts: experts, hiddenSize: hidden, modelTopK: 2)
        let loss = RouterLoss(configuration: RouterConfiguration())
        let dy = randomTensor([tokens, hidden], seed: 3)
        func milliseconds(_ body: () throws -> Void) rethrows -> Double {
            var best = Double.infinity
            for _ in 0 ..< 10 {
                let start = DispatchTime.now().uptimeNanoseconds
                try body()
                best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
            }
            return best
        }
        let moe = MoEWeights(router: gate, experts: weights)
        let forward = milliseconds { _ = MoEFeedForwardLayer.forward(x, weights: moe, router: router, layer: 0, loss: loss, sequenceLengths: [tokens]) }
        let both = milliseconds {
            let output = MoEFeedForwardLayer.forward(x, weights: moe, router: router, layer: 0, loss: loss, sequenceLengths: [tokens])
            _ = MoEFeedForwardLayer.backward(dy, cache: output.cache!, weights: moe)
        }
        let inferenceForward = milliseconds {
            _ = MoEFeedForwardLayer.forward(x, weights: moe, router: router, layer: 0, loss: nil, sequenceLengths: [tokens], keepCache: false)
        }
        // The same expert FLOPs as one dense SwiGLU on T·k rows: the GEMM ceiling of this shape.
        let denseInput = randomTensor([2 * tokens, hidden], seed: 4)
        let denseForward = milliseconds { _ = SwiGLULayer.forward(denseInput, weights: weights[0], keepCache: false) }
        let flops = 6.0 * Double(tokens * 2 * hidden * intermediate)
        print("MoE layer T=\(tokens) H=\(hidden) I=\(intermediate) E=\(experts) k=2, BLAS threads \(BLAS.threadCount): "
              + "dense SwiGLU on T·k rows \(String(format: "%.2f", denseForward)) ms, inference forward \(String(format: "%.2f", inferenceForward)) ms, training forward \(String(format: "%.2f", forward)) ms "
              + "(\(String(format: "%.1f", flops / forward / 1e6)) GFLOP/s), forward+backward \(String(format: "%.2f", both)) ms "
              + "(\(String(format: "%.1f", 3 * flops / both / 1e6)) GFLOP/s), ratio \(String(format: "%.2f", both / forward))")
    }
}
