import Foundation

/// A MiniCPM or MiniCPM-MoE `config.json`.
///
/// The typed fields are those MoEKit computes with; every other key of the file is kept in
/// `otherKeys` and written back unchanged. Defaults are those of the published
/// `configuration_minicpm.py` (`rope_theta` 10000, `tie_word_embeddings` true, …).
public struct MiniCPMConfig: Sendable, Equatable {
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var numKeyValueHeads: Int
    public var vocabSize: Int
    public var rmsNormEps: Double = 1e-6
    public var ropeTheta: Double = 10000
    public var maxPositionEmbeddings: Int = 2048
    /// Token embeddings are multiplied by this (`scale_emb`).
    public var scaleEmb: Double = 1
    /// Logits are computed from `h / (hidden_size / dim_model_base)` (μP width scaling).
    public var dimModelBase: Double = 1
    /// Each residual branch is scaled by `scale_depth / sqrt(num_hidden_layers)`.
    public var scaleDepth: Double = 1
    public var tieWordEmbeddings: Bool = true
    public var torchDtype: String?
    /// MiniCPM-MoE: the number of experts per MoE layer (`num_experts`); `nil` for a dense model.
    public var numExperts: Int?
    /// MiniCPM-MoE: experts chosen per token (`num_experts_per_tok`).
    public var topK: Int?
    /// Shared experts per MoE layer (`n_shared_experts`, DeepSeekMoE): always active, never routed; 0 when absent.
    public var numSharedExperts: Int = 0
    /// Every key of the file that is not a typed field above, kept as read.
    public var otherKeys: [String: JSONValue] = [:]

    public init(hiddenSize: Int, intermediateSize: Int, numHiddenLayers: Int, numAttentionHeads: Int,
                numKeyValueHeads: Int, vocabSize: Int) {
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.numHiddenLayers = numHiddenLayers
        self.numAttentionHeads = numAttentionHeads
        self.numKeyValueHeads = numKeyValueHeads
        self.vocabSize = vocabSize
    }

    public var headDim: Int { hiddenSize / numAttentionHeads }
    public var isMoE: Bool { (numExperts ?? 0) > 0 }
    /// The factor on each residual branch, `scale_depth / sqrt(num_hidden_layers)`.
    public var residualScale: Float { Float(scaleDepth / Double(numHiddenLayers).squareRoot()) }
    /// The divisor of the final hidden state before the LM head, `hidden_size / dim_model_base`.
    public var logitDivisor: Float { Float(Double(hiddenSize) / dimModelBase) }

    static let typedKeys: Set<String> = [
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "vocab_size", "rms_norm_eps", "rope_theta", "max_position_embeddings", "scale_emb", "dim_model_base",
        "scale_depth", "tie_word_embeddings", "torch_dtype", "num_experts", "num_experts_per_tok",
    ]

    /// Reads and validates `config.json`; errors name the file and the field.
    public init(path: String) throws(CheckpointError) {
        let data: Data
        do { data = try InputFile.read(path, limit: InputFile.jsonLimit) } catch { throw error == .missing(path: path) ? .missingFile(path: path) : .inputFile(error) }
        guard let json = JSONValue.parse(data) else { throw .invalidJSON(path: path, reason: "not valid JSON") }
        try self.init(json: json, path: path)
    }

    public init(json: JSONValue, path: String = "config.json") throws(CheckpointError) {
        guard case .object(let object) = json else { throw .invalidJSON(path: path, reason: "not a JSON object") }
        func integer(_ key: String, default fallback: Int? = nil, minimum: Int = 1) throws(CheckpointError) -> Int {
            guard let value = object[key], value != .null else {
                if let fallback { return fallback }
                throw .missingField(path: path, field: key)
            }
            guard let number = value.integerValue, number >= Int64(minimum), number < Int64(Int32.max) else {
                throw .invalidField(path: path, field: key, reason: "must be an integer ≥ \(minimum)")
            }
            return Int(number)
        }
        func real(_ key: String, default fallback: Double) throws(CheckpointError) -> Double {
            guard let value = object[key], value != .null else { return fallback }
            guard let number = value.doubleValue, number.isFinite else { throw .invalidField(path: path, field: key, reason: "must be a finite number") }
            return number
        }
        hiddenSize = try integer("hidden_size")
        intermediateSize = try integer("intermediate_size")
        numHiddenLayers = try integer("num_hidden_layers")
        numAttentionHeads = try integer("num_attention_heads")
        numKeyValueHeads = try integer("num_key_value_heads", default: numAttentionHeads)
        vocabSize = try integer("vocab_size")
        rmsNormEps = try real("rms_norm_eps", default: 1e-6)
        ropeTheta = try real("rope_theta", default: 10000)
        maxPositionEmbeddings = try integer("max_position_embeddings", default: 2048)
        scaleEmb = try real("scale_emb", default: 1)
        dimModelBase = try real("dim_model_base", default: 1)
        scaleDepth = try real("scale_depth", default: 1)
        if let value = object["tie_word_embeddings"], value != .null {
            guard let flag = value.boolValue else { throw .invalidField(path: path, field: "tie_word_embeddings", reason: "must be true or false") }
            tieWordEmbeddings = flag
        }
        if let value = object["torch_dtype"], value != .null {
            guard let name = value.stringValue else { throw .invalidField(path: path, field: "torch_dtype", reason: "must be a string") }
            torchDtype = name
        }
        if object["num_experts"] != nil && object["num_experts"] != .null {
            numExperts = try integer("num_experts", minimum: 0)
            if numExperts == 0 { numExperts = nil }
        }
        if numExperts != nil {
            topK = try integer("num_experts_per_tok", default: 2)
        }
        otherKeys = object.filter { !Self.typedKeys.contains($0.key) }
        // MiniCPM-MoE with shared experts (MoEKit's convention, DeepSeek's key). Other architectures
        // keep the key as read (GLM-4.5-MoE's own shared expert is handled by its import).
        if numExperts != nil && ModelArchitecture(modelType: object["model_type"]?.stringValue) == .minicpm {
            numSharedExperts = try integer("n_shared_experts", default: 0, minimum: 0)
            otherKeys["n_shared_experts"] = nil
        }
        try adoptArchitectureFields(object, path: path)  // Llama, Mixtral: ModelArchitecture.swift
        try validate(path: path)
    }

    /// Checks the relations between fields that the model relies on.
    public func validate(path: String = "config.json") throws(CheckpointError) {
        guard hiddenSize % numAttentionHeads == 0 else {
            throw .invalidField(path: path, field: "num_attention_heads", reason: "(\(numAttentionHeads)) must divide hidden_size (\(hiddenSize))")
        }
        guard numAttentionHeads % numKeyValueHeads == 0 else {
            throw .invalidField(path: path, field: "num_key_value_heads", reason: "(\(numKeyValueHeads)) must divide num_attention_heads (\(numAttentionHeads))")
        }
        guard headDim % 2 == 0 else {
            throw .invalidField(path: path, field: "hidden_size", reason: "gives an odd head size \(headDim); rotary embeddings need an even one")
        }
        guard rmsNormEps > 0 else { throw .invalidField(path: path, field: "rms_norm_eps", reason: "must be positive") }
        guard ropeTheta > 0 else { throw .invalidField(path: path, field: "rope_theta", reason: "must be positive") }
        guard dimModelBase > 0 else { throw .invalidField(path: path, field: "dim_model_base", reason: "must be positive") }
        try checkLimits(path: path)
        if let experts = numExperts {
            let topK = self.topK ?? 0
            guard topK >= 1 && topK <= experts else {
                throw .invalidField(path: path, field: "num_experts_per_tok", reason: "(\(topK)) must be between 1 and num_experts (\(experts))")
            }
            guard numSharedExperts >= 0 && numSharedExperts <= ConfigLimits.numExperts else {
                throw .invalidField(path: path, field: "n_shared_experts", reason: "(\(numSharedExperts)) must be between 0 and \(ConfigLimits.numExperts)")
            }
        }
    }

    /// The config as a JSON object: the kept keys plus the typed fields, `rope_theta` and
    /// `tie_word_embeddings` always written explicitly.
    public func jsonObject() -> [String: JSONValue] {
        var object = otherKeys
        object["hidden_size"] = .integer(Int64(hiddenSize))
        object["intermediate_size"] = .integer(Int64(intermediateSize))
        object["num_hidden_layers"] = .integer(Int64(numHiddenLayers))
        object["num_attention_heads"] = .integer(Int64(numAttentionHeads))
        object["num_key_value_heads"] = .integer(Int64(numKeyValueHeads))
        object["vocab_size"] = .integer(Int64(vocabSize))
        object["rms_norm_eps"] = .number(rmsNormEps)
        object["rope_theta"] = .number(ropeTheta)
        object["max_position_embeddings"] = .integer(Int64(maxPositionEmbeddings))
        object["scale_emb"] = Self.number(scaleEmb)
        object["dim_model_base"] = Self.number(dimModelBase)
        object["scale_depth"] = Self.number(scaleDepth)
        object["tie_word_embeddings"] = .bool(tieWordEmbeddings)
        if let torchDtype { object["torch_dtype"] = .string(torchDtype) }
        if let numExperts {
            object["num_experts"] = .integer(Int64(numExperts))
            object["num_experts_per_tok"] = .integer(Int64(topK ?? 2))
            if numSharedExperts > 0 { object["n_shared_experts"] = .integer(Int64(numSharedExperts)) }
        }
        return architectureJSONObject(object)
    }

    private static func number(_ value: Double) -> JSONValue {
        value.rounded() == value && abs(value) < 1e15 ? .integer(Int64(value)) : .number(value)
    }

    /// Pretty-printed `config.json` text.
    public func serialized() -> Data { JSONValue.object(jsonObject()).serialized() }

    /// Writes `config.json` atomically.
    public func write(to path: String) throws(CheckpointError) {
        do { try AtomicFileWriter.write(serialized(), to: path) } catch { throw .file(error) }
    }
}
