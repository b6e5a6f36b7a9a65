import Foundation

/// `trainer_state.json` beside a training run's weights: where the run stands, so `--resume`
/// continues it exactly (the batches are a pure function of seed and step, the optimiser moments
/// are in `optimizer.safetensors`, router noise is reseeded per step).
struct TrainerState: Sendable, Equatable {
    static let fileName = "trainer_state.json"
    static let format = "moekit-trainer"
    static let version: Int64 = 1

    /// Optimiser steps completed.
    var completedSteps: Int
    /// The options that must not change on resume, by command-line name.
    var options: [String: String]
    /// The data file the run trains on.
    var data: String
    /// The model directory the run started from.
    var initialModel: String
    /// Tokens trained on so far.
    var tokensSeen: Int
    /// The last step's total and language-model loss, and the last validation loss (NaN: none yet).
    var lastLoss: Float
    var lastLanguageModelLoss: Float
    var lastValidationLoss: Float
    /// ReMoE's adaptive L1 coefficient λ after the last completed step (ReLU routing only; absent
    /// from other runs' files), restored on resume so the controller continues where it stood.
    var l1Coefficient: Float?

    init(completedSteps: Int, options: [String: String], data: String, initialModel: String, tokensSeen: Int,
                lastLoss: Float, lastLanguageModelLoss: Float, lastValidationLoss: Float, l1Coefficient: Float? = nil) {
        self.completedSteps = completedSteps
        self.options = options
        self.data = data
        self.initialModel = initialModel
        self.tokensSeen = tokensSeen
        self.lastLoss = lastLoss
        self.lastLanguageModelLoss = lastLanguageModelLoss
        self.lastValidationLoss = lastValidationLoss
        self.l1Coefficient = l1Coefficient
    }

    /// The pretty-printed file (`JSONValueEncoder`, then `JSONValue.serialized()`).
    func serialized() -> Data {
        do { return try JSONValueEncoder.encode(self).serialized() } catch {
            preconditionFailure("a trainer state always encodes: \(error)")  // its floats are written as JSONValues
        }
    }

    /// Reads and checks a state file; every problem names the file and the field.
    init(path: String) throws(TrainingError) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .invalidState(path: path, reason: "no such file (nothing to resume)")
        }
        guard let json = JSONValue.parse(data), case .object = json else {
            throw .invalidState(path: path, reason: "not a JSON object")
        }
        do {
            self = try JSONValueDecoder.decode(TrainerState.self, from: json)
        } catch DecodingError.keyNotFound(let key, _) {
            throw .invalidState(path: path, reason: "missing field '\(key.stringValue)'")
        } catch DecodingError.dataCorrupted(let context) {
            throw .invalidState(path: path, reason: context.debugDescription)
        } catch {
            throw .invalidState(path: path, reason: "\(error)")
        }
    }
}

extension TrainerState: Codable {
    enum CodingKeys: String, CodingKey {
        case format, version
        case completedSteps = "completed_steps"
        case options, data
        case initialModel = "initial_model"
        case tokensSeen = "tokens_seen"
        case lastLoss = "last_loss"
        case lastLanguageModelLoss = "last_lm_loss"
        case lastValidationLoss = "last_val_loss"
        /// Written by ReLU-routing runs only; older files and other runs have none.
        case l1Coefficient = "relu_l1_coefficient"
    }

    /// Decodes and checks the fields; a bad one is a `DecodingError.dataCorrupted` whose
    /// description is the whole reason, a missing one `keyNotFound`. A loss that is not a number
    /// (`null`, written for NaN) reads as NaN. Keys a later MoEKit adds are ignored; a resumed run
    /// compares `options` with `TrainingOptions.resumeDefaults` for the options older files lack.
    init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        func bad(_ reason: String) -> DecodingError { .dataCorrupted(.init(codingPath: [], debugDescription: reason)) }
        func require(_ key: CodingKeys) throws {
            guard container.contains(key) else { throw DecodingError.keyNotFound(key, .init(codingPath: [], debugDescription: "missing")) }
        }
        func integer(_ key: CodingKeys) throws -> Int {
            try require(key)
            guard let value = try? container.decode(Int.self, forKey: key), value >= 0 else { throw bad("field '\(key.rawValue)' is not an integer ≥ 0") }
            return value
        }
        func string(_ key: CodingKeys) throws -> String {
            try require(key)
            guard let value = try? container.decode(String.self, forKey: key) else { throw bad("field '\(key.rawValue)' is not a string") }
            return value
        }
        func float(_ key: CodingKeys) -> Float { (try? container.decode(Float.self, forKey: key)) ?? .nan }
        guard try string(.format) == Self.format else { throw bad("field 'format' is not \"\(Self.format)\"") }
        let version = try integer(.version)
        guard version <= Self.version else { throw bad("version \(version) is newer than this MoEKit reads (\(Self.version))") }
        try require(.options)
        guard let optionValues = try? container.nestedContainer(keyedBy: JSONKey.self, forKey: .options) else { throw bad("field 'options' is not an object") }
        var options: [String: String] = [:]
        for key in optionValues.allKeys {
            guard let text = try? optionValues.decode(String.self, forKey: key) else { throw bad("option '\(key.stringValue)' is not a string") }
            options[key.stringValue] = text
        }
        var l1Coefficient: Float?
        if container.contains(.l1Coefficient) {
            let value = float(.l1Coefficient)
            guard value.isFinite && value > 0 else { throw bad("field 'relu_l1_coefficient' is not a positive number") }
            l1Coefficient = value
        }
        self.init(completedSteps: try integer(.completedSteps), options: options, data: try string(.data),
                  initialModel: try string(.initialModel), tokensSeen: try integer(.tokensSeen),
                  lastLoss: float(.lastLoss), lastLanguageModelLoss: float(.lastLanguageModelLoss), lastValidationLoss: float(.lastValidationLoss),
                  l1Coefficient: l1Coefficient)
    }

    /// Losses are written as the f32 value widened to f64 (`2.299999952316284` for 2.3f), NaN as
    /// `null`, as the files of earlier MoEKit versions have them.
    func encode(to encoder: Encoder) throws {
        func number(_ value: Float) -> JSONValue { value.isFinite ? .number(Double(value)) : .null }
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(Self.format, forKey: .format)
        try container.encode(Self.version, forKey: .version)
        try container.encode(completedSteps, forKey: .completedSteps)
        try container.encode(options, forKey: .options)
        try container.encode(data, forKey: .data)
        try container.encode(initialModel, forKey: .initialModel)
        try container.encode(tokensSeen, forKey: .tokensSeen)
        try container.encode(number(lastLoss), forKey: .lastLoss)
        try container.encode(number(lastLanguageModelLoss), forKey: .lastLanguageModelLoss)
        try container.encode(number(lastValidationLoss), forKey: .lastValidationLoss)
        if let l1Coefficient { try container.encode(JSONValue.number(Double(l1Coefficient)), forKey: .l1Coefficient) }
    }
}
