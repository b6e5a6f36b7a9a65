import Foundation

/// Load-balance statistics of one layer's expert counts.
///
/// With T tokens, top-k routing and E experts the ideal load is T·k/E assignments per expert;
/// `shareOfIdeal[i] = count_i / (T·k/E)` (1 = exactly balanced). `maxOverMean` is max count /
/// mean count and `coefficientOfVariation` the population standard deviation of the counts over
/// their mean (0 = balanced); both use the counts after drops. Dead experts received no tokens.
/// With no assignments at all, shares, ratios and CV are 0.
public struct ExpertLoadStatistics: Sendable, Equatable {
    public var expertCounts: [Int]
    public var shareOfIdeal: [Double]
    public var maxOverMean: Double
    public var coefficientOfVariation: Double
    public var busiestExpert: Int
    public var idlestExpert: Int
    public var deadExperts: [Int]

    public init(expertCounts: [Int], tokens: Int, topK: Int) {
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
    public var expertShare: [[Double]]
    public var mutualInformation: Double
    public var normalizedMutualInformation: Double

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
        public var load: ExpertLoadStatistics
        public var dropped: Int
        public var auxLoss: Double
        public var zLoss: Double
        public var entropy: Double
    }

    /// One step of the trend: per inspected layer, the CV of that step's counts and its aux loss.
    public struct TrendPoint: Sendable, Equatable {
        public var step: Int
        public var coefficientOfVariation: [Double]
        public var auxLoss: [Double]
    }

    public let path: String
    public let header: RoutingLogHeader
    /// Step indices of the selected rows.
    public let steps: [Int]
    /// Tokens over the selected steps.
    public let tokens: Int
    public let layers: [LayerSummary]
    public let trend: [TrendPoint]
    /// Per inspected layer, when the log has domains.
    public let domainSpecialization: [DomainSpecialization]
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

    // MARK: JSON

    /// The report as JSON (non-finite numbers become null).
    public func json() -> JSONValue {
        func number(_ value: Double) -> JSONValue { value.isFinite ? .number(value) : .null }
        func integers(_ values: [Int]) -> JSONValue { .array(values.map { .integer(Int64($0)) }) }
        return .object([
            "file": .string(path),
            "format": .string(RoutingLogSchema.format),
            "version": .integer(Int64(header.version)),
            "num_layers": .integer(Int64(header.numLayers)),
            "num_experts": .integer(Int64(header.numExperts)),
            "top_k": .integer(Int64(header.topK)),
            "router": .string(header.router),
            "source": .string(header.source),
            "created": .string(header.created),
            "steps": integers(steps),
            "tokens": .integer(Int64(tokens)),
            "layers": .array(layers.map { summary in
                .object([
                    "layer": .integer(Int64(summary.layer)),
                    "expert_counts": integers(summary.load.expertCounts),
                    "share_of_ideal": .array(summary.load.shareOfIdeal.map(number)),
                    "max_over_mean": number(summary.load.maxOverMean),
                    "cv": number(summary.load.coefficientOfVariation),
                    "busiest_expert": .integer(Int64(summary.load.busiestExpert)),
                    "idlest_expert": .integer(Int64(summary.load.idlestExpert)),
                    "dead_experts": integers(summary.load.deadExperts),
                    "dropped": .integer(Int64(summary.dropped)),
                    "aux_loss": number(summary.auxLoss),
                    "z_loss": number(summary.zLoss),
                    "entropy": number(summary.entropy),
                ])
            }),
            "trend": .array(trend.map { point in
                .object([
                    "step": .integer(Int64(point.step)),
                    "layers": integers(layers.map(\.layer)),
                    "cv": .array(point.coefficientOfVariation.map(number)),
                    "aux_loss": .array(point.auxLoss.map(number)),
                ])
            }),
            "variable_k": .bool(header.variableActiveExperts),
            "active_experts": activeExpertsJSON,
            "domains": .array(header.domains.map(JSONValue.string)),
            "domain_specialization": .array(domainSpecialization.map { summary in
                .object([
                    "layer": .integer(Int64(summary.layer)),
                    "counts": .array(summary.counts.map(integers)),
                    "expert_share": .array(summary.expertShare.map { .array($0.map(number)) }),
                    "mutual_information_bits": number(summary.mutualInformation),
                    "normalized_mutual_information": number(summary.normalizedMutualInformation),
                ])
            }),
            "training": .array(training.map { step in
                .object([
                    "step": .integer(Int64(step.step)),
                    "tokens": .integer(Int64(step.tokens)),
                    "loss": number(Double(step.loss)),
                    "lm_loss": number(Double(step.training?.languageModelLoss ?? .nan)),
                    "lr": number(Double(step.learningRate)),
                    "grad_norm": number(Double(step.training?.gradientNorm ?? .nan)),
                    "val_loss": number(Double(step.training?.validationLoss ?? .nan)),
                ])
            }),
        ])
    }

    // MARK: Text

    /// The human-readable report; `colour` renders the heatmap with ANSI 256-colour backgrounds
    /// (for a terminal), otherwise with plain characters.
    public func textReport(colour: Bool) -> String {
        var lines: [String] = []
        if header.isDense {
            lines.append("\(path): MoEKit training log v\(header.version), dense model")
        } else {
            lines.append("\(path): MoEKit \(header.training ? "training" : "routing") log v\(header.version), \(header.numLayers) layers, \(header.numExperts) experts, top-\(header.topK)")
            lines.append("  router: \(header.router)")
        }
        lines.append("  source: \(header.source), created \(header.created)")
        guard !steps.isEmpty else {
            lines.append("  no complete steps yet")
            return lines.joined(separator: "\n")
        }
        if !training.isEmpty {
            lines.append(contentsOf: trainingReport())
        }
        guard !header.isDense else { return lines.joined(separator: "\n") }
        let stepText = steps.count == 1 ? "step \(steps[0])" : "\(steps.count) steps (\(steps.first!)…\(steps.last!))"
        lines.append("  \(stepText), \(tokens) tokens; ideal load = tokens·k/E = \(format(Double(tokens * header.topK) / Double(header.numExperts))) per expert")
        lines.append("")
        lines.append("layer   max/mean     CV  busiest (share)  idlest (share)  dead  dropped  aux loss   z-loss  entropy")
        for summary in layers {
            let load = summary.load
            let busiest = "e\(load.busiestExpert) (\(format(load.shareOfIdeal[load.busiestExpert])))"
            let idlest = "e\(load.idlestExpert) (\(format(load.shareOfIdeal[load.idlestExpert])))"
            lines.append(pad("\(summary.layer)", 5) + pad(format(load.maxOverMean), 11) + pad(format(load.coefficientOfVariation), 7)
                + pad(busiest, 17) + pad(idlest, 16) + pad("\(load.deadExperts.count)", 6) + pad("\(summary.dropped)", 9)
                + pad(format(summary.auxLoss), 10) + pad(format(summary.zLoss), 9) + pad(format(summary.entropy), 9))
        }
        for summary in layers where !summary.load.deadExperts.isEmpty {
            lines.append("  layer \(summary.layer): dead experts \(summary.load.deadExperts.map { "e\($0)" }.joined(separator: ", "))")
        }
        lines.append("")
        lines.append("tokens per expert")
        for summary in layers {
            lines.append("  layer \(summary.layer): " + summary.load.expertCounts.enumerated().map { "e\($0.offset) \($0.element)" }.joined(separator: "  "))
        }
        if let activeReport = activeExpertsReport() {
            lines.append("")
            lines.append(contentsOf: activeReport)
        }
        lines.append("")
        lines.append(contentsOf: terminalHeatmap(colour: colour))
        if !domainSpecialization.isEmpty {
            lines.append("")
            lines.append(contentsOf: domainReport())
        }
        if trend.count > 1 {
            lines.append("")
            lines.append("trend (mean over the layers shown)")
            lines.append("     step       CV  aux loss")
            let shown = Self.evenlySpaced(count: trend.count, limit: 12)
            for index in shown {
                let point = trend[index]
                lines.append(pad("\(point.step)", 9) + pad(format(Self.mean(point.coefficientOfVariation)), 9) + pad(format(Self.mean(point.auxLoss)), 10))
            }
            lines.append("  CV  " + Self.sparkline(trend.map { Self.mean($0.coefficientOfVariation) }))
            lines.append("  aux " + Self.sparkline(trend.map { Self.mean($0.auxLoss) }))
        }
        return lines.joined(separator: "\n")
    }

    /// The loss curve of a training log: a table of up to 12 evenly spaced steps and sparklines.
    func trainingReport() -> [String] {
        var lines = ["", "training: \(training.count) steps, \(tokens) tokens",
                     "     step      loss   lm loss         lr  grad norm  val loss"]
        for index in Self.evenlySpaced(count: training.count, limit: 12) {
            let step = training[index]
            lines.append(pad("\(step.step)", 9) + pad(format(Double(step.loss)), 10) + pad(format(Double(step.training?.languageModelLoss ?? .nan)), 10)
                + pad(String(format: "%.3e", Double(step.learningRate)), 11) + pad(format(Double(step.training?.gradientNorm ?? .nan)), 11)
                + pad(format(Double(step.training?.validationLoss ?? .nan)), 10))
        }
        if training.count > 1 {
            lines.append("  loss " + Self.sparkline(training.map { Double($0.loss) }))
            lines.append("  lr   " + Self.sparkline(training.map { Double($0.learningRate) }))
        }
        return lines
    }

    /// Per layer, each domain's share of assignments per expert and I(domain; expert).
    func domainReport() -> [String] {
        let nameWidth = max(8, header.domains.map(\.count).max() ?? 0)
        var lines = ["domain specialisation: share of each domain's assignments per expert (uniform = \(format(1 / Double(max(header.numExperts, 1)))));",
                     "  I(domain; expert) in bits, normalised by min(log2 D, log2 E) in brackets"]
        for summary in domainSpecialization {
            lines.append("  layer \(summary.layer): I = \(format(summary.mutualInformation)) bits (\(format(summary.normalizedMutualInformation)))")
            lines.append("    " + pad("domain", nameWidth) + (0 ..< header.numExperts).map { pad("e\($0)", 7) }.joined())
            for (domain, shares) in summary.expertShare.enumerated() {
                let name = domain < header.domains.count ? header.domains[domain] : "\(domain)"
                lines.append("    " + pad(name, nameWidth) + shares.map { pad(format($0), 7) }.joined())
            }
        }
        return lines
    }

    /// Rows are layers, columns experts; each cell shows the expert's share of the ideal load.
    func terminalHeatmap(colour: Bool) -> [String] {
        var lines = ["heatmap: share of ideal load per layer × expert (1 = balanced; " +
                     (colour ? "blue under, white balanced, red over)" : "ramp \"\(Self.plainRamp)\" from 0 to ≥2)")]
        let header = "layer " + (0 ..< self.header.numExperts).map { pad("\($0 % 100)", 3) }.joined()
        lines.append(header)
        for summary in layers {
            var line = pad("\(summary.layer)", 5) + " "
            for share in summary.load.shareOfIdeal {
                if colour {
                    let (r, g, b) = Self.colour(forShare: share)
                    // xterm 256-colour cube: 16 + 36r + 6g + b with r, g, b in 0…5.
                    let code = 16 + 36 * Int((Double(r) / 255 * 5).rounded()) + 6 * Int((Double(g) / 255 * 5).rounded()) + Int((Double(b) / 255 * 5).rounded())
                    line += "\u{1B}[48;5;\(code)m   \u{1B}[0m"
                } else {
                    line += "  " + String(Self.plainCharacter(forShare: share))
                }
            }
            lines.append(line)
        }
        return lines
    }

    static let plainRamp = " .:-=+*#%@"

    /// The plain-text heatmap character: the ramp spans shares 0 … 2, clamped.
    static func plainCharacter(forShare share: Double) -> Character {
        let ramp = Array(plainRamp)
        let index = Int((min(max(share, 0), 2) / 2 * Double(ramp.count - 1)).rounded())
        return ramp[index]
    }

    /// Diverging colour scale: share 0 → blue (49, 54, 149), 1 → white, ≥2 → red (165, 0, 38).
    static func colour(forShare share: Double) -> (Int, Int, Int) {
        let t = min(max(share, 0), 2)
        let (low, high): ((Double, Double, Double), Double) = t < 1 ? ((49, 54, 149), 1 - t) : ((165, 0, 38), t - 1)
        func mix(_ end: Double) -> Int { Int((255 + (end - 255) * high).rounded()) }
        return (mix(low.0), mix(low.1), mix(low.2))
    }

    static func mean(_ values: [Double]) -> Double { values.isEmpty ? 0 : values.reduce(0, +) / Double(values.count) }

    static func evenlySpaced(count: Int, limit: Int) -> [Int] {
        guard count > limit else { return Array(0 ..< count) }
        return (0 ..< limit).map { Int((Double($0) * Double(count - 1) / Double(limit - 1)).rounded()) }
    }

    /// A one-line bar chart (▁…█) of `values`, scaled from their minimum to maximum, at most 60 wide.
    static func sparkline(_ values: [Double]) -> String {
        let bars = Array("▁▂▃▄▅▆▇█")
        let shown = evenlySpaced(count: values.count, limit: 60).map { values[$0] }
        guard let low = shown.min(), let high = shown.max() else { return "" }
        return String(shown.map { high > low ? bars[Int((($0 - low) / (high - low) * Double(bars.count - 1)).rounded())] : bars[0] })
            + "  \(format(low)) … \(format(high))"
    }
}

private func format(_ value: Double) -> String {
    guard value.isFinite else { return "nan" }
    return String(format: abs(value) >= 1000 ? "%.0f" : "%.3f", value)
}

private func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text + " " : String(repeating: " ", count: width - text.count) + text
}
