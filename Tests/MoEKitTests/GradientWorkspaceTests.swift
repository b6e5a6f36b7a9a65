import Foundation
import Testing
@testable import MoEKit

/// `GradientWorkspace`: steps that write their `[vocab, hidden]` gradients into last step's
/// buffers give the same bits as steps with fresh buffers, and really reuse the memory.
@Suite struct GradientWorkspaceTests {
    /// Every gradient's bit patterns (a deep copy: holds no reference to the step's buffers).
    static func bits(_ weights: MiniCPMWeights?) -> [[UInt32]] {
        (weights?.parameterTensors ?? []).map { $0.values.map(\.bitPattern) }
    }

    /// Two training steps (loss and gradients, then AdamW) on two different batches, the second
    /// touching embedding rows the first does not: each step's gradient bits and the final weights' bits.
    static func twoSteps(_ config: MiniCPMConfig, workspace: GradientWorkspace?) throws -> (gradients: [[[UInt32]]], weights: [[UInt32]], headBuffers: [UnsafePointer<Float>?]) {
        let model = try TrainableMiniCPMTests.trainable(config, weights: SmallModels.weights(for: config, seed: 60))
        var optimizer = try AdamW(parameters: model.weights, config: config)
        var gradients: [[[UInt32]]] = [], headBuffers: [UnsafePointer<Float>?] = []
        for step in 0 ..< 2 {
            let batch = TrainableMiniCPMTests.batch(lengths: [7, 5], vocabulary: config.vocabSize / 2, seed: 61 + UInt64(step))
            let shifted = step == 0 ? batch
                : TrainingBatch(inputs: batch.inputs.map { $0.map { $0 + config.vocabSize / 2 } }, targets: batch.targets)
            let result = try model.lossAndGradients(shifted, workspace: workspace)
            guard let stepGradients = result.gradients else { Issue.record("no gradients"); return ([], [], []) }
            gradients.append(Self.bits(stepGradients))
            _ = optimizer.step(&model.weights, gradients: stepGradients, learningRate: 1e-2)
            headBuffers.append(workspace?.headGradient?.values.withUnsafeBufferPointer { $0.baseAddress.map { UnsafePointer($0) } } ?? nil)
        }
        return (gradients, Self.bits(model.weights), headBuffers)
    }

    @Test(arguments: [false, true], [true, false])
    func stepsThroughTheWorkspaceEqualStepsWithFreshBuffers(moe: Bool, tied: Bool) throws {
        var config = moe ? TrainableMiniCPMTests.moeConfig() : SmallModels.config()
        config.tieWordEmbeddings = tied
        let fresh = try Self.twoSteps(config, workspace: nil)
        let reused = try Self.twoSteps(config, workspace: GradientWorkspace())
        #expect(fresh.gradients.count == 2 && reused.gradients == fresh.gradients)
        #expect(reused.weights == fresh.weights)
        // The second step wrote its head gradient into the first step's memory (nothing else held it).
        #expect(reused.headBuffers[0] != nil && reused.headBuffers[1] == reused.headBuffers[0])
    }

    /// A buffer full of NaN becomes exactly the fresh ∂L/∂head, with dlogits kept and recomputed by blocks.
    @Test func crossEntropyHeadBufferIsOverwritten() {
        let (h, norm, head) = AttentionAndCrossEntropyLayerTests.crossEntropyInputs(seed: 33)
        for (keep, blockRows) in [(true, nil), (false, 3)] as [(Bool, Int?)] {
            let output = CrossEntropyLayer.forward(h, normWeight: norm, head: Weight(head), targets: AttentionAndCrossEntropyLayerTests.targets,
                                                   divisor: 2, epsilon: 1e-5, keepLogitGradient: keep, blockRows: blockRows)
            let fresh = CrossEntropyLayer.backward(cache: output.cache, normWeight: norm, head: Weight(head))
            var buffer: Tensor? = Tensor(shape: head.shape, repeating: .nan)
            let reused = CrossEntropyLayer.backward(cache: output.cache, normWeight: norm, head: Weight(head), headGradientBuffer: &buffer)
            #expect(buffer == nil)
            #expect(reused.head.values.map(\.bitPattern) == fresh.head.values.map(\.bitPattern))
            #expect(reused.input.values == fresh.input.values && reused.normWeight.values == fresh.normWeight.values)
        }
    }
}
