import Foundation
import Testing
@testable import MoEKit

/// `config.json` for MiniCPM and MiniCPM-MoE: fields parsed, published defaults, unknown keys kept
/// on rewrite, and every error naming the file and the field.
@Suite struct MiniCPMConfigTests {
    static let required = #""hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 300"#

    /// Writes `text` as `config.json` in `directory` and returns its path.
    static func configFile(_ text: String, in directory: TemporaryDirectory) -> String {
        let path = directory.file("config.json")
        writeBytes(Array(text.utf8), to: path)
        return path
    }

    /// Every field of the fixture's config is read with its value.
    @Test func fixtureFieldsAreParsed() throws {
        let config = try MiniCPMConfig(path: Fixtures.path("minicpm-tiny-torch/config.json"))
        #expect(config.hiddenSize == 64)
        #expect(config.intermediateSize == 160)
        #expect(config.numHiddenLayers == 2)
        #expect(config.numAttentionHeads == 4)
        #expect(config.numKeyValueHeads == 2)
        #expect(config.vocabSize == 300)
        #expect(config.rmsNormEps == 1e-5)
        #expect(config.ropeTheta == 10000)
        #expect(config.maxPositionEmbeddings == 256)
        #expect(config.scaleEmb == 12)
        #expect(config.dimModelBase == 32)
        #expect(config.scaleDepth == 1.4)
        #expect(config.tieWordEmbeddings)
        #expect(config.torchDtype == "bfloat16")
        #expect(!config.isMoE && config.numExperts == nil && config.topK == nil)
        #expect(config.headDim == 16)
        #expect(config.otherKeys["bos_token_id"] == .integer(1))
        #expect(config.otherKeys["eos_token_id"] == .integer(2))
        #expect(config.otherKeys["architectures"] == .array([.string("MiniCPMForCausalLM")]))
        #expect(config.logitDivisor == 2)
        #expect(abs(config.residualScale - Float(1.4 / 2.0.squareRoot())) < 1e-7)
    }

    /// Absent optional fields take the published defaults: rope_theta 10000, tied embeddings,
    /// num_key_value_heads = num_attention_heads.
    @Test func defaultsFollowThePublishedConfiguration() throws {
        let directory = TemporaryDirectory()
        let config = try MiniCPMConfig(path: Self.configFile("{\(Self.required)}", in: directory))
        #expect(config.ropeTheta == 10000)
        #expect(config.tieWordEmbeddings)
        #expect(config.numKeyValueHeads == 4)
        #expect(config.rmsNormEps == 1e-6)
        #expect(config.maxPositionEmbeddings == 2048)
        #expect(config.scaleEmb == 1 && config.dimModelBase == 1 && config.scaleDepth == 1)
        #expect(config.torchDtype == nil)
        #expect(config.otherKeys.isEmpty)
        // null counts as absent.
        let nulls = try MiniCPMConfig(path: Self.configFile(#"{\#(Self.required), "rope_theta": null, "num_key_value_heads": null}"#, in: directory))
        #expect(nulls.ropeTheta == 10000 && nulls.numKeyValueHeads == 4)
    }

    /// Keys MoEKit does not know survive a rewrite unchanged, and typed fields re-read equal.
    @Test func unknownKeysArePreservedOnRewrite() throws {
        let directory = TemporaryDirectory()
        let text = #"{\#(Self.required), "architectures": ["MiniCPMForCausalLM"], "auto_map": {"AutoConfig": "configuration_minicpm.MiniCPMConfig"}, "rope_scaling": null, "custom": {"nested": [1, 2.5, "x", true]}, "tie_word_embeddings": false, "rope_theta": 50000.0}"#
        let original = try MiniCPMConfig(path: Self.configFile(text, in: directory))
        #expect(!original.tieWordEmbeddings && original.ropeTheta == 50000)
        let rewritten = directory.file("rewritten.json")
        try original.write(to: rewritten)
        let reread = try MiniCPMConfig(path: rewritten)
        #expect(reread == original)
        let data = try #require(FileManager.default.contents(atPath: rewritten))
        let json = try #require(JSONValue.parse(data)?.objectValue)
        #expect(json["custom"] == .object(["nested": .array([.integer(1), .number(2.5), .string("x"), .bool(true)])]))
        #expect(json["auto_map"] == .object(["AutoConfig": .string("configuration_minicpm.MiniCPMConfig")]))
        #expect(json["rope_scaling"] == .null)
        #expect(json["architectures"] == .array([.string("MiniCPMForCausalLM")]))
        #expect(json["tie_word_embeddings"] == .bool(false))
        #expect(json["num_key_value_heads"] == .integer(4))  // written explicitly
        #expect(directoryEntries(directory.path) == ["config.json", "rewritten.json"])
    }

    /// MiniCPM-MoE's `num_experts` and `num_experts_per_tok` are read and written; top-k defaults to 2;
    /// `num_experts` 0 is a dense model.
    @Test func moeFieldsAreReadAndWritten() throws {
        let directory = TemporaryDirectory()
        let moe = try MiniCPMConfig(path: Self.configFile(#"{\#(Self.required), "num_experts": 8, "num_experts_per_tok": 2}"#, in: directory))
        #expect(moe.isMoE && moe.numExperts == 8 && moe.topK == 2)
        #expect(moe.jsonObject()["num_experts"] == .integer(8))
        #expect(moe.jsonObject()["num_experts_per_tok"] == .integer(2))
        #expect(try MiniCPMConfig(json: .object(moe.jsonObject())) == moe)
        let defaultTopK = try MiniCPMConfig(path: Self.configFile(#"{\#(Self.required), "num_experts": 4}"#, in: directory))
        #expect(defaultTopK.topK == 2)
        let dense = try MiniCPMConfig(path: Self.configFile(#"{\#(Self.required), "num_experts": 0}"#, in: directory))
        #expect(!dense.isMoE && dense.jsonObject()["num_experts"] == nil)
    }

    struct ErrorCase: Sendable, CustomTestStringConvertible {
        let label: String
        let text: String
        let expected: @Sendable (String) -> CheckpointError
        let field: String
        var testDescription: String { label }
    }

    static let errorCases: [ErrorCase] = [
        ErrorCase(label: "missing hidden_size", text: #"{"intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 300}"#,
                  expected: { .missingField(path: $0, field: "hidden_size") }, field: "hidden_size"),
        ErrorCase(label: "missing vocab_size", text: #"{"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4}"#,
                  expected: { .missingField(path: $0, field: "vocab_size") }, field: "vocab_size"),
        ErrorCase(label: "hidden_size a string", text: #"{\#(required), "hidden_size": "64"}"#.replacingOccurrences(of: #""hidden_size": 64, "#, with: ""),
                  expected: { .invalidField(path: $0, field: "hidden_size", reason: "must be an integer ≥ 1") }, field: "hidden_size"),
        ErrorCase(label: "hidden_size fractional", text: #"{\#(required)}"#.replacingOccurrences(of: #""hidden_size": 64"#, with: #""hidden_size": 64.5"#),
                  expected: { .invalidField(path: $0, field: "hidden_size", reason: "must be an integer ≥ 1") }, field: "hidden_size"),
        ErrorCase(label: "zero layers", text: #"{\#(required)}"#.replacingOccurrences(of: #""num_hidden_layers": 2"#, with: #""num_hidden_layers": 0"#),
                  expected: { .invalidField(path: $0, field: "num_hidden_layers", reason: "must be an integer ≥ 1") }, field: "num_hidden_layers"),
        ErrorCase(label: "rope_theta a string", text: #"{\#(required), "rope_theta": "10000"}"#,
                  expected: { .invalidField(path: $0, field: "rope_theta", reason: "must be a finite number") }, field: "rope_theta"),
        ErrorCase(label: "tie_word_embeddings a string", text: #"{\#(required), "tie_word_embeddings": "yes"}"#,
                  expected: { .invalidField(path: $0, field: "tie_word_embeddings", reason: "must be true or false") }, field: "tie_word_embeddings"),
        ErrorCase(label: "torch_dtype a number", text: #"{\#(required), "torch_dtype": 16}"#,
                  expected: { .invalidField(path: $0, field: "torch_dtype", reason: "must be a string") }, field: "torch_dtype"),
        ErrorCase(label: "heads not dividing hidden", text: #"{\#(required)}"#.replacingOccurrences(of: #""num_attention_heads": 4"#, with: #""num_attention_heads": 5"#),
                  expected: { .invalidField(path: $0, field: "num_attention_heads", reason: "(5) must divide hidden_size (64)") }, field: "num_attention_heads"),
        ErrorCase(label: "kv heads not dividing heads", text: #"{\#(required), "num_key_value_heads": 3}"#,
                  expected: { .invalidField(path: $0, field: "num_key_value_heads", reason: "(3) must divide num_attention_heads (4)") }, field: "num_key_value_heads"),
        ErrorCase(label: "odd head size", text: #"{\#(required)}"#.replacingOccurrences(of: #""hidden_size": 64"#, with: #""hidden_size": 60"#),
                  expected: { .invalidField(path: $0, field: "hidden_size", reason: "gives an odd head size 15; rotary embeddings need an even one") }, field: "hidden_size"),
        ErrorCase(label: "top-k above experts", text: #"{\#(required), "num_experts": 4, "num_experts_per_tok": 5}"#,
                  expected: { .invalidField(path: $0, field: "num_experts_per_tok", reason: "(5) must be between 1 and num_experts (4)") }, field: "num_experts_per_tok"),
        ErrorCase(label: "top-k zero", text: #"{\#(required), "num_experts": 4, "num_experts_per_tok": 0}"#,
                  expected: { .invalidField(path: $0, field: "num_experts_per_tok", reason: "must be an integer ≥ 1") }, field: "num_experts_per_tok"),
        ErrorCase(label: "negative experts", text: #"{\#(required), "num_experts": -1}"#,
                  expected: { .invalidField(path: $0, field: "num_experts", reason: "must be an integer ≥ 0") }, field: "num_experts"),
        ErrorCase(label: "invalid JSON", text: #"{"hidden_size": 64,"#,
                  expected: { .invalidJSON(path: $0, reason: "not valid JSON") }, field: ""),
        ErrorCase(label: "JSON array", text: "[1, 2]",
                  expected: { .invalidJSON(path: $0, reason: "not a JSON object") }, field: ""),
    ]

    /// Each bad config is the error naming the file and the field.
    @Test(arguments: errorCases)
    func badConfigIsAnErrorNamingFileAndField(_ errorCase: ErrorCase) throws {
        let directory = TemporaryDirectory()
        let path = Self.configFile(errorCase.text, in: directory)
        let error = #expect(throws: CheckpointError.self) { try MiniCPMConfig(path: path) }
        #expect(error == errorCase.expected(path))
        let message = error?.errorDescription ?? ""
        #expect(message.contains(path))
        if !errorCase.field.isEmpty { #expect(message.contains("'\(errorCase.field)'")) }
    }

    /// A missing file is `missingFile` naming it.
    @Test func missingConfigIsNamed() {
        let path = NSTemporaryDirectory() + "moekit-no-such-dir/config.json"
        #expect(throws: CheckpointError.missingFile(path: path)) { try MiniCPMConfig(path: path) }
    }
}
