import Foundation

/// Builds `RoutingRecord`s from routing decisions (see `RoutingRecord` for the conventions).
public enum RoutingStatistics {
    public static func record(_ routed: RoutedTokens, topK: Int, detail: RoutingRecord.Detail) -> RoutingRecord {
        let decision = routed.decision
        let tokens = decision.tokens, experts = decision.experts, slots = decision.slotsPerToken
        let counts = decision.expertCounts
        var probabilityMean = [Float](repeating: 0, count: experts)
        var entropySum = 0.0
        var zSum = 0.0
        var coactivation = [Int](repeating: 0, count: experts * experts)
        for t in 0 ..< tokens {
            var rowSum = 0.0
            for e in 0 ..< experts { rowSum += Double(decision.probabilities[t * experts + e]) }
            for e in 0 ..< experts {
                let p = Double(decision.probabilities[t * experts + e])
                probabilityMean[e] += Float(p)
                let normalised = rowSum > 0 ? p / rowSum : 0
                if normalised > 0 { entropySum -= normalised * log(normalised) }
            }
            var maximum = -Double.infinity
            for e in 0 ..< experts { maximum = max(maximum, Double(routed.logits[t * experts + e])) }
            var sumExp = 0.0
            for e in 0 ..< experts { sumExp += exp(Double(routed.logits[t * experts + e]) - maximum) }
            let logSumExp = maximum + log(sumExp)
            zSum += logSumExp * logSumExp
            for a in 0 ..< slots {
                let i = Int(decision.selectedExperts[t * slots + a])
                guard i >= 0 else { continue }
                for b in 0 ..< slots where b != a {
                    let j = Int(decision.selectedExperts[t * slots + b])
                    if j >= 0 && j != i { coactivation[i * experts + j] += 1 }
                }
            }
        }
        let tokenCount = Float(max(tokens, 1))
        for e in 0 ..< experts { probabilityMean[e] /= tokenCount }
        var loadBalancing: Float = 0
        let assignmentsIfNoneDropped = Float(max(tokens * topK, 1))
        for e in 0 ..< experts { loadBalancing += Float(counts[e]) / assignmentsIfNoneDropped * probabilityMean[e] }
        loadBalancing *= Float(experts)
        return RoutingRecord(
            tokens: tokens, experts: experts, topK: topK, expertCounts: counts, probabilityMean: probabilityMean,
            droppedAssignments: decision.droppedAssignments, loadBalancingLoss: loadBalancing,
            zLoss: Float(zSum / Double(max(tokens, 1))), entropy: Float(entropySum / Double(max(tokens, 1))),
            coactivation: coactivation,
            selectedExperts: detail == .perToken ? decision.selectedExperts : nil,
            combineWeights: detail == .perToken ? decision.combineWeights : nil)
    }
}
