import Foundation
import Testing
@testable import MoEKit

/// Bytes a mapped test weight points into, freed with the weight's last reference.
final class WeightBytes {
    let base: UnsafeMutableRawPointer
    init(count: Int) { base = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 16) }
    deinit { base.deallocate() }

    /// `tensor` stored as `type` at `offset` bytes (an odd offset makes the elements unaligned), and a
    /// weight reading it in place.
    static func weight(_ tensor: Tensor, as type: Weight.ElementType, offset: Int = 0) -> Weight {
        let owner = WeightBytes(count: offset + tensor.count * type.byteSize)
        let start = owner.base + offset
        tensor.values.withUnsafeBufferPointer { values in
            switch type {
            case .float32:
                for (i, v) in values.enumerated() { start.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self) }
            case .bfloat16: HalfPrecision.encode(.bfloat16, from: values.baseAddress!, count: values.count, into: start)
            case .float16: HalfPrecision.encode(.float16, from: values.baseAddress!, count: values.count, into: start)
            }
        }
        return Weight(mapping: UnsafeRawPointer(start), shape: tensor.shape, elementType: type, owner: owner)
    }
}

/// Weights in their stored dtype: products against the plain-loop reference for every storage,
/// and whole models whose bf16 weights stay mapped give the logits of their f32 values.
@Suite struct WeightTests {
    /// Every storage kind of a `[37, 20]` weight: owned, mapped f32 (aligned and not), bf16, f16,
    /// and two stacked segments of different kinds.
    static func storages(_ w: Tensor) -> [(String, Weight)] {
        let top = w.rows(0 ..< 16), bottom = w.rows(16 ..< w.rows)
        return [("owned", Weight(w)), ("f32", WeightBytes.weight(w, as: .float32)), ("f32 unaligned", WeightBytes.weight(w, as: .float32, offset: 2)),
                ("bf16", WeightBytes.weight(w, as: .bfloat16)), ("bf16 unaligned", WeightBytes.weight(w, as: .bfloat16, offset: 1)),
                ("f16", WeightBytes.weight(w, as: .float16)),
                ("stacked bf16 + owned", Weight(stacking: [WeightBytes.weight(top, as: .bfloat16), Weight(bottom)]))]
    }

    /// The stored elements decode exactly: bf16 and f16 through `HalfPrecision`, f32 as it is.
    @Test func storedElementsDecodeExactly() {
        let w = randomTensor([37, 20], seed: 1)
        for (name, weight) in Self.storages(w) {
            let decoded = weight.floatTensor()
            let expected: [Float]
            switch name {
            case "bf16", "bf16 unaligned": expected = w.values.map { HalfPrecision.float(fromBFloat16: HalfPrecision.bfloat16Bits(from: $0)) }
            case "f16": expected = w.values.map { HalfPrecision.float(fromFloat16: HalfPrecision.float16Bits(from: $0)) }
            case "stacked bf16 + owned":
                expected = w.values.enumerated().map { $0.offset < 16 * 20 ? HalfPrecision.float(fromBFloat16: HalfPrecision.bfloat16Bits(from: $0.element)) : $0.element }
            default: expected = w.values
            }
            #expect(decoded.shape == w.shape && decoded.values == expected, "\(name)")
            var row = [Float](repeating: 0, count: 20)
            weight.copyRow(30, scaledBy: 2, into: &row)
            #expect(row == Array(expected[600 ..< 620]).map { $0 * 2 }, "\(name) row")
        }
    }

    /// x·Wᵀ and x·W, with β accumulation, in one block and in blocks of 3 rows (so blocks end inside
    /// and at segment edges), equal the reference product of the decoded weight.
    @Test(arguments: [MatrixMultiply.conversionBlockElements, 3 * 20])
    func productsMatchTheReference(blockElements: Int) {
        let w = randomTensor([37, 20], seed: 2)
        let x = randomTensor([5, 20], seed: 3), dy = randomTensor([5, 37], seed: 4)
        for (name, weight) in Self.storages(w) {
            let reference = MatrixMultiply.referenceProduct(x, weight, transposeB: true)
            var forward = Tensor(shape: [5, 37], repeating: 1)
            x.values.withUnsafeBufferPointer { a in
                forward.values.withUnsafeMutableBufferPointer { c in
                    MatrixMultiply.gemm(m: 5, a: a.baseAddress!, lda: 20, timesTransposeOf: weight, beta: 1, c: c.baseAddress!, ldc: 37,
                                        blockElements: blockElements)
                }
            }
            #expect(isClose(forward, Tensor(shape: [5, 37], values: reference.values.map { $0 + 1 }), relativeTolerance: 1e-5), "\(name) x·Wᵀ")

            let backwardReference = MatrixMultiply.referenceProduct(dy, weight)
            var backward = Tensor(shape: [5, 20], repeating: 7)
            dy.values.withUnsafeBufferPointer { a in
                backward.values.withUnsafeMutableBufferPointer { c in
                    MatrixMultiply.gemm(m: 5, a: a.baseAddress!, lda: 37, times: weight, c: c.baseAddress!, ldc: 20, blockElements: blockElements)
                }
            }
            #expect(isClose(backward, backwardReference, relativeTolerance: 1e-5), "\(name) dy·W")
            #expect(isClose(MatrixMultiply.product(x, weight, transposeB: true), reference, relativeTolerance: 1e-5), "\(name) product")
        }
    }

    /// A hand case: bf16 holds 1.00390625 as 1 (round to nearest even) and 3 exactly, so
    /// [1, 1]·[1.00390625, 3]ᵀ through a bf16 weight is 4, not 4.00390625.
    @Test func bfloat16HandCase() {
        let weight = WeightBytes.weight(Tensor(shape: [1, 2], values: [1.00390625, 3]), as: .bfloat16)
        #expect(MatrixMultiply.product(Tensor(shape: [1, 2], values: [1, 1]), weight, transposeB: true).values == [4])
    }

    /// A bf16 checkpoint loads with its matrices mapped (no f32 copy: only norms and routers are
    /// owned), and gives the logits of a model built from the same values in f32; the f32 master
    /// copies training asks for are owned and equal.
    @Test(arguments: [nil, 4] as [Int?])
    func bfloat16CheckpointStaysMappedAndMatchesF32(experts: Int?) throws {
        let directory = TemporaryDirectory()
        let config = SmallModels.config(experts: experts, tied: experts == nil)
        let weights = SmallModels.weights(for: config, seed: 60)
        try SafetensorsWriter.write(weights.sorted { $0.key < $1.key }.map { (name: $0.key, tensor: $0.value, dtype: SafetensorsDType.bfloat16) },
                                    to: directory.file("model.safetensors"))
        try config.write(to: directory.file("config.json"))
        let rounded = weights.mapValues { t in Tensor(shape: t.shape, values: t.values.map { HalfPrecision.float(fromBFloat16: HalfPrecision.bfloat16Bits(from: $0)) }) }

        let mapped = try MiniCPMModel(directory: directory.path)
        #expect(mapped.weights.embedding.storageType == .bfloat16 && !mapped.weights.isOwned)
        let vectors = MiniCPMLayout(config: config).entries.filter { $0.shape.count == 1 || $0.name.hasSuffix("mlp.gate.weight") }
        #expect(mapped.weights.ownedByteCount == 4 * vectors.reduce(0) { $0 + $1.elementCount })
        let sequences = [[1, 5, 9, 2, 7, 3], [4, 4, 8]]
        let expected = try SmallModels.model(config, weights: rounded).logits(for: sequences)
        #expect(isClose(try mapped.logits(for: sequences), expected, relativeTolerance: 1e-5))

        let owned = try MiniCPMModel(directory: directory.path, ownedFloat32Weights: true)
        #expect(owned.weights.isOwned)
        #expect(owned.weights.parameterTensors == mapped.weights.parameterTensors)
    }

    /// `logits(for:batchTokens:)` runs whole sequences in batches (a sequence longer than the batch
    /// alone) and gives the logits of one call over all of them, in input order.
    @Test(arguments: [1, 5, 9, 1000])
    func batchedLogitsEqualOneCall(batchTokens: Int) throws {
        let config = SmallModels.config(experts: 4)
        let model = try SmallModels.model(config, weights: SmallModels.weights(for: config, seed: 63))
        let sequences = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15]]
        let whole = try model.logits(for: sequences)
        let batched = try model.logits(for: sequences, batchTokens: batchTokens)
        #expect(batched.shape == whole.shape && isClose(batched, whole, relativeTolerance: 1e-5))
    }

    /// Inference's memory estimate counts what stays in anonymous memory: at the 8x2B's shapes a
    /// 4,096-token batch fits in the 6 GB target, where an f32 copy of the weights would need 54 GB.
    @Test func forwardEstimateLeavesMappedWeightsOut() throws {
        var config = MiniCPMPreset.minicpm2_4b.config
        config.numExperts = 8
        config.topK = 2
        #expect(MemoryEstimate.modelBytes(config) > 50_000_000_000)
        #expect(MemoryEstimate.forwardBytes(config, tokens: 4096, sequence: 128) < 6_000_000_000)
    }

    /// Hugging Face's rule for heads: with tie_word_embeddings the head is the embedding, even
    /// when the checkpoint also stores an lm_head.weight; untied, the stored lm_head.
    @Test func tiedEmbeddingsIgnoreAStoredHead() throws {
        let directory = TemporaryDirectory()
        let config = SmallModels.config(tied: true)
        var weights = SmallModels.weights(for: config, seed: 61)
        try SafetensorsWriter.write(weights.map { (name: $0.key, tensor: $0.value, dtype: SafetensorsDType.float32) }, to: directory.file("model.safetensors"))
        try config.write(to: directory.file("config.json"))
        let sequences = [[3, 1, 4, 1, 5]]
        let withoutHead = try MiniCPMModel(directory: directory.path).logits(for: sequences)

        weights[MiniCPMTensorNames.lmHead] = randomTensor([config.vocabSize, config.hiddenSize], seed: 62)
        try SafetensorsWriter.write(weights.map { (name: $0.key, tensor: $0.value, dtype: SafetensorsDType.float32) }, to: directory.file("model.safetensors"))
        let tied = try MiniCPMModel(directory: directory.path)
        #expect(tied.weights.lmHead == nil)
        #expect(try tied.logits(for: sequences) == withoutHead)
        // Training uses the same head: its loss is the cross-entropy of those logits.
        let batch = TrainingBatch(inputs: sequences, targets: [[1, 4, 1, 5, -1]])
        let trained = try MiniCPMModel(directory: directory.path, ownedFloat32Weights: true).evaluate(batch)
        #expect(abs(Double(trained.languageModelLoss) - (try TrainableMiniCPMTests.inferenceLoss(tied, batch))) <= 1e-5)

        var untiedConfig = config
        untiedConfig.tieWordEmbeddings = false
        try untiedConfig.write(to: directory.file("config.json"))
        let untied = try MiniCPMModel(directory: directory.path)
        #expect(untied.weights.lmHead != nil)
        #expect(try untied.logits(for: sequences) != withoutHead)
    }
}
