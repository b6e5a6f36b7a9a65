import CMoEKernels
import Foundation
import Testing
@testable import MoEKit

/// The `CMoEKernels` products with 16-bit weights (decode GEMV in f32, and `--compute bf16`)
/// against the plain-loop reference: every instruction-set path this CPU has, odd sizes (k not a
/// multiple of any vector width, m and n not multiples of the tiles), unaligned rows, every
/// storage kind, and β accumulation.
@Suite struct HalfPrecisionKernelTests {
    /// Instruction-set levels this CPU runs: the portable path always, then AVX2 and AVX-512 when present.
    static let levels = Array(0 ... MatrixMultiply.kernelLevel)

    /// Products through `gemm(…, timesTransposeOf:)` with α = 0.5 and β = 1 on C preset to 1.
    static func product(_ x: Tensor, _ w: Weight, gemvRows: Int, kernels: Int32, dotProduct: Bool = ComputePrecision.cpuHasBFloat16DotProduct) -> Tensor {
        var c = Tensor(shape: [x.rows, w.rows], repeating: 1)
        x.values.withUnsafeBufferPointer { a in
            c.values.withUnsafeMutableBufferPointer { out in
                MatrixMultiply.gemm(m: x.rows, a: a.baseAddress!, lda: x.columns, timesTransposeOf: w, alpha: 0.5, beta: 1, c: out.baseAddress!,
                                    ldc: w.rows, blockElements: MatrixMultiply.conversionBlockElements, gemvRows: gemvRows, kernels: kernels,
                                    dotProduct: dotProduct)
            }
        }
        return c
    }

    static func expected(_ x: Tensor, _ w: Weight) -> Tensor {
        let reference = MatrixMultiply.referenceProduct(x, w, transposeB: true)
        return Tensor(shape: reference.shape, values: reference.values.map { 0.5 * $0 + 1 })
    }

    static func roundedToBFloat16(_ t: Tensor) -> Tensor {
        Tensor(shape: t.shape, values: t.values.map { HalfPrecision.float(fromBFloat16: HalfPrecision.bfloat16Bits(from: $0)) })
    }

    /// f32 compute on bf16/f16 weights read in place equals the reference product of the widened
    /// weight, on every kernel path, for shapes around every vector and tile width.
    @Test(arguments: [(1, 1, 1), (1, 7, 15), (3, 37, 17), (4, 9, 33), (5, 38, 100), (16, 13, 47), (2, 5, 130), (7, 6, 517)])
    func gemvMatchesTheReferenceOnEveryPath(m: Int, n: Int, k: Int) {
        let w = randomTensor([n, k], seed: UInt64(10 + n)), x = randomTensor([m, k], seed: UInt64(20 + k))
        let storages: [(String, Weight)] = [
            ("bf16", WeightBytes.weight(w, as: .bfloat16)), ("bf16 unaligned", WeightBytes.weight(w, as: .bfloat16, offset: 1)),
            ("f16", WeightBytes.weight(w, as: .float16)), ("f16 unaligned", WeightBytes.weight(w, as: .float16, offset: 3)),
            ("stacked bf16 + f16 + owned", Weight(stacking: [WeightBytes.weight(w.rows(0 ..< n / 3), as: .bfloat16),
                                                           WeightBytes.weight(w.rows(n / 3 ..< 2 * n / 3), as: .float16),
                                                           Weight(w.rows(2 * n / 3 ..< n))])),
        ]
        for (name, weight) in storages {
            let expected = Self.expected(x, weight)
            for level in Self.levels {
                #expect(isClose(Self.product(x, weight, gemvRows: 16, kernels: level), expected, relativeTolerance: 2e-6), "\(name) level \(level)")
            }
            #expect(isClose(Self.product(x, weight, gemvRows: 0, kernels: MatrixMultiply.kernelLevel), expected, relativeTolerance: 2e-6), "\(name) sgemm path")
        }
    }

    /// The kernels' f16 widening is exact on every class of value (subnormals, the largest finite),
    /// checked through x = [1], which makes each output one weight element (−0 comes out +0: the
    /// sum starts at +0).
    @Test func float16WideningIsExact() {
        let values: [Float] = [0, 1, -2.5, 65504, -65504, 6.1035156e-05, 5.9604645e-08, -3.0517578e-05, 0.33325195]
        let w = Tensor(shape: [values.count, 1], values: values)
        let weight = WeightBytes.weight(w, as: .float16, offset: 1)
        for level in Self.levels {
            var c = Tensor(shape: [1, values.count])
            [Float(1)].withUnsafeBufferPointer { a in
                c.values.withUnsafeMutableBufferPointer { out in
                    MatrixMultiply.gemm(m: 1, a: a.baseAddress!, lda: 1, timesTransposeOf: weight, c: out.baseAddress!, ldc: values.count,
                                        blockElements: MatrixMultiply.conversionBlockElements, kernels: level)
                }
            }
            #expect(c.values.map(\.bitPattern) == values.map(\.bitPattern), "level \(level)")
        }
    }

    /// The kernels' f32 → bf16 rounding equals `HalfPrecision`'s (nearest, ties to even; NaN quiet;
    /// overflow to ±Inf), on special values and random ones, at every instruction-set level (lengths
    /// that leave a tail after the 16-wide AVX-512 steps included).
    @Test func roundingToBFloat16MatchesHalfPrecision() {
        var values: [Float] = [0, -0.0, 1, 1.00390625, 1.01171875, -1.00390625, .infinity, -.infinity, .nan, .greatestFiniteMagnitude,
                               Float(bitPattern: 0x7F7F_FFFF), Float(bitPattern: 0x0000_8000), Float(bitPattern: 0x0001_8000), Float(bitPattern: 0xFFA0_0001)]
        values += randomTensor([1000], seed: 5, standardDeviation: 100).values
        for i: UInt32 in 0 ..< 64 {  // ties, NaNs with payloads, negative subnormals
            values.append(Float(bitPattern: 0x3F80_8000 + (i << 16)))
            values.append(Float(bitPattern: 0x7F80_0001 + (i << 12)))
            values.append(Float(bitPattern: 0x8000_0001 + (i << 8)))
        }
        let expected = values.map(HalfPrecision.bfloat16Bits(from:))
        for level in Self.levels {
            for count in [values.count, values.count - 5, 15, 1, 0] {
                var bits = [UInt16](repeating: 0xAAAA, count: values.count)
                moekit_round_to_bf16(level, values, &bits, count)
                #expect(Array(bits[..<count]) == Array(expected[..<count]), "level \(level), count \(count)")
                #expect(bits[count...].allSatisfy { $0 == 0xAAAA }, "level \(level) wrote past \(count)")
            }
        }
    }

    /// bf16 compute is the exact product of the bf16-rounded activations and weights summed in f32
    /// (the plain loop `expected`): through `vdpbf16ps` when the CPU has it — the dot-product tiles
    /// (more rows than the GEMV takes) and the row-at-a-time GEMV (`gemvRows: 16`: m = 2 and 9, k
    /// with and without a tail of 32) — and on f32 units (`dotProduct: false`), for weights rounded
    /// once from f32 and for bf16 and f16 weights read in place.
    @Test(arguments: [(2, 37, 33), (21, 13, 100), (40, 7, 31), (9, 44, 64)])
    func bfloat16ComputeIsTheProductOfRoundedValues(m: Int, n: Int, k: Int) {
        let w = randomTensor([n, k], seed: UInt64(30 + n)), x = randomTensor([m, k], seed: UInt64(40 + m))
        let storages: [(String, Weight)] = [("owned f32", Weight(w)), ("bf16 unaligned", WeightBytes.weight(w, as: .bfloat16, offset: 1)),
                                            ("f16", WeightBytes.weight(w, as: .float16)),
                                            ("stacked bf16 + owned", Weight(stacking: [WeightBytes.weight(w.rows(0 ..< n / 2), as: .bfloat16), Weight(w.rows(n / 2 ..< n))]))]
        for (name, stored) in storages {
            let weight = stored.forCompute(.bfloat16)
            #expect(weight.computePrecision == .bfloat16 && weight.segments.allSatisfy { $0.elementType == .bfloat16 }, "\(name)")
            let expected = Self.expected(Self.roundedToBFloat16(x), Weight(Self.roundedToBFloat16(stored.floatTensor())))
            for gemvRows in [0, 16] {
                let fast = Self.product(x, weight, gemvRows: gemvRows, kernels: MatrixMultiply.kernelLevel)
                #expect(isClose(fast, expected, relativeTolerance: 2e-6), "\(name), GEMV up to \(gemvRows) rows")
                let portable = Self.product(x, weight, gemvRows: gemvRows, kernels: 0, dotProduct: false)
                #expect(isClose(portable, expected, relativeTolerance: 2e-6), "\(name), f32 units, GEMV up to \(gemvRows) rows")
            }
        }
    }

    /// Hand case: 1.00390625 = 1 + 2⁻⁸ lies halfway between the bf16 neighbours 1 and 1 + 2⁻⁷ and
    /// rounds to even, 1; so [1.00390625, 3] · [1, 1]ᵀ is 4.00390625 in f32 and 4 in bf16 compute,
    /// on the dot-product path (20 rows) and the GEMV path (1 row).
    @Test func bfloat16ComputeHandCase() {
        let weight = Weight(Tensor(shape: [1, 2], values: [1, 1]))
        for rows in [1, 20] {
            let x = Tensor(shape: [rows, 2], values: Array(repeating: [1.00390625, 3], count: rows).flatMap { $0 })
            #expect(MatrixMultiply.product(x, weight, transposeB: true).values == Array(repeating: 4.00390625, count: rows))
            #expect(MatrixMultiply.product(x, weight.forCompute(.bfloat16), transposeB: true).values == Array(repeating: 4, count: rows))
        }
    }

    /// `forCompute(.bfloat16)` keeps bf16 segments where they are (no copy) and rounds other ones
    /// once; `.float32` goes back to f32 arithmetic on the same values; an owned copy is f32 again.
    @Test func forComputeKeepsBFloat16InPlaceAndRoundsTheRest() {
        let w = randomTensor([6, 10], seed: 8)
        let mapped = WeightBytes.weight(w, as: .bfloat16, offset: 1)
        let prepared = mapped.forCompute(.bfloat16)
        guard case .mapped(let before, _, _) = mapped.segments[0], case .mapped(let after, _, _) = prepared.segments[0] else {
            Issue.record("segments not mapped")
            return
        }
        #expect(before == after && prepared.ownedByteCount == 0)
        let rounded = Weight(w).forCompute(.bfloat16)
        #expect(rounded.ownedByteCount == 0 && rounded.floatTensor().values == Self.roundedToBFloat16(w).values)
        #expect(rounded.forCompute(.float32).computePrecision == .float32 && rounded.forCompute(.float32).floatTensor().values == rounded.floatTensor().values)
        #expect(rounded.owned().computePrecision == .float32 && rounded.owned().isOwned)
    }

    /// `bytesAllocated(forCompute:)` counts the bf16 copies `forCompute(.bfloat16)` makes: 2 bytes
    /// per element of every segment not stored as bf16, none for bf16 segments, vectors or f32
    /// compute; over a whole model, every matrix (the memory check of `forward|trace --compute bf16`).
    @Test func bytesAllocatedForComputeCountsTheBFloat16Copies() throws {
        let w = randomTensor([6, 10], seed: 9)
        #expect(Weight(w).bytesAllocated(forCompute: .bfloat16) == 120)
        #expect(WeightBytes.weight(w, as: .float16).bytesAllocated(forCompute: .bfloat16) == 120)
        #expect(WeightBytes.weight(w, as: .bfloat16).bytesAllocated(forCompute: .bfloat16) == 0)
        #expect(Weight(stacking: [WeightBytes.weight(w.rows(0 ..< 2), as: .bfloat16), Weight(w.rows(2 ..< 6))]).bytesAllocated(forCompute: .bfloat16) == 80)
        #expect(Weight(w).bytesAllocated(forCompute: .float32) == 0)
        #expect(Weight(w).forCompute(.bfloat16).bytesAllocated(forCompute: .bfloat16) == 0)

        let config = SmallModels.config(experts: 4, tied: true)
        let model = try SmallModels.model(config, weights: SmallModels.weights(for: config, seed: 71))
        let matrixElements = model.weights.parameterTensors.filter { $0.shape.count == 2 }.reduce(0) { $0 + $1.count }
        let routerElements = config.numHiddenLayers * config.numExperts! * config.hiddenSize
        #expect(model.weights.bytesAllocated(forCompute: .bfloat16) == 2 * (matrixElements - routerElements))
        #expect(model.weights.forCompute(.bfloat16).bytesAllocated(forCompute: .bfloat16) == 0)
    }

    /// A whole model in bf16 compute stays close to f32 (bf16 keeps 8 significant bits: relative
    /// rounding error ≤ 2⁻⁹ per operand) and differs from it (the arithmetic really changed); a
    /// model on bf16 weights with f32 compute — the GEMV decode path — matches the f32 model of the
    /// same values to f32 accuracy, prefill and one decoded token alike.
    @Test(arguments: [nil, 4] as [Int?])
    func modelsInBFloat16ComputeStayClose(experts: Int?) throws {
        let config = SmallModels.config(experts: experts, tied: experts == nil)
        let weights = SmallModels.weights(for: config, seed: 70)
        let sequences = [[1, 5, 9, 2, 7, 3], [4, 4, 8]]
        let f32 = try SmallModels.model(config, weights: weights)
        let expected = try f32.logits(for: sequences)
        let bf16 = try SmallModels.model(config, weights: weights)
        bf16.weights = bf16.weights.forCompute(.bfloat16)
        let logits = try bf16.logits(for: sequences)
        #expect(isClose(logits, expected, relativeTolerance: 3e-2))
        #expect(!isClose(logits, expected, relativeTolerance: 1e-5))

        let directory = TemporaryDirectory()
        try SafetensorsWriter.write(weights.sorted { $0.key < $1.key }.map { (name: $0.key, tensor: $0.value, dtype: SafetensorsDType.bfloat16) },
                                    to: directory.file("model.safetensors"))
        try config.write(to: directory.file("config.json"))
        let mapped = try MiniCPMModel(directory: directory.path)
        let rounded = try SmallModels.model(config, weights: weights.mapValues(Self.roundedToBFloat16))
        let prompt = [1, 5, 9, 2, 7], cache = mapped.makeCache(), roundedCache = rounded.makeCache()
        for (chunk, rows) in [(prompt, MiniCPMModel.LogitRows.allTokens), ([3], .allTokens)] {
            let decoded = try mapped.forward([(chunk, cache)], logitRows: rows).logits
            let reference = try rounded.forward([(chunk, roundedCache)], logitRows: rows).logits
            #expect(isClose(decoded, reference, relativeTolerance: 1e-5), "\(chunk.count) tokens")
        }
    }
}

/// bf16 compute's error on layer outputs, printed for docs/bf16-kernels.md and bounded: a SwiGLU
/// FFN and a MoE layer (8 experts, top-2) at hidden 256, intermediate 640 on 64 tokens of N(0, 1),
/// weights N(0, 0.02²) (MiniCPM's initialisation scale).
@Suite struct BFloat16ComputeErrorTests {
    /// max |Δ| / max |y| and mean |Δ| / mean |y| of `y` against `reference`.
    static func errors(_ y: Tensor, _ reference: Tensor) -> (maximum: Double, mean: Double) {
        let deltas = zip(y.values, reference.values).map { Double(abs($0 - $1)) }
        let magnitudes = reference.values.map { Double(abs($0)) }
        return ((deltas.max() ?? 0) / (magnitudes.max() ?? 1), deltas.reduce(0, +) / max(magnitudes.reduce(0, +), .leastNonzeroMagnitude))
    }

    @Test func layerOutputErrorsAreBounded() throws {
        let hidden = 256, intermediate = 640, tokens = 64
        func ffn(_ seed: UInt64) -> SwiGLUWeights {
            SwiGLUWeights(gate: randomTensor([intermediate, hidden], seed: seed, standardDeviation: 0.02),
                          up: randomTensor([intermediate, hidden], seed: seed + 1, standardDeviation: 0.02),
                          down: randomTensor([hidden, intermediate], seed: seed + 2, standardDeviation: 0.02))
        }
        let x = randomTensor([tokens, hidden], seed: 90)
        let dense = ffn(100)
        let denseErrors = Self.errors(SwiGLULayer.forward(x, weights: dense.forCompute(.bfloat16), keepCache: false).output,
                                      SwiGLULayer.forward(x, weights: dense, keepCache: false).output)
        let moe = MoEWeights(router: randomTensor([8, hidden], seed: 110, standardDeviation: 0.1), experts: (0 ..< 8).map { ffn(200 + 10 * UInt64($0)) })
        let router = try ConfigurableRouter(configuration: RouterConfiguration(), layers: 1, experts: 8, hiddenSize: hidden, modelTopK: 2)
        func moeOutput(_ weights: MoEWeights) -> Tensor {
            MoEFeedForwardLayer.forward(x, weights: weights, router: router, layer: 0, loss: nil, sequenceLengths: [tokens], keepCache: false).output
        }
        let moeErrors = Self.errors(moeOutput(moe.forCompute(.bfloat16)), moeOutput(moe))
        print("bf16 compute vs f32: SwiGLU FFN max \(denseErrors.maximum), mean \(denseErrors.mean); MoE layer max \(moeErrors.maximum), mean \(moeErrors.mean)")
        // Two bf16 roundings (x and W, each ≤ 2⁻⁹ relative) per product, twice through the FFN.
        #expect(denseErrors.mean < 1e-2 && denseErrors.maximum < 3e-2)
        #expect(moeErrors.mean < 1e-2 && moeErrors.maximum < 3e-2)
        #expect(denseErrors.mean > 1e-5)
    }
}
