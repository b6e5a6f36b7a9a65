import Foundation
import Testing
@testable import MoEKit

@Suite struct RoutingTracerTests {
    /// Writes a small MoE checkpoint (f32) to a directory.
    static func writeMoECheckpoint(to directory: String, experts: Int = 4, topK: Int = 2, layers: Int = 2) throws -> MiniCPMConfig {
        let config = SmallModels.config(experts: experts, topK: topK, layers: layers)
        let weights = SmallModels.weights(for: config, seed: 31)
        try SafetensorsWriter.write(weights.map { ($0.key, $0.value, SafetensorsDType.float32) }, to: directory + "/model.safetensors")
        try config.write(to: directory + "/config.json")
        return config
    }

    /// Batching packs sequences in order and splits a sequence across batches.
    @Test func batchesSplitSequencesInOrder() {
        let batches = RoutingTracer.batches([[1, 2, 3], [4, 5, 6, 7, 8], [9]], batchTokens: 4)
        #expect(batches.map { $0.pieces.map(\.sequence) } == [[0, 1], [1], [2]])
        #expect(batches.map { $0.pieces.map(\.range) } == [[0 ..< 3, 0 ..< 1], [1 ..< 5], [0 ..< 1]])
    }

    /// One log step per batch; a sequence continued from its KV cache is routed exactly as in one
    /// full forward, so the counts summed over steps equal the full forward's; every step keeps the
    /// invariant Σ counts = tokens · k − dropped; the per-token trace names ids, sequences and positions.
    @Test func traceLogsOneStepPerBatch() throws {
        let directory = TemporaryDirectory()
        let config = try Self.writeMoECheckpoint(to: directory.path)
        let model = try MiniCPMModel(directory: directory.path)
        let sequences = [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10], [11, 12, 13, 14, 15]]
        var options = RoutingTracer.Options()
        options.batchTokens = 4
        options.perToken = true
        options.logPath = directory.file("routing.h5")
        let summary = try RoutingTracer(model: model, options: options).run(sequences)
        #expect(summary.steps == 4 && summary.tokens == 15)

        let reader = try RoutingLogReader(path: directory.file("routing.h5"))
        #expect(reader.header.numLayers == 2 && reader.header.numExperts == 4 && reader.header.topK == 2)
        #expect(reader.header.perToken)
        let steps = try reader.steps(0 ..< reader.stepCount)
        #expect(steps.map(\.tokens) == [4, 4, 4, 3])
        var summed = [[Int]](repeating: [Int](repeating: 0, count: 4), count: 2)
        for step in steps {
            for (layer, statistics) in step.layers.enumerated() {
                #expect(statistics.expertCounts.reduce(0, +) == step.tokens * 2 - statistics.dropped)
                for e in 0 ..< 4 { summed[layer][e] += statistics.expertCounts[e] }
            }
        }
        let full = try MiniCPMModel(directory: directory.path).forward(sequences, detail: .statistics)
        #expect(summed == full.routing.map(\.expertCounts))
        let tokens = try reader.tokenTrace(0 ..< reader.tokenRowCount)
        #expect(tokens?.ids == sequences.flatMap { $0.map(Int32.init) })
        #expect(tokens?.sequence == [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
        #expect(tokens?.position == [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 0, 1, 2, 3, 4])
        _ = config
    }

    /// Dense models, expert-choice routers and bad token data are refused with clear errors.
    @Test func refusesWhatItCannotTrace() throws {
        let directory = TemporaryDirectory()
        _ = try Self.writeMoECheckpoint(to: directory.path)
        let model = try MiniCPMModel(directory: directory.path)
        try model.useRouter(RouterConfiguration(text: "expert-choice"))
        #expect(throws: RoutingLogError.expertChoiceRouter(model: directory.path)) { try RoutingTracer(model: model, options: RoutingTracer.Options()) }

        let moe = try MiniCPMModel(directory: directory.path)
        var options = RoutingTracer.Options()
        options.logPath = directory.file("bad.h5")
        #expect(throws: ModelError.tokenOutOfRange(source: "input", sequence: 0, position: 1, token: 50, vocabularySize: 50)) {
            try RoutingTracer(model: moe, options: options).run([[1, 50]])
        }
        #expect(!FileManager.default.fileExists(atPath: directory.file("bad.h5")))
    }
}
