import Foundation

/// Load-balance statistics of one layer's expert counts.
///
/// With T tokens, top-k routing and E experts the ideal load is T·k/E assignments per expert;
/// `shareOfIdeal[i] = count_i / (T·k/E)` (1 = exactly balanced). `maxOverMean` is max count /
/// mean count and `coefficientOfVariation` the population standard deviation of the counts over
/// their mean (0 = balanced); both use the counts after drops. Dead experts received no tokens.
/// With no assignments at all, shares, ratios and CV are 0.
struct ExpertLoadStatistics: Sendable, Equatable {
    var expertCounts: [Int]
    var shareOfIdeal: [Double]
    var maxOverMean: Double
    var coefficientOfVariation: Double
    var busiestExpert: Int
    var idlestExpert: Int
    var deadExperts: [Int]

    init(expertCounts: [Int], tokens: Int, topK: Int) {
        let experts = max(expertCounts.count, 1)
        let ideal = Double(tokens * topK) / Double(experts)
        let mean = Double(expertCounts.reduce(0, +)) / Double(experts)
        let variance = expertCounts.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / Double(experts)
        self.expertCounts = expertCounts
        shareOfIdeal = expertCounts.map { ideal > 0 ? Double($0) / ideal : 0 }
        maxOverMean = mean > 0 ? Double(expertCounts.max() ?? 0) / mean : 0
        coefficientOfVariation = mean > 0 ? variance.squareRoot() / mean : 0
        // Ties go to the lowest expert index.
        busiestExpert = expertCounts.indices.max { expertCounts[$0] < expertCounts[$1] || (expertCounts[$0] == expertCounts[$1] && $0 > $1) } ?? 0
        idlestExpert = expertCounts.indices.min { expertCounts[$0] < expertCounts[$1] || (expertCounts[$0] == expertCounts[$1] && $0 < $1) } ?? 0
        deadExperts = expertCounts.indices.filter { expertCounts[$0] == 0 }
    }
}

/// How strongly one layer's experts specialise by data domain, from the domain × expert counts
/// summed over the selected steps (`/routing/domain_counts`).
///
/// `expertShare[d][e] = n(d, e) / Σ_e' n(d, e')` is the share of domain d's assignments that go to
/// expert e (each row sums to 1; uniform routing gives 1/E everywhere).
/// `mutualInformation` is I(D; E) = Σ p(d, e) · log₂(p(d, e) / (p(d) p(e))) in bits over the
/// assignment distribution p(d, e) = n(d, e) / Σ n: 0 when the expert a token goes to says nothing
/// about its domain, log₂ D at most (each domain with its own experts). `normalizedMutualInformation`
/// divides by min(log₂ D, log₂ E) so 1 means perfectly domain-separated experts.
public struct DomainSpecialization: Sendable, Equatable {
    public var layer: Int
    /// `[domain][expert]` assignment counts.
    public var counts: [[Int]]
    var expertShare: [[Double]]
    var mutualInformation: Double
    var normalizedMutualInformation: Double

    public init(layer: Int, counts: [[Int]]) {
        self.layer = layer
        self.counts = counts
        expertShare = counts.map { row in
            let total = row.reduce(0, +)
            return row.map { total > 0 ? Double($0) / Double(total) : 0 }
        }
        let total = Double(counts.reduce(0) { $0 + $1.reduce(0, +) })
        let domains = counts.count, experts = counts.first?.count ?? 0
        var information = 0.0
        if total > 0 {
            let domainMarginal = counts.map { Double($0.reduce(0, +)) / total }
            let expertMarginal = (0 ..< experts).map { e in Double(counts.reduce(0) { $0 + $1[e] }) / total }
            for d in 0 ..< domains {
                for e in 0 ..< experts where counts[d][e] > 0 {
                    let joint = Double(counts[d][e]) / total
                    information += joint * Foundation.log2(joint / (domainMarginal[d] * expertMarginal[e]))
                }
            }
        }
        mutualInformation = max(information, 0)
        let ceiling = min(Foundation.log2(Double(max(domains, 1))), Foundation.log2(Double(max(experts, 1))))
        normalizedMutualInformation = ceiling > 0 ? mutualInformation / ceiling : 0
    }
}

/// What `moekit inspect` reports about a routing log: per layer, the load over the selected steps
/// (counts summed over those steps), the mean aux loss, z-loss and entropy over those steps
/// weighted by their token counts, and per step the trend of CV and aux loss. Training logs add
/// the loss / learning-rate curve; logs with domains add each layer's domain specialisation.
public struct RoutingLogInspection: Sendable {
    public enum StepSelection: Sendable, Equatable {
        /// Every complete step.
        case all
        /// The row whose step index is this value.
        case step(Int)
        /// The last N complete steps.
        case last(Int)
    }

    public struct LayerSummary: Sendable, Equatable {
        public var layer: Int
        var load: ExpertLoadStatistics
        var dropped: Int
        public var auxLoss: Double
        public var zLoss: Double
        var entropy: Double
    }

    /// One step of the trend: per inspected layer, the CV of that step's counts and its aux loss.
    public struct TrendPoint: Sendable, Equatable {
        public var step: Int
        var coefficientOfVariation: [Double]
        public var auxLoss: [Double]
    }

    public let path: String
    public let header: RoutingLogHeader
    /// Step indices of the selected rows.
    public let steps: [Int]
    /// Tokens over the selected steps.
    public let tokens: Int
    public let layers: [LayerSummary]
    let trend: [TrendPoint]
    /// Per inspected layer, when the log has domains.
    let domainSpecialization: [DomainSpecialization]
    /// The selected steps' loss, learning rate and training columns (training logs; else empty).
    public let training: [RoutingLogStep]
    /// Per inspected layer, realised active experts per token (variable-k logs, schema 3; else empty).
    public let activeExperts: [ActiveExpertsSummary]

    public init(path: String, layer: Int? = nil, selection: StepSelection = .all) throws {
        try self.init(reader: RoutingLogReader(path: path), layer: layer, selection: selection)
    }

    public init(reader: RoutingLogReader, layer: Int? = nil, selection: StepSelection = .all) throws {
        path = reader.path
        header = reader.header
        if let layer, !(0 ..< header.numLayers).contains(layer) {
            throw RoutingLogError.outOfRange(file: path, what: "layer", index: layer, available: header.numLayers)
        }
        let rows: Range<Int>
        switch selection {
        case .all:
            rows = 0 ..< reader.stepCount
        case .last(let count):
            rows = max(0, reader.stepCount - max(count, 0)) ..< reader.stepCount
        case .step(let index):
            guard let row = try reader.stepIndices().firstIndex(of: index) else {
                throw RoutingLogError.outOfRange(file: path, what: "step", index: index, available: reader.stepCount)
            }
            rows = row ..< row + 1
        }
        let selected = try reader.steps(rows)
        let layerIndices = layer.map { [$0] } ?? Array(0 ..< header.numLayers)
        steps = selected.map(\.step)
        tokens = selected.reduce(0) { $0 + $1.tokens }
        let experts = header.numExperts, topK = header.topK, totalTokens = tokens
        func tokenWeightedMean(_ value: (RoutingLogLayerStatistics) -> Float, layer: Int) -> Double {
            guard totalTokens > 0 else { return 0 }
            return selected.reduce(0.0) { $0 + Double(value($1.layers[layer])) * Double($1.tokens) } / Double(totalTokens)
        }
        layers = layerIndices.map { index in
            var counts = [Int](repeating: 0, count: experts)
            var dropped = 0
            for step in selected {
                for expert in 0 ..< experts { counts[expert] += step.layers[index].expertCounts[expert] }
                dropped += step.layers[index].dropped
            }
            return LayerSummary(layer: index, load: ExpertLoadStatistics(expertCounts: counts, tokens: totalTokens, topK: topK), dropped: dropped,
                                auxLoss: tokenWeightedMean(\.auxLoss, layer: index), zLoss: tokenWeightedMean(\.zLoss, layer: index),
                                entropy: tokenWeightedMean(\.entropy, layer: index))
        }
        training = header.training ? selected.map { step in
            var bare = step
            bare.layers = []
            return bare
        } : []
        let domains = header.domains.count
        domainSpecialization = domains == 0 ? [] : layerIndices.map { index in
            var counts = [[Int]](repeating: [Int](repeating: 0, count: experts), count: domains)
            for step in selected {
                guard let stepCounts = step.layers[index].domainCounts else { continue }
                for d in 0 ..< domains { for e in 0 ..< experts { counts[d][e] += stepCounts[d * experts + e] } }
            }
            return DomainSpecialization(layer: index, counts: counts)
        }
        activeExperts = ActiveExpertsSummary.summaries(selected, header: header, layerIndices: layerIndices)
        trend = selected.map { step in
            TrendPoint(step: step.step,
                       coefficientOfVariation: layerIndices.map { ExpertLoadStatistics(expertCounts: step.layers[$0].expertCounts, tokens: step.tokens, topK: topK).coefficientOfVariation },
                       auxLoss: layerIndices.map { Double(step.layers[$0].auxLoss) })
        }
    }
}
