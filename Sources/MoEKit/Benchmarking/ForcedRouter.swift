/// Benchmark routers that compute the real router logits (so the router's cost is measured) but
/// force the assignment pattern: `uniform` sends token t to experts (t·k + j) mod E — perfectly
/// balanced, the grouped kernel's best case; `collapsed` sends every token to experts 0 ..< k —
/// all work on k experts, the worst load imbalance. Weights are 1/k.
final class ForcedRouter: ExpertRouter {
    enum Pattern: String, Sendable { case uniform, collapsed }

    let pattern: Pattern
    let topK: Int
    var slotsPerToken: Int { topK }

    init(pattern: Pattern, topK: Int) {
        self.pattern = pattern
        self.topK = topK
    }

    func route(inputs: Tensor, gateWeight: Tensor, layer: Int) -> RoutedTokens {
        let logits = MatrixMultiply.product(inputs, gateWeight, transposeB: true)
        let probabilities = Kernels.softmaxRows(logits)
        let tokens = inputs.rows, experts = gateWeight.rows
        var selected = [Int32](repeating: 0, count: tokens * topK)
        for t in 0 ..< tokens {
            for j in 0 ..< topK {
                selected[t * topK + j] = Int32(pattern == .uniform ? (t * topK + j) % experts : j % experts)
            }
        }
        let decision = RoutingDecision(tokens: tokens, experts: experts, slotsPerToken: topK, selectedExperts: selected,
                                       combineWeights: [Float](repeating: 1 / Float(topK), count: tokens * topK),
                                       probabilities: probabilities.values)
        return RoutedTokens(decision: decision, logits: logits.values)
    }
}
