import Foundation

/// `moekit inspect`'s text report: per-layer load table, terminal heatmap, trends, domain
/// specialisation and the training columns.
extension RoutingLogInspection {
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
