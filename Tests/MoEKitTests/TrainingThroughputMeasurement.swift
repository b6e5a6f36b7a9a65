import Foundation
import Testing
@testable import MoEKit

/// Prints training throughput of the tiny preset (never asserts timings). Runs only when
/// `MOEKIT_MEASURE_TRAINING=1`:
///
///     MOEKIT_MEASURE_TRAINING=1 swift test -c release -Xswiftc -enable-testing --skip-build --filter TrainingThroughputMeasurement
@Suite(.enabled(if: ProcessInfo.processInfo.environment["MOEKIT_MEASURE_TRAINING"] == "1"))
struct TrainingThroughputMeasurement {
    /// lossAndGradients tokens/s for MiniCPMPreset.tiny (dense, and upcycled to 8 experts top-2),
    /// batch 8 × 128, and achieved GFLOP/s of the dense pass against a measured sgemm ceiling.
    @Test func tinyPresetTokensPerSecond() throws {
        let batchSize = 8, sequenceLength = 128, repeats = 5
        let dense = MiniCPMPreset.tiny.config
        let denseWeights = SmallModels.weights(for: dense, seed: 60)
        var moe = dense
        moe.numExperts = 8
        moe.numExpertsPerToken = 2
        let moeWeights = SmallModels.upcycledWeights(dense: denseWeights, denseConfig: dense, experts: 8, seed: 61)
        let batch = TrainableMiniCPMTests.batch(lengths: [Int](repeating: sequenceLength, count: batchSize), vocabulary: dense.vocabSize, seed: 62)
        let tokens = Double(batchSize * sequenceLength)
        // Forward FLOPs per token: 2 per weight a token multiplies (attention projections, k of the
        // SwiGLU blocks, the head) plus the scores and P·V GEMMs over the full T×T block (4·T·hidden
        // per layer); backward costs twice the forward.
        let hidden = Double(dense.hiddenSize), kvWidth = Double(dense.numKeyValueHeads * dense.headDim)
        let layers = Double(dense.numHiddenLayers)
        func forwardFlopsPerToken(activeExperts: Double) -> Double {
            let attentionWeights = 2 * hidden * hidden + 2 * hidden * kvWidth
            let mlpWeights = activeExperts * 3 * hidden * Double(dense.intermediateSize)
            return 2 * (layers * (attentionWeights + mlpWeights) + Double(dense.vocabSize) * hidden) + layers * 4 * Double(sequenceLength) * hidden
        }
        for (name, config, weights) in [("dense", dense, denseWeights), ("moe-8x-top2", moe, moeWeights)] {
            let trainable = try TrainableMiniCPMTests.trainable(config, weights: weights)
            _ = try trainable.lossAndGradients(batch)
            let start = Date()
            for _ in 0 ..< repeats { _ = try trainable.lossAndGradients(batch) }
            let seconds = Date().timeIntervalSince(start) / Double(repeats)
            let flopsPerToken = 3 * forwardFlopsPerToken(activeExperts: config.isMoE ? 2 : 1)
            print("training \(name): " + String(format: "%.0f tokens/s (%.1f ms per 8x128 step), ~%.2f GFLOP/s", tokens / seconds, seconds * 1000,
                                                 flopsPerToken * tokens / seconds / 1e9))
        }
        // sgemm ceiling at the sizes the passes use most.
        for (m, n, k) in [(1024, 320, 128), (1024, 1024, 128), (1024, 128, 1024)] {
            let a = randomTensor([m, k], seed: 1), b = randomTensor([k, n], seed: 2)
            _ = MatrixMultiply.product(a, b)
            let start = Date()
            for _ in 0 ..< 20 { _ = MatrixMultiply.product(a, b) }
            let seconds = Date().timeIntervalSince(start) / 20
            print(String(format: "sgemm %dx%dx%d: %.1f GFLOP/s", m, n, k, 2 * Double(m * n * k) / seconds / 1e9))
        }
    }
}
