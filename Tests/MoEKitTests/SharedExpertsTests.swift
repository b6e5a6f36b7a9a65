import Foundation
import Testing
@testable import MoEKit

/// Shared experts (DeepSeekMoE): h = x + Σ_s FFN_s(x) + Σ_i g_i FFN_i(x). The forward equals the
/// per-token reference (which runs each shared expert from its own slice of the stored S·I
/// neurons), every gradient matches finite differences, config.json records S as
/// `n_shared_experts` (absent = 0), and routing sees the routed experts only.
@Suite struct SharedExpertsTests {
    static func config(shared: Int) -> MiniCPMConfig {
        var config = TrainableMiniCPMTests.moeConfig()
        config.numSharedExperts = shared
        return config
    }

    @Test func forwardEqualsPerTokenReference() throws {
        let config = Self.config(shared: 2)
        let weights = SmallModels.weights(for: config, seed: 60)
        #expect(weights[MiniCPMTensorNames.sharedExpertsGate(1)]?.shape == [2 * config.intermediateSize, config.hiddenSize])
        #expect(weights[MiniCPMTensorNames.sharedExpertsDown(0)]?.shape == [config.hiddenSize, 2 * config.intermediateSize])
        let model = try SmallModels.model(config, weights: weights)
        let sequence = [3, 17, 9, 41, 0, 22]
        let logits = try model.logits(for: [sequence])
        let reference = PerTokenReference.logits(config: config, weights: weights, sequence: sequence)
        let expected = reference.flatMap { $0.map(Float.init) }
        #expect(isClose(logits.values, expected, relativeTolerance: 1e-4))
        // Without the shared experts' contribution the logits differ (the test can fail).
        var withoutShared = weights
        withoutShared[MiniCPMTensorNames.sharedExpertsDown(0)] = Tensor(shape: [config.hiddenSize, 2 * config.intermediateSize])
        let other = try SmallModels.model(config, weights: withoutShared).logits(for: [sequence])
        #expect(!isClose(other.values, expected, relativeTolerance: 1e-3))
    }

    @Test func gradientsMatchFiniteDifferences() throws {
        let config = Self.config(shared: 1)
        let trainable = try TrainableMiniCPMTests.trainable(config, weights: SmallModels.weights(for: config, seed: 61))
        let check = try TrainableMiniCPMTests.checkGradients(trainable, batch: TrainableMiniCPMTests.batch(lengths: [6, 4], vocabulary: config.vocabSize, seed: 62),
                                                             seed: 63)
        #expect(check.failures.isEmpty, "\(check.failures)")
        #expect(check.checked >= 3 * TrainableMiniCPMTests.names(config).count * 9 / 10)
        #expect(TrainableMiniCPMTests.names(config).contains(MiniCPMTensorNames.sharedExpertsUp(1)))
    }

    /// config.json: `n_shared_experts` written when S > 0 and read back; absent means 0 (every
    /// checkpoint written before shared experts existed).
    @Test func configRecordsTheNumberOfSharedExperts() throws {
        let config = Self.config(shared: 3)
        let json = try #require(JSONValue.parse(config.serialized()))
        #expect(json.objectValue?["n_shared_experts"] == .integer(3))
        #expect(try MiniCPMConfig(json: json).numSharedExperts == 3)
        let plain = try #require(JSONValue.parse(Self.config(shared: 0).serialized()))
        #expect(plain.objectValue?["n_shared_experts"] == nil)
        #expect(try MiniCPMConfig(json: plain).numSharedExperts == 0)
        #expect(MiniCPMLayout(config: Self.config(shared: 0)).entries.allSatisfy { !$0.name.contains("shared_experts") })
    }

    /// The router, its decisions and its statistics cover the routed experts only: counts sum to T·k.
    @Test func routingSeesRoutedExpertsOnly() throws {
        let config = Self.config(shared: 2)
        let model = try SmallModels.model(config, weights: SmallModels.weights(for: config, seed: 64))
        let output = try model.forward([[1, 2, 3, 4, 5]], detail: .statistics)
        #expect(output.routing.count == 2)
        #expect(output.routing.allSatisfy { $0.expertCounts.count == 4 && $0.expertCounts.reduce(0, +) == 5 * 2 })
    }
}

/// `moekit upcycle --shared-experts S` and `moekit export` of a model with shared experts.
@Suite struct SharedExpertsUpcycleAndExportTests {
    static func dense(in directory: TemporaryDirectory) throws -> String {
        var config = MiniCPMConfig(hiddenSize: 32, intermediateSize: 48, numHiddenLayers: 2, numAttentionHeads: 4, numKeyValueHeads: 2, vocabSize: 64)
        config.dimModelBase = 8
        config.scaleEmb = 12
        config.scaleDepth = 1.4
        config.otherKeys = ["architectures": .array([.string("MiniCPMForCausalLM")]), "model_type": .string("minicpm")]
        let path = directory.file("dense")
        _ = try ModelInitializer.write(config: config, to: path, dtype: .float32, seed: 7, progress: .quiet)
        return path
    }

    static func upcycle(_ dense: String, _ output: String, shared: Int, configure: (inout UpcycleOptions) -> Void = { _ in }) throws -> Upcycler.Result {
        var options = UpcycleOptions(experts: 4, topK: 2)
        options.sharedExperts = shared
        options.verifyTokens = 16
        options.progress = .quiet
        configure(&options)
        return try Upcycler.run(try UpcyclePlan(denseDirectory: dense, options: options), outputDirectory: output, verifier: MiniCPMForwardLogits())
    }

    /// Copy upcycling with S = 2 shared experts: the shared matrices are S copies of the dense MLP's
    /// (down × 1/3), every routed w2 is the dense down_proj × 1/3, config.json says
    /// n_shared_experts 2, and the MoE computes the dense function (`--verify` passes at 1e-5).
    @Test func copyUpcyclingWithSharedExpertsKeepsTheDenseFunction() throws {
        let directory = TemporaryDirectory()
        let dense = try Self.dense(in: directory)
        let output = directory.file("moe")
        let result = try Self.upcycle(dense, output, shared: 2)
        #expect(result.verification?.passed == true && result.verification?.tolerance == UpcycleOptions.copyTolerance)
        let config = try MiniCPMConfig(path: output + "/config.json")
        #expect(config.numSharedExperts == 2 && config.numExperts == 4 && config.intermediateSize == 48)
        let source = try ModelCheckpoint(directory: dense), upcycled = try ModelCheckpoint(directory: output)
        let gate = try source.floatTensor(MiniCPMTensorNames.gateProjection(1)), down = try source.floatTensor(MiniCPMTensorNames.downProjection(1))
        let sharedGate = try upcycled.floatTensor(MiniCPMTensorNames.sharedExpertsGate(1))
        #expect(sharedGate.shape == [96, 32] && sharedGate.values == gate.values + gate.values)
        let sharedDown = try upcycled.floatTensor(MiniCPMTensorNames.sharedExpertsDown(1))
        #expect(sharedDown.shape == [32, 96])
        let third = Float(1) / 3
        #expect(sharedDown[5, 7] == down[5, 7] * third && sharedDown[5, 48 + 7] == down[5, 7] * third)
        #expect(try upcycled.floatTensor(MiniCPMTensorNames.expertDown(1, 3)).values == down.values.map { $0 * third })
        let dense0 = try MiniCPMForwardLogits().logits(modelDirectory: dense, sequences: [[1, 5, 9, 33]])
        let moe0 = try MiniCPMForwardLogits().logits(modelDirectory: output, sequences: [[1, 5, 9, 33]])
        #expect(isClose(moe0, dense0, relativeTolerance: 1e-5))
        // Partition and granular experts are not full-size copies: refused, naming the option.
        #expect(throws: UpcycleError.self) { try Self.upcycle(dense, directory.file("part"), shared: 1) { $0.method = .partition } }
    }

    /// Export: Qwen2-MoE carries the shared experts (gate 0, down × 2 on top of the residual fold,
    /// shared_expert_intermediate_size S·I); GLM-4.5-MoE as DeepSeek stores them; Mixtral refuses.
    @Test func exportCarriesSharedExpertsOrRefuses() throws {
        let directory = TemporaryDirectory()
        let dense = try Self.dense(in: directory)
        let moe = directory.file("moe")
        _ = try Self.upcycle(dense, moe, shared: 2)
        func export(_ format: ExportFormat, _ name: String) throws -> String {
            var options = ExportPlan.Options(format: format)
            options.progress = .quiet
            let output = directory.file(name)
            _ = try Exporter.run(try ExportPlan(directory: moe, options: options), outputDirectory: output)
            return output
        }
        do {
            _ = try export(.mixtral, "mixtral")
            Issue.record("exported shared experts as Mixtral")
        } catch let error as ExportError {
            #expect(error.localizedDescription.contains("n_shared_experts"))
        }
        let qwen = try export(.qwen2MoE, "qwen")
        let config = try JSONValue.parse(Data(contentsOf: URL(fileURLWithPath: qwen + "/config.json")))?.objectValue ?? [:]
        #expect(config["shared_expert_intermediate_size"] == .integer(96) && config["n_shared_experts"] == nil)
        let stored = try ModelCheckpoint(directory: qwen, translatingNames: false)
        let source = try ModelCheckpoint(directory: moe)
        let residual = Float(1.4 / Double(2).squareRoot())
        #expect(try stored.floatTensor("model.layers.0.mlp.shared_expert_gate.weight").values.allSatisfy { $0 == 0 })
        #expect(try stored.floatTensor("model.layers.0.mlp.shared_expert.up_proj.weight").values
                == source.floatTensor(MiniCPMTensorNames.sharedExpertsUp(0)).values)
        let down = try stored.floatTensor("model.layers.0.mlp.shared_expert.down_proj.weight")
        let sourceDown = try source.floatTensor(MiniCPMTensorNames.sharedExpertsDown(0))
        #expect(down.shape == [32, 96] && isClose(down.values, sourceDown.values.map { 2 * residual * $0 }, relativeTolerance: 1e-6))
        #expect(!stored.names.contains { $0.contains("shared_experts") })
        // GLM-4.5-MoE scores with a sigmoid: a sigmoid-routed upcycle of the same dense model.
        let sigmoidMoE = directory.file("moe-sigmoid")
        _ = try Self.upcycle(dense, sigmoidMoE, shared: 2) { $0.router = try? RouterConfiguration(text: "sigmoid") }
        var glmOptions = ExportPlan.Options(format: .glm4MoE)
        glmOptions.progress = .quiet
        let glm = directory.file("glm")
        _ = try Exporter.run(try ExportPlan(directory: sigmoidMoE, options: glmOptions), outputDirectory: glm)
        let glmConfig = try JSONValue.parse(Data(contentsOf: URL(fileURLWithPath: glm + "/config.json")))?.objectValue ?? [:]
        #expect(glmConfig["n_shared_experts"] == .integer(2))
        let glmStored = try ModelCheckpoint(directory: glm, translatingNames: false)
        #expect(try glmStored.info("model.layers.1.mlp.shared_experts.gate_proj.weight").shape == [96, 32])
        // MiniCPM keeps them under its own names, with the same logits.
        let back = try export(.minicpm, "minicpm")
        #expect(try MiniCPMConfig(path: back + "/config.json").numSharedExperts == 2)
        #expect(isClose(try MiniCPMForwardLogits().logits(modelDirectory: back, sequences: [[1, 5, 9]]),
                        try MiniCPMForwardLogits().logits(modelDirectory: moe, sequences: [[1, 5, 9]]), relativeTolerance: 1e-5))
    }
}
