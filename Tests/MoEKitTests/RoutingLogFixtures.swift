import Foundation
@testable import MoEKit

/// Synthetic but self-consistent routing steps: every token samples k distinct experts from a
/// softmax over per-layer logits (skewed towards low expert indices, more so in deeper layers,
/// drifting towards balance over steps, as a load-balancing loss would push it), assignments beyond
/// a capacity of ⌈1.25 · tokens · k / E⌉ per expert are dropped, and counts, coactivation, P_i,
/// aux loss, z-loss and entropy are computed from those choices with the `RoutingRecord` formulas.
enum RoutingLogFixtures {
    static func header(layers: Int = 3, experts: Int = 4, topK: Int = 2, perToken: Bool = false) -> RoutingLogHeader {
        RoutingLogHeader(numLayers: layers, numExperts: experts, topK: topK, router: "top-\(topK) softmax (synthetic)",
                         modelConfig: #"{"num_experts": \#(experts), "num_experts_per_tok": \#(topK)}"#,
                         source: "synthetic", created: Date(timeIntervalSince1970: 1_700_000_000), perToken: perToken)
    }

    static func step(_ index: Int, tokens: Int, header: RoutingLogHeader, seed: UInt64 = 0, training: Bool = false) -> RoutingLogStep {
        var random = SeededRandom(seed: seed &+ UInt64(index) &* 7919)
        let experts = header.numExperts, topK = header.topK, layers = header.numLayers
        let capacity = Int((1.25 * Double(tokens * topK) / Double(experts)).rounded(.up))
        var records: [RoutingRecord] = []
        for layer in 0 ..< layers {
            let skew = 0.3 * Double(layer + 1) / (1 + 0.1 * Double(index))
            var counts = [Int](repeating: 0, count: experts)
            var coactivation = [Int](repeating: 0, count: experts * experts)
            var probabilitySum = [Double](repeating: 0, count: experts)
            var zLoss = 0.0, entropy = 0.0
            var selected = [Int32](repeating: -1, count: tokens * topK)
            var weights = [Float](repeating: 0, count: tokens * topK)
            var dropped = 0
            for token in 0 ..< tokens {
                let logits = (0 ..< experts).map { -skew * Double($0) + 0.8 * random.nextNormal() }
                let maximum = logits.max() ?? 0
                let exps = logits.map { Foundation.exp($0 - maximum) }
                let total = exps.reduce(0, +)
                let probabilities = exps.map { $0 / total }
                let logSumExp = maximum + Foundation.log(total)
                zLoss += logSumExp * logSumExp
                entropy -= probabilities.reduce(0) { $0 + ($1 > 0 ? $1 * Foundation.log($1) : 0) }
                for e in 0 ..< experts { probabilitySum[e] += probabilities[e] }
                let chosen = (0 ..< experts).sorted { probabilities[$0] > probabilities[$1] }.prefix(topK)
                let weightTotal = chosen.reduce(0) { $0 + probabilities[$1] }
                var kept: [Int] = []
                for (slot, expert) in chosen.enumerated() {
                    if counts[expert] >= capacity { dropped += 1; continue }
                    counts[expert] += 1
                    kept.append(expert)
                    selected[token * topK + slot] = Int32(expert)
                    weights[token * topK + slot] = Float(probabilities[expert] / weightTotal)
                }
                for a in kept { for b in kept where a != b { coactivation[a * experts + b] += 1 } }
            }
            let n = Double(max(tokens, 1))
            let probabilityMean = probabilitySum.map { Float($0 / n) }
            let aux = Float(experts) * zip(counts, probabilityMean).reduce(Float(0)) { $0 + Float($1.0) / Float(max(tokens * topK, 1)) * $1.1 }
            records.append(RoutingRecord(tokens: tokens, experts: experts, topK: topK, expertCounts: counts, probabilityMean: probabilityMean,
                                         droppedAssignments: dropped, loadBalancingLoss: aux, zLoss: Float(zLoss / n), entropy: Float(entropy / n),
                                         coactivation: coactivation, selectedExperts: selected, combineWeights: weights))
        }
        var trace: RoutingLogTokenTrace?
        if header.perToken {
            let ids = (0 ..< tokens).map { _ in Int32(random.next() % 1000) }
            let sequence = (0 ..< tokens).map { Int32($0 / 16) }
            let position = (0 ..< tokens).map { Int32($0 % 16) }
            trace = RoutingLogTokenTrace(ids: ids, sequence: sequence, position: position, records: records)
        }
        let loss: Float = training ? 4 * Foundation.exp(-Float(index) / 20) + 2 : .nan
        return RoutingLogStep(step: index, records: records, loss: loss, learningRate: training ? 1e-3 : .nan, tokenTrace: trace)
    }
}
