/// What one MoE layer call hands back for routing logs, when asked (`RoutingRecord.Detail`).
///
/// Statistics are over the `tokens` of the call. Conventions (the routing-log schema uses the same):
/// `expertCounts[i]` counts assignments routed to expert i after drops, so
/// Σ counts = tokens · k − droppedAssignments for top-k routing; `probabilityMean[i]` is P_i, the
/// mean over tokens of the full router probability of expert i; `loadBalancingLoss` is the Switch
/// loss E · Σ f_i · P_i with f_i = count_i / (tokens · k), so perfectly balanced routing gives 1;
/// `zLoss` is the mean of logsumexp(logits)²; `entropy` the mean per-token entropy of
/// softmax(logits) in nats; `coactivation[i·E + j]` counts tokens that chose both i and j (i ≠ j,
/// symmetric, diagonal 0).
public struct RoutingRecord: Sendable, Equatable {
    public enum Detail: Sendable {
        /// Nothing is recorded (no cost).
        case none
        /// Per-expert and per-layer statistics.
        case statistics
        /// Statistics plus each token's chosen experts and weights.
        case perToken
    }

    public var tokens: Int
    public var experts: Int
    public var topK: Int
    var expertCounts: [Int]
    var probabilityMean: [Float]
    var droppedAssignments: Int
    var loadBalancingLoss: Float
    public var zLoss: Float
    var entropy: Float
    /// `[experts, experts]`, row-major.
    var coactivation: [Int]
    /// `[tokens, topK]` chosen experts (−1 for an empty slot); only with `.perToken`.
    var selectedExperts: [Int32]?
    /// `[tokens, topK]` combine weights; only with `.perToken`.
    var combineWeights: [Float]?
    /// `[experts + 1]`: tokens with exactly n active experts (filled slots), n = 0…E; only for
    /// routers whose active experts vary per token (ReLU routing), else nil.
    var activeExperts: [Int]?

    public init(tokens: Int, experts: Int, topK: Int, expertCounts: [Int], probabilityMean: [Float], droppedAssignments: Int,
                loadBalancingLoss: Float, zLoss: Float, entropy: Float, coactivation: [Int],
                selectedExperts: [Int32]? = nil, combineWeights: [Float]? = nil, activeExperts: [Int]? = nil) {
        self.tokens = tokens
        self.experts = experts
        self.topK = topK
        self.expertCounts = expertCounts
        self.probabilityMean = probabilityMean
        self.droppedAssignments = droppedAssignments
        self.loadBalancingLoss = loadBalancingLoss
        self.zLoss = zLoss
        self.entropy = entropy
        self.coactivation = coactivation
        self.selectedExperts = selectedExperts
        self.combineWeights = combineWeights
        self.activeExperts = activeExperts
    }
}
