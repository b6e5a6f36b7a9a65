import Foundation

/// Builds `RoutingRecord`s from routing decisions (see `RoutingRecord` for the conventions).
///
/// One pass over the tokens in f32, cheap enough to run on every step of a trace: per token, the
/// softmax of the router logits z gives logsumexp(z) (z-loss) and its entropy
/// H = logsumexp(z) − Σ_i p_i z_i; the router's own probabilities (the decision's: softmax for
/// softmax routers, the sigmoid scores for sigmoid routers) give P_i. The Switch loss is computed
/// from that same P_i and the counts, E · Σ_i f_i · P_i, so a log's `aux_loss` can always be
/// recomputed from its `prob_mean` and `expert_counts`. For softmax routers it equals
/// `RouterLosses.switchLoadBalancing`, and the z-loss `RouterLosses.zLoss` (a test pins both); they
/// are computed here without the gradients those functions also return.
enum RoutingStatistics {
    /// `variableActiveExperts` (ReLU routing) adds the histogram of active experts per token.
    static func record(_ routed: RoutedTokens, topK: Int, detail: RoutingRecord.Detail, variableActiveExperts: Bool = false) -> RoutingRecord {
        let decision = routed.decision
        let tokens = decision.tokens, experts = decision.experts, slots = decision.slotsPerToken
        let counts = decision.expertCounts
        var probabilityMean = [Float](repeating: 0, count: experts)
        var entropySum: Float = 0
        var zSum: Float = 0
        var coactivation = [Int](repeating: 0, count: experts * experts)
        var exps = [Float](repeating: 0, count: experts)
        routed.logits.withUnsafeBufferPointer { logits in
            decision.probabilities.withUnsafeBufferPointer { probabilities in
                for t in 0 ..< tokens {
                    let z = logits.baseAddress! + t * experts
                    var maximum = -Float.infinity
                    for e in 0 ..< experts { maximum = max(maximum, z[e]) }
                    var sum: Float = 0
                    for e in 0 ..< experts { exps[e] = expf(z[e] - maximum); sum += exps[e] }
                    let logSumExp = maximum + logf(sum)
                    zSum += logSumExp * logSumExp
                    var expectedLogit: Float = 0
                    for e in 0 ..< experts {
                        expectedLogit += exps[e] / sum * z[e]
                        probabilityMean[e] += probabilities[t * experts + e]
                    }
                    entropySum += logSumExp - expectedLogit
                    for a in 0 ..< slots {
                        let i = Int(decision.selectedExperts[t * slots + a])
                        guard i >= 0 else { continue }
                        for b in 0 ..< slots where b != a {
                            let j = Int(decision.selectedExperts[t * slots + b])
                            if j >= 0 && j != i { coactivation[i * experts + j] += 1 }
                        }
                    }
                }
            }
        }
        var activeExperts: [Int]?
        if variableActiveExperts {
            var histogram = [Int](repeating: 0, count: experts + 1)
            for t in 0 ..< tokens { histogram[(0 ..< slots).reduce(0) { $0 + (decision.selectedExperts[t * slots + $1] >= 0 ? 1 : 0) }] += 1 }
            activeExperts = histogram
        }
        let tokenCount = Float(max(tokens, 1))
        var loadBalancing: Float = 0
        for e in 0 ..< experts {
            probabilityMean[e] /= tokenCount
            loadBalancing += Float(counts[e]) / Float(max(tokens * topK, 1)) * probabilityMean[e]
        }
        return RoutingRecord(
            tokens: tokens, experts: experts, topK: topK, expertCounts: counts, probabilityMean: probabilityMean,
            droppedAssignments: decision.droppedAssignments, loadBalancingLoss: Float(experts) * loadBalancing,
            zLoss: zSum / tokenCount, entropy: max(0, entropySum / tokenCount), coactivation: coactivation,
            selectedExperts: detail == .perToken ? decision.selectedExperts : nil,
            combineWeights: detail == .perToken ? decision.combineWeights : nil, activeExperts: activeExperts)
    }
}
