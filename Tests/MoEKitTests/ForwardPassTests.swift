import Foundation
import Testing
@testable import MoEKit

@Suite struct ForwardPassTests {
    /// The published modeling code, as run by PyTorch on the tiny fixture: `moekit forward`'s model
    /// matches its logits to ≤ 1e-4 relative and absolute error.
    @Test func fixtureLogitsMatchPyTorch() throws {
        let directory = Fixtures.path("minicpm-tiny-torch")
        let model = try MiniCPMModel(directory: directory)
        let sequences = try TokenFile.read(directory + "/tokens.txt")
        let logits = try model.logits(for: sequences)
        let expected = try SafetensorsFile(path: directory + "/expected_logits.safetensors").floatTensor("logits")
        #expect(logits.shape == expected.shape)
        #expect(logits.maxRelativeDifference(to: expected) <= 1e-4)
        #expect(logits.maxAbsoluteDifference(to: expected) <= 1e-4)
    }

    /// Dense model, GQA and untied head, several sequence lengths in one call: equal to the
    /// independent per-token reference to ≤ 1e-5 relative.
    @Test(arguments: [true, false])
    func denseMatchesPerTokenReference(tied: Bool) throws {
        let config = SmallModels.config(tied: tied)
        let weights = SmallModels.weights(for: config, seed: 11)
        let model = try SmallModels.model(config, weights: weights)
        let sequences = [[3, 17, 42, 8, 8, 0, 49], [5], [1, 2, 3, 4]]
        let logits = try model.logits(for: sequences)
        let expected = sequences.flatMap { PerTokenReference.logits(config: config, weights: weights, sequence: $0) }
        #expect(logits.shape == [12, 50])
        #expect(isClose(logits.values, expected.flatMap { $0.map(Float.init) }, relativeTolerance: 1e-5))
    }

    /// MoE model (softmax → top-k → renormalise, grouped experts): equal to the per-token
    /// reference, which routes and runs experts token by token, to ≤ 1e-5 relative.
    @Test(arguments: [(4, 2), (3, 1), (5, 5)])
    func moeMatchesPerTokenReference(experts: Int, topK: Int) throws {
        let config = SmallModels.config(experts: experts, topK: topK, tied: false)
        let weights = SmallModels.weights(for: config, seed: 23)
        let model = try SmallModels.model(config, weights: weights)
        let sequences = [[9, 1, 30, 30, 2, 44], [7, 7, 7]]
        let logits = try model.logits(for: sequences)
        let expected = sequences.flatMap { PerTokenReference.logits(config: config, weights: weights, sequence: $0) }
        #expect(isClose(logits.values, expected.flatMap { $0.map(Float.init) }, relativeTolerance: 1e-5))
    }

    /// The upcycling invariant: a MoE whose experts are all copies of the dense MLP gives the dense
    /// model's logits, whatever the router weights (the combine weights sum to 1).
    @Test(arguments: [(2, 1), (4, 2), (8, 2), (6, 6)])
    func copiedExpertsReproduceDenseLogits(experts: Int, topK: Int) throws {
        let denseConfig = SmallModels.config()
        let dense = SmallModels.weights(for: denseConfig, seed: 5)
        var moeConfig = denseConfig
        moeConfig.numExperts = experts
        moeConfig.topK = topK
        let moe = SmallModels.upcycledWeights(dense: dense, denseConfig: denseConfig, experts: experts, seed: 99)
        let sequences = [[1, 2, 3, 4, 5, 6, 7, 8], [40, 41]]
        let denseLogits = try SmallModels.model(denseConfig, weights: dense).logits(for: sequences)
        let moeLogits = try SmallModels.model(moeConfig, weights: moe).logits(for: sequences)
        #expect(moeLogits.maxRelativeDifference(to: denseLogits) <= 1e-5)
    }

    /// Incremental decoding: a prefix then one more token through the KV cache gives the full
    /// forward's last row; token-by-token decoding gives every row.
    @Test(arguments: [false, true])
    func incrementalDecodingMatchesFullForward(moe: Bool) throws {
        let config = SmallModels.config(experts: moe ? 4 : nil)
        let model = try SmallModels.model(config, weights: SmallModels.weights(for: config, seed: 3))
        let sequence = [4, 8, 15, 16, 23, 42, 0, 1]
        let full = try model.logits(for: [sequence])

        let cache = model.makeCache()
        _ = try model.forward([(Array(sequence.dropLast()), cache)])
        let last = try model.forward([([sequence.last!], cache)]).logits
        #expect(isClose(last.values, full.row(sequence.count - 1), relativeTolerance: 1e-5))

        let stepCache = model.makeCache()
        var rows: [Float] = []
        for token in sequence { rows += try model.forward([([token], stepCache)]).logits.values }
        #expect(isClose(rows, full.values, relativeTolerance: 1e-5))
        #expect(stepCache.length == sequence.count)
    }

    /// Sequences run together equal the same sequences run one at a time (attention stays within a sequence).
    @Test func batchedSequencesEqualSeparateRuns() throws {
        let config = SmallModels.config(experts: 4)
        let model = try SmallModels.model(config, weights: SmallModels.weights(for: config, seed: 8))
        let sequences = [[1, 2, 3], [4, 5, 6, 7, 8], [9]]
        let together = try model.logits(for: sequences)
        let separate = try sequences.flatMap { try model.logits(for: [$0]).values }
        #expect(isClose(together.values, separate, relativeTolerance: 1e-5))
    }

    /// `.lastTokenOfEachSequence` returns exactly the last rows of the full logits.
    @Test func lastTokenLogitsAreTheLastRows() throws {
        let config = SmallModels.config()
        let model = try SmallModels.model(config, weights: SmallModels.weights(for: config, seed: 2))
        let sequences = [[1, 2, 3], [4, 5]]
        let full = try model.logits(for: sequences)
        let last = try model.forward(sequences, logitRows: .lastTokenOfEachSequence).logits
        #expect(last.shape == [2, 50])
        #expect(isClose(last.values, full.row(2) + full.row(4), relativeTolerance: 1e-6))
    }

    /// Bad inputs are typed errors naming the sequence and position, never a crash.
    @Test func badInputsAreClearErrors() throws {
        let config = SmallModels.config()
        let model = try SmallModels.model(config, weights: SmallModels.weights(for: config, seed: 1))
        #expect(throws: ModelError.tokenOutOfRange(source: "input", sequence: 1, position: 2, token: 50, vocabularySize: 50)) {
            try model.logits(for: [[1], [1, 2, 50]])
        }
        #expect(throws: ModelError.tokenOutOfRange(source: "input", sequence: 0, position: 0, token: -1, vocabularySize: 50)) {
            try model.logits(for: [[-1]])
        }
        #expect(throws: ModelError.emptyInput(source: "input")) { try model.logits(for: []) }
        #expect(throws: ModelError.emptySequence(source: "input", sequence: 0)) { try model.logits(for: [[]]) }
        #expect(throws: ModelError.sequenceTooLong(source: "input", sequence: 0, length: 65, maximum: 64)) {
            try model.logits(for: [Array(repeating: 1, count: 65)])
        }
    }

    /// A checkpoint whose tensor has the wrong shape is refused, naming the tensor.
    @Test func wrongShapeIsRefused() throws {
        let config = SmallModels.config()
        var weights = SmallModels.weights(for: config, seed: 1)
        weights[MiniCPMTensorNames.keyProjection(1)] = Tensor(shape: [32, 32])
        #expect(throws: CheckpointError.shapeMismatch(directory: "<memory>", tensor: "model.layers.1.self_attn.k_proj.weight", expected: [16, 32], actual: [32, 32])) {
            try SmallModels.model(config, weights: weights)
        }
    }
}
