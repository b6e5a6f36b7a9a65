import Foundation

/// Builds `RoutingRecord`s from routing decisions (see `RoutingRecord` for the conventions). The
/// load-balancing and z-loss values are those of `RouterLosses`; entropy is that of each token's
/// scores normalised to sum to 1 (the softmax probabilities themselves by default).
public enum RoutingStatistics {
    public static func record(_ routed: RoutedTokens, topK: Int, detail: RoutingRecord.Detail) -> RoutingRecord {
        let decision = routed.decision
        let tokens = decision.tokens, experts = decision.experts, slots = decision.slotsPerToken
        let counts = decision.expertCounts
        var probabilityMean = [Float](repeating: 0, count: experts)
        var entropySum = 0.0
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
        let loadBalancing = RouterLosses.switchLoadBalancing(logits: routed.logits, tokens: tokens, experts: experts,
                                                             selectedExperts: decision.selectedExperts, topK: topK).value
        let zLoss = RouterLosses.zLoss(logits: routed.logits, tokens: tokens, experts: experts).value
        return RoutingRecord(
            tokens: tokens, experts: experts, topK: topK, expertCounts: counts, probabilityMean: probabilityMean,
            droppedAssignments: decision.droppedAssignments, loadBalancingLoss: loadBalancing,
            zLoss: zLoss, entropy: Float(entropySum / Double(max(tokens, 1))),
            coactivation: coactivation,
            selectedExperts: detail == .perToken ? decision.selectedExperts : nil,
            combineWeights: detail == .perToken ? decision.combineWeights : nil)
    }
}
