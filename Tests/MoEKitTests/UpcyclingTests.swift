import Foundation
import Testing
@testable import MoEKit

/// A small dense MiniCPM (hidden 32, intermediate 48, 2 layers) written with `moekit init`'s code.
private func denseModel(in directory: TemporaryDirectory, dtype: SafetensorsDType = .bfloat16, name: String = "dense") throws -> String {
    var config = MiniCPMConfig(hiddenSize: 32, intermediateSize: 48, numHiddenLayers: 2, numAttentionHeads: 4, numKeyValueHeads: 2, vocabSize: 64)
    config.dimModelBase = 8
    config.scaleEmb = 12
    config.scaleDepth = 1.4
    config.otherKeys = ["architectures": .array([.string("MiniCPMForCausalLM")]), "model_type": .string("minicpm"),
                        "rope_scaling": .object(["type": .string("linear"), "factor": .number(2)])]
    let path = directory.file(name)
    _ = try ModelInitializer.write(config: config, to: path, dtype: dtype, seed: 7, progress: .quiet)
    return path
}

private func options(experts: Int, topK: Int, method: UpcycleMethod = .copy, dtype: SafetensorsDType? = nil,
                     configure: (inout UpcycleOptions) -> Void = { _ in }) -> UpcycleOptions {
    var options = UpcycleOptions(experts: experts, topK: topK)
    options.method = method
    options.dtype = dtype
    options.verifyTokens = 0
    options.progress = .quiet
    configure(&options)
    return options
}

@discardableResult
private func upcycle(_ dense: String, _ output: String, _ options: UpcycleOptions, verifier: LogitsProvider? = nil) throws -> Upcycler.Result {
    try Upcycler.run(try UpcyclePlan(denseDirectory: dense, options: options), outputDirectory: output, verifier: verifier)
}

private func bytes(_ checkpoint: ModelCheckpoint, _ name: String) throws -> [UInt8] { try checkpoint.withBytes(name) { Array($0) } }

/// Names in `parent` that look like AtomicDirectory temporaries (`.NAME.tmp-…`).
private func leftoverTemporaries(in parent: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? []).filter { $0.contains(".tmp-") }
}

/// The SwiGLU MLP `W2 · (silu(W1 x) ⊙ W3 x)` by plain loops (the reference the formulas are checked against).
private func referenceMLP(gate: Tensor, up: Tensor, down: Tensor, x: [Float]) -> [Float] {
    let intermediate = gate.rows, hidden = gate.columns
    var activation = [Float](repeating: 0, count: intermediate)
    for i in 0 ..< intermediate {
        var g: Float = 0, u: Float = 0
        for h in 0 ..< hidden { g += gate[i, h] * x[h]; u += up[i, h] * x[h] }
        activation[i] = g / (1 + exp(-g)) * u
    }
    var y = [Float](repeating: 0, count: down.rows)
    for h in 0 ..< down.rows { for i in 0 ..< intermediate { y[h] += down[h, i] * activation[i] } }
    return y
}

/// A stand-in forward pass returning fixed logits per directory, to pin how `--verify` judges and cleans up.
private final class FixedLogits: LogitsProvider {
    let dense: Tensor, upcycled: Tensor, denseDirectory: String
    init(dense: Tensor, upcycled: Tensor, denseDirectory: String) { self.dense = dense; self.upcycled = upcycled; self.denseDirectory = denseDirectory }
    func logits(modelDirectory: String, sequences: [[Int]]) throws -> Tensor { modelDirectory == denseDirectory ? dense : upcycled }
}

@Suite("Upcycling: expert construction")
struct UpcyclingExpertTests {
    /// `copy` with the dtype kept: every expert matrix is the dense MLP's bytes, and every
    /// non-MLP tensor is copied bit for bit.
    @Test func copyGivesBitExactExperts() throws {
        let temp = TemporaryDirectory()
        let dense = try denseModel(in: temp)
        let output = temp.file("moe")
        try upcycle(dense, output, options(experts: 4, topK: 2))
        let source = try ModelCheckpoint(directory: dense)
        let result = try ModelCheckpoint(directory: output)
        for layer in 0 ..< 2 {
            for expert in 0 ..< 4 {
                for projection in ExpertProjection.allCases {
                    #expect(try bytes(result, projection.expertTensorName(layer: layer, expert: expert)) == bytes(source, projection.denseTensorName(layer: layer)))
                }
            }
            #expect(try result.info(MiniCPMTensorNames.router(layer)).shape == [4, 32])
            #expect(!result.contains(MiniCPMTensorNames.gateProjection(layer)))
        }
        for name in source.names where !name.contains(".mlp.") {
            #expect(try bytes(result, name) == bytes(source, name), "\(name) changed")
            #expect(try result.info(name).dtype == .bfloat16)
        }
    }

    /// `--dtype f32` from bf16: values unchanged (bf16 → f32 is exact), storage type converted.
    @Test func dtypeConversionKeepsValues() throws {
        let temp = TemporaryDirectory()
        let dense = try denseModel(in: temp)
        try upcycle(dense, temp.file("moe"), options(experts: 2, topK: 1, dtype: .float32))
        let source = try ModelCheckpoint(directory: dense)
        let result = try ModelCheckpoint(directory: temp.file("moe"))
        #expect(try result.info(MiniCPMTensorNames.embedTokens).dtype == .float32)
        #expect(try result.floatTensor(MiniCPMTensorNames.embedTokens) == source.floatTensor(MiniCPMTensorNames.embedTokens))
        #expect(try result.floatTensor(MiniCPMTensorNames.expertDown(1, 1)) == source.floatTensor(MiniCPMTensorNames.downProjection(1)))
        let config = try MiniCPMConfig(path: temp.file("moe/config.json"))
        #expect(config.torchDtype == "float32")
    }

    /// `noise`: the measured noise std relative to the matrix std follows `--noise-std` (so the
    /// difference grows with it), differs per expert, and is reproducible from the seed.
    @Test func noiseDifferenceGrowsWithStandardDeviation() throws {
        let temp = TemporaryDirectory()
        let dense = try denseModel(in: temp, dtype: .float32)
        let source = try ModelCheckpoint(directory: dense)
        let gate = try source.floatTensor(MiniCPMTensorNames.gateProjection(0))
        let reference = ExpertNoise.standardDeviation(gate.values)
        var previous = 0.0
        for (index, std) in [0.01, 0.1, 0.5].enumerated() {
            let output = temp.file("noise\(index)")
            try upcycle(dense, output, options(experts: 2, topK: 1, method: .noise) { $0.noiseStandardDeviation = std })
            let result = try ModelCheckpoint(directory: output)
            let expert0 = try result.floatTensor(MiniCPMTensorNames.expertGate(0, 0))
            let expert1 = try result.floatTensor(MiniCPMTensorNames.expertGate(0, 1))
            let difference = zip(expert0.values, gate.values).map { $0 - $1 }
            let measured = ExpertNoise.standardDeviation(difference) / reference
            #expect(abs(measured - std) < 0.15 * std, "noise std \(measured) for --noise-std \(std)")
            #expect(measured > previous)
            #expect(expert0 != expert1)
            previous = measured
        }
        try upcycle(dense, temp.file("again"), options(experts: 2, topK: 1, method: .noise) { $0.noiseStandardDeviation = 0.5 })
        #expect(try ModelCheckpoint(directory: temp.file("again")).floatTensor(MiniCPMTensorNames.expertUp(1, 1))
            == ModelCheckpoint(directory: temp.file("noise2")).floatTensor(MiniCPMTensorNames.expertUp(1, 1)))
    }

    /// `partition`, hand-checked: I = 4, H = 1, groups {0, 2} and {1, 3}: w1/w3 keep the group's
    /// rows, w2 its columns times E = 2.
    @Test func partitionSlicingHandChecked() {
        let slicing = ExpertSlicing.partition(groups: [[2, 0], [1, 3]], intermediateSize: 4)
        let gate = Tensor(shape: [4, 1], values: [1, 2, 3, 4])
        let down = Tensor(shape: [1, 4], values: [10, 20, 30, 40])
        #expect(slicing.weight(.gate, expert: 0, dense: gate).values == [1, 3])
        #expect(slicing.weight(.up, expert: 1, dense: gate).values == [2, 4])
        #expect(slicing.weight(.down, expert: 0, dense: down).values == [20, 60])
        #expect(slicing.weight(.down, expert: 1, dense: down).shape == [1, 2])
        #expect(slicing.weight(.down, expert: 1, dense: down).values == [40, 80])
    }

    /// `partition` through the upcycler: groups are disjoint and cover every neuron, the written
    /// experts follow the formula, and with all E experts at gate 1/E the layer equals the dense MLP
    /// (the derivation of the scale E in `ExpertSlicing.partitionOutputScale`).
    @Test(arguments: [NeuronGrouping.random, .cluster])
    func partitionPreservesTheMLPWithAllExpertsActive(grouping: NeuronGrouping) throws {
        let temp = TemporaryDirectory()
        let dense = try denseModel(in: temp, dtype: .float32)
        let experts = 4
        try upcycle(dense, temp.file("moe"), options(experts: experts, topK: 2, method: .partition) { $0.partitionBy = grouping; $0.seed = 3 })
        let source = try ModelCheckpoint(directory: dense)
        let result = try ModelCheckpoint(directory: temp.file("moe"))
        #expect(try MiniCPMConfig(path: temp.file("moe/config.json")).intermediateSize == 12)
        let gate = try source.floatTensor(MiniCPMTensorNames.gateProjection(1))
        let up = try source.floatTensor(MiniCPMTensorNames.upProjection(1))
        let down = try source.floatTensor(MiniCPMTensorNames.downProjection(1))
        // Recover each expert's neurons from its w1 rows and check they partition 0..<48.
        var seen = Set<Int>()
        for expert in 0 ..< experts {
            let w1 = try result.floatTensor(MiniCPMTensorNames.expertGate(1, expert))
            #expect(w1.shape == [12, 32])
            for row in 0 ..< 12 {
                let match = (0 ..< 48).first { gate.row($0) == w1.row(row) }
                #expect(match != nil)
                if let match { #expect(seen.insert(match).inserted) }
            }
        }
        #expect(seen.count == 48)
        let x = randomTensor([32], seed: 11).values
        var combined = [Float](repeating: 0, count: 32)
        for expert in 0 ..< experts {
            let y = referenceMLP(gate: try result.floatTensor(MiniCPMTensorNames.expertGate(1, expert)),
                                 up: try result.floatTensor(MiniCPMTensorNames.expertUp(1, expert)),
                                 down: try result.floatTensor(MiniCPMTensorNames.expertDown(1, expert)), x: x)
            for h in 0 ..< 32 { combined[h] += y[h] / Float(experts) }
        }
        #expect(isClose(combined, referenceMLP(gate: gate, up: up, down: down, x: x), relativeTolerance: 1e-5))
    }

    /// Balanced k-means: equal group sizes, and two well-separated blobs land in separate groups.
    @Test func balancedKMeansSeparatesClustersInEqualGroups() {
        var values: [Float] = []
        for i in 0 ..< 8 { values += [i % 2 == 0 ? 10 : -10, Float(i) * 0.01] }
        var random = SeededRandom(seed: 1)
        let groups = NeuronPartition.balancedKMeans(features: Tensor(shape: [8, 2], values: values), groups: 2, random: &random)
        #expect(groups.map(\.count) == [4, 4])
        #expect(Set(groups.map { Set($0) }) == [Set([0, 2, 4, 6]), Set([1, 3, 5, 7])])
    }

    /// `granular`, hand-checked: I = 4, G = 2, E = 4: expert e keeps slice e mod 2, every matrix
    /// scaled by 2^(1/3).
    @Test func granularSlicingHandChecked() {
        let slicing = ExpertSlicing.granular(intermediateSize: 4, granularity: 2, experts: 4)
        let s = Float(pow(2.0, 1.0 / 3.0))
        let gate = Tensor(shape: [4, 1], values: [1, 2, 3, 4])
        let down = Tensor(shape: [1, 4], values: [10, 20, 30, 40])
        #expect(isClose(slicing.weight(.gate, expert: 0, dense: gate).values, [s, 2 * s]))
        #expect(isClose(slicing.weight(.gate, expert: 3, dense: gate).values, [3 * s, 4 * s]))
        #expect(isClose(slicing.weight(.down, expert: 2, dense: down).values, [10 * s, 20 * s]))
        #expect(isClose(slicing.weight(.down, expert: 1, dense: down).values, [30 * s, 40 * s]))
    }

    /// `granular` through the upcycler: expert intermediate size I/G in the config, experts per the
    /// formula, router rows repeated for the G experts of a group.
    @Test func granularFollowsMegatronFormula() throws {
        let temp = TemporaryDirectory()
        let dense = try denseModel(in: temp, dtype: .float32)
        try upcycle(dense, temp.file("moe"), options(experts: 6, topK: 2, method: .granular) { $0.granularity = 3 })
        let source = try ModelCheckpoint(directory: dense)
        let result = try ModelCheckpoint(directory: temp.file("moe"))
        #expect(try MiniCPMConfig(path: temp.file("moe/config.json")).intermediateSize == 16)
        let s = Float(pow(3.0, 1.0 / 3.0))
        let up = try source.floatTensor(MiniCPMTensorNames.upProjection(0))
        let down = try source.floatTensor(MiniCPMTensorNames.downProjection(0))
        for expert in 0 ..< 6 {
            let slice = expert % 3
            let w3 = try result.floatTensor(MiniCPMTensorNames.expertUp(0, expert))
            #expect(isClose(w3.values, up.rows(slice * 16 ..< (slice + 1) * 16).values.map { $0 * s }))
            let w2 = try result.floatTensor(MiniCPMTensorNames.expertDown(0, expert))
            #expect(w2.shape == [32, 16])
            #expect(isClose([w2[5, 7]], [down[5, slice * 16 + 7] * s]))
        }
        let router = try result.floatTensor(MiniCPMTensorNames.router(0))
        #expect(router.row(0) == router.row(1) && router.row(1) == router.row(2))
        #expect(router.row(3) == router.row(5))
        #expect(router.row(0) != router.row(3))
    }
}

@Suite("Upcycling: router initialisation")
struct UpcyclingRouterTests {
    /// normal: mean ≈ 0 and std ≈ σ; uniform: within ±1/√H with variance 1/(3H); zero: zeros;
    /// the same seed and name give the same router, another name another one.
    @Test func routerInitialisationStatistics() {
        let hidden = 256
        let normal = RouterInitializer.weights(experts: 64, hidden: hidden, initialization: .normal, standardDeviation: 0.1, seed: 1, streamName: "a")
        let mean = normal.values.reduce(0, +) / Float(normal.count)
        #expect(abs(mean) < 0.005)
        #expect(abs(ExpertNoise.standardDeviation(normal.values) - 0.1) < 0.003)
        let uniform = RouterInitializer.weights(experts: 64, hidden: hidden, initialization: .uniform, standardDeviation: 0.1, seed: 1, streamName: "a")
        let bound = 1 / Float(hidden).squareRoot()
        #expect(uniform.values.allSatisfy { abs($0) <= bound })
        let variance = pow(ExpertNoise.standardDeviation(uniform.values), 2)
        #expect(abs(variance - 1.0 / (3.0 * Double(hidden))) < 0.05 / (3.0 * Double(hidden)))
        let zero = RouterInitializer.weights(experts: 8, hidden: hidden, initialization: .zero, standardDeviation: 0.1, seed: 1, streamName: "a")
        #expect(zero.values.allSatisfy { $0 == 0 })
        #expect(normal == RouterInitializer.weights(experts: 64, hidden: hidden, initialization: .normal, standardDeviation: 0.1, seed: 1, streamName: "a"))
        #expect(normal != RouterInitializer.weights(experts: 64, hidden: hidden, initialization: .normal, standardDeviation: 0.1, seed: 1, streamName: "b"))
    }
}

@Suite("Upcycling: output directory, atomicity and bad input")
struct UpcyclingOutputTests {
    /// Other files are copied unchanged, dense weights are not, shards respect --shard-size and
    /// the index lists every tensor; the output passes MoEKit's own MiniCPM-MoE layout check.
    @Test func outputDirectoryIsACompleteShardedMiniCPMMoE() throws {
        let temp = TemporaryDirectory()
        let dense = try denseModel(in: temp)
        try Data("{\"tok\": 1}".utf8).write(to: URL(fileURLWithPath: dense + "/tokenizer.json"))
        try Data("{\"max_length\": 9}".utf8).write(to: URL(fileURLWithPath: dense + "/generation_config.json"))
        let output = temp.file("moe")
        let result = try upcycle(dense, output, options(experts: 4, topK: 2) { $0.maximumShardBytes = 20_000 })
        #expect(result.files.count > 1)
        let names = try FileManager.default.contentsOfDirectory(atPath: output)
        #expect(names.contains("tokenizer.json") && names.contains("generation_config.json") && names.contains(SafetensorsIndex.fileName))
        #expect(!names.contains("model.safetensors"))
        #expect(FileManager.default.contents(atPath: output + "/tokenizer.json") == Data("{\"tok\": 1}".utf8))
        let index = try SafetensorsIndex(path: output + "/" + SafetensorsIndex.fileName)
        let config = try MiniCPMConfig(path: output + "/config.json")
        #expect(config.numExperts == 4 && config.topK == 2)
        #expect(config.otherKeys["rope_scaling"]?.objectValue?["type"] == .string("linear"))
        #expect(config.otherKeys["rope_scaling"]?.objectValue?["factor"]?.doubleValue == 2)
        #expect(config.scaleDepth == 1.4 && config.scaleEmb == 12 && config.dimModelBase == 8)
        let text = String(decoding: FileManager.default.contents(atPath: output + "/config.json") ?? Data(), as: UTF8.self)
        #expect(text.contains("\"rope_theta\"") && text.contains("\"tie_word_embeddings\""))
        let checkpoint = try ModelCheckpoint(directory: output)
        #expect(Set(index.weightMap.keys) == Set(checkpoint.names))
        #expect(try MiniCPMLayout(config: config).check(checkpoint).isEmpty)
        #expect(leftoverTemporaries(in: temp.path).isEmpty)
    }

    /// An existing OUT_DIR is refused and left untouched; --force replaces it.
    @Test func existingOutputRefusedUnlessForced() throws {
        let temp = TemporaryDirectory()
        let dense = try denseModel(in: temp)
        let output = temp.file("moe")
        try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: false)
        try Data("keep".utf8).write(to: URL(fileURLWithPath: output + "/marker"))
        #expect(throws: UpcycleError.file(.alreadyExists(path: output))) { try upcycle(dense, output, options(experts: 2, topK: 1)) }
        #expect(FileManager.default.fileExists(atPath: output + "/marker"))
        try upcycle(dense, output, options(experts: 2, topK: 1) { $0.replaceExisting = true })
        #expect(!FileManager.default.fileExists(atPath: output + "/marker"))
        #expect(FileManager.default.fileExists(atPath: output + "/" + UpcyclePlan.reportFileName))
        #expect(leftoverTemporaries(in: temp.path).isEmpty)
    }

    /// --verify: `copy` must be within 1e-5 or the run fails leaving no OUT_DIR and no temporary
    /// directory; other methods only report the difference.
    @Test func verificationFailureLeavesNothingBehind() throws {
        let temp = TemporaryDirectory()
        let dense = try denseModel(in: temp)
        let reference = Tensor(shape: [4, 64], values: (0 ..< 256).map { Float($0) })
        var shifted = reference
        shifted.values[5] += 1  // relative difference 1/255
        let verifier = FixedLogits(dense: reference, upcycled: shifted, denseDirectory: dense)
        let output = temp.file("moe")
        #expect(throws: UpcycleError.self) { try upcycle(dense, output, options(experts: 2, topK: 1) { $0.verifyTokens = 4 }, verifier: verifier) }
        #expect(!FileManager.default.fileExists(atPath: output))
        #expect(leftoverTemporaries(in: temp.path).isEmpty)
        let noisy = try upcycle(dense, output, options(experts: 2, topK: 1, method: .noise) { $0.verifyTokens = 4 }, verifier: verifier)
        #expect(noisy.verification?.passed == true && noisy.verification?.tolerance == nil)
        #expect(isClose([noisy.verification?.maxRelativeDifference ?? 0], [1 / 255]))
        let exact = FixedLogits(dense: reference, upcycled: reference, denseDirectory: dense)
        let copy = try upcycle(dense, temp.file("copy"), options(experts: 2, topK: 1) { $0.verifyTokens = 4 }, verifier: exact)
        #expect(copy.verification == UpcycleVerification(tokens: 4, maxRelativeDifference: 0, tolerance: 1e-5, passed: true))
        #expect(throws: UpcycleError.self) { try upcycle(dense, temp.file("none"), options(experts: 2, topK: 1) { $0.verifyTokens = 4 }) }
        #expect(!FileManager.default.fileExists(atPath: temp.file("none")))
    }

    /// Bad options and bad checkpoints: typed errors, and never an OUT_DIR.
    @Test func badInputIsRefusedWithoutOutput() throws {
        let temp = TemporaryDirectory()
        let dense = try denseModel(in: temp)
        let output = temp.file("moe")
        func refused(_ options: UpcycleOptions, from directory: String? = nil, _ check: (UpcycleError) -> Bool) {
            do {
                try upcycle(directory ?? dense, output, options)
                Issue.record("accepted bad input \(options)")
            } catch let error as UpcycleError {
                #expect(check(error), "\(error)")
                #expect(error.errorDescription?.isEmpty == false)
            } catch { Issue.record("untyped error \(error)") }
            #expect(!FileManager.default.fileExists(atPath: output))
        }
        refused(options(experts: 1, topK: 1)) { if case .invalidOption("--experts", _) = $0 { true } else { false } }
        refused(options(experts: 4, topK: 5)) { if case .invalidOption("--top-k", _) = $0 { true } else { false } }
        refused(options(experts: 4, topK: 2, method: .granular) { $0.granularity = 5 }) { if case .invalidOption("--granularity", _) = $0 { true } else { false } }
        refused(options(experts: 10, topK: 2, method: .granular) { $0.granularity = 5 }) { if case .indivisibleIntermediateSize(_, 48, 5, _) = $0 { true } else { false } }
        refused(options(experts: 5, topK: 2, method: .partition)) { if case .indivisibleIntermediateSize(_, 48, 5, _) = $0 { true } else { false } }
        // Already MoE: the output of a previous run.
        try upcycle(dense, temp.file("first"), options(experts: 2, topK: 1))
        refused(options(experts: 2, topK: 1), from: temp.file("first")) { if case .alreadyMoE = $0 { true } else { false } }
        // Missing tensor: a copy of the dense model without one MLP matrix.
        let source = try ModelCheckpoint(directory: dense)
        let broken = temp.file("broken")
        try FileManager.default.createDirectory(atPath: broken, withIntermediateDirectories: false)
        try FileManager.default.copyItem(atPath: dense + "/config.json", toPath: broken + "/config.json")
        let kept = try source.names.filter { $0 != MiniCPMTensorNames.upProjection(1) }.map { (name: $0, tensor: try source.floatTensor($0), dtype: SafetensorsDType.float32) }
        try SafetensorsWriter.write(kept, to: broken + "/model.safetensors")
        refused(options(experts: 2, topK: 1), from: broken) { $0 == .checkpoint(.missingTensor(directory: broken, tensor: MiniCPMTensorNames.upProjection(1))) }
        // Shape mismatch: the config claims a larger intermediate size than the weights have.
        let mismatched = temp.file("mismatched")
        try FileManager.default.copyItem(atPath: dense, toPath: mismatched)
        var config = try MiniCPMConfig(path: mismatched + "/config.json")
        config.intermediateSize = 64
        try config.write(to: mismatched + "/config.json")
        refused(options(experts: 2, topK: 1), from: mismatched) { if case .checkpoint(.shapeMismatch) = $0 { true } else { false } }
        refused(options(experts: 2, topK: 1), from: temp.file("nowhere")) { $0 == .checkpoint(.missingFile(path: temp.file("nowhere"))) }
        #expect(leftoverTemporaries(in: temp.path).isEmpty)
    }

    /// upcycle-report.json holds the source, method, options, seed, parameter counts of the
    /// output layout, the bytes of tensor data written and the verification (null when off).
    @Test func reportRecordsTheRun() throws {
        let temp = TemporaryDirectory()
        let dense = try denseModel(in: temp)
        let output = temp.file("moe")
        try upcycle(dense, output, options(experts: 4, topK: 2, method: .partition) { $0.seed = 42; $0.routerInitialization = .uniform })
        guard let data = FileManager.default.contents(atPath: output + "/" + UpcyclePlan.reportFileName),
              case .object(let report)? = JSONValue.parse(data) else { Issue.record("no report"); return }
        #expect(report["method"] == .string("partition"))
        #expect(report["seed"] == .integer(42))
        #expect(report["source"]?.stringValue?.hasSuffix("/dense") == true)
        #expect(report["options"]?.objectValue?["experts"] == .integer(4))
        #expect(report["options"]?.objectValue?["top_k"] == .integer(2))
        #expect(report["options"]?.objectValue?["router_init"] == .string("uniform"))
        #expect(report["scales"]?.objectValue?["down"]?.doubleValue == 4)
        #expect(report["verification"] == .null)
        let config = try MiniCPMConfig(path: output + "/config.json")
        let counts = MiniCPMLayout(config: config).parameterCounts
        let parameters = report["parameters"]?.objectValue
        #expect(parameters?["total"] == .integer(Int64(counts.total)))
        #expect(parameters?["active_per_token"] == .integer(Int64(counts.activePerToken)))
        #expect(parameters?["non_embedding"] == .integer(Int64(counts.nonEmbedding)))
        let checkpoint = try ModelCheckpoint(directory: output)
        let tensorBytes = checkpoint.tensors.reduce(0) { $0 + $1.byteCount }
        #expect(report["bytes_written"] == .integer(Int64(tensorBytes)))
    }

    /// Dry run on the minicpm-2.4b preset's config alone (no weights): E = 8, K = 2 gives the
    /// published MiniCPM-MoE-8x2B sizes, ≈13.6B non-embedding parameters and ≈4B active.
    @Test func dryRunCountsMatchMiniCPMMoE8x2B() throws {
        let temp = TemporaryDirectory()
        let directory = temp.file("config-only")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        try MiniCPMPreset.minicpm2_4b.config.write(to: directory + "/config.json")
        let plan = try UpcyclePlan(denseDirectory: directory, options: options(experts: 8, topK: 2), requireWeights: false)
        let counts = plan.parameters
        #expect(abs(Double(counts.nonEmbedding) / 1e9 - 13.6) < 0.1, "\(counts.nonEmbedding)")
        #expect(abs(Double(counts.activeNonEmbedding) / 1e9 - 4.0) < 0.1, "\(counts.activeNonEmbedding)")
        #expect(plan.tensors.count == 1 + 40 * (6 + 1 + 8 * 3) + 1)
        #expect(plan.tensors.allSatisfy { $0.dtype == .bfloat16 })
        #expect(plan.totalBytes == counts.total * 2)
        #expect(throws: UpcycleError.self) { try Upcycler.run(plan, outputDirectory: temp.file("out"), verifier: nil) }
        #expect(!FileManager.default.fileExists(atPath: temp.file("out")))
    }
}

@Suite("Upcycling: function preservation through the forward pass")
struct UpcyclingFunctionPreservationTests {
    /// `copy` preserves the function for any E, K and router: all experts equal the dense MLP and
    /// the renormalised top-k weights sum to 1, so the upcycled logits equal the dense logits within
    /// 1e-5 (relative to the largest logit).
    @Test(arguments: [(2, 1, RouterInitialization.normal), (4, 2, .uniform), (8, 3, .zero), (3, 3, .normal)])
    func copyPreservesLogits(experts: Int, topK: Int, router: RouterInitialization) throws {
        let temp = TemporaryDirectory()
        let dense = try denseModel(in: temp)
        let output = temp.file("moe")
        let result = try upcycle(dense, output, options(experts: experts, topK: topK) { $0.routerInitialization = router; $0.verifyTokens = 12; $0.seed = 5 },
                                 verifier: MiniCPMForwardLogits())
        #expect(result.verification?.passed == true)
        let sequences = [[1, 5, 9, 2, 33], [7, 7, 63]]
        let denseLogits = try MiniCPMModel(directory: dense).logits(for: sequences)
        let moeLogits = try MiniCPMModel(directory: output).logits(for: sequences)
        #expect(moeLogits.maxRelativeDifference(to: denseLogits) <= 1e-5)
    }

    /// `partition` with K = E and a zero router (gates 1/E) reproduces the dense model: the scale
    /// E on w2 exactly undoes the averaging (see `ExpertSlicing.partitionOutputScale`).
    @Test func partitionWithAllExpertsAndZeroRouterPreservesLogits() throws {
        let temp = TemporaryDirectory()
        let dense = try denseModel(in: temp, dtype: .float32)
        let output = temp.file("moe")
        try upcycle(dense, output, options(experts: 4, topK: 4, method: .partition) { $0.routerInitialization = .zero })
        let tokens = [[3, 1, 4, 1, 5, 9, 2, 6]]
        #expect(try MiniCPMModel(directory: output).logits(for: tokens).maxRelativeDifference(to: MiniCPMModel(directory: dense).logits(for: tokens)) <= 1e-5)
    }
}
