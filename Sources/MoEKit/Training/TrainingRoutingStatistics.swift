/// What a training step's routing contributes to the routing log: the usual per-layer statistics
/// (`RoutingStatistics`) plus, when the data carries domains, the domain × expert assignment counts.
enum TrainingRoutingStatistics {
    /// `[domains, experts]` counts of assignments (non-empty slots) of tokens of each domain.
    /// `domainOfToken[t]` is the domain index of token t in the decision's (batch-stacked) order.
    static func domainCounts(_ decision: RoutingDecision, domainOfToken: [Int], domains: Int) -> [Int] {
        precondition(domainOfToken.count == decision.tokens, "one domain per routed token")
        let experts = decision.experts, slots = decision.slotsPerToken
        var counts = [Int](repeating: 0, count: domains * experts)
        for token in 0 ..< decision.tokens {
            let domain = domainOfToken[token]
            for slot in 0 ..< slots {
                let expert = Int(decision.selectedExperts[token * slots + slot])
                if expert >= 0 { counts[domain * experts + expert] += 1 }
            }
        }
        return counts
    }

    /// The log row of one MoE layer.
    static func layerStatistics(_ routed: RoutedTokens, topK: Int, domainOfToken: [Int]?, domains: Int,
                                variableActiveExperts: Bool = false) -> RoutingLogLayerStatistics {
        var statistics = RoutingLogLayerStatistics(record: RoutingStatistics.record(routed, topK: topK, detail: .statistics,
                                                                                    variableActiveExperts: variableActiveExperts))
        if let domainOfToken {
            statistics.domainCounts = domainCounts(routed.decision, domainOfToken: domainOfToken, domains: domains)
        }
        return statistics
    }
}
