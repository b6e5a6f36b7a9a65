import Foundation

/// A MiniCPM or MiniCPM-MoE `config.json`.
///
/// The typed fields are those MoEKit computes with, under Hugging Face's snake_case names
/// (`CodingKeys`); every other key of the file is kept in `otherKeys` and written back unchanged. Defaults are those of the published
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
    /// The routing the MoE layers run (`moekit_router`, MoEKit's own key; other tools ignore it):
    /// `nil` when absent or `null`, which means MiniCPM-MoE's routing (`RouterConfiguration()`).
    /// Read strictly and validated with the config (errors name the file and the router field),
    /// written in full.
    public var router: RouterConfiguration?
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

    /// Reads and validates `config.json`; errors name the file and the field.
    public init(path: String) throws(CheckpointError) {
        let data: Data
        do { data = try InputFile.read(path, limit: InputFile.jsonLimit) } catch { throw error == .missing(path: path) ? .missingFile(path: path) : .inputFile(error) }
        guard let json = JSONValue.parse(data) else { throw .invalidJSON(path: path, reason: "not valid JSON") }
        try self.init(json: json, path: path)
    }

    /// Decodes a parsed `config.json` (through `JSONValueDecoder`, so an integer field given
    /// `64.5` or `"64"` is refused), reads a Llama / Mixtral / Qwen2-MoE / GLM-4.5-MoE config's own
    /// names (`adoptArchitectureFields`) and validates; errors name `path` and the field.
    public init(json: JSONValue, path: String = "config.json") throws(CheckpointError) {
        guard case .object(let object) = json else { throw .invalidJSON(path: path, reason: "not a JSON object") }
        // The router first, through its own strict reader (unknown settings, types, validation),
        // so its errors name the router field as `--router` and the model's router report them.
        var router: RouterConfiguration?
        if let value = object[CodingKeys.router.rawValue], value != .null {
            do { router = try RouterConfiguration(json: value, source: path) } catch { throw .router(error) }
        }
        do {
            self = try JSONValueDecoder.decode(MiniCPMConfig.self, from: json)
            self.router = router
        } catch DecodingError.keyNotFound(let key, _) {
            throw .missingField(path: path, field: key.stringValue)
        } catch DecodingError.dataCorrupted(let context) {
            throw .invalidField(path: path, field: context.codingPath.map(\.stringValue).joined(separator: "."), reason: context.debugDescription)
        } catch {
            throw .invalidJSON(path: path, reason: "\(error)")
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

    /// The config as a JSON object, as `encode(to:)` writes it.
    public func jsonObject() -> [String: JSONValue] {
        do {
            guard case .object(let object) = try JSONValueEncoder.encode(self) else { preconditionFailure("a config encodes to an object") }
            return object
        } catch {
            preconditionFailure("a config always encodes: \(error)")  // it holds no UInt64 and writes its floats as JSONValues
        }
    }

    /// Pretty-printed `config.json` text.
    public func serialized() -> Data { JSONValue.object(jsonObject()).serialized() }

    /// Writes `config.json` atomically.
    public func write(to path: String) throws(CheckpointError) {
        do { try AtomicFileWriter.write(serialized(), to: path) } catch { throw .file(error) }
    }
}

// MARK: Codable

extension MiniCPMConfig: Codable {
    enum CodingKeys: String, CodingKey, CaseIterable {
        case hiddenSize = "hidden_size"
        case intermediateSize = "intermediate_size"
        case numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads"
        case numKeyValueHeads = "num_key_value_heads"
        case vocabSize = "vocab_size"
        case rmsNormEps = "rms_norm_eps"
        case ropeTheta = "rope_theta"
        case maxPositionEmbeddings = "max_position_embeddings"
        case scaleEmb = "scale_emb"
        case dimModelBase = "dim_model_base"
        case scaleDepth = "scale_depth"
        case tieWordEmbeddings = "tie_word_embeddings"
        case torchDtype = "torch_dtype"
        case numExperts = "num_experts"
        case topK = "num_experts_per_tok"
        /// Typed only for a MiniCPM-MoE (MoEKit's convention, DeepSeek's key); other architectures
        /// keep it in `otherKeys` as read (GLM-4.5-MoE's own shared expert is handled by its import).
        case numSharedExperts = "n_shared_experts"
        case router = "moekit_router"
    }

    /// Keys never kept in `otherKeys` (`n_shared_experts` is kept unless it was typed).
    static let typedKeys = Set(CodingKeys.allCases.filter { $0 != .numSharedExperts }.map(\.rawValue))

    /// Decodes the fields with the published defaults; `null` counts as absent. A bad value is a
    /// `DecodingError.dataCorrupted` whose coding path is the field and whose description is the
    /// reason, a missing required field `keyNotFound`. Does not translate other architectures'
    /// names or validate: `init(json:path:)` does both.
    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        func isPresent(_ key: CodingKeys) -> Bool { container.contains(key) && !((try? container.decodeNil(forKey: key)) ?? true) }
        func bad(_ key: CodingKeys, _ reason: String) -> DecodingError {
            .dataCorrupted(.init(codingPath: [key], debugDescription: reason))
        }
        /// An integer in [minimum, Int32.max); `fallback` when absent, else the field is required.
        func integer(_ key: CodingKeys, default fallback: Int? = nil, minimum: Int = 1) throws -> Int {
            guard isPresent(key) else {
                if let fallback { return fallback }
                throw DecodingError.keyNotFound(key, .init(codingPath: [], debugDescription: "missing '\(key.rawValue)'"))
            }
            guard let value = try? container.decode(Int.self, forKey: key), value >= minimum, value < Int(Int32.max) else {
                throw bad(key, "must be an integer ≥ \(minimum)")
            }
            return value
        }
        func real(_ key: CodingKeys, default fallback: Double) throws -> Double {
            guard isPresent(key) else { return fallback }
            guard let value = try? container.decode(Double.self, forKey: key), value.isFinite else { throw bad(key, "must be a finite number") }
            return value
        }
        hiddenSize = try integer(.hiddenSize)
        intermediateSize = try integer(.intermediateSize)
        numHiddenLayers = try integer(.numHiddenLayers)
        numAttentionHeads = try integer(.numAttentionHeads)
        numKeyValueHeads = try integer(.numKeyValueHeads, default: numAttentionHeads)
        vocabSize = try integer(.vocabSize)
        rmsNormEps = try real(.rmsNormEps, default: 1e-6)
        ropeTheta = try real(.ropeTheta, default: 10000)
        maxPositionEmbeddings = try integer(.maxPositionEmbeddings, default: 2048)
        scaleEmb = try real(.scaleEmb, default: 1)
        dimModelBase = try real(.dimModelBase, default: 1)
        scaleDepth = try real(.scaleDepth, default: 1)
        if isPresent(.tieWordEmbeddings) {
            guard let flag = try? container.decode(Bool.self, forKey: .tieWordEmbeddings) else { throw bad(.tieWordEmbeddings, "must be true or false") }
            tieWordEmbeddings = flag
        }
        if isPresent(.torchDtype) {
            guard let name = try? container.decode(String.self, forKey: .torchDtype) else { throw bad(.torchDtype, "must be a string") }
            torchDtype = name
        }
        if isPresent(.numExperts) {
            let experts = try integer(.numExperts, minimum: 0)
            numExperts = experts == 0 ? nil : experts
        }
        if numExperts != nil {
            topK = try integer(.topK, default: 2)
        }
        let all = try decoder.container(keyedBy: JSONKey.self)
        for key in all.allKeys where !Self.typedKeys.contains(key.stringValue) {
            otherKeys[key.stringValue] = try all.decodeNil(forKey: key) ? .null : all.decode(JSONValue.self, forKey: key)
        }
        router = try container.decodeIfPresent(RouterConfiguration.self, forKey: .router)
        if numExperts != nil && architecture == .minicpm {
            numSharedExperts = try integer(.numSharedExperts, default: 0, minimum: 0)
            otherKeys[CodingKeys.numSharedExperts.rawValue] = nil
        }
    }

    /// Writes the kept keys, then the typed fields over them: `rope_theta` and
    /// `tie_word_embeddings` always explicitly, `rms_norm_eps` and `rope_theta` as JSON floats
    /// (`10000.0`, as transformers writes them), MiniCPM's three scalars as integers when whole (as
    /// the published configs have `scale_emb: 12`), `n_shared_experts` only when > 0. Other
    /// architectures are written in their own names (`architectureKey(_:)`), their neutral scalars left out.
    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: JSONKey.self)
        for (key, value) in otherKeys { try container.encode(value, forKey: JSONKey(key)) }
        let architecture = self.architecture
        func encode<T: Encodable>(_ value: T, _ key: CodingKeys) throws { try container.encode(value, forKey: JSONKey(architectureKey(key))) }
        /// A whole value as an integer (below 10^15, where every integer is exact), else a float.
        func scalar(_ value: Double) -> JSONValue { value.rounded() == value && abs(value) < 1e15 ? .integer(Int64(value)) : .number(value) }
        try encode(hiddenSize, .hiddenSize)
        try encode(intermediateSize, .intermediateSize)
        try encode(numHiddenLayers, .numHiddenLayers)
        try encode(numAttentionHeads, .numAttentionHeads)
        try encode(numKeyValueHeads, .numKeyValueHeads)
        try encode(vocabSize, .vocabSize)
        try encode(JSONValue.number(rmsNormEps), .rmsNormEps)
        try encode(JSONValue.number(ropeTheta), .ropeTheta)
        try encode(maxPositionEmbeddings, .maxPositionEmbeddings)
        let neutral = architecture.hasMiniCPMScalars ? nil : (scaleEmb: 1.0, dimModelBase: Double(hiddenSize), scaleDepth: Double(numHiddenLayers).squareRoot())
        if scaleEmb != neutral?.scaleEmb { try encode(scalar(scaleEmb), .scaleEmb) }
        if dimModelBase != neutral?.dimModelBase { try encode(scalar(dimModelBase), .dimModelBase) }
        if scaleDepth != neutral?.scaleDepth { try encode(scalar(scaleDepth), .scaleDepth) }
        try encode(tieWordEmbeddings, .tieWordEmbeddings)
        if let torchDtype {
            try encode(torchDtype, .torchDtype)
            if neutral != nil && otherKeys["dtype"] != nil { try container.encode(torchDtype, forKey: JSONKey("dtype")) }  // transformers 5's key
        }
        if let numExperts {
            try encode(numExperts, .numExperts)
            try encode(topK ?? 2, .topK)
            if numSharedExperts > 0 { try encode(numSharedExperts, .numSharedExperts) }
        }
        if architecture == .qwen2MoE || architecture == .glm4MoE { try container.encode(intermediateSize, forKey: JSONKey("moe_intermediate_size")) }
        if let router { try container.encode(router.jsonValue, forKey: JSONKey(CodingKeys.router.rawValue)) }
    }
}
