import Foundation
import Testing
@testable import MoEKit

/// MoEKit's own JSON files as `Codable` records: `JSONValueEncoder` writes what `JSONEncoder`
/// writes, and `config.json`, `trainer_state.json` and the domain names come out byte for byte as
/// the hand-written text below (the layout earlier versions wrote), keys MoEKit does not know included.
@Suite struct CodableFilesTests {
    /// A record with every primitive `JSONValueEncoder` special-cases, optionals and nesting.
    struct Sample: Codable, Equatable {
        var flag = true
        var name = "a\"b"
        var count = -3
        var seed: UInt64 = .max
        var small: UInt32 = 7
        var ratio: Float = 0.01
        var whole: Double = 2
        var tiny: Double = 1e-8
        var missing: Int? = nil
        var list: [Float] = [1, 0.5]
        var nested: [String: [Int]] = ["x": [1, 2]]
    }

    /// `JSONValueEncoder.encode(x)` is `JSONValue.parse(JSONEncoder().encode(x))`: floats in their
    /// own type's shortest form, whole ones as integers, a UInt64 beyond Int64 a number, nil left out.
    @Test func encoderWritesWhatJSONEncoderWrites() throws {
        var router = RouterConfiguration()
        router.capacityFactor = 1.25
        router.inputJitter = 0.01
        router.noiseSeed = 12_345
        router.l1InitialCoefficient = 3e-7
        var bigSeed = RouterConfiguration()
        bigSeed.noiseSeed = .max
        for value in [router, bigSeed, RouterConfiguration(), try RouterConfiguration(text: "expert-choice:cf=2")] {
            #expect(try JSONValueEncoder.encode(value) == JSONValue.parse(try JSONEncoder().encode(value)))
            if value.noiseSeed != .max { #expect(try RouterConfiguration(json: value.jsonValue) == value) }
        }
        let sample = try JSONValueEncoder.encode(Sample())
        #expect(sample == JSONValue.parse(try JSONEncoder().encode(Sample())))
        let object = try #require(sample.objectValue)
        #expect(object["ratio"] == .number(0.01) && object["whole"] == .integer(2) && object["tiny"] == .number(1e-8))
        #expect(object["seed"] == .number(18_446_744_073_709_551_615) && object["small"] == .integer(7) && object["missing"] == nil)
        #expect(object["list"] == .array([.integer(1), .number(0.5)]) && object["nested"] == .object(["x": .array([.integer(1), .integer(2)])]))
        // A JSONValue field is taken as it is (a float stays a float, NaN is written as null).
        #expect(try JSONValueEncoder.encode(["a": JSONValue.number(10000)]) == .object(["a": .number(10000)]))
        #expect(try JSONValueEncoder.encode([JSONValue.number(.nan)]).serialized(pretty: false) == Data("[null]".utf8))
    }

    /// A MiniCPM-MoE config with keys MoEKit does not know is written back with them, in the
    /// layout of earlier versions: sorted keys, floats as floats, whole scalars as integers,
    /// `n_shared_experts` typed (written since > 0), `moekit_router` typed and written in full.
    @Test func configRoundTripKeepsUnknownKeysByteForByte() throws {
        let text = """
            {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
             "vocab_size": 300, "model_type": "minicpm", "num_experts": 4, "n_shared_experts": 1,
             "scale_emb": 12.0, "scale_depth": 1.4, "rms_norm_eps": 1e-05, "my_tool": {"b": [1, 2.5, null], "a": "x"},
             "moekit_router": {"weighting": "unnormalized"}, "torch_dtype": "bfloat16"}
            """
        let config = try MiniCPMConfig(json: try #require(JSONValue.parse(Data(text.utf8))))
        #expect(config.numSharedExperts == 1 && config.otherKeys["n_shared_experts"] == nil && config.topK == 2)
        #expect(config.otherKeys["my_tool"] == .object(["b": .array([.integer(1), .number(2.5), .null]), "a": .string("x")]))
        let expected = """
            {
              "dim_model_base" : 1,
              "hidden_size" : 64,
              "intermediate_size" : 160,
              "max_position_embeddings" : 2048,
              "model_type" : "minicpm",
              "moekit_router" : {
                "aux_loss_free_balancing" : false,
                "bias_update_rate" : 0.001,
                "drop_policy" : "probability",
                "importance_coefficient" : 0,
                "l1_coefficient_multiplier" : 1.2,
                "l1_initial_coefficient" : 1e-08,
                "load_balancing_coefficient" : 0.01,
                "load_balancing_loss" : "switch",
                "load_coefficient" : 0,
                "mode" : "token_choice",
                "noise_seed" : 0,
                "noisy_top_k" : false,
                "scoring" : "softmax",
                "weight_scale" : 1,
                "weighting" : "unnormalized",
                "z_loss_coefficient" : 0
              },
              "my_tool" : {
                "a" : "x",
                "b" : [
                  1,
                  2.5,
                  null
                ]
              },
              "n_shared_experts" : 1,
              "num_attention_heads" : 4,
              "num_experts" : 4,
              "num_experts_per_tok" : 2,
              "num_hidden_layers" : 2,
              "num_key_value_heads" : 4,
              "rms_norm_eps" : 1e-05,
              "rope_theta" : 10000.0,
              "scale_depth" : 1.4,
              "scale_emb" : 12,
              "tie_word_embeddings" : true,
              "torch_dtype" : "bfloat16",
              "vocab_size" : 300
            }
            """
        #expect(String(decoding: config.serialized(), as: UTF8.self) == expected)
        #expect(try MiniCPMConfig(json: try #require(JSONValue.parse(config.serialized()))) == config)
        // Through the Codable protocols alone: decode, then encode, gives the same object.
        #expect(try JSONValueEncoder.encode(try JSONValueDecoder.decode(MiniCPMConfig.self, from: .object(config.jsonObject()))) == .object(config.jsonObject()))
        // No shared experts: the key is not written; a dense config writes no MoE keys.
        var plain = config
        plain.numSharedExperts = 0
        #expect(plain.jsonObject()["n_shared_experts"] == nil)
        plain.numExperts = nil
        #expect(plain.jsonObject()["num_experts"] == nil && plain.jsonObject()["num_experts_per_tok"] == nil)
    }

    /// Integer fields are integers: `64.0` is refused as `64.5` is (the decoder is strict).
    @Test func configIntegerFieldGivenAFloatIsRefused() throws {
        let json = try #require(JSONValue.parse(Data(#"{"hidden_size": 64.0, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 300}"#.utf8)))
        #expect(throws: CheckpointError.invalidField(path: "c.json", field: "hidden_size", reason: "must be an integer ≥ 1")) {
            try MiniCPMConfig(json: json, path: "c.json")
        }
    }

    /// Mixtral's expert count is written as `num_local_experts`, its neutral scalars left out.
    @Test func mixtralConfigIsWrittenInItsOwnNames() throws {
        let text = #"{"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300, "num_local_experts": 4, "num_experts_per_tok": 2, "dtype": "float32"}"#
        let config = try MiniCPMConfig(json: try #require(JSONValue.parse(Data(text.utf8))))
        let object = config.jsonObject()
        #expect(object["num_local_experts"] == .integer(4) && object["num_experts"] == nil)
        #expect(object["scale_emb"] == nil && object["dim_model_base"] == nil && object["scale_depth"] == nil)
        #expect(object["dtype"] == .string("float32") && object["tie_word_embeddings"] == .bool(false) && object["rope_theta"] == .number(1e6))
        #expect(try MiniCPMConfig(json: .object(object)) == config)
    }

    /// `trainer_state.json` in the layout earlier versions wrote: losses as f32 widened to f64,
    /// NaN as null, `relu_l1_coefficient` only when set; it reads back equal. (The widened values
    /// are Python's `struct.unpack('f', struct.pack('f', 2.3))`.)
    @Test func trainerStateIsWrittenAsBeforeAndReadsBack() throws {
        let state = TrainerState(completedSteps: 3, options: ["lr": "0.01", "balance": "micro"], data: "c.bin", initialModel: "m",
                                 tokensSeen: 96, lastLoss: 2.3, lastLanguageModelLoss: 2.25, lastValidationLoss: .nan, l1Coefficient: 1.2e-8)
        let expected = """
            {
              "completed_steps" : 3,
              "data" : "c.bin",
              "format" : "moekit-trainer",
              "initial_model" : "m",
              "last_lm_loss" : 2.25,
              "last_loss" : 2.299999952316284,
              "last_val_loss" : null,
              "options" : {
                "balance" : "micro",
                "lr" : "0.01"
              },
              "relu_l1_coefficient" : 1.2000000104706032e-08,
              "tokens_seen" : 96,
              "version" : 1
            }
            """
        #expect(String(decoding: state.serialized(), as: UTF8.self) == expected)
        let directory = TemporaryDirectory()
        let path = directory.file("trainer_state.json")
        try state.serialized().write(to: URL(fileURLWithPath: path))
        let read = try TrainerState(path: path)
        #expect(read.completedSteps == 3 && read.options == state.options && read.tokensSeen == 96 && read.l1Coefficient == 1.2e-8)
        #expect(read.lastLoss == 2.3 && read.lastLanguageModelLoss == 2.25 && read.lastValidationLoss.isNaN)
    }

    /// Each damaged state file is `invalidState` naming the file and saying what is wrong.
    @Test(arguments: [
        (#"{"version": 1}"#, "missing field 'format'"),
        (#"{"format": "x", "version": 1}"#, #"field 'format' is not "moekit-trainer""#),
        (#"{"format": "moekit-trainer", "version": 1.0}"#, "field 'version' is not an integer ≥ 0"),
        (#"{"format": "moekit-trainer", "version": 2}"#, "version 2 is newer than this MoEKit reads (1)"),
        (#"{"format": "moekit-trainer", "version": 1}"#, "missing field 'options'"),
        (#"{"format": "moekit-trainer", "version": 1, "options": []}"#, "field 'options' is not an object"),
        (#"{"format": "moekit-trainer", "version": 1, "options": {"lr": 1}}"#, "option 'lr' is not a string"),
        (#"{"format": "moekit-trainer", "version": 1, "options": {}, "relu_l1_coefficient": 0}"#, "field 'relu_l1_coefficient' is not a positive number"),
        (#"{"format": "moekit-trainer", "version": 1, "options": {}}"#, "missing field 'completed_steps'"),
        (#"{"format": "moekit-trainer", "version": 1, "options": {}, "completed_steps": -1}"#, "field 'completed_steps' is not an integer ≥ 0"),
        (#"{"format": "moekit-trainer", "version": 1, "options": {}, "completed_steps": 1, "data": 3}"#, "field 'data' is not a string"),
        ("[]", "not a JSON object"),
    ])
    func damagedTrainerStateIsAnErrorNamingTheField(_ text: String, _ reason: String) throws {
        let directory = TemporaryDirectory()
        let path = directory.file("trainer_state.json")
        writeBytes(Array(text.utf8), to: path)
        #expect(throws: TrainingError.invalidState(path: path, reason: reason)) { _ = try TrainerState(path: path) }
    }

    /// The domain-names sidecar is written as before and each bad field is refused naming it.
    @Test func domainNamesFileIsWrittenAsBeforeAndChecked() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("data.bin")
        try DomainLabels(names: ["web", "code"], labels: [0, 1, 255], tokenDataType: .uint32).write(forDataAt: path)
        let namesPath = DomainLabels.sidecarPaths(forDataAt: path).names
        let expected = "{\n  \"domains\" : [\n    \"web\",\n    \"code\"\n  ],\n  \"format\" : \"moekit-domains\",\n  \"token_dtype\" : \"uint32\",\n  \"version\" : 1\n}\n"
        #expect(String(decoding: try Data(contentsOf: URL(fileURLWithPath: namesPath)), as: UTF8.self) == expected)
        #expect(try DomainLabels.read(forDataAt: path) == DomainLabels(names: ["web", "code"], labels: [0, 1, 255], tokenDataType: .uint32))
        for (text, reason) in [
            (#"{"format": "other", "domains": ["a"]}"#, #"'format' must be "moekit-domains""#),
            (#"{"version": 2, "domains": ["a"]}"#, "'version' must be 1 (this MoEKit reads version 1)"),
            (#"{"domains": "a"}"#, "'domains' must be an array of domain names"),
            (#"{"domains": ["a", ""]}"#, "'domains'[1] must be a non-empty string"),
            (#"{"domains": ["a", "a"]}"#, "domain 'a' is listed twice"),
            (#"{"domains": ["a"], "token_dtype": "int8"}"#, #"'token_dtype' must be "uint16" or "uint32""#),
        ] {
            writeBytes(Array(text.utf8), to: namesPath)
            #expect(throws: TrainingError.invalidData(path: namesPath, reason: reason)) { _ = try DomainLabels.read(forDataAt: path) }
        }
        writeBytes(Array(#"{"version": 1.0, "domains": ["a", "b"]}"#.utf8), to: namesPath)
        #expect(try DomainLabels.read(forDataAt: path)?.names == ["a", "b"])
    }
}
