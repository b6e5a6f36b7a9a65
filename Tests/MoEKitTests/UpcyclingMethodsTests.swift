import Foundation
import Testing
@testable import MoEKit

/// A small dense MiniCPM (hidden 32, intermediate 48, 2 layers), f32 so expert bytes compare exactly.
private func smallDense(in directory: TemporaryDirectory, name: String = "dense", seed: UInt64 = 7,
                        configure: (inout MiniCPMConfig) -> Void = { _ in }) throws -> String {
    var config = MiniCPMConfig(hiddenSize: 32, intermediateSize: 48, numHiddenLayers: 2, numAttentionHeads: 4, numKeyValueHeads: 2, vocabSize: 64)
    config.dimModelBase = 8
    config.scaleEmb = 12
    config.scaleDepth = 1.4
    configure(&config)
    let path = directory.file(name)
    _ = try ModelInitializer.write(config: config, to: path, dtype: .float32, seed: seed, progress: .quiet)
    return path
}

private func quietOptions(experts: Int, topK: Int, method: UpcycleMethod, configure: (inout UpcycleOptions) -> Void = { _ in }) -> UpcycleOptions {
    var options = UpcycleOptions(experts: experts, topK: topK)
    options.method = method
    options.verifyTokens = 0
    options.progress = .quiet
    configure(&options)
    return options
}

private func row(_ tensor: Tensor, _ r: Int) -> [Float] { Array(tensor.values[r * tensor.columns ..< (r + 1) * tensor.columns]) }
private func column(_ tensor: Tensor, _ c: Int) -> [Float] { (0 ..< tensor.rows).map { tensor[$0, c] } }

@Suite("Upcycling methods: Drop-Upcycling")
struct DropUpcyclingTests {
    /// The statistics of the replaced weights, by hand. Gate `[[1,2],[3,4],[5,6],[7,8]]`, neurons
    /// {1, 3}: rows 3,4,7,8, mean 5.5, Bessel variance (2.5²+1.5²+1.5²+2.5²)/3 = 17/3. Down
    /// `[[1,2,3,4],[5,6,7,8]]`, neurons {0, 2}: columns 1,5 and 3,7, mean 4, variance 20/3. The
    /// redraw puts μ + σ·z in the replaced places (z from the seeded stream, row-major) and leaves
    /// every other weight alone.
    @Test func redrawUsesTheStatisticsOfTheReplacedWeights() {
        let gate = Tensor(shape: [4, 2], values: [1, 2, 3, 4, 5, 6, 7, 8])
        let gateStats = DropUpcycling.statistics(of: .gate, dense: gate, neurons: [1, 3])
        #expect(abs(gateStats.mean - 5.5) < 1e-12)
        #expect(abs(gateStats.standardDeviation - (17.0 / 3).squareRoot()) < 1e-12)
        let down = Tensor(shape: [2, 4], values: [1, 2, 3, 4, 5, 6, 7, 8])
        let downStats = DropUpcycling.statistics(of: .down, dense: down, neurons: [0, 2])
        #expect(abs(downStats.mean - 4) < 1e-12)
        #expect(abs(downStats.standardDeviation - (20.0 / 3).squareRoot()) < 1e-12)

        var redrawn = gate
        var random = SeededRandom(seed: 3, stream: "w")
        DropUpcycling.redraw(.gate, weight: &redrawn, neurons: [1, 3], random: &random)
        var replay = SeededRandom(seed: 3, stream: "w")
        let sigma = (17.0 / 3).squareRoot()
        let expected = (0 ..< 4).map { _ in Float(5.5 + sigma * replay.nextNormal()) }
        #expect(row(redrawn, 0) == [1, 2] && row(redrawn, 2) == [5, 6])
        #expect(row(redrawn, 1) + row(redrawn, 3) == expected)

        var redrawnDown = down
        var downRandom = SeededRandom(seed: 3, stream: "w2")
        DropUpcycling.redraw(.down, weight: &redrawnDown, neurons: [0, 2], random: &downRandom)
        var downReplay = SeededRandom(seed: 3, stream: "w2")
        let downSigma = (20.0 / 3).squareRoot()
        let z = (0 ..< 4).map { _ in Float(4 + downSigma * downReplay.nextNormal()) }
        #expect(column(redrawnDown, 1) == [2, 6] && column(redrawnDown, 3) == [4, 8])
        #expect(redrawnDown[0, 0] == z[0] && redrawnDown[0, 2] == z[1] && redrawnDown[1, 0] == z[2] && redrawnDown[1, 2] == z[3])
    }

    /// ⌊r·I⌋ neurons per expert (48·0.5 = 24, 48·0.3 = 14.4 → 14, r = 0 none, r = 1 all), a
    /// different subset for every expert and layer, the same for the same seed, another for another.
    @Test func subsetsAreSizedSeededAndDistinct() {
        #expect(DropUpcycling.redrawnNeurons(intermediateSize: 48, ratio: 0.5, seed: 1, layer: 0, expert: 0).count == 24)
        #expect(DropUpcycling.redrawnNeurons(intermediateSize: 48, ratio: 0.3, seed: 1, layer: 0, expert: 0).count == 14)
        #expect(DropUpcycling.redrawnNeurons(intermediateSize: 48, ratio: 0, seed: 1, layer: 0, expert: 0).isEmpty)
        #expect(DropUpcycling.redrawnNeurons(intermediateSize: 48, ratio: 1, seed: 1, layer: 0, expert: 0) == Array(0 ..< 48))
        let subsets = (0 ..< 8).map { DropUpcycling.redrawnNeurons(intermediateSize: 48, ratio: 0.5, seed: 1, layer: 0, expert: $0) }
        #expect(Set(subsets).count == 8)
        #expect(subsets.allSatisfy { $0 == $0.sorted() && Set($0).count == $0.count && $0.allSatisfy { (0 ..< 48).contains($0) } })
        #expect(subsets[0] != DropUpcycling.redrawnNeurons(intermediateSize: 48, ratio: 0.5, seed: 1, layer: 1, expert: 0))
        #expect(subsets[0] == DropUpcycling.redrawnNeurons(intermediateSize: 48, ratio: 0.5, seed: 1, layer: 0, expert: 0))
        #expect(subsets[0] != DropUpcycling.redrawnNeurons(intermediateSize: 48, ratio: 0.5, seed: 2, layer: 0, expert: 0))
    }

    /// The written experts: outside S_e every weight is the dense one bit for bit; inside, w1/w3
    /// rows and w2 columns are new draws whose mean and std are close to the replaced weights'
    /// (768 draws for w1/w3: the sample mean within 4σ/√n). The report lists exactly S_e.
    @Test func upcycleRedrawsTheReportedNeuronsOnly() throws {
        let temp = TemporaryDirectory()
        let dense = try smallDense(in: temp)
        let output = temp.file("moe")
        let options = quietOptions(experts: 4, topK: 2, method: .drop) { $0.seed = 11 }
        let result = try Upcycler.run(try UpcyclePlan(denseDirectory: dense, options: options), outputDirectory: output, verifier: nil)
        let denseCheckpoint = try ModelCheckpoint(directory: dense)
        let moe = try ModelCheckpoint(directory: output)
        let report = try #require(result.report.objectValue?["drop"]?.objectValue)
        #expect(report["neurons_per_expert"] == .integer(24))
        let redrawn = try #require(report["redrawn"]?.arrayValue)
        #expect(redrawn.count == 2 * 4)
        for layer in 0 ..< 2 {
            let gate = try denseCheckpoint.floatTensor(MiniCPMTensorNames.gateProjection(layer))
            let down = try denseCheckpoint.floatTensor(MiniCPMTensorNames.downProjection(layer))
            for expert in 0 ..< 4 {
                let neurons = DropUpcycling.redrawnNeurons(intermediateSize: 48, ratio: 0.5, seed: 11, layer: layer, expert: expert)
                let entry = try #require(redrawn.first { $0.objectValue?["layer"] == .integer(Int64(layer)) && $0.objectValue?["expert"] == .integer(Int64(expert)) }?.objectValue)
                #expect(entry["neurons"] == .array(neurons.map { .integer(Int64($0)) }))
                let w1 = try moe.floatTensor(MiniCPMTensorNames.expertGate(layer, expert))
                let w2 = try moe.floatTensor(MiniCPMTensorNames.expertDown(layer, expert))
                for neuron in 0 ..< 48 {
                    if neurons.contains(neuron) {
                        #expect(row(w1, neuron) != row(gate, neuron))
                        #expect(column(w2, neuron) != column(down, neuron))
                    } else {
                        #expect(row(w1, neuron) == row(gate, neuron))
                        #expect(column(w2, neuron) == column(down, neuron))
                    }
                }
                let replaced = DropUpcycling.statistics(of: .gate, dense: gate, neurons: neurons)
                let drawn = DropUpcycling.statistics(of: .gate, dense: w1, neurons: neurons)
                #expect(abs(drawn.mean - replaced.mean) < 4 * replaced.standardDeviation / (768.0).squareRoot())
                #expect(abs(drawn.standardDeviation / replaced.standardDeviation - 1) < 0.15)
            }
        }
    }

    /// The paper's router (its code's `torch_rand_002`): zero-mean uniform of std 0.02, within ±√3·0.02.
    @Test func paperRouterIsZeroMeanUniformOfStd002() {
        let paper = UpcycleOptions.paperRouter(for: .drop)
        #expect(paper.initialization == .uniformStd && paper.standardDeviation == 0.02)
        #expect(UpcycleOptions.paperRouter(for: .copy).initialization == .normal)
        let router = RouterInitializer.weights(experts: 64, hidden: 256, initialization: .uniformStd, standardDeviation: 0.02, seed: 1, streamName: "r")
        #expect(router.values.allSatisfy { abs($0) <= Float(3.0.squareRoot() * 0.02) })
        #expect(abs(ExpertNoise.standardDeviation(router.values) - 0.02) < 0.001)
        #expect(abs(router.values.reduce(0, +) / Float(router.count)) < 0.001)
    }

    @Test func dropRatioOutsideZeroToOneIsRefused() {
        var options = quietOptions(experts: 4, topK: 2, method: .drop)
        options.dropRatio = 1.5
        #expect(throws: UpcycleError.self) { try options.validate() }
        options = quietOptions(experts: 4, topK: 2, method: .copy)
        options.dropRatio = 0.25
        #expect(throws: UpcycleError.self) { try options.validate() }
    }
}

@Suite("Upcycling methods: weight scaling for the routing")
struct RoutingWeightScaleTests {
    /// 1/Σw at a zero router, by hand: softmax → top-2 of 8 unnormalised: Σw = 2/8, factor 4
    /// (He et al.'s E/k); renormalised: 1; sigmoid unnormalised top-2: Σw = 2·½ = 1; top-4 with
    /// weight scale 2.5: Σw = 4·½·2.5 = 5, factor 0.2; softmax unnormalised with weight scale 2: 2.
    @Test func factorsHandChecked() throws {
        var unnormalised = RouterConfiguration()
        unnormalised.weighting = .unnormalized
        #expect(try RoutingWeightScale.factor(router: unnormalised, experts: 8, topK: 2) == 4)
        #expect(try RoutingWeightScale.factor(router: RouterConfiguration(), experts: 8, topK: 2) == 1)
        var sigmoid = unnormalised
        sigmoid.scoring = .sigmoid
        #expect(try RoutingWeightScale.factor(router: sigmoid, experts: 8, topK: 2) == 1)
        sigmoid.weightScale = 2.5
        #expect(abs(try RoutingWeightScale.factor(router: sigmoid, experts: 8, topK: 4) - 0.2) < 1e-7)
        unnormalised.weightScale = 2
        #expect(try RoutingWeightScale.factor(router: unnormalised, experts: 8, topK: 2) == 2)
        var expertChoice = RouterConfiguration()
        expertChoice.mode = .expertChoice
        expertChoice.capacityFactor = 1
        #expect(throws: UpcycleError.self) { try RoutingWeightScale.factor(router: expertChoice, experts: 8, topK: 2) }
    }

    /// Copy upcycling under softmax → top-k without renormalising, zero router: every weight is
    /// exactly 1/E, so the MoE output is (K/E)·y — the shrinking the paper describes — and
    /// `--weight-scale auto` (w2 × E/K) gives back the dense logits.
    @Test func autoScaleRestoresTheDenseOutputAtAZeroRouter() throws {
        let temp = TemporaryDirectory()
        let dense = try smallDense(in: temp)
        var router = RouterConfiguration()
        router.weighting = .unnormalized
        let tokens = [[3, 1, 4, 1, 5, 9, 2, 6]]
        let denseLogits = try MiniCPMModel(directory: dense).logits(for: tokens)
        var differences: [WeightScaling: Float] = [:]
        for scaling in WeightScaling.allCases {
            let output = temp.file("moe-\(scaling.rawValue)")
            let options = quietOptions(experts: 8, topK: 2, method: .copy) {
                $0.routerInitialization = .zero
                $0.router = router
                $0.weightScaling = scaling
            }
            let result = try Upcycler.run(try UpcyclePlan(denseDirectory: dense, options: options), outputDirectory: output, verifier: nil)
            let scales = result.report.objectValue?["scales"]?.objectValue
            #expect(scales?["down"] == .number(scaling == .auto ? 4 : 1))
            differences[scaling] = try MiniCPMModel(directory: output).logits(for: tokens).maxRelativeDifference(to: denseLogits)
        }
        #expect(try #require(differences[.auto]) <= 1e-5)
        #expect(try #require(differences[WeightScaling.none]) > 1e-2)
    }

    /// Granular with softmax → top-k unnormalised: W1, W3 × G^(1/3) (granular's factor) and W2 ×
    /// G^(1/3)·E/K, so the output scale is a = G·E/K — Megatron-Core's expansion_rate·G²/K with
    /// expansion_rate = E/G. Here G = 2, E = 4, K = 2: a = 4, W2 × 2·2^(1/3).
    @Test func granularCombinesBothScalings() throws {
        let temp = TemporaryDirectory()
        let dense = try smallDense(in: temp)
        let output = temp.file("moe")
        var router = RouterConfiguration()
        router.weighting = .unnormalized
        let options = quietOptions(experts: 4, topK: 2, method: .granular) {
            $0.granularity = 2
            $0.router = router
            $0.weightScaling = .auto
        }
        try Upcycler.run(try UpcyclePlan(denseDirectory: dense, options: options), outputDirectory: output, verifier: nil)
        let denseCheckpoint = try ModelCheckpoint(directory: dense), moe = try ModelCheckpoint(directory: output)
        let g = Float(pow(2.0, 1.0 / 3.0))
        let gate = try denseCheckpoint.floatTensor(MiniCPMTensorNames.gateProjection(0))
        let down = try denseCheckpoint.floatTensor(MiniCPMTensorNames.downProjection(0))
        for expert in 0 ..< 4 {
            let slice = (expert % 2) * 24
            let w1 = try moe.floatTensor(MiniCPMTensorNames.expertGate(0, expert))
            let w2 = try moe.floatTensor(MiniCPMTensorNames.expertDown(0, expert))
            for neuron in 0 ..< 24 {
                #expect(isClose(row(w1, neuron), row(gate, slice + neuron).map { $0 * g }, relativeTolerance: 1e-6))
                #expect(isClose(column(w2, neuron), column(down, slice + neuron).map { $0 * g * 2 }, relativeTolerance: 1e-6))
            }
        }
        // The config records the routing the scale was computed for.
        let config = try MiniCPMConfig(path: output + "/config.json")
        #expect(RouterConfiguration(modelConfig: config).weighting == .unnormalized)
    }
}

@Suite("Upcycling methods: BTX merge")
struct BranchTrainMixTests {
    /// Three dense models (different seeds): expert i of every layer is model i's FFN byte for
    /// byte; every other tensor is (θ₀ + θ₁ + θ₂)/3 (checked against the mean computed here in
    /// Double); the router is new, `[3, hidden]`; the config says 3 experts, top-2.
    @Test func expertsComeFromEachModelAndTheRestIsAveraged() throws {
        let temp = TemporaryDirectory()
        let models = try (0 ..< 3).map { try smallDense(in: temp, name: "dense\($0)", seed: UInt64(10 + $0)) }
        let output = temp.file("btx")
        var options = MergeOptions(topK: 2)
        options.progress = .quiet
        let result = try Merger.run(try MergePlan(denseDirectories: models, options: options), outputDirectory: output)
        let sources = try models.map { try ModelCheckpoint(directory: $0) }
        let merged = try ModelCheckpoint(directory: output)
        for layer in 0 ..< 2 {
            for expert in 0 ..< 3 {
                for projection in ExpertProjection.allCases {
                    let expected = try sources[expert].withBytes(projection.denseTensorName(layer: layer)) { Array($0) }
                    let actual = try merged.withBytes(projection.expertTensorName(layer: layer, expert: expert)) { Array($0) }
                    #expect(actual == expected)
                }
            }
            #expect(try merged.info(MiniCPMTensorNames.router(layer)).shape == [3, 32])
        }
        let averaged = result.report.objectValue?["averaged"]?.arrayValue ?? []
        #expect(averaged.count == merged.names.filter { !$0.contains(".mlp.") }.count)
        for name in merged.names where !name.contains(".mlp.") {
            let values = try sources.map { try $0.floatTensor(name).values }
            let mean = (0 ..< values[0].count).map { i in Float((Double(values[0][i]) + Double(values[1][i]) + Double(values[2][i])) / 3) }
            #expect(isClose(try merged.floatTensor(name).values, mean, relativeTolerance: 1e-6, absoluteTolerance: 1e-7), "\(name)")
        }
        let config = try MiniCPMConfig(path: output + "/config.json")
        #expect(config.numExperts == 3 && config.topK == 2)
        #expect(FileManager.default.fileExists(atPath: output + "/" + MergePlan.reportFileName))
        _ = try MiniCPMModel(directory: output).logits(for: [[1, 2, 3]])
    }

    /// A config field or tensor that differs is refused by name, and nothing is written.
    @Test func differentArchitecturesAreRefusedByName() throws {
        let temp = TemporaryDirectory()
        let a = try smallDense(in: temp, name: "a")
        let wider = try smallDense(in: temp, name: "wider") { $0.intermediateSize = 64 }
        let untied = try smallDense(in: temp, name: "untied") { $0.tieWordEmbeddings = false }
        var options = MergeOptions(topK: 1)
        options.progress = .quiet
        func refusal(_ directories: [String]) -> MergeError? {
            do { _ = try MergePlan(denseDirectories: directories, options: options) } catch { return error }
            return nil
        }
        guard case let .configMismatch(directory, field, _, _, _)? = refusal([a, wider]) else { Issue.record("wider model not refused"); return }
        #expect(directory == wider && field == "intermediate_size")
        guard case let .configMismatch(_, untiedField, _, _, _)? = refusal([a, untied]) else { Issue.record("untied model not refused"); return }
        #expect(untiedField == "tie_word_embeddings")
        #expect(refusal([a]) != nil)
        options.topK = 3
        #expect(refusal([a, a]) != nil)

        // Same config, one tensor of another shape (written by hand): refused naming the tensor.
        let odd = temp.file("odd")
        try FileManager.default.copyItem(atPath: a, toPath: odd)
        let source = try ModelCheckpoint(directory: a)
        let specs = try source.names.map { name -> TensorSpec in
            let info = try source.info(name)
            return TensorSpec(name: name, dtype: info.dtype, shape: name == "model.norm.weight" ? [2, 16] : info.shape)
        }
        try FileManager.default.removeItem(atPath: odd + "/model.safetensors")
        let writer = try SafetensorsWriter(path: odd + "/model.safetensors", tensors: specs)
        for spec in specs { try source.floatTensor(spec.name).values.withUnsafeBufferPointer { try writer.append(floats: $0) } }
        try writer.finish()
        options.topK = 1
        #expect(refusal([a, odd]) != nil)
        if case let .checkpoint(error)? = refusal([a, odd]) {
            #expect(error.errorDescription?.contains("model.norm.weight") == true)
        } else if case let .tensorMismatch(_, tensor, _, _)? = refusal([a, odd]) {
            #expect(tensor == "model.norm.weight")
        } else {
            Issue.record("reshaped tensor not refused by name")
        }
        #expect(!FileManager.default.fileExists(atPath: temp.file("never")))
    }
}
