/// What a router decided for a batch of tokens: which experts each token goes to and with what
/// combine weight, plus the full router probabilities the losses and logs need.
///
/// Every token has `slotsPerToken` slots (k for top-k routing). A slot holding expert `-1` is
/// empty: the assignment was dropped by a capacity limit, or (expert-choice routing) no expert
/// took the token in that slot. Empty slots have weight 0; a token with only empty slots passes
/// through the layer's residual unchanged.
public struct RoutingDecision: Sendable, Equatable {
    public var tokens: Int
    public var experts: Int
    public var slotsPerToken: Int
    /// `[tokens, slotsPerToken]` expert indices, `-1` for an empty slot.
    var selectedExperts: [Int32]
    /// `[tokens, slotsPerToken]` combine weights (0 for an empty slot).
    var combineWeights: [Float]
    /// `[tokens, experts]`: the router's scores after its scoring function (softmax
    /// probabilities by default; sigmoid scores for sigmoid routing), without noise or bias.
    var probabilities: [Float]
    /// Assignments chosen by the router but dropped by a capacity limit.
    var droppedAssignments: Int

    public init(tokens: Int, experts: Int, slotsPerToken: Int, selectedExperts: [Int32], combineWeights: [Float],
                probabilities: [Float], droppedAssignments: Int = 0) {
        precondition(selectedExperts.count == tokens * slotsPerToken && combineWeights.count == tokens * slotsPerToken)
        precondition(probabilities.count == tokens * experts)
        self.tokens = tokens
        self.experts = experts
        self.slotsPerToken = slotsPerToken
        self.selectedExperts = selectedExperts
        self.combineWeights = combineWeights
        self.probabilities = probabilities
        self.droppedAssignments = droppedAssignments
    }

    /// Assignments per expert (empty slots not counted).
    var expertCounts: [Int] {
        var counts = [Int](repeating: 0, count: experts)
        for expert in selectedExperts where expert >= 0 { counts[Int(expert)] += 1 }
        return counts
    }
}
