import Foundation

extension RoutingLogInspection {
    /// A standalone SVG heatmap: rows are the inspected layers, columns the experts, each cell
    /// coloured by the expert's share of the ideal load on the diverging scale of
    /// `colour(forShare:)` (0 blue, 1 white, ≥2 red), with axes, tick labels, a title naming the
    /// file and steps, a colour scale, and a tooltip per cell (count and share).
    func heatmapSVG() -> String {
        let experts = header.numExperts, rows = layers.count
        let cell = Double(max(8, min(28, 720 / max(experts, 1))))
        let left = 70.0, top = 56.0, scaleWidth = 18.0
        let gridWidth = cell * Double(experts), gridHeight = cell * Double(rows)
        let width = left + gridWidth + 30 + scaleWidth + 60, height = top + gridHeight + 60
        let tickEvery = max(1, Int((16 / cell).rounded(.up)))
        func number(_ value: Double) -> String { String(format: "%.2f", value) }
        func rgb(_ share: Double) -> String {
            let (r, g, b) = Self.colour(forShare: share)
            return "rgb(\(r),\(g),\(b))"
        }

        var svg: [String] = []
        svg.append(#"<?xml version="1.0" encoding="UTF-8"?>"#)
        svg.append(#"<svg xmlns="http://www.w3.org/2000/svg" width="\#(number(width))" height="\#(number(height))" viewBox="0 0 \#(number(width)) \#(number(height))" font-family="sans-serif" font-size="11">"#)
        let stepText = steps.isEmpty ? "no steps" : steps.count == 1 ? "step \(steps[0])" : "steps \(steps.first!)–\(steps.last!) (\(steps.count))"
        svg.append(#"<title>\#(xmlEscaped("Expert load: \(path)"))</title>"#)
        svg.append(#"<text x="\#(number(left))" y="20" font-size="14" font-weight="bold">\#(xmlEscaped("Share of ideal load (count ÷ tokens·k/E)"))</text>"#)
        svg.append(#"<text x="\#(number(left))" y="38">\#(xmlEscaped("\(URL(fileURLWithPath: path).lastPathComponent), \(stepText), \(tokens) tokens, top-\(header.topK) of \(experts)"))</text>"#)

        svg.append(#"<g id="cells">"#)
        for (row, summary) in layers.enumerated() {
            for expert in 0 ..< experts {
                let share = summary.load.shareOfIdeal[expert]
                let x = left + Double(expert) * cell, y = top + Double(row) * cell
                svg.append(#"<rect x="\#(number(x))" y="\#(number(y))" width="\#(number(cell))" height="\#(number(cell))" fill="\#(rgb(share))" stroke="white" stroke-width="0.5"><title>layer \#(summary.layer), expert \#(expert): \#(summary.load.expertCounts[expert]) tokens, \#(number(share))× ideal</title></rect>"#)
            }
        }
        svg.append("</g>")

        // Axes with ticks and labels.
        svg.append(#"<g id="axes" stroke="black" stroke-width="1">"#)
        svg.append(#"<line x1="\#(number(left))" y1="\#(number(top + gridHeight))" x2="\#(number(left + gridWidth))" y2="\#(number(top + gridHeight))"/>"#)
        svg.append(#"<line x1="\#(number(left))" y1="\#(number(top))" x2="\#(number(left))" y2="\#(number(top + gridHeight))"/>"#)
        svg.append("</g>")
        svg.append(#"<g id="expert-ticks" text-anchor="middle">"#)
        for expert in stride(from: 0, to: experts, by: tickEvery) {
            svg.append(#"<text x="\#(number(left + (Double(expert) + 0.5) * cell))" y="\#(number(top + gridHeight + 14))">\#(expert)</text>"#)
        }
        svg.append("</g>")
        svg.append(#"<g id="layer-ticks" text-anchor="end">"#)
        for (row, summary) in layers.enumerated() where row % max(1, Int((12 / cell).rounded(.up))) == 0 {
            svg.append(#"<text x="\#(number(left - 6))" y="\#(number(top + (Double(row) + 0.5) * cell + 4))">\#(summary.layer)</text>"#)
        }
        svg.append("</g>")
        svg.append(#"<text x="\#(number(left + gridWidth / 2))" y="\#(number(top + gridHeight + 34))" text-anchor="middle" font-size="12">expert</text>"#)
        svg.append(#"<text x="20" y="\#(number(top + gridHeight / 2))" text-anchor="middle" font-size="12" transform="rotate(-90 20 \#(number(top + gridHeight / 2)))">layer</text>"#)

        // Colour scale: share 2 at the top, 0 at the bottom.
        let scaleX = left + gridWidth + 30, scaleHeight = max(gridHeight, 120)
        svg.append(#"<defs><linearGradient id="share-scale" x1="0" y1="1" x2="0" y2="0">"#)
        for stop in stride(from: 0.0, through: 2.0, by: 0.25) {
            svg.append(#"<stop offset="\#(number(stop / 2))" stop-color="\#(rgb(stop))"/>"#)
        }
        svg.append("</linearGradient></defs>")
        svg.append(#"<g id="colour-scale">"#)
        svg.append(#"<rect x="\#(number(scaleX))" y="\#(number(top))" width="\#(number(scaleWidth))" height="\#(number(scaleHeight))" fill="url(#share-scale)" stroke="black" stroke-width="0.5"/>"#)
        for (value, label) in [(0.0, "0"), (0.5, "0.5"), (1.0, "1 (ideal)"), (1.5, "1.5"), (2.0, "≥2")] {
            let y = top + scaleHeight * (1 - value / 2)
            svg.append(#"<line x1="\#(number(scaleX + scaleWidth))" y1="\#(number(y))" x2="\#(number(scaleX + scaleWidth + 4))" y2="\#(number(y))" stroke="black"/>"#)
            svg.append(#"<text x="\#(number(scaleX + scaleWidth + 6))" y="\#(number(y + 4))">\#(xmlEscaped(label))</text>"#)
        }
        svg.append("</g>")
        svg.append("</svg>")
        return svg.joined(separator: "\n") + "\n"
    }

    /// Writes `heatmapSVG()` to `path` atomically.
    public func writeHeatmapSVG(to path: String) throws(FileError) {
        try AtomicFileWriter.write(Data(heatmapSVG().utf8), to: path)
    }
}

private func xmlEscaped(_ text: String) -> String {
    var escaped = ""
    for character in text {
        switch character {
        case "&": escaped += "&amp;"
        case "<": escaped += "&lt;"
        case ">": escaped += "&gt;"
        case "\"": escaped += "&quot;"
        case "'": escaped += "&apos;"
        default: escaped.append(character)
        }
    }
    return escaped
}
