import Foundation
import Testing
@testable import MoEKit

/// A MiniCPM directory with random weights (GQA; MiniCPM's scalars 12, 1.4, 8) written in `dtype`.
private func miniCPMModel(in directory: TemporaryDirectory, name: String, experts: Int? = nil, tied: Bool = false,
                          dtype: SafetensorsDType = .float32, router: JSONValue? = nil, extraTensors: [String: Tensor] = [:]) throws -> String {
    var config = SmallModels.config(experts: experts, tied: tied)
    config.torchDtype = dtype.torchName
    config.otherKeys = ["model_type": .string("minicpm"), "architectures": .array([.string("MiniCPMForCausalLM")]),
                        "bos_token_id": .integer(1), "eos_token_id": .integer(2)]
    if let router { config.otherKeys[RouterConfiguration.configKey] = router }
    var weights = SmallModels.weights(for: config, seed: 11)
    if !tied { weights[MiniCPMTensorNames.lmHead] = randomTensor([config.vocabSize, config.hiddenSize], seed: 99, standardDeviation: 0.2) }
    for (name, tensor) in extraTensors { weights[name] = tensor }
    let path = directory.file(name)
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
    try SafetensorsWriter.write(weights.map { (name: $0.key, tensor: $0.value, dtype: dtype) }, to: path + "/model.safetensors")
    try config.write(to: path + "/config.json")
    try Data("{\"model\": {}}".utf8).write(to: URL(fileURLWithPath: path + "/tokenizer.json"))
    return path
}

private func export(_ source: String, _ output: String, _ format: ExportFormat, dtype: SafetensorsDType? = nil) throws -> Exporter.Result {
    var options = ExportPlan.Options(format: format, dtype: dtype)
    options.progress = .quiet
    return try Exporter.run(try ExportPlan(directory: source, options: options), outputDirectory: output)
}

private let tokens = [[3, 17, 4, 41, 9, 22, 5], [7, 1, 30]]

private func logits(_ directory: String) throws -> Tensor { try MiniCPMModel(directory: directory).logits(for: tokens) }

private func configObject(_ directory: String) throws -> [String: JSONValue] {
    let data = try Data(contentsOf: URL(fileURLWithPath: directory + "/config.json"))
    return JSONValue.parse(data)?.objectValue ?? [:]
}

private func storedBytes(_ directory: String) throws -> [String: [UInt8]] {
    let checkpoint = try ModelCheckpoint(directory: directory, translatingNames: false)
    var result: [String: [UInt8]] = [:]
    for name in checkpoint.names { result[name] = try checkpoint.withBytes(name) { Array($0) } }
    return result
}

/// The folds (embed × scale_emb, o_proj/down/w2 × scale_depth/√L, lm_head ÷ hidden/dim_model_base)
/// leave the function unchanged: MoEKit gives the same logits for the MiniCPM and its export, read
/// back as a Mixtral with neutral scalars.
@Test func exportedMixtralGivesTheMiniCPMLogits() throws {
    let directory = TemporaryDirectory()
    for tied in [false, true] {
        let source = try miniCPMModel(in: directory, name: "moe-\(tied)", experts: 4, tied: tied)
        let output = directory.file("mixtral-\(tied)")
        let result = try export(source, output, .mixtral)
        #expect(isClose(try logits(output), try logits(source), relativeTolerance: 1e-5))
        let config = try configObject(output)
        #expect(config["model_type"] == .string("mixtral"))
        #expect(config["architectures"] == .array([.string("MixtralForCausalLM")]))
        #expect(config["num_local_experts"] == .integer(4) && config["num_experts"] == nil)
        #expect(config["tie_word_embeddings"] == .bool(false))
        #expect(config["sliding_window"] == .null)
        #expect(config["scale_emb"] == nil && config["scale_depth"] == nil && config["dim_model_base"] == nil)
        #expect(config["rope_theta"]?.doubleValue == 10000 && config["rms_norm_eps"]?.doubleValue == 1e-5)
        #expect(config["head_dim"] == .integer(8) && config["num_key_value_heads"] == .integer(2))
        let stored = try ModelCheckpoint(directory: output, translatingNames: false).names
        #expect(stored.contains("model.layers.1.block_sparse_moe.experts.3.w2.weight"))
        #expect(stored.contains("model.layers.0.block_sparse_moe.gate.weight"))
        #expect(stored.contains("lm_head.weight"))
        #expect(!stored.contains { $0.contains(".mlp.") })
        #expect(FileManager.default.fileExists(atPath: output + "/tokenizer.json"))
        #expect(result.foldErrors.map(\.fold) == ExportPlan.Fold.allCases)
    }
}

/// A dense MiniCPM becomes a Llama; tied embeddings are untied because the head absorbs 1/divisor
/// and the embedding scale_emb.
@Test func exportedLlamaGivesTheMiniCPMLogitsAndUntiesTheHead() throws {
    let directory = TemporaryDirectory()
    let source = try miniCPMModel(in: directory, name: "dense", tied: true)
    let output = directory.file("llama")
    let result = try export(source, output, .llama)
    #expect(isClose(try logits(output), try logits(source), relativeTolerance: 1e-5))
    let config = try configObject(output)
    #expect(config["model_type"] == .string("llama") && config["tie_word_embeddings"] == .bool(false))
    #expect(config["attention_bias"] == .bool(false) && config["mlp_bias"] == .bool(false))
    #expect(try ModelCheckpoint(directory: output).contains(MiniCPMTensorNames.lmHead))
    #expect(result.foldErrors.contains { $0.fold == .head && $0.factor == 1.0 / 4.0 })
}

/// Llama → MiniCPM → Llama and Mixtral → MiniCPM → Mixtral copy every tensor byte for byte (the
/// scalars are neutral, the folds multiply by exactly 1), and MoEKit's logits agree bit for bit.
@Test func exportAndImportRoundTripIsBitExactInF32() throws {
    let directory = TemporaryDirectory()
    for (experts, format) in [(4, ExportFormat.mixtral), (nil, .llama)] as [(Int?, ExportFormat)] {
        let source = try miniCPMModel(in: directory, name: "source-\(format)", experts: experts)
        let first = directory.file("first-\(format)"), back = directory.file("back-\(format)"), again = directory.file("again-\(format)")
        _ = try export(source, first, format)
        let toMiniCPM = try export(first, back, .minicpm)
        let second = try export(back, again, format)
        #expect(toMiniCPM.foldErrors.isEmpty && second.foldErrors.isEmpty)
        #expect(try storedBytes(first) == storedBytes(again))
        #expect(try logits(first).values == logits(back).values)
        let config = try MiniCPMConfig(path: back + "/config.json")
        #expect(config.architecture == .minicpm && config.scaleEmb == 1 && config.residualScale == 1 && config.logitDivisor == 1)
        #expect(try ModelCheckpoint(directory: back, translatingNames: false).names.allSatisfy { !$0.contains("block_sparse_moe") })
    }
}

/// bf16 cannot hold w·12 or w·1.4/√2 exactly: the report gives the rounding, within bf16's unit
/// roundoff (2⁻⁸ relative: 8 significand bits); in f32 within 2⁻²⁴. The bf16 export is the f32
/// export rounded once.
@Test func foldRoundingIsReportedInTheOutputDType() throws {
    let directory = TemporaryDirectory()
    let source = try miniCPMModel(in: directory, name: "moe", experts: 4, dtype: .bfloat16)
    let bf16 = try export(source, directory.file("bf16"), .mixtral)
    let f32 = try export(source, directory.file("f32"), .mixtral, dtype: .float32)
    for error in bf16.foldErrors {
        #expect(error.maxRelative <= (1.0 / 256) * (1 + 1e-6) && error.normRelative <= error.maxRelative)  // f32 then bf16: two roundings
        // ÷ 4 (hidden 32 / dim_model_base 8) is exact in any binary format; × 12 and × 1.4/√2 are not.
        #expect(error.fold == .head ? error.maxRelative == 0 : error.normRelative > 0)
    }
    for error in f32.foldErrors { #expect(error.maxRelative <= 1.0 / 16_777_216) }
    #expect(try MiniCPMConfig(path: directory.file("bf16") + "/config.json").torchDtype == "bfloat16")
    let rounded = try ModelCheckpoint(directory: directory.file("bf16")), exact = try ModelCheckpoint(directory: directory.file("f32"))
    #expect(rounded.names == exact.names)
    for name in exact.names {
        let expected = try exact.floatTensor(name).values.map { HalfPrecision.float(fromBFloat16: HalfPrecision.bfloat16Bits(from: $0)) }
        #expect(try rounded.floatTensor(name).values == expected, "\(name)")
    }
}

/// Router settings Mixtral cannot compute are refused naming the setting.
@Test func routerSettingsMixtralCannotExpressAreRefused() throws {
    let directory = TemporaryDirectory()
    let cases: [(JSONValue, String)] = [
        (.object(["scoring": .string("sigmoid")]), "scoring: sigmoid"),
        (.object(["weighting": .string("unnormalized")]), "weighting: unnormalized"),
        (.object(["capacity_factor": .number(1.25)]), "capacity_factor"),
        (.object(["mode": .string("expert_choice"), "capacity_factor": .number(1)]), "mode: expert_choice"),
        (.object(["mode": .string("relu"), "scoring": .string("relu")]), "mode: relu"),
        (.object(["aux_loss_free_balancing": .bool(true)]), "aux_loss_free_balancing"),
        (.object(["weight_scale": .number(2.5)]), "weight_scale"),
    ]
    for (index, (router, setting)) in cases.enumerated() {
        let source = try miniCPMModel(in: directory, name: "r\(index)", experts: 4, router: router)
        do {
            _ = try export(source, directory.file("out\(index)"), .mixtral)
            Issue.record("exported a router with \(setting)")
        } catch let error as ExportError {
            guard case .inexpressibleRouter(_, let named, _, _) = error else { Issue.record("wrong error \(error)"); continue }
            #expect(named.hasPrefix(setting))
            #expect(error.localizedDescription.contains(setting))
        }
        #expect(!FileManager.default.fileExists(atPath: directory.file("out\(index)")))
    }
    // A moekit_bias beside a router without aux_loss_free_balancing is unused (MoEKit selects without
    // it): the export leaves it out, with a note, and keeps the function.
    let biased = try miniCPMModel(in: directory, name: "biased", experts: 4,
                                  extraTensors: [MiniCPMTensorNames.routerBias(0): Tensor(shape: [4], values: [0, 0.5, 0, 0])])
    let inert = try export(biased, directory.file("biased-out"), .mixtral)
    #expect(inert.report.objectValue?["notes"]?.arrayValue?.isEmpty == false)
    #expect(isClose(try logits(directory.file("biased-out")), try logits(biased), relativeTolerance: 1e-5))
    // softmax_over_selected is the same function as renormalised: exported, aux coefficient α·L/k.
    let same = try miniCPMModel(in: directory, name: "same", experts: 4,
                                router: .object(["weighting": .string("softmax_over_selected"), "load_balancing_coefficient": .number(0.02)]))
    _ = try export(same, directory.file("same-out"), .mixtral)
    // α · L / k with α = 0.02 (as f32, the router record's type), L = 2, k = 2.
    #expect(try configObject(directory.file("same-out"))["router_aux_loss_coef"]?.doubleValue == Double(Float(0.02)) * 2 / 2)
}

/// Dense as Mixtral and MoE as Llama are refused.
@Test func exportRefusesTheWrongKindOfModel() throws {
    let directory = TemporaryDirectory()
    let dense = try miniCPMModel(in: directory, name: "dense")
    let moe = try miniCPMModel(in: directory, name: "moe", experts: 4)
    #expect(throws: ExportError.self) { _ = try export(dense, directory.file("a"), .mixtral) }
    #expect(throws: ExportError.self) { _ = try export(moe, directory.file("b"), .llama) }
}

/// Mixtral and Llama configs read as MiniCPM with neutral scalars and their own defaults; settings
/// MoEKit cannot compute are refused naming the field.
@Test func llamaAndMixtralConfigsReadAsNeutralMiniCPM() throws {
    let mixtral = JSONValue.object([
        "model_type": .string("mixtral"), "hidden_size": .integer(32), "intermediate_size": .integer(48), "num_hidden_layers": .integer(3),
        "num_attention_heads": .integer(4), "num_key_value_heads": .integer(2), "vocab_size": .integer(50), "num_local_experts": .integer(4),
        "num_experts_per_tok": .integer(2), "sliding_window": .null, "rope_theta": .number(1e6),
    ])
    let config = try MiniCPMConfig(json: mixtral)
    #expect(config.architecture == .mixtral && config.numExperts == 4 && config.topK == 2)
    #expect(config.scaleEmb == 1 && config.residualScale == 1 && config.logitDivisor == 1)
    #expect(!config.tieWordEmbeddings && config.rmsNormEps == 1e-5 && config.ropeTheta == 1e6)
    let written = config.jsonObject()
    #expect(written["num_local_experts"] == .integer(4) && written["num_experts"] == nil && written["scale_depth"] == nil)
    #expect(try MiniCPMConfig(json: .object(written)) == config)

    let llama = JSONValue.object([
        "model_type": .string("llama"), "hidden_size": .integer(32), "intermediate_size": .integer(48), "num_hidden_layers": .integer(2),
        "num_attention_heads": .integer(4), "vocab_size": .integer(50), "rope_parameters": .object(["rope_type": .string("default"), "rope_theta": .number(5e5)]),
    ])
    let dense = try MiniCPMConfig(json: llama)
    #expect(dense.architecture == .llama && !dense.isMoE && dense.ropeTheta == 5e5 && dense.numKeyValueHeads == 4 && dense.logitDivisor == 1)

    func refusal(_ key: String, _ value: JSONValue, base: JSONValue) -> String? {
        guard case .object(var object) = base else { return nil }
        object[key] = value
        do { _ = try MiniCPMConfig(json: .object(object)); return nil } catch {
            if case .invalidField(_, let field, _) = error { return field }
            return "\(error)"
        }
    }
    #expect(refusal("sliding_window", .integer(16), base: mixtral) == "sliding_window")
    #expect(refusal("attention_bias", .bool(true), base: llama) == "attention_bias")
    #expect(refusal("hidden_act", .string("gelu"), base: llama) == "hidden_act")
    #expect(refusal("head_dim", .integer(16), base: llama) == "head_dim")
    #expect(refusal("rope_scaling", .object(["rope_type": .string("yarn")]), base: llama) == "rope_scaling")
}

/// `upcycle` turns a Llama into a Mixtral (names and config), which gives the Llama's logits.
@Test func upcyclingALlamaWritesAMixtral() throws {
    let directory = TemporaryDirectory()
    let source = try miniCPMModel(in: directory, name: "dense")
    let llama = directory.file("llama")
    _ = try export(source, llama, .llama)
    var options = UpcycleOptions(experts: 4, topK: 2)
    options.verifyTokens = 0
    options.progress = .quiet
    let moe = directory.file("moe")
    try Upcycler.run(try UpcyclePlan(denseDirectory: llama, options: options), outputDirectory: moe, verifier: nil)
    let config = try configObject(moe)
    #expect(config["model_type"] == .string("mixtral") && config["num_local_experts"] == .integer(4))
    #expect(config["architectures"] == .array([.string("MixtralForCausalLM")]) && config["auto_map"] == nil)
    #expect(config["sliding_window"] == .null && config["output_router_logits"] != nil && config["router_aux_loss_coef"] != nil)
    let stored = try ModelCheckpoint(directory: moe, translatingNames: false).names
    #expect(stored.contains("model.layers.0.block_sparse_moe.experts.2.w1.weight") && !stored.contains { $0.contains(".mlp.") })
    #expect(isClose(try logits(moe), try logits(llama), relativeTolerance: 1e-5))
}

/// `convert` keeps the stored names of a Mixtral (its config keeps describing them).
@Test func convertKeepsMixtralNames() throws {
    let directory = TemporaryDirectory()
    let source = try miniCPMModel(in: directory, name: "moe", experts: 4)
    let mixtral = directory.file("mixtral")
    _ = try export(source, mixtral, .mixtral)
    let converted = directory.file("converted")
    _ = try CheckpointConverter.run(directory: mixtral, outputDirectory: converted, options: .init(dtype: .bfloat16, progress: .quiet))
    #expect(try ModelCheckpoint(directory: converted, translatingNames: false).names == ModelCheckpoint(directory: mixtral, translatingNames: false).names)
    #expect(isClose(try logits(converted), try logits(mixtral), relativeTolerance: 2e-2))
}

/// Unnormalised softmax top-k, which Mixtral cannot compute, exports as a Qwen2-MoE with
/// `norm_topk_prob` false, no attention biases and an all-zero shared expert, and reads back with
/// the same logits; a non-zero shared expert is refused on reading.
@Test func unnormalisedRoutingExportsAsQwen2MoE() throws {
    let directory = TemporaryDirectory()
    let source = try miniCPMModel(in: directory, name: "switch", experts: 4, router: .object(["weighting": .string("unnormalized")]))
    #expect(throws: ExportError.self) { _ = try export(source, directory.file("mixtral"), .mixtral) }
    let output = directory.file("qwen")
    _ = try export(source, output, .qwen2MoE)
    #expect(isClose(try logits(output), try logits(source), relativeTolerance: 1e-5))
    let config = try configObject(output)
    #expect(config["model_type"] == .string("qwen2_moe") && config["norm_topk_prob"] == .bool(false) && config["qkv_bias"] == .bool(false))
    #expect(config["num_experts"] == .integer(4) && config["moe_intermediate_size"] == .integer(48) && config["mlp_only_layers"] == .array([]))
    let stored = try ModelCheckpoint(directory: output, translatingNames: false)
    #expect(stored.names.contains("model.layers.1.mlp.experts.3.down_proj.weight") && !stored.names.contains { $0.hasSuffix(".w2.weight") })
    #expect(try stored.floatTensor("model.layers.0.mlp.shared_expert_gate.weight").values.allSatisfy { $0 == 0 })
    let read = try MiniCPMConfig(path: output + "/config.json")
    #expect(RouterConfiguration(modelConfig: read).weighting == .unnormalized)

    // Renormalised routing as Qwen2-MoE is norm_topk_prob true, the same logits as the Mixtral export.
    let renormalised = try miniCPMModel(in: directory, name: "renorm", experts: 4)
    _ = try export(renormalised, directory.file("qwen-renorm"), .qwen2MoE)
    _ = try export(renormalised, directory.file("mixtral-renorm"), .mixtral)
    #expect(try configObject(directory.file("qwen-renorm"))["norm_topk_prob"] == .bool(true))
    #expect(isClose(try logits(directory.file("qwen-renorm")), try logits(directory.file("mixtral-renorm")), relativeTolerance: 1e-6))

    // A shared expert that adds something is refused, naming the tensor.
    let shared = "model.layers.0.mlp.shared_expert.up_proj.weight"
    let weights = try ModelCheckpoint(directory: output, translatingNames: false)
    var tensors = try weights.names.map { (name: $0, tensor: try weights.floatTensor($0), dtype: SafetensorsDType.float32) }
    tensors = tensors.map { $0.name == shared ? (name: $0.name, tensor: Tensor(shape: $0.tensor.shape, values: $0.tensor.values.map { _ in 1 }), dtype: $0.dtype) : $0 }
    let broken = directory.file("broken")
    try FileManager.default.createDirectory(atPath: broken, withIntermediateDirectories: false)
    try FileManager.default.copyItem(atPath: output + "/config.json", toPath: broken + "/config.json")
    try SafetensorsWriter.write(tensors, to: broken + "/model.safetensors")
    do {
        _ = try ModelCheckpoint(directory: broken)
        Issue.record("read a non-zero shared expert")
    } catch {
        #expect(error.localizedDescription.contains(shared))
    }
}

/// A `.number` stays a JSON float and an `.integer` an integer through serialisation (transformers 5
/// refuses `"router_jitter_noise": 0`), strings are escaped, and the text parses back to the same value.
@Test func serialisedJSONKeepsNumberKinds() throws {
    let value = JSONValue.object([
        "float_zero": .number(0), "theta": .number(10000), "eps": .number(1e-5), "big": .number(1e20), "count": .integer(7),
        "text": .string("a \"quoted\"\\path/\n\u{01}é"), "empty": .array([]), "none": .object([:]), "nan": .number(.nan),
        "nested": .array([.bool(true), .null, .object(["x": .number(1.4142135623730951)])]),
    ])
    for pretty in [true, false] {
        let data = value.serialized(pretty: pretty)
        let text = String(decoding: data, as: UTF8.self)
        #expect(text.contains(pretty ? "\"float_zero\" : 0.0" : "\"float_zero\":0.0"))
        #expect(text.contains("10000.0") && text.contains("1e-05") && text.contains(pretty ? "\"count\" : 7," : "\"count\":7,"))
        guard case .object(var expected) = value else { return }
        expected["nan"] = .null
        #expect(JSONValue.parse(data) == .object(expected))
        // Foundation's reader agrees.
        let foundation = try JSONSerialization.jsonObject(with: data) as? [String: Any]
        #expect((foundation?["text"] as? String) == "a \"quoted\"\\path/\n\u{01}é")
    }
}

/// Sigmoid scoring with the auxiliary-loss-free selection bias and a weight scale (DeepSeek-V3's
/// router), which Mixtral and Qwen2-MoE cannot compute, exports as a GLM-4.5-MoE (full rotary, no
/// q/k norm, one expert group, an all-zero shared expert, the bias as e_score_correction_bias in f32)
/// and reads back with the same logits.
@Test func sigmoidRoutingWithSelectionBiasExportsAsGLM4MoE() throws {
    let directory = TemporaryDirectory()
    let router = JSONValue.object(["scoring": .string("sigmoid"), "aux_loss_free_balancing": .bool(true), "weight_scale": .number(2.5)])
    var biases: [String: Tensor] = [:]
    for layer in 0 ..< 2 { biases[MiniCPMTensorNames.routerBias(layer)] = Tensor(shape: [4], values: [0.3, -0.2, 0.05 * Float(layer), 0.1]) }
    let source = try miniCPMModel(in: directory, name: "dsv3", experts: 4, router: router, extraTensors: biases)
    for format in [ExportFormat.mixtral, .qwen2MoE] {
        #expect(throws: ExportError.self) { _ = try export(source, directory.file("refused-\(format.rawValue)"), format) }
    }
    let output = directory.file("glm")
    _ = try export(source, output, .glm4MoE, dtype: .float32)
    #expect(isClose(try logits(output), try logits(source), relativeTolerance: 1e-5))
    let config = try configObject(output)
    #expect(config["model_type"] == .string("glm4_moe") && config["n_routed_experts"] == .integer(4) && config["num_experts"] == nil)
    #expect(config["routed_scaling_factor"]?.doubleValue == 2.5 && config["norm_topk_prob"] == .bool(true))
    #expect(config["first_k_dense_replace"] == .integer(0) && config["partial_rotary_factor"]?.doubleValue == 1)
    let stored = try ModelCheckpoint(directory: output, translatingNames: false)
    #expect(try stored.floatTensor("model.layers.1.mlp.gate.e_score_correction_bias").values == biases[MiniCPMTensorNames.routerBias(1)]?.values)
    #expect(try stored.info("model.layers.1.mlp.gate.e_score_correction_bias").dtype == .float32)
    #expect(try stored.floatTensor("model.layers.0.mlp.shared_experts.down_proj.weight").values.allSatisfy { $0 == 0 })
    let read = RouterConfiguration(modelConfig: try MiniCPMConfig(path: output + "/config.json"))
    #expect(read.scoring == .sigmoid && read.auxiliaryLossFreeBalancing && read.weightScale == 2.5)
    // Back to MiniCPM and again: bit for bit.
    _ = try export(output, directory.file("back"), .minicpm)
    _ = try export(directory.file("back"), directory.file("again"), .glm4MoE)
    #expect(try storedBytes(output) == storedBytes(directory.file("again")))
}
