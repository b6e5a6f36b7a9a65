import Foundation
import Testing
@testable import MoEKit

/// Routing-log schema 3 (variable active experts per token, ReMoE's ReLU routing) and the ReLU
/// router in training: logs report realised active experts, λ follows the controller and is
/// restored on resume, and logs written by earlier versions are still read.
@Suite struct ReLURoutingLogTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/routing-logs").path

    /// A schema-1 per-token trace written by `moekit trace` at main 2a9d5aa (tiny model upcycled to
    /// 4 experts, top-2; 8 tokens in batches of 4) and a schema-2 training log written by that
    /// commit's `moekit_routing` Python writer read unchanged: not variable-k, k slots per token,
    /// Σ counts = tokens·k − dropped, no active-experts histogram, no active-experts report.
    @Test func logsOfEarlierVersionsAreStillRead() throws {
        let trace = try RoutingLogReader(path: Self.fixtures + "/v1-trace-per-token.h5")
        #expect(trace.header.version == 1 && !trace.header.variableActiveExperts && trace.header.perToken)
        #expect(trace.header.topK == 2 && trace.header.slotsPerToken == 2 && trace.stepCount == 2)
        for row in 0 ..< trace.stepCount {
            let step = try trace.step(at: row)
            #expect(step.tokenTrace?.experts.count == step.tokens * trace.header.numLayers * 2)
            for layer in step.layers {
                #expect(layer.activeExperts == nil)
                #expect(layer.expertCounts.reduce(0, +) == step.tokens * 2 - layer.dropped)
            }
        }
        let training = try RoutingLogReader(path: Self.fixtures + "/v2-training.h5")
        #expect(training.header.version == 2 && training.header.training && !training.header.variableActiveExperts)
        #expect(try training.steps(0 ..< 2).map { $0.layers[1].expertCounts } == [[8, 0, 4, 4], [4, 4, 4, 4]])
        let inspection = try RoutingLogInspection(reader: training)
        #expect(inspection.activeExperts.isEmpty)
        #expect(!inspection.textReport(colour: false).contains("active experts per token"))
    }

    /// One layer, E = 3, target k = 1: a variable-k log is version 3, round-trips the histogram and a
    /// per-token trace of E slots, and refuses rows whose histogram does not count the tokens or
    /// does not give Σ_n n·h_n = Σ counts, or a histogram in a log without variable k.
    @Test func variableKLogRoundTripsAndChecksItsInvariant() throws {
        let directory = TemporaryDirectory()
        let header = RoutingLogHeader(numLayers: 1, numExperts: 3, topK: 1, router: "remoe", modelConfig: "{}", source: "test",
                                      perToken: true, training: true, variableActiveExperts: true)
        #expect(header.version == 3 && header.slotsPerToken == 3)
        // Token 0: experts 0 and 2; token 1: expert 0 → counts (2, 0, 1), histogram (0, 1, 1, 0).
        func step(_ index: Int, histogram: [Int], counts: [Int] = [2, 0, 1]) -> RoutingLogStep {
            let layer = RoutingLogLayerStatistics(expertCounts: counts, probabilityMean: [0.75, 0, 1], auxLoss: 3.75, zLoss: 0, entropy: 0,
                                                  dropped: 0, coactivation: [0, 0, 1, 0, 0, 0, 1, 0, 0], activeExperts: histogram)
            let trace = RoutingLogTokenTrace(ids: [5, 6], sequence: [0, 0], position: [0, 1], experts: [0, -1, 2, 0, -1, -1],
                                             weights: [1, 0, 2, 0.5, 0, 0])
            return RoutingLogStep(step: index, tokens: 2, loss: 1.5, learningRate: 0.01, layers: [layer], tokenTrace: trace,
                                  training: RoutingLogTrainingColumns(languageModelLoss: 1, gradientNorm: 1, validationLoss: 2))
        }
        let path = directory.file("relu.h5")
        let writer = try RoutingLogWriter(path: path, header: header)
        try writer.append(step(0, histogram: [0, 1, 1, 0]))
        #expect(throws: RoutingLogError.self) { try writer.append(step(1, histogram: [0, 2, 0, 0])) }       // Σ n·h = 2 ≠ 3
        #expect(throws: RoutingLogError.self) { try writer.append(step(1, histogram: [0, 1, 0, 0])) }       // counts 1 token of 2
        #expect(throws: RoutingLogError.self) { try writer.append(step(1, histogram: [0, 1, 1])) }          // E + 1 values needed
        try writer.close()

        let reader = try RoutingLogReader(path: path)
        #expect(reader.header.version == 3 && reader.header.variableActiveExperts && reader.header.topK == 1)
        #expect(try reader.step(at: 0) == step(0, histogram: [0, 1, 1, 0]))
        let inspection = try RoutingLogInspection(reader: reader)
        #expect(inspection.activeExperts.map(\.histogram) == [[0, 1, 1, 0]])
        #expect(inspection.activeExperts.first?.mean == 1.5 && inspection.activeExperts.first?.sparsity == 0.5)
        #expect(inspection.textReport(colour: false).contains("active experts per token (target k = 1 of 3"))

        let plain = try RoutingLogWriter(path: directory.file("topk.h5"),
                                         header: RoutingLogHeader(numLayers: 1, numExperts: 3, topK: 1, router: "r", modelConfig: "{}", source: "t"))
        let withHistogram = RoutingLogStep(step: 0, tokens: 2, layers: [RoutingLogLayerStatistics(
            expertCounts: [1, 1, 0], probabilityMean: [0.5, 0.5, 0], auxLoss: 1, zLoss: 0, entropy: 0, dropped: 0,
            coactivation: [Int](repeating: 0, count: 9), activeExperts: [0, 2, 0, 0])])
        #expect(throws: RoutingLogError.self) { try plain.append(withHistogram) }
    }

    /// Training a 4-expert model with `remoe` (k = 2, target sparsity 0.5, λ₀ = 1e-3) for 5 steps:
    /// each step multiplies or divides λ by α = 1.2 according to the step's realised sparsity, which
    /// the log reports through its active-experts histograms (an odd number of steps cannot cancel,
    /// so λ ends ≠ λ₀); a run resumed from its step-2 save ends with the same λ and weights as the
    /// uninterrupted one.
    @Test func trainingFollowsTheControllerAndResumesIt() throws {
        let directory = TemporaryDirectory()
        var router = try RouterConfiguration(text: "remoe:l1-init=1e-3")
        router.topK = 2
        let (model, data) = try TrainerTests.setUp(directory, experts: 4, router: router)
        var options = TrainerTests.options(steps: 5)
        options.validationFraction = 0
        let straight = directory.file("straight"), log = directory.file("straight.h5")
        let trainer = try Trainer(modelDirectory: model, dataPath: data, outputDirectory: straight, logPath: log, options: options)
        try trainer.run()
        let reader = try RoutingLogReader(path: log)
        #expect(reader.header.version == 3 && reader.header.variableActiveExperts && reader.header.topK == 2)
        var expected: Float = 1e-3
        for step in try reader.steps(0 ..< 5) {
            var active = 0
            for layer in step.layers {
                let histogram = try #require(layer.activeExperts)
                #expect(histogram.reduce(0, +) == step.tokens)
                active += histogram.enumerated().reduce(0) { $0 + $1.offset * $1.element }
            }
            let sparsity = 1 - Double(active) / Double(step.layers.count * step.tokens * 4)
            expected = ReLURouting.updatedCoefficient(expected, multiplier: 1.2, targetSparsity: 0.5, realisedSparsity: sparsity)
        }
        let saved = try #require(try TrainerState(path: straight + "/training_state/trainer_state.json").l1Coefficient)
        #expect(isClose([saved], [expected], relativeTolerance: 1e-6))
        #expect(saved != 1e-3)

        var firstHalf = options
        firstHalf.saveInterval = 2
        let resumed = directory.file("resumed")
        struct Stop: Error {}
        let interrupted = try Trainer(modelDirectory: model, dataPath: data, outputDirectory: resumed, logPath: nil, options: firstHalf)
        #expect(throws: Stop.self) { try interrupted.run { progress in if progress.step == 2 { throw Stop() } } }
        #expect(try TrainerState(path: resumed + "/training_state/trainer_state.json").completedSteps == 2)
        let continued = try Trainer(modelDirectory: model, dataPath: data, outputDirectory: resumed, logPath: nil, options: firstHalf, resume: true)
        #expect(continued.model.configurableRouter?.l1Coefficient == (try TrainerState(path: resumed + "/training_state/trainer_state.json").l1Coefficient))
        try continued.run()
        #expect(try TrainerState(path: resumed + "/training_state/trainer_state.json").l1Coefficient == saved)
        #expect(try TrainerTests.tensors(straight) == TrainerTests.tensors(resumed))

        var sequence = options
        sequence.balance = .sequence
        #expect(throws: TrainingError.self) {
            try Trainer(modelDirectory: model, dataPath: data, outputDirectory: directory.file("seq"), logPath: nil, options: sequence)
        }
    }
}
