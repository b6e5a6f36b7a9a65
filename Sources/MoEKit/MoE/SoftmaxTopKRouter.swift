/// MiniCPM-MoE's (and Mixtral's) routing: softmax over all experts in f32 → top-k → the k weights
/// renormalised to sum to 1. Ties go to the lower expert index.
public final class SoftmaxTopKRouter: ExpertRouter {
    public let topK: Int
    public var slotsPerToken: Int { topK }

    public init(topK: Int) {
        precondition(topK >= 1, "top-k must be at least 1")
        self.topK = topK
    }

    public func route(inputs: Tensor, gateWeight: Tensor, layer: Int) -> RoutedTokens {
        let logits = MatrixMultiply.product(inputs, gateWeight, transposeB: true)
        let tokens = inputs.rows, experts = gateWeight.rows, k = min(topK, experts)
        let probabilities = Kernels.softmaxRows(logits)
        var selected = [Int32](repeating: -1, count: tokens * topK)
        var weights = [Float](repeating: 0, count: tokens * topK)
        probabilities.values.withUnsafeBufferPointer { p in
            selected.withUnsafeMutableBufferPointer { s in
                for t in 0 ..< tokens {
                    let row = p.baseAddress! + t * experts
                    TopKSelection.select(row, count: experts, k: k, into: s.baseAddress! + t * topK)
                    var sum: Float = 0
                    for slot in 0 ..< k { sum += row[Int(s[t * topK + slot])] }
                    for slot in 0 ..< k { weights[t * topK + slot] = row[Int(s[t * topK + slot])] / sum }
                }
            }
        }
        let decision = RoutingDecision(tokens: tokens, experts: experts, slotsPerToken: topK, selectedExperts: selected,
                                       combineWeights: weights, probabilities: probabilities.values)
        return RoutedTokens(decision: decision, logits: logits.values)
    }
}
