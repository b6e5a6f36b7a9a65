import Foundation
import Testing
@testable import MoEKit

/// Schema version 2 of the routing log: the training columns, per-domain expert counts and dense
/// models' training logs round-trip; trace logs without version-2 features stay version 1; the
/// domain invariant Σ_domain domain_counts[d, e] = expert_counts[e] is enforced.
@Suite struct TrainingLogTests {
    static let domains = ["arithmetic", "brackets", "copy"]

    /// Splits each layer's expert counts of a synthetic step over the domains (a deterministic split
    /// that keeps the sums), so the step satisfies the domain invariant.
    static func withDomains(_ step: RoutingLogStep, domains: Int) -> RoutingLogStep {
        var step = step
        for layer in step.layers.indices {
            let counts = step.layers[layer].expertCounts
            var split = [Int](repeating: 0, count: domains * counts.count)
            for (expert, count) in counts.enumerated() {
                var left = count
                for domain in 0 ..< domains {
                    let share = domain == domains - 1 ? left : (count * (expert + domain + 1)) / (2 * (expert + domain + 2)) / (domain + 1)
                    split[domain * counts.count + expert] = min(share, left)
                    left -= min(share, left)
                }
            }
            step.layers[layer].domainCounts = split
        }
        return step
    }

    @Test func trainingLogWithDomainsRoundTrips() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("train.h5")
        var header = RoutingLogFixtures.header()
        header = RoutingLogHeader(numLayers: header.numLayers, numExperts: header.numExperts, topK: header.topK, router: header.router,
                                  modelConfig: header.modelConfig, source: header.source, training: true, domains: Self.domains)
        #expect(header.version == 2)
        let writer = try RoutingLogWriter(path: path, header: header)
        var written: [RoutingLogStep] = []
        for index in 0 ..< 5 {
            var step = Self.withDomains(RoutingLogFixtures.step(index, tokens: 40, header: header), domains: 3)
            step.loss = 3 - Float(index) * 0.1
            step.learningRate = 1e-3
            step.training = RoutingLogTrainingColumns(languageModelLoss: 2.9 - Float(index) * 0.1, gradientNorm: 1.5,
                                                      validationLoss: index == 4 ? 2.5 : .nan)
            try writer.append(step)
            written.append(step)
        }
        try writer.close()
        let reader = try RoutingLogReader(path: path)
        #expect(reader.header.training && reader.header.domains == Self.domains && reader.header.version == 2)
        let read = try reader.steps(0 ..< 5)
        #expect(read.map(\.step) == written.map(\.step))
        #expect(read.map { $0.layers.map(\.domainCounts) } == written.map { $0.layers.map(\.domainCounts) })
        #expect(read.map { $0.training?.languageModelLoss } == written.map { $0.training?.languageModelLoss })
        #expect(read[4].training?.validationLoss == 2.5 && read[0].training?.validationLoss.isNaN == true)
        #expect(read.map(\.loss) == written.map(\.loss))
    }

    @Test func denseTrainingLogHasOnlyStepColumns() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("dense.h5")
        let header = RoutingLogHeader(numLayers: 0, numExperts: 0, topK: 0, router: "dense", modelConfig: "{}", source: "dense", training: true)
        let writer = try RoutingLogWriter(path: path, header: header)
        for index in 0 ..< 3 {
            try writer.append(RoutingLogStep(step: index, tokens: 64, loss: 4 - Float(index), learningRate: 0.01, layers: [],
                                             training: RoutingLogTrainingColumns(languageModelLoss: 4 - Float(index), gradientNorm: 1)))
        }
        try writer.close()
        let reader = try RoutingLogReader(path: path)
        #expect(reader.header.isDense && reader.stepCount == 3)
        #expect(try reader.steps(0 ..< 3).map(\.loss) == [4, 3, 2])
        let inspection = try RoutingLogInspection(path: path)
        #expect(inspection.training.count == 3 && inspection.layers.isEmpty)
        #expect(inspection.textReport(colour: false).contains("dense model"))
    }

    @Test func traceLogsWithoutVersionTwoFeaturesStayVersionOne() {
        #expect(RoutingLogFixtures.header().version == 1)
    }

    @Test func domainCountsMustSumToExpertCounts() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("bad.h5")
        let base = RoutingLogFixtures.header()
        let header = RoutingLogHeader(numLayers: base.numLayers, numExperts: base.numExperts, topK: base.topK, router: base.router,
                                      modelConfig: base.modelConfig, source: base.source, training: true, domains: Self.domains)
        let writer = try RoutingLogWriter(path: path, header: header)
        var step = Self.withDomains(RoutingLogFixtures.step(0, tokens: 20, header: header), domains: 3)
        step.training = RoutingLogTrainingColumns(languageModelLoss: 1, gradientNorm: 1)
        step.layers[1].domainCounts![0] += 1
        #expect(throws: RoutingLogError.self) { try writer.append(step) }
        step.layers[1].domainCounts = nil
        #expect(throws: RoutingLogError.self) { try writer.append(step) }
        #expect(writer.stepCount == 0)
    }

    @Test func appendRefusesDifferentDomains() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("append.h5")
        let base = RoutingLogFixtures.header()
        func header(_ domains: [String]) -> RoutingLogHeader {
            RoutingLogHeader(numLayers: base.numLayers, numExperts: base.numExperts, topK: base.topK, router: base.router,
                             modelConfig: base.modelConfig, source: base.source, training: true, domains: domains)
        }
        try RoutingLogWriter(path: path, header: header(Self.domains)).close()
        #expect(throws: RoutingLogError.incompatibleAppend(file: path, field: "domains", existing: Self.domains.joined(separator: ","),
                                                           requested: "a,b")) {
            try RoutingLogWriter(path: path, header: header(["a", "b"]), mode: .append)
        }
        #expect(try RoutingLogWriter(path: path, header: header(Self.domains), mode: .append).stepCount == 0)
    }

    /// Hand-checked mutual information: two domains each sent entirely to its own expert carry
    /// I = 1 bit (normalised 1); domains routed identically carry 0; a 3:1 / 1:3 split gives
    /// I = 1 − H(1/4) = 1 − 0.811278 = 0.188722 bits.
    @Test func domainSpecializationMutualInformation() {
        let separated = DomainSpecialization(layer: 0, counts: [[10, 0], [0, 10]])
        #expect(abs(separated.mutualInformation - 1) < 1e-12 && abs(separated.normalizedMutualInformation - 1) < 1e-12)
        let identical = DomainSpecialization(layer: 0, counts: [[5, 5], [7, 7]])
        #expect(abs(identical.mutualInformation) < 1e-12)
        let partial = DomainSpecialization(layer: 0, counts: [[3, 1], [1, 3]])
        #expect(abs(partial.mutualInformation - 0.188722) < 1e-6)
        #expect(partial.expertShare == [[0.75, 0.25], [0.25, 0.75]])
    }
}
