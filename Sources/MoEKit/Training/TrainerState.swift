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

    func serialized() -> Data {
        func number(_ value: Float) -> JSONValue { value.isFinite ? .number(Double(value)) : .null }
        var object: [String: JSONValue] = [
            "format": .string(Self.format),
            "version": .integer(Self.version),
            "completed_steps": .integer(Int64(completedSteps)),
            "options": .object(options.mapValues(JSONValue.string)),
            "data": .string(data),
            "initial_model": .string(initialModel),
            "tokens_seen": .integer(Int64(tokensSeen)),
            "last_loss": number(lastLoss),
            "last_lm_loss": number(lastLanguageModelLoss),
            "last_val_loss": number(lastValidationLoss),
        ]
        if let l1Coefficient { object["relu_l1_coefficient"] = .number(Double(l1Coefficient)) }
        return JSONValue.object(object).serialized()
    }

    /// Reads and checks a state file; every problem names the file and the field.
    init(path: String) throws(TrainingError) {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .invalidState(path: path, reason: "no such file (nothing to resume)")
        }
        guard let json = JSONValue.parse(data), case .object(let object) = json else {
            throw .invalidState(path: path, reason: "not a JSON object")
        }
        func field(_ name: String) throws(TrainingError) -> JSONValue {
            guard let value = object[name] else { throw .invalidState(path: path, reason: "missing field '\(name)'") }
            return value
        }
        func integer(_ name: String) throws(TrainingError) -> Int {
            guard case .integer(let value) = try field(name), value >= 0 else { throw .invalidState(path: path, reason: "field '\(name)' is not an integer ≥ 0") }
            return Int(value)
        }
        func string(_ name: String) throws(TrainingError) -> String {
            guard case .string(let value) = try field(name) else { throw .invalidState(path: path, reason: "field '\(name)' is not a string") }
            return value
        }
        func float(_ name: String) -> Float {
            switch object[name] {
            case .number(let value)?: return Float(value)
            case .integer(let value)?: return Float(value)
            default: return .nan
            }
        }
        guard try string("format") == Self.format else { throw .invalidState(path: path, reason: "field 'format' is not \"\(Self.format)\"") }
        let version = try integer("version")
        guard version <= Self.version else { throw .invalidState(path: path, reason: "version \(version) is newer than this MoEKit reads (\(Self.version))") }
        guard case .object(let optionObject) = try field("options") else { throw .invalidState(path: path, reason: "field 'options' is not an object") }
        var options: [String: String] = [:]
        for (key, value) in optionObject {
            guard case .string(let text) = value else { throw .invalidState(path: path, reason: "option '\(key)' is not a string") }
            options[key] = text
        }
        var l1Coefficient: Float?
        if object["relu_l1_coefficient"] != nil {
            let value = float("relu_l1_coefficient")
            guard value.isFinite && value > 0 else { throw .invalidState(path: path, reason: "field 'relu_l1_coefficient' is not a positive number") }
            l1Coefficient = value
        }
        self.init(completedSteps: try integer("completed_steps"), options: options, data: try string("data"),
                  initialModel: try string("initial_model"), tokensSeen: try integer("tokens_seen"),
                  lastLoss: float("last_loss"), lastLanguageModelLoss: float("last_lm_loss"), lastValidationLoss: float("last_val_loss"),
                  l1Coefficient: l1Coefficient)
    }
}
