import Foundation

/// Realised active experts per token of a log whose routers activate a varying number of experts
/// (schema 3, ReLU routing): per inspected layer, the histogram over the selected steps, its mean
/// and the realised sparsity 1 − mean/E against the target 1 − k/E; per step, the mean.
public struct ActiveExpertsSummary: Sendable, Equatable {
    public var layer: Int
    /// `[E + 1]`: tokens with exactly n active experts.
    public var histogram: [Int]
    /// Per selected step, the mean active experts per token.
    public var meanPerStep: [Double]

    /// Mean active experts per token over the selected steps.
    public var mean: Double {
        let tokens = histogram.reduce(0, +)
        return tokens == 0 ? 0 : Double(histogram.enumerated().reduce(0) { $0 + $1.offset * $1.element }) / Double(tokens)
    }

    /// The fraction of (token, expert) gates that are zero, 1 − mean/E.
    public var sparsity: Double { histogram.count <= 1 ? 0 : 1 - mean / Double(histogram.count - 1) }

    /// One summary per layer of `layerIndices` from the selected steps; empty for logs without
    /// variable active experts.
    static func summaries(_ steps: [RoutingLogStep], header: RoutingLogHeader, layerIndices: [Int]) -> [ActiveExpertsSummary] {
        guard header.variableActiveExperts, !header.isDense else { return [] }
        let width = header.numExperts + 1
        return layerIndices.map { layer in
            var histogram = [Int](repeating: 0, count: width)
            var means: [Double] = []
            for step in steps {
                guard let stepHistogram = step.layers[layer].activeExperts else { continue }
                for n in 0 ..< width { histogram[n] += stepHistogram[n] }
                means.append(ActiveExpertsSummary(layer: layer, histogram: stepHistogram, meanPerStep: []).mean)
            }
            return ActiveExpertsSummary(layer: layer, histogram: histogram, meanPerStep: means)
        }
    }
}

extension RoutingLogInspection {
    /// The `inspect` text section for variable active experts (nil for other logs).
    func activeExpertsReport() -> [String]? {
        guard !activeExperts.isEmpty else { return nil }
        let experts = header.numExperts, k = header.topK
        var lines = ["active experts per token (target k = \(k) of \(experts), sparsity 1 − k/E = \(decimal(1 - Double(k) / Double(experts))))",
                     "layer     mean  sparsity  tokens with 0, 1, …, E active"]
        for summary in activeExperts {
            lines.append(padded("\(summary.layer)", 5) + padded(decimal(summary.mean), 9) + padded(decimal(summary.sparsity), 10) + "  "
                + summary.histogram.map(String.init).joined(separator: " "))
        }
        if let first = activeExperts.first, first.meanPerStep.count > 1 {
            let steps = first.meanPerStep.indices.map { index in Self.mean(activeExperts.map { $0.meanPerStep[index] }) }
            lines.append("  mean active " + Self.sparkline(steps) + "  (\(decimal(steps.first ?? 0)) → \(decimal(steps.last ?? 0)))")
        }
        return lines
    }

    /// The JSON of the section: per layer histogram, mean, sparsity and per-step means.
    var activeExpertsJSON: JSONValue {
        .array(activeExperts.map { summary in
            .object([
                "layer": .integer(Int64(summary.layer)),
                "histogram": .array(summary.histogram.map { .integer(Int64($0)) }),
                "mean": .number(summary.mean),
                "sparsity": .number(summary.sparsity),
                "mean_per_step": .array(summary.meanPerStep.map { .number($0) }),
            ])
        })
    }
}

/// Three decimals (the report's number format).
private func decimal(_ value: Double) -> String { value.isFinite ? String(format: "%.3f", value) : "nan" }

/// Right-aligned in `width` columns.
private func padded(_ text: String, _ width: Int) -> String {
    text.count >= width ? text + " " : String(repeating: " ", count: width - text.count) + text
}
