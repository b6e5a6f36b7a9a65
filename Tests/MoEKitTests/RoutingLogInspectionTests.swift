import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing
@testable import MoEKit

/// `moekit inspect`'s statistics, text, JSON and SVG, checked on hand-computed logs.
@Suite struct RoutingLogInspectionTests {
    /// One layer, 4 experts, top-2. Step 0: 6 tokens, counts [6, 4, 2, 0], aux 1.5;
    /// step 1: 2 tokens, counts [1, 1, 1, 1], aux 1.0.
    private func handWrittenLog(in directory: TemporaryDirectory) throws -> String {
        let path = directory.file("hand.h5")
        let header = RoutingLogHeader(numLayers: 1, numExperts: 4, topK: 2, router: "hand", modelConfig: "{}", source: "hand")
        let writer = try RoutingLogWriter(path: path, header: header)
        let noPairs = [Int](repeating: 0, count: 16)
        try writer.append(RoutingLogStep(step: 0, tokens: 6, layers: [
            RoutingLogLayerStatistics(expertCounts: [6, 4, 2, 0], probabilityMean: [0.4, 0.3, 0.2, 0.1], auxLoss: 1.5, zLoss: 2, entropy: 1, dropped: 0, coactivation: noPairs),
        ]))
        try writer.append(RoutingLogStep(step: 1, tokens: 2, layers: [
            RoutingLogLayerStatistics(expertCounts: [1, 1, 1, 1], probabilityMean: [0.25, 0.25, 0.25, 0.25], auxLoss: 1, zLoss: 4, entropy: 1.2, dropped: 0, coactivation: noPairs),
        ]))
        try writer.close()
        return path
    }

    /// Counts [6, 4, 2, 0] over 6 tokens, k = 2, E = 4: ideal 3, shares [2, 4/3, 2/3, 0], mean 3,
    /// population std √5, so CV = √5/3 and max/mean = 2; expert 3 is dead.
    @Test func loadStatisticsMatchHandComputedCase() {
        let load = ExpertLoadStatistics(expertCounts: [6, 4, 2, 0], tokens: 6, topK: 2)
        #expect(isClose(load.shareOfIdeal.map(Float.init), [2, 4.0 / 3, 2.0 / 3, 0]))
        #expect(abs(load.coefficientOfVariation - 5.0.squareRoot() / 3) < 1e-12)
        #expect(load.maxOverMean == 2)
        #expect(load.busiestExpert == 0 && load.idlestExpert == 3)
        #expect(load.deadExperts == [3])
        let balanced = ExpertLoadStatistics(expertCounts: [5, 5, 5, 5], tokens: 10, topK: 2)
        #expect(balanced.coefficientOfVariation == 0 && balanced.maxOverMean == 1 && balanced.shareOfIdeal == [1, 1, 1, 1] && balanced.deadExperts.isEmpty)
        let empty = ExpertLoadStatistics(expertCounts: [0, 0], tokens: 0, topK: 1)
        #expect(empty.coefficientOfVariation == 0 && empty.shareOfIdeal == [0, 0] && empty.deadExperts == [0, 1])
    }

    /// Over both steps counts add to [7, 5, 3, 1] (ideal 4 over 8 tokens), aux loss is the
    /// token-weighted mean (1.5·6 + 1·2)/8 = 1.375; `--step` and `--last` pick rows.
    @Test func inspectionAggregatesSelectedSteps() throws {
        let directory = TemporaryDirectory()
        let path = try handWrittenLog(in: directory)
        let all = try RoutingLogInspection(path: path)
        #expect(all.steps == [0, 1] && all.tokens == 8)
        #expect(all.layers[0].load.expertCounts == [7, 5, 3, 1])
        #expect(isClose(all.layers[0].load.shareOfIdeal.map(Float.init), [1.75, 1.25, 0.75, 0.25]))
        #expect(abs(all.layers[0].auxLoss - 1.375) < 1e-6)
        #expect(abs(all.layers[0].zLoss - 2.5) < 1e-6)
        #expect(all.trend.map(\.step) == [0, 1])
        #expect(abs(all.trend[0].coefficientOfVariation[0] - 5.0.squareRoot() / 3) < 1e-12 && all.trend[1].coefficientOfVariation[0] == 0)

        let first = try RoutingLogInspection(path: path, selection: .step(0))
        #expect(first.layers[0].load.deadExperts == [3] && first.tokens == 6)
        let last = try RoutingLogInspection(path: path, selection: .last(1))
        #expect(last.steps == [1] && last.layers[0].load.deadExperts.isEmpty)
        #expect(throws: RoutingLogError.self) { try RoutingLogInspection(path: path, selection: .step(7)) }
        #expect(throws: RoutingLogError.self) { try RoutingLogInspection(path: path, layer: 1) }
    }

    /// The plain heatmap maps share 0 … 2 onto " .:-=+*#%@"; the text names dead experts; JSON
    /// carries the same numbers.
    @Test func textAndJSONReportTheSameStatistics() throws {
        let directory = TemporaryDirectory()
        let path = try handWrittenLog(in: directory)
        let inspection = try RoutingLogInspection(path: path, selection: .step(0))
        #expect(inspection.terminalHeatmap(colour: false).last == "    0   @  *  -   ")
        let text = inspection.textReport(colour: false)
        #expect(text.contains("dead experts e3"))
        #expect(!text.contains("\u{1B}["))
        #expect(inspection.textReport(colour: true).contains("\u{1B}[48;5;"))
        let json = try #require(inspection.json().objectValue)
        let layer = try #require(json["layers"]?.arrayValue?.first?.objectValue)
        #expect(layer["expert_counts"] == .array([.integer(6), .integer(4), .integer(2), .integer(0)]))
        #expect(layer["dead_experts"] == .array([.integer(3)]))
        #expect(layer["busiest_expert"] == .integer(0))
        #expect(abs((layer["cv"]?.doubleValue ?? 0) - 5.0.squareRoot() / 3) < 1e-12)
    }

    /// The SVG parses as XML, is an <svg> root with one cell per layer × expert, axis labels and
    /// a colour scale.
    @Test func heatmapSVGIsWellFormed() throws {
        let directory = TemporaryDirectory()
        let header = RoutingLogFixtures.header(layers: 3, experts: 6, topK: 2)
        let path = directory.file("routing.h5")
        let writer = try RoutingLogWriter(path: path, header: header)
        for index in 0 ..< 3 { try writer.append(RoutingLogFixtures.step(index, tokens: 24, header: header)) }
        try writer.close()
        let svgPath = directory.file("heatmap <&>.svg")
        try RoutingLogInspection(path: path).writeHeatmapSVG(to: svgPath)
        let document = try XMLDocument(contentsOf: URL(fileURLWithPath: svgPath), options: [])
        let root = try #require(document.rootElement())
        #expect(root.name == "svg")
        let cells = try root.nodes(forXPath: "//*[local-name()='g'][@id='cells']/*[local-name()='rect']")
        #expect(cells.count == 3 * 6)
        let texts = try root.nodes(forXPath: "//*[local-name()='text']").compactMap(\.stringValue)
        #expect(texts.contains("expert") && texts.contains("layer") && texts.contains("1 (ideal)"))
        #expect(try root.nodes(forXPath: "//*[local-name()='linearGradient']").count == 1)
    }

    /// A log with no steps yet inspects without dividing by zero.
    @Test func emptyLogInspects() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("empty.h5")
        try RoutingLogWriter(path: path, header: RoutingLogFixtures.header()).close()
        let inspection = try RoutingLogInspection(path: path)
        #expect(inspection.steps.isEmpty)
        #expect(inspection.textReport(colour: false).contains("no complete steps yet"))
        #expect(inspection.heatmapSVG().hasPrefix("<?xml"))
    }

    /// Writes the synthetic example log (4 layers, 8 experts, top-2, per-token trace, 32 steps of
    /// 64 tokens) and checks it reads back. With MOEKIT_EXAMPLE_ROUTING_LOG=path set it also
    /// (re)writes that file: this is how Notebooks-data/example-routing.h5 is produced.
    @Test func syntheticExampleLogReadsBack() throws {
        let directory = TemporaryDirectory()
        var destinations = [directory.file("example-routing.h5")]
        if let requested = ProcessInfo.processInfo.environment["MOEKIT_EXAMPLE_ROUTING_LOG"], !requested.isEmpty { destinations.append(requested) }
        let header = RoutingLogFixtures.header(layers: 4, experts: 8, topK: 2, perToken: true)
        for destination in destinations {
            let writer = try RoutingLogWriter(path: destination, header: header, mode: .replace)
            for index in 0 ..< 32 { try writer.append(RoutingLogFixtures.step(index, tokens: 64, header: header, seed: 2024, training: true)) }
            try writer.close()
            let inspection = try RoutingLogInspection(path: destination)
            #expect(inspection.steps.count == 32 && inspection.tokens == 32 * 64)
            // The synthetic router drifts towards balance: later steps have a lower CV than the first.
            let first = RoutingLogInspection.mean(inspection.trend[0].coefficientOfVariation)
            let last = RoutingLogInspection.mean(inspection.trend[31].coefficientOfVariation)
            #expect(last < first)
        }
    }
}
