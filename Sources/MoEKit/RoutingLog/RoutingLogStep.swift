import Foundation

/// One row of the step axis of a routing log: what one batch (a `trace` batch or a training step)
/// did in every MoE layer. The writer checks it against the log's header and the invariant
/// Σ_expert expertCounts = tokens · k − dropped for every layer (variable-k logs: Σ_n n · activeExperts[n])
/// before writing anything.
public struct RoutingLogStep: Sendable, Equatable {
    /// The step index (`/steps/step`); strictly increasing along the step axis.
    public var step: Int
    /// Tokens in the batch (`/steps/tokens`).
    public var tokens: Int
    /// Training loss, NaN when not training (`/steps/loss`).
    public var loss: Float
    /// Learning rate, NaN when not training (`/steps/lr`).
    public var learningRate: Float
    /// One entry per MoE layer, in layer order.
    public var layers: [RoutingLogLayerStatistics]
    /// Each token's chosen experts and weights; required exactly when the log has a per-token trace.
    public var tokenTrace: RoutingLogTokenTrace?
    /// The training columns; required exactly when the log has them (`RoutingLogHeader.training`).
    public var training: RoutingLogTrainingColumns?

    public init(step: Int, tokens: Int, loss: Float = .nan, learningRate: Float = .nan,
                layers: [RoutingLogLayerStatistics], tokenTrace: RoutingLogTokenTrace? = nil,
                training: RoutingLogTrainingColumns? = nil) {
        self.step = step
        self.tokens = tokens
        self.loss = loss
        self.learningRate = learningRate
        self.layers = layers
        self.tokenTrace = tokenTrace
        self.training = training
    }

    /// A step from the routing records the MoE layers returned for one batch (one record per layer,
    /// in layer order); `tokens` is taken from the first record (all records cover the same batch).
    public init(step: Int, records: [RoutingRecord], loss: Float = .nan, learningRate: Float = .nan,
                tokenTrace: RoutingLogTokenTrace? = nil) {
        self.init(step: step, tokens: records.first?.tokens ?? 0, loss: loss, learningRate: learningRate,
                  layers: records.map(RoutingLogLayerStatistics.init(record:)), tokenTrace: tokenTrace)
    }
}

/// The version-2 training columns of one step (`/steps/lm_loss`, `/steps/grad_norm`, `/steps/val_loss`).
/// `loss` (`/steps/loss`) is the total loss that was minimised: the language-model cross-entropy
/// plus every MoE layer's weighted auxiliary loss.
public struct RoutingLogTrainingColumns: Sendable, Equatable {
    /// Mean next-token cross-entropy of the step's batch (nats).
    public var languageModelLoss: Float
    /// Global L2 norm of the gradient before clipping.
    public var gradientNorm: Float
    /// Mean cross-entropy on held-out batches, NaN on steps without an evaluation.
    public var validationLoss: Float

    public init(languageModelLoss: Float, gradientNorm: Float, validationLoss: Float = .nan) {
        self.languageModelLoss = languageModelLoss
        self.gradientNorm = gradientNorm
        self.validationLoss = validationLoss
    }
}

/// One MoE layer's routing statistics for one step (`/routing/*[step, layer]`). Conventions are
/// those of `RoutingRecord`: counts are assignments after drops; `probabilityMean[i]` is P_i, the
/// mean router probability of expert i; `auxLoss` is the Switch loss E · Σ f_i · P_i with
/// f_i = count_i / (tokens · k) (balanced = 1); `zLoss` the mean of logsumexp(logits)²; `entropy`
/// the mean per-token router entropy in nats; `coactivation[i·E + j]` the number of tokens that
/// chose both i and j (symmetric, diagonal 0).
public struct RoutingLogLayerStatistics: Sendable, Equatable {
    public var expertCounts: [Int]
    public var probabilityMean: [Float]
    public var auxLoss: Float
    public var zLoss: Float
    public var entropy: Float
    public var dropped: Int
    /// `[experts, experts]`, row-major.
    public var coactivation: [Int]
    /// `[domains, experts]` row-major: assignments of tokens of each data domain to each expert
    /// (Σ_domain = `expertCounts`); required exactly when the log has domains.
    public var domainCounts: [Int]?
    /// `[experts + 1]`: tokens with exactly n active experts, n = 0…E (schema 3, `/routing/active_experts`);
    /// required exactly when the log has variable active experts (ReLU routing).
    public var activeExperts: [Int]?

    public init(expertCounts: [Int], probabilityMean: [Float], auxLoss: Float, zLoss: Float, entropy: Float,
                dropped: Int, coactivation: [Int], domainCounts: [Int]? = nil, activeExperts: [Int]? = nil) {
        self.domainCounts = domainCounts
        self.activeExperts = activeExperts
        self.expertCounts = expertCounts
        self.probabilityMean = probabilityMean
        self.auxLoss = auxLoss
        self.zLoss = zLoss
        self.entropy = entropy
        self.dropped = dropped
        self.coactivation = coactivation
    }

    /// The statistics an MoE layer recorded (`RoutingRecord.Detail.statistics` or `.perToken`).
    public init(record: RoutingRecord) {
        self.init(expertCounts: record.expertCounts, probabilityMean: record.probabilityMean, auxLoss: record.loadBalancingLoss,
                  zLoss: record.zLoss, entropy: record.entropy, dropped: record.droppedAssignments, coactivation: record.coactivation,
                  activeExperts: record.activeExperts)
    }
}

/// The optional per-token trace of one step (`/tokens/*`): rows are tokens, in batch order. The
/// rows of step row s are [Σ_{r<s} tokens_r, Σ_{r≤s} tokens_r) of the token axis.
public struct RoutingLogTokenTrace: Sendable, Equatable {
    /// Token ids, `[n]`.
    public var ids: [Int32]
    /// Index of the sequence the token came from, `[n]`.
    public var sequence: [Int32]
    /// Position of the token within its sequence, `[n]`.
    var position: [Int32]
    /// `[n, layers, k]` row-major: chosen experts, −1 for an empty (dropped) slot.
    public var experts: [Int16]
    /// `[n, layers, k]` row-major: combine weights, 0 for an empty slot.
    public var weights: [Float]

    public init(ids: [Int32], sequence: [Int32], position: [Int32], experts: [Int16], weights: [Float]) {
        self.ids = ids
        self.sequence = sequence
        self.position = position
        self.experts = experts
        self.weights = weights
    }

    /// Interleaves the per-layer `[tokens, k]` selections of `.perToken` routing records (one per
    /// layer, in layer order) into `[tokens, layers, k]` (`[tokens, layers, E]` for records with
    /// variable active experts). Nil when a record carries no per-token
    /// detail, its shape disagrees with `ids`, or an expert index does not fit int16.
    public init?(ids: [Int32], sequence: [Int32], position: [Int32], records: [RoutingRecord]) {
        let tokens = ids.count
        guard let first = records.first, sequence.count == tokens, position.count == tokens else { return nil }
        let topK = first.activeExperts == nil ? first.topK : first.experts
        var experts = [Int16](repeating: -1, count: tokens * records.count * topK)
        var weights = [Float](repeating: 0, count: experts.count)
        for (layer, record) in records.enumerated() {
            guard record.topK == first.topK, record.tokens == tokens,
                  let selected = record.selectedExperts, let combine = record.combineWeights,
                  selected.count == tokens * topK, combine.count == tokens * topK else { return nil }
            for token in 0 ..< tokens {
                for slot in 0 ..< topK {
                    guard let expert = Int16(exactly: selected[token * topK + slot]) else { return nil }
                    let index = (token * records.count + layer) * topK + slot
                    experts[index] = expert
                    weights[index] = combine[token * topK + slot]
                }
            }
        }
        self.init(ids: ids, sequence: sequence, position: position, experts: experts, weights: weights)
    }
}
