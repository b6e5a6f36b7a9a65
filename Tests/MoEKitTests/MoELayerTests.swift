import Foundation
import Testing
@testable import MoEKit

/// A router that hands back a fixed decision (to run the layer on a hand-made routing).
final class FixedRouter: ExpertRouter {
    let decision: RoutingDecision
    var slotsPerToken: Int { decision.slotsPerToken }
    init(_ decision: RoutingDecision) { self.decision = decision }
    func route(inputs: Tensor, gateWeight: Tensor, layer: Int) -> RoutedTokens {
        RoutedTokens(decision: decision, logits: [Float](repeating: 0, count: decision.tokens * decision.experts))
    }
}

@Suite struct MoELayerTests {
    static func layer(experts: Int, hidden: Int = 8, intermediate: Int = 12, seed: UInt64 = 1) -> MoEWeights {
        var blocks: [SwiGLUWeights] = []
        for e in 0 ..< experts {
            let base: UInt64 = seed &* 100 &+ UInt64(3 * e)
            let gate = randomTensor([intermediate, hidden], seed: base)
            let up = randomTensor([intermediate, hidden], seed: base &+ 1)
            let down = randomTensor([hidden, intermediate], seed: base &+ 2)
            blocks.append(SwiGLUWeights(gate: gate, up: up, down: down))
        }
        return MoEWeights(router: randomTensor([experts, hidden], seed: seed &+ 77), experts: blocks)
    }

    /// MiniCPM-MoE's routing: the default `RouterConfiguration`.
    static func defaultRouter(experts: Int, hidden: Int, topK: Int) throws -> ConfigurableRouter {
        try ConfigurableRouter(configuration: RouterConfiguration(), layers: 1, experts: experts, hiddenSize: hidden, modelTopK: topK)
    }

    /// The grouped kernel (counting sort → gather → per-expert GEMMs → weighted scatter) equals the
    /// token-by-token reference loop, including empty slots and experts that receive no token.
    @Test func groupedExpertsMatchReferenceLoop() {
        let moe = Self.layer(experts: 4)
        let x = randomTensor([6, 8], seed: 5)
        let decision = RoutingDecision(
            tokens: 6, experts: 4, slotsPerToken: 2,
            selectedExperts: [0, 2, 2, 0, -1, 2, 0, -1, -1, -1, 2, 0],
            combineWeights: [0.7, 0.3, 0.5, 0.5, 0, 1, 0.25, 0, 0, 0, 0.9, 0.1],
            probabilities: [Float](repeating: 0.25, count: 24))
        let grouped = MoEFeedForwardLayer.forward(x, weights: moe, router: FixedRouter(decision), layer: 0, loss: nil, sequenceLengths: [6],
                                                  keepCache: false).output
        let reference = MoEFeedForwardLayer.referenceForward(x, decision: decision, experts: moe.experts)
        #expect(isClose(grouped, reference, relativeTolerance: 1e-5))
        #expect(grouped.row(4) == [Float](repeating: 0, count: 8))  // a token with only empty slots gets nothing
    }

    /// The default router's decisions run through the layer equal the reference on random inputs.
    @Test func routedLayerMatchesReference() throws {
        let moe = Self.layer(experts: 5, seed: 3)
        let x = randomTensor([17, 8], seed: 9)
        let router = try Self.defaultRouter(experts: 5, hidden: 8, topK: 2)
        let routed = router.route(inputs: x, gateWeight: moe.router, layer: 0)
        let output = MoEFeedForwardLayer.forward(x, weights: moe, router: try Self.defaultRouter(experts: 5, hidden: 8, topK: 2), layer: 0,
                                                 loss: nil, sequenceLengths: [17], keepCache: false).output
        #expect(isClose(output, MoEFeedForwardLayer.referenceForward(x, decision: routed.decision, experts: moe.experts), relativeTolerance: 1e-5))
    }

    /// Dispatch is a stable counting sort: per-expert blocks in token order, offsets the prefix sum.
    @Test func dispatchPlanIsAStableCountingSort() {
        let decision = RoutingDecision(tokens: 3, experts: 3, slotsPerToken: 2, selectedExperts: [2, 0, 0, 2, 2, -1],
                                       combineWeights: [0.6, 0.4, 0.8, 0.2, 1, 0], probabilities: [Float](repeating: 0, count: 9))
        let plan = ExpertDispatchPlan(decision)
        #expect(plan.offsets == [0, 2, 2, 5])
        #expect(plan.tokens == [0, 1, 0, 1, 2])
        #expect(plan.weights == [0.4, 0.8, 0.6, 0.2, 1])
    }

    /// MiniCPM-MoE routing on a hand-computed case: softmax in f32 → top-2 → renormalised weights;
    /// ties go to the lower expert index.
    @Test func softmaxTopKRoutingHandCase() throws {
        // Logits [ln 1, ln 2, ln 3, ln 4] via an identity router on one-hot-free inputs.
        let x = Tensor(shape: [2, 4], values: [0, log(2), log(3), log(4), 1, 1, 1, 1])
        let identity = Tensor(shape: [4, 4], values: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1])
        let routed = try Self.defaultRouter(experts: 4, hidden: 4, topK: 2).route(inputs: x, gateWeight: identity, layer: 0)
        #expect(routed.decision.selectedExperts == [3, 2, 0, 1])
        #expect(isClose(Array(routed.decision.combineWeights[0 ..< 2]), [4.0 / 7, 3.0 / 7], relativeTolerance: 1e-6))
        #expect(isClose(Array(routed.decision.combineWeights[2 ..< 4]), [0.5, 0.5], relativeTolerance: 1e-6))
        #expect(isClose(Array(routed.decision.probabilities[0 ..< 4]), [0.1, 0.2, 0.3, 0.4], relativeTolerance: 1e-6))
    }

    /// The routing record on a hand case: counts after drops, P_i, Switch loss (balanced → 1,
    /// collapsed → E), symmetric coactivation with a zero diagonal, and per-token data only on request.
    @Test func routingRecordHandCase() {
        let uniform = [Float](repeating: 0.25, count: 16)
        let balanced = RoutingDecision(tokens: 4, experts: 4, slotsPerToken: 2, selectedExperts: [0, 1, 2, 3, 1, 0, 3, 2],
                                       combineWeights: [Float](repeating: 0.5, count: 8), probabilities: uniform)
        let record = RoutingStatistics.record(RoutedTokens(decision: balanced, logits: [Float](repeating: 0, count: 16)), topK: 2, detail: .statistics)
        #expect(record.expertCounts == [2, 2, 2, 2])
        #expect(record.probabilityMean == [0.25, 0.25, 0.25, 0.25])
        #expect(abs(record.loadBalancingLoss - 1) < 1e-6)
        #expect(abs(record.entropy - Float(log(4.0))) < 1e-6)
        #expect(abs(record.zLoss - Float(log(4.0) * log(4.0))) < 1e-5)
        #expect(record.coactivation[0 * 4 + 1] == 2 && record.coactivation[1 * 4 + 0] == 2)
        #expect(record.coactivation[2 * 4 + 3] == 2 && record.coactivation[0 * 4 + 0] == 0)
        #expect(record.selectedExperts == nil)

        var collapsedProbabilities = [Float](repeating: 0, count: 16)
        for t in 0 ..< 4 { collapsedProbabilities[t * 4] = 1 }
        let collapsed = RoutingDecision(tokens: 4, experts: 4, slotsPerToken: 1, selectedExperts: [0, 0, 0, 0],
                                        combineWeights: [1, 1, 1, 1], probabilities: collapsedProbabilities)
        var collapsedLogits = [Float](repeating: 0, count: 16)
        for t in 0 ..< 4 { collapsedLogits[t * 4] = 30 }  // softmax ≈ one-hot on expert 0
        let collapsedRecord = RoutingStatistics.record(RoutedTokens(decision: collapsed, logits: collapsedLogits), topK: 1, detail: .perToken)
        #expect(abs(collapsedRecord.loadBalancingLoss - 4) < 1e-6)
        #expect(collapsedRecord.selectedExperts == [0, 0, 0, 0])
    }

    /// The record's one-pass f32 statistics equal the loss functions' values on random routing,
    /// and its entropy equals −Σ p log p of the softmax computed directly.
    @Test func recordStatisticsEqualTheLossFunctions() throws {
        let x = randomTensor([37, 6], seed: 12)
        let gate = randomTensor([5, 6], seed: 13)
        let routed = try Self.defaultRouter(experts: 5, hidden: 6, topK: 2).route(inputs: x, gateWeight: gate, layer: 0)
        let record = RoutingStatistics.record(routed, topK: 2, detail: .statistics)
        let d = routed.decision
        let switchLoss = RouterLosses.switchLoadBalancing(logits: routed.logits, tokens: 37, experts: 5, selectedExperts: d.selectedExperts, topK: 2).value
        let zLoss = RouterLosses.zLoss(logits: routed.logits, tokens: 37, experts: 5).value
        #expect(abs(record.loadBalancingLoss - switchLoss) <= 1e-5 * switchLoss)
        #expect(abs(record.zLoss - zLoss) <= 1e-5 * zLoss)
        var entropy = 0.0
        for t in 0 ..< 37 {
            for e in 0 ..< 5 { let p = Double(d.probabilities[t * 5 + e]); if p > 0 { entropy -= p * log(p) } }
        }
        #expect(abs(Double(record.entropy) - entropy / 37) <= 1e-5)
    }

    /// For every scoring function the record's Switch loss is E · Σ f_i · P_i of its own `probabilityMean`
    /// and counts (a sigmoid router's P_i are its sigmoid scores, as `docs/routing-log.md` says), and
    /// the same holds for a trace log read back: aux_loss recomputes from prob_mean and expert_counts.
    @Test(arguments: [RouterConfiguration.Scoring.softmax, .sigmoid])
    func auxLossRecomputesFromProbabilityMeanAndCounts(scoring: RouterConfiguration.Scoring) throws {
        var configuration = RouterConfiguration()
        configuration.scoring = scoring
        let router = try ConfigurableRouter(configuration: configuration, layers: 1, experts: 5, hiddenSize: 6, modelTopK: 2)
        let x = randomTensor([29, 6], seed: 14)
        let routed = router.route(inputs: x, gateWeight: randomTensor([5, 6], seed: 15), layer: 0)
        let record = RoutingStatistics.record(routed, topK: 2, detail: .statistics)
        for e in 0 ..< 5 {
            let mean = (0 ..< 29).reduce(Float(0)) { $0 + routed.decision.probabilities[$1 * 5 + e] } / 29
            #expect(abs(record.probabilityMean[e] - mean) <= 1e-6)
        }
        if scoring == .sigmoid {
            let sigmoid = routed.logits.map { 1 / (1 + expf(-$0)) }
            #expect(isClose(routed.decision.probabilities, sigmoid, relativeTolerance: 1e-6))
        }
        let recomputed = 5 * (0 ..< 5).reduce(Float(0)) { $0 + Float(record.expertCounts[$1]) / Float(29 * 2) * record.probabilityMean[$1] }
        #expect(abs(record.loadBalancingLoss - recomputed) <= 1e-6 * recomputed)

        // Through a log written by trace and read back.
        let directory = TemporaryDirectory()
        var config = SmallModels.config(experts: 4, topK: 2)
        configuration.store(in: &config)
        let model = try SmallModels.model(config, weights: SmallModels.weights(for: config, seed: 16))
        let log = directory.file("routing.h5")
        var options = RoutingTracer.Options()
        options.logPath = log
        options.batchTokens = 8
        _ = try RoutingTracer(model: model, options: options).run([[1, 2, 3, 4, 5, 6, 7], [9, 8, 7, 6, 5]])
        let reader = try RoutingLogReader(path: log)
        for step in try reader.steps(0 ..< reader.stepCount) {
            for layer in step.layers {
                let f = layer.expertCounts.map { Float($0) / Float(step.tokens * 2) }
                let aux = 4 * zip(f, layer.probabilityMean).reduce(Float(0)) { $0 + $1.0 * $1.1 }
                #expect(abs(layer.auxLoss - aux) <= 1e-5 * max(aux, 1e-6), "step \(step.step)")
            }
        }
    }

    /// Asking a model for routing detail returns one record per MoE layer whose counts add up to tokens·k.
    @Test func modelReturnsOneRecordPerLayer() throws {
        let config = SmallModels.config(experts: 4, topK: 2, layers: 3)
        let model = try SmallModels.model(config, weights: SmallModels.weights(for: config, seed: 4))
        let output = try model.forward([[1, 2, 3, 4, 5]], detail: .perToken)
        #expect(output.routing.count == 3)
        for record in output.routing {
            #expect(record.expertCounts.reduce(0, +) == 10)
            #expect(record.selectedExperts?.count == 10)
        }
        #expect(try model.forward([[1, 2]]).routing.isEmpty)
    }
}
