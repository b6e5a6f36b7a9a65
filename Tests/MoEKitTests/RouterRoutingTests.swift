import Foundation
import Testing
@testable import MoEKit

/// ConfigurableRouter: scoring, weighting, ties, expert choice, capacity, aux-free bias, noise.
@Suite struct RouterRoutingTests {
    /// Identity inputs make the logits equal the gate weight's rows: token t's logits are `rows[t]`.
    static func route(_ configuration: RouterConfiguration, logits rows: [[Float]], topK: Int = 2, training: Bool = false,
                      prepare: (ConfigurableRouter) throws -> Void = { _ in }) throws -> RoutedTokens {
        let tokens = rows.count, experts = rows[0].count
        var identity = Tensor(shape: [tokens, tokens])
        for t in 0 ..< tokens { identity[t, t] = 1 }
        // gate [E, H=T] with gate[e, t] = logits[t][e], so (I · gateᵀ)[t, e] = logits[t][e].
        var gate = Tensor(shape: [experts, tokens])
        for t in 0 ..< tokens { for e in 0 ..< experts { gate[e, t] = rows[t][e] } }
        let router = try ConfigurableRouter(configuration: configuration, layers: 1, experts: experts, hiddenSize: tokens, modelTopK: topK)
        router.isTraining = training
        try prepare(router)
        return router.route(inputs: identity, gateWeight: gate, layer: 0)
    }

    static func randomLogits(tokens: Int, experts: Int, seed: UInt64) -> [[Float]] {
        let values = randomTensor([tokens, experts], seed: seed).values
        return (0 ..< tokens).map { Array(values[$0 * experts ..< ($0 + 1) * experts]) }
    }

    /// MiniCPM-MoE routing on a hand-computed case: logits ln(1, 2, 3, 4) give softmax (0.1, 0.2,
    /// 0.3, 0.4); top-2 is experts 3 then 2 with weights 0.4/0.7 and 0.3/0.7.
    @Test func miniCPMRoutingIsSoftmaxTopKRenormalised() throws {
        let logits: [Float] = [1, 2, 3, 4].map { logf($0) }
        let routed = try Self.route(RouterConfiguration(), logits: [logits])
        #expect(routed.decision.selectedExperts == [3, 2])
        #expect(isClose(routed.decision.combineWeights, [4 / 7, 3 / 7], relativeTolerance: 1e-6))
        #expect(isClose(routed.decision.probabilities, [0.1, 0.2, 0.3, 0.4], relativeTolerance: 1e-6))
        #expect(isClose(routed.logits, logits, relativeTolerance: 1e-6))
        #expect(routed.decision.droppedAssignments == 0)
    }

    /// The default weights are exactly the f32 softmax probabilities of the chosen experts divided
    /// by their f32 sum (checked bit for bit against the decision's own probabilities).
    @Test func renormalisedWeightsSumToOne() throws {
        let routed = try Self.route(RouterConfiguration(), logits: Self.randomLogits(tokens: 6, experts: 8, seed: 1), topK: 3)
        let d = routed.decision
        for t in 0 ..< 6 {
            let chosen = (0 ..< 3).map { Int(d.selectedExperts[t * 3 + $0]) }
            let sum = chosen.reduce(Float(0)) { $0 + d.probabilities[t * 8 + $1] }
            for (slot, e) in chosen.enumerated() { #expect(d.combineWeights[t * 3 + slot] == d.probabilities[t * 8 + e] / sum) }
            let weightSum = d.combineWeights[t * 3 ..< t * 3 + 3].reduce(0, +)
            #expect(abs(weightSum - 1) <= 1e-6)
            // The chosen are the three largest probabilities.
            let sorted = d.probabilities[t * 8 ..< t * 8 + 8].sorted(by: >)
            #expect(chosen.map { d.probabilities[t * 8 + $0] } == Array(sorted.prefix(3)))
        }
    }

    /// Top-k on the logits then softmax over the chosen equals softmax → top-k → renormalise:
    /// the same experts, weights equal up to f32 rounding.
    @Test func topKOnLogitsEqualsSoftmaxTopKRenormalise() throws {
        let logits = Self.randomLogits(tokens: 8, experts: 6, seed: 2)
        var overSelected = RouterConfiguration()
        overSelected.weighting = .softmaxOverSelected
        let a = try Self.route(RouterConfiguration(), logits: logits).decision
        let b = try Self.route(overSelected, logits: logits).decision
        #expect(a.selectedExperts == b.selectedExperts)
        #expect(isClose(b.combineWeights, a.combineWeights, relativeTolerance: 1e-6))
    }

    /// Ties go to the lower expert index, deterministically.
    @Test func tieGoesToLowerIndex() throws {
        let routed = try Self.route(RouterConfiguration(), logits: [[0.5, 1, 1, 1], [2, 2, 2, 2]])
        #expect(routed.decision.selectedExperts == [1, 2, 0, 1])
        #expect(RoutingFunctions.topK([3, .nan, 3, 5], k: 3) == [3, 0, 2])
    }

    /// Switch weighting (softmax → top-k, not renormalised) gives the probabilities themselves;
    /// the weight scale multiplies every weight.
    @Test func unnormalisedWeightsAreProbabilitiesTimesScale() throws {
        var c = RouterConfiguration()
        c.weighting = .unnormalized
        c.weightScale = 2
        let logits: [Float] = [1, 2, 3, 4].map { logf($0) }
        let d = try Self.route(c, logits: [logits]).decision
        #expect(isClose(d.combineWeights, [0.8, 0.6], relativeTolerance: 1e-6))
    }

    /// Sigmoid scoring: probabilities are σ(z); renormalised weights sum to 1, unnormalised ones are σ(z).
    @Test func sigmoidScoringWithAndWithoutRenormalisation() throws {
        var c = RouterConfiguration()
        c.scoring = .sigmoid
        let logits: [Float] = [0, 2, -1, 1]
        let sigma = logits.map { 1 / (1 + expf(-$0)) }
        let renormalised = try Self.route(c, logits: [logits]).decision
        #expect(renormalised.selectedExperts == [1, 3])
        #expect(isClose(renormalised.probabilities, sigma, relativeTolerance: 1e-6))
        #expect(isClose(renormalised.combineWeights, [sigma[1] / (sigma[1] + sigma[3]), sigma[3] / (sigma[1] + sigma[3])], relativeTolerance: 1e-6))
        c.weighting = .unnormalized
        let plain = try Self.route(c, logits: [logits]).decision
        #expect(isClose(plain.combineWeights, [sigma[1], sigma[3]], relativeTolerance: 1e-6))
    }

    /// Expert choice: every expert takes exactly C = ceil(T·k/E · cf) tokens, its highest-scoring
    /// ones, weighted by the score.
    @Test func expertChoiceGivesEveryExpertExactlyCapacityTokens() throws {
        var c = RouterConfiguration()
        c.mode = .expertChoice
        c.capacityFactor = 1.25
        let tokens = 8, experts = 4
        let routed = try Self.route(c, logits: Self.randomLogits(tokens: tokens, experts: experts, seed: 3))
        let d = routed.decision
        let capacity = 5  // ceil(8·2/4 · 1.25)
        #expect(RoutingFunctions.capacity(tokens: tokens, topK: 2, experts: experts, capacityFactor: 1.25) == capacity)
        #expect(d.slotsPerToken == experts)
        #expect(d.expertCounts == [Int](repeating: capacity, count: experts))
        for e in 0 ..< experts {
            let column = (0 ..< tokens).map { d.probabilities[$0 * experts + e] }
            let threshold = column.sorted(by: >)[capacity - 1]
            for t in 0 ..< tokens {
                let slots = Array(d.selectedExperts[t * experts ..< (t + 1) * experts])
                #expect(slots.contains(Int32(e)) == (column[t] >= threshold))
                if let slot = slots.firstIndex(of: Int32(e)) { #expect(d.combineWeights[t * experts + slot] == column[t]) }
            }
        }
    }

    /// Capacity by probability: an expert over capacity keeps its highest-probability assignments,
    /// drops the lowest first, and the drops are counted; empty slots have expert −1 and weight 0.
    @Test func capacityDropsLowestProbabilityFirst() throws {
        var c = RouterConfiguration()
        c.capacityFactor = 0.5  // T=4, k=1, E=2: C = ceil(4·1/2 · 0.5) = 1
        // Every token prefers expert 0, with probabilities rising with the token index except token 3.
        let logits: [[Float]] = [[1, 0], [2, 0], [3, 0], [1.5, 0]]
        let d = try Self.route(c, logits: logits, topK: 1).decision
        #expect(d.selectedExperts == [-1, -1, 0, -1])
        #expect(d.droppedAssignments == 3)
        #expect(d.combineWeights[0] == 0 && d.combineWeights[1] == 0 && d.combineWeights[3] == 0 && d.combineWeights[2] == 1)
        var dropless = c
        dropless.capacityFactor = nil
        #expect(try Self.route(dropless, logits: logits, topK: 1).decision.droppedAssignments == 0)
    }

    /// Capacity by position: first come, first served — the later tokens are dropped, and first
    /// choices of every token go before second choices.
    @Test func capacityByPositionDropsLaterTokens() throws {
        var c = RouterConfiguration()
        c.capacityFactor = 1  // T=4, k=1, E=2: C = 2
        c.dropPolicy = .position
        let logits: [[Float]] = [[1, 0], [2, 0], [3, 0], [1.5, 0]]
        let d = try Self.route(c, logits: logits, topK: 1).decision
        #expect(d.selectedExperts == [0, 0, -1, -1])
        #expect(d.droppedAssignments == 2)
        // k = 2, E = 3, C = ceil(2·2/3 · 0.75) = 1: token 1's first choice (expert 1) beats token 0's second.
        var selected: [Int32] = [0, 1, 1, 2]
        var weights: [Float] = [0.6, 0.4, 0.7, 0.3]
        let dropped = RoutingFunctions.applyCapacity(selectedExperts: &selected, combineWeights: &weights, probabilities: [Float](repeating: 0.3, count: 6),
                                                     tokens: 2, experts: 3, capacity: 1, policy: .position)
        #expect(selected == [0, -1, 1, 2] && weights == [0.6, 0, 0.7, 0.3] && dropped == 1)
    }

    /// Auxiliary-loss-free balancing: the bias changes which experts are chosen but not the
    /// weights, which come from the unbiased scores of the chosen experts.
    @Test func auxFreeBiasChangesChoiceNotWeights() throws {
        var c = RouterConfiguration()
        c.auxiliaryLossFreeBalancing = true
        let logits: [Float] = [1, 2, 3, 4].map { logf($0) }
        let d = try Self.route(c, logits: [logits]) { router in try router.setBalancingBias([0.5, 0, 0, 0], layer: 0) }.decision
        #expect(d.selectedExperts == [0, 3])  // 0.1 + 0.5 beats 0.4
        #expect(isClose(d.combineWeights, [0.1 / 0.5, 0.4 / 0.5], relativeTolerance: 1e-6))
        #expect(isClose(d.probabilities, [0.1, 0.2, 0.3, 0.4], relativeTolerance: 1e-6))
        // With the feature off the bias is ignored.
        c.auxiliaryLossFreeBalancing = false
        #expect(try Self.route(c, logits: [logits]).decision.selectedExperts == [3, 2])
    }

    /// The bias update b_i += u · sign(mean load − load_i): overloaded experts go down by u,
    /// underloaded up by u, an expert at the mean stays.
    @Test func biasUpdateFollowsSignOfLoadDeficit() throws {
        var c = RouterConfiguration()
        c.auxiliaryLossFreeBalancing = true
        c.biasUpdateRate = 0.25
        let router = try ConfigurableRouter(configuration: c, layers: 2, experts: 3, hiddenSize: 4, modelTopK: 1)
        router.updateBalancingBias(expertCounts: [[6, 3, 0], [3, 3, 3]])
        #expect(router.balancingBias == [[-0.25, 0, 0.25], [0, 0, 0]])
        router.updateBalancingBias(expertCounts: [[6, 3, 0], [1, 3, 5]])
        #expect(router.balancingBias == [[-0.5, 0, 0.5], [0.25, 0, -0.25]])
        #expect(throws: RouterConfigurationError.self) { try router.setBalancingBias([0, 0], layer: 0) }
    }

    /// Noise is seeded: the same seed gives the same noisy routing, a different seed a different
    /// one; without `isTraining` there is no noise; the reported logits are always noise-free.
    @Test func sameSeedSameNoisyRouting() throws {
        let logits = Self.randomLogits(tokens: 8, experts: 6, seed: 4)
        var settings: [RouterConfiguration] = []
        var jitter = RouterConfiguration(); jitter.inputJitter = 0.5; settings.append(jitter)
        var gaussian = RouterConfiguration(); gaussian.logitNoise = 1; settings.append(gaussian)
        var noisy = RouterConfiguration(); noisy.noisyTopK = true; settings.append(noisy)
        let clean = try Self.route(RouterConfiguration(), logits: logits)
        for var c in settings {
            c.noiseSeed = 11
            let first = try Self.route(c, logits: logits, training: true)
            let again = try Self.route(c, logits: logits, training: true)
            #expect(first.decision == again.decision, "\(c)")
            #expect(first.decision != clean.decision, "\(c): no noise applied")
            #expect(first.logits == clean.logits && first.decision.probabilities == clean.decision.probabilities)
            #expect(try Self.route(c, logits: logits, training: false).decision == clean.decision)
            c.noiseSeed = 12
            let other = try Self.route(c, logits: logits, training: true)
            #expect(other.decision.combineWeights != first.decision.combineWeights, "\(c)")
        }
    }

    /// Top-k larger than the number of experts, or a dense model, is a typed error.
    @Test func incompatibleModelIsAnError() {
        #expect(throws: RouterConfigurationError.self) {
            try ConfigurableRouter(configuration: RouterConfiguration(), layers: 1, experts: 2, hiddenSize: 4, modelTopK: 3)
        }
        let dense = MiniCPMConfig(hiddenSize: 8, intermediateSize: 16, numHiddenLayers: 1, numAttentionHeads: 2, numKeyValueHeads: 2, vocabSize: 8)
        #expect(throws: RouterConfigurationError.self) { try ConfigurableRouter(configuration: RouterConfiguration(), model: dense) }
    }
}
