import Foundation

/// The compact text form of a router configuration, for `--router` and for logs.
///
///     TEXT     = PRESET | PRESET ":" SETTINGS | SETTINGS
///     SETTINGS = KEY "=" VALUE { "," KEY "=" VALUE }
///
/// A preset sets several fields; settings then change single fields, starting from the preset
/// (or from the defaults when there is none).
///
/// | preset          | meaning                                                                    |
/// |-----------------|----------------------------------------------------------------------------|
/// | `softmax-topk`  | the defaults: softmax → top-k → renormalise (aliases `topk`, `minicpm`, `mixtral`) |
/// | `switch`        | softmax → top-k, weights not renormalised (Switch, ST-MoE)                  |
/// | `topk-softmax`  | top-k on the logits → softmax over the chosen (equals `softmax-topk`)       |
/// | `sigmoid`       | sigmoid → top-k → renormalise (DeepSeek-V3 style)                           |
/// | `noisy-topk`    | Shazeer's noisy top-k with a learned noise weight                           |
/// | `expert-choice` | each expert takes its top-C tokens, cf = 1 (non-causal)                     |
/// | `aux-free`      | auxiliary-loss-free balancing bias, load-balancing coefficient 0            |
/// | `remoe`         | ReMoE: ReLU gates, adaptive load-balanced L1 penalty (mode and scoring relu) |
///
/// A key is a `moekit_router` JSON field name (see `CodingKeys`), with `-` and `_` interchangeable in
/// keys and values, or its short form; the description (below) prints the short forms, as routing
/// logs have always recorded them.
///
/// | key (JSON field)                 | short form      | values                                        |
/// |----------------------------------|-----------------|-----------------------------------------------|
/// | `scoring`                        | `scoring`       | `softmax`, `sigmoid`, `relu` (with mode relu) |
/// | `weighting`                      | `weighting`     | `renormalized`, `unnormalized`, `softmax-over-selected` |
/// | `top_k`                          | `k`             | integer ≥ 1, or `none` (the model's)          |
/// | `weight_scale`                   | `scale`         | number > 0                                    |
/// | `input_jitter`                   | `jitter`        | ε in [0, 1), or `none`                        |
/// | `logit_noise`                    | `noise`         | σ ≥ 0, or `none`                              |
/// | `noisy_top_k`                    | `noisy-topk`    | `true`, `false`                               |
/// | `noise_seed`                     | `seed`          | unsigned integer                              |
/// | `mode`                           | `mode`          | `token-choice`, `expert-choice`, `relu`       |
/// | `capacity_factor`                | `cf`            | number > 0, or `none` (dropless)              |
/// | `drop_policy`                    | `drop`          | `probability`, `position`                     |
/// | `aux_loss_free_balancing`        | `aux-free`      | `true`, `false`                               |
/// | `bias_update_rate`               | `bias-rate`     | u > 0                                         |
/// | `l1_initial_coefficient`         | `l1-init`       | λ₀ > 0 (ReLU routing)                         |
/// | `l1_coefficient_multiplier`      | `l1-multiplier` | α > 1 (ReLU routing)                          |
/// | `load_balancing_loss`            | `loss`          | `switch`, `hf` (`hugging-face`), `per-sequence` |
/// | `load_balancing_coefficient`     | `lb`            | number ≥ 0                                    |
/// | `z_loss_coefficient`             | `z`             | number ≥ 0                                    |
/// | `importance_coefficient`         | `importance`    | number ≥ 0                                    |
/// | `load_coefficient`               | `load`          | number ≥ 0 (non-zero needs `noisy_top_k=true`) |
///
/// Examples: `switch`, `sigmoid:weight_scale=2.5`, `expert-choice:capacity_factor=1.25`,
/// `softmax-topk:capacity_factor=1.0,drop_policy=position`, `input_jitter=0.01,z_loss_coefficient=0.001`;
/// with short forms `sigmoid:scale=2.5`, `switch:cf=1.25`.
extension RouterConfiguration: CustomStringConvertible {
    /// The presets, in the order `description` prefers them.
    static let presets: [(name: String, configuration: RouterConfiguration)] = {
        var switchRouting = RouterConfiguration()
        switchRouting.weighting = .unnormalized
        var topKSoftmax = RouterConfiguration()
        topKSoftmax.weighting = .softmaxOverSelected
        var sigmoid = RouterConfiguration()
        sigmoid.scoring = .sigmoid
        var noisy = RouterConfiguration()
        noisy.noisyTopK = true
        var expertChoice = RouterConfiguration()
        expertChoice.mode = .expertChoice
        expertChoice.capacityFactor = 1
        var auxFree = RouterConfiguration()
        auxFree.auxiliaryLossFreeBalancing = true
        auxFree.loadBalancingCoefficient = 0
        var reMoE = RouterConfiguration()
        reMoE.mode = .relu
        reMoE.scoring = .relu
        return [("softmax-topk", RouterConfiguration()), ("switch", switchRouting), ("topk-softmax", topKSoftmax),
                ("sigmoid", sigmoid), ("noisy-topk", noisy), ("expert-choice", expertChoice), ("aux-free", auxFree), ("remoe", reMoE)]
    }()

    static let presetAliases = ["topk": "softmax-topk", "minicpm": "softmax-topk", "mixtral": "softmax-topk", "default": "softmax-topk"]

    /// One text key: its short name, its JSON field, how to read it and how to write it.
    struct TextKey: Sendable {
        let name: String
        let field: CodingKeys
        let expected: String
        let parse: @Sendable (String, inout RouterConfiguration) -> Bool
        let format: @Sendable (RouterConfiguration) -> String
    }

    private static func number<T: LosslessStringConvertible>(_ text: String, _: T.Type) -> T? { T(text) }

    private static func enumValue<E: RawRepresentable & CaseIterable>(_ text: String, _: E.Type) -> E? where E.RawValue == String {
        E(rawValue: text.replacingOccurrences(of: "-", with: "_"))
    }

    private static func dashed(_ raw: String) -> String { raw.replacingOccurrences(of: "_", with: "-") }

    private static func optionalText<T>(_ value: T?) -> String { value.map { "\($0)" } ?? "none" }

    /// Parses an optional number: `none` (or JSON's `null`) clears it.
    private static func optional<T: LosslessStringConvertible>(_ text: String, _ type: T.Type, into value: inout T?) -> Bool {
        if text == "none" || text == "null" { value = nil; return true }
        guard let number = T(text) else { return false }
        value = number
        return true
    }

    private static func boolean(_ text: String) -> Bool? {
        switch text { case "true", "yes", "on", "1": return true
        case "false", "no", "off", "0": return false
        default: return nil }
    }

    static let textKeys: [TextKey] = [
        TextKey(name: "scoring", field: .scoring, expected: "softmax, sigmoid or relu",
                parse: { text, c in guard let v = enumValue(text, Scoring.self) else { return false }; c.scoring = v; return true },
                format: { dashed($0.scoring.rawValue) }),
        TextKey(name: "weighting", field: .weighting, expected: "renormalized, unnormalized or softmax-over-selected",
                parse: { text, c in guard let v = enumValue(text, Weighting.self) else { return false }; c.weighting = v; return true },
                format: { dashed($0.weighting.rawValue) }),
        TextKey(name: "k", field: .topK, expected: "an integer ≥ 1 or none",
                parse: { text, c in optional(text, Int.self, into: &c.topK) }, format: { optionalText($0.topK) }),
        TextKey(name: "scale", field: .weightScale, expected: "a number",
                parse: { text, c in guard let v = Float(text) else { return false }; c.weightScale = v; return true },
                format: { "\($0.weightScale)" }),
        TextKey(name: "jitter", field: .inputJitter, expected: "a number in [0, 1) or none",
                parse: { text, c in optional(text, Float.self, into: &c.inputJitter) }, format: { optionalText($0.inputJitter) }),
        TextKey(name: "noise", field: .logitNoise, expected: "a standard deviation or none",
                parse: { text, c in optional(text, Float.self, into: &c.logitNoise) }, format: { optionalText($0.logitNoise) }),
        TextKey(name: "noisy-topk", field: .noisyTopK, expected: "true or false",
                parse: { text, c in guard let v = boolean(text) else { return false }; c.noisyTopK = v; return true },
                format: { "\($0.noisyTopK)" }),
        TextKey(name: "seed", field: .noiseSeed, expected: "an unsigned integer",
                parse: { text, c in guard let v = UInt64(text) else { return false }; c.noiseSeed = v; return true },
                format: { "\($0.noiseSeed)" }),
        TextKey(name: "mode", field: .mode, expected: "token-choice, expert-choice or relu",
                parse: { text, c in guard let v = enumValue(text, Mode.self) else { return false }; c.mode = v; return true },
                format: { dashed($0.mode.rawValue) }),
        TextKey(name: "cf", field: .capacityFactor, expected: "a number > 0 or none (dropless)",
                parse: { text, c in optional(text, Double.self, into: &c.capacityFactor) }, format: { optionalText($0.capacityFactor) }),
        TextKey(name: "drop", field: .dropPolicy, expected: "probability or position",
                parse: { text, c in guard let v = enumValue(text, DropPolicy.self) else { return false }; c.dropPolicy = v; return true },
                format: { $0.dropPolicy.rawValue }),
        TextKey(name: "aux-free", field: .auxiliaryLossFreeBalancing, expected: "true or false",
                parse: { text, c in guard let v = boolean(text) else { return false }; c.auxiliaryLossFreeBalancing = v; return true },
                format: { "\($0.auxiliaryLossFreeBalancing)" }),
        TextKey(name: "bias-rate", field: .biasUpdateRate, expected: "a number > 0",
                parse: { text, c in guard let v = Float(text) else { return false }; c.biasUpdateRate = v; return true },
                format: { "\($0.biasUpdateRate)" }),
        TextKey(name: "l1-init", field: .l1InitialCoefficient, expected: "a number > 0",
                parse: { text, c in guard let v = Float(text) else { return false }; c.l1InitialCoefficient = v; return true },
                format: { "\($0.l1InitialCoefficient)" }),
        TextKey(name: "l1-multiplier", field: .l1CoefficientMultiplier, expected: "a number > 1",
                parse: { text, c in guard let v = Float(text) else { return false }; c.l1CoefficientMultiplier = v; return true },
                format: { "\($0.l1CoefficientMultiplier)" }),
        TextKey(name: "loss", field: .loadBalancingLoss, expected: "switch, hf or per-sequence",
                parse: { text, c in
                    let v = text == "hf" ? .huggingFace : enumValue(text, LoadBalancingLoss.self)
                    guard let v else { return false }; c.loadBalancingLoss = v; return true
                },
                format: { $0.loadBalancingLoss == .huggingFace ? "hf" : dashed($0.loadBalancingLoss.rawValue) }),
        TextKey(name: "lb", field: .loadBalancingCoefficient, expected: "a number ≥ 0",
                parse: { text, c in guard let v = Float(text) else { return false }; c.loadBalancingCoefficient = v; return true },
                format: { "\($0.loadBalancingCoefficient)" }),
        TextKey(name: "z", field: .zLossCoefficient, expected: "a number ≥ 0",
                parse: { text, c in guard let v = Float(text) else { return false }; c.zLossCoefficient = v; return true },
                format: { "\($0.zLossCoefficient)" }),
        TextKey(name: "importance", field: .importanceCoefficient, expected: "a number ≥ 0",
                parse: { text, c in guard let v = Float(text) else { return false }; c.importanceCoefficient = v; return true },
                format: { "\($0.importanceCoefficient)" }),
        TextKey(name: "load", field: .loadCoefficient, expected: "a number ≥ 0",
                parse: { text, c in guard let v = Float(text) else { return false }; c.loadCoefficient = v; return true },
                format: { "\($0.loadCoefficient)" }),
    ]

    /// Parses the text form (see the table above) and validates the result. Errors quote the text
    /// and say which preset, key or value is wrong and what was expected.
    public init(text: String) throws(RouterConfigurationError) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty else { throw .invalidText(text: text, reason: "empty; expected a preset (\(Self.presetNames)) or key=value settings") }
        var presetName: String?
        var settings: Substring = ""
        if let colon = trimmed.firstIndex(of: ":") {
            presetName = String(trimmed[..<colon])
            settings = trimmed[trimmed.index(after: colon)...]
        } else if trimmed.contains("=") {
            settings = Substring(trimmed)
        } else {
            presetName = trimmed
        }
        var configuration = RouterConfiguration()
        if let presetName {
            let name = Self.presetAliases[presetName] ?? presetName
            guard let preset = Self.presets.first(where: { $0.name == name }) else {
                throw .invalidText(text: text, reason: "unknown preset '\(presetName)'; presets are \(Self.presetNames)")
            }
            configuration = preset.configuration
        }
        var seen: Set<String> = []
        for item in settings.split(separator: ",", omittingEmptySubsequences: false) {
            let setting = item.trimmingCharacters(in: .whitespaces)
            if setting.isEmpty && settings.isEmpty { break }
            guard let equals = setting.firstIndex(of: "=") else {
                throw .invalidText(text: text, reason: "setting '\(setting)' is not key=value")
            }
            let rawKey = setting[..<equals].trimmingCharacters(in: .whitespaces)
            let value = setting[setting.index(after: equals)...].trimmingCharacters(in: .whitespaces).lowercased()
            let normalizedKey = rawKey.replacingOccurrences(of: "_", with: "-")
            guard let key = Self.textKeys.first(where: { $0.name == normalizedKey || Self.dashed($0.field.rawValue) == normalizedKey }) else {
                throw .invalidText(text: text, reason: "unknown key '\(rawKey)'; keys are the moekit_router fields \(Self.textKeys.map(\.field.rawValue).joined(separator: ", ")) or their short forms \(Self.textKeys.map(\.name).joined(separator: ", "))")
            }
            guard seen.insert(key.name).inserted else { throw .invalidText(text: text, reason: "key '\(rawKey)' is given twice") }
            guard key.parse(value, &configuration) else {
                throw .invalidText(text: text, reason: "'\(rawKey)=\(value)': expected \(key.expected)")
            }
        }
        try configuration.validate(source: "--router '\(text)'")
        self = configuration
    }

    static var presetNames: String { presets.map(\.name).joined(separator: ", ") }

    /// The settings in which `self` differs from `base`, as `key=value` in table order.
    func settings(differingFrom base: RouterConfiguration) -> [String] {
        Self.textKeys.compactMap { key in
            let mine = key.format(self)
            return mine == key.format(base) ? nil : "\(key.name)=\(mine)"
        }
    }

    /// The shortest text form: the preset needing the fewest extra settings, then those settings,
    /// e.g. `softmax-topk`, `switch:cf=1.25`, `expert-choice:cf=2.0`. `RouterConfiguration(text:)`
    /// reads it back to an equal configuration. Used as the `router` attribute of routing logs.
    public var description: String {
        var best = (name: "softmax-topk", settings: settings(differingFrom: RouterConfiguration()))
        for preset in Self.presets.dropFirst() {
            let candidate = settings(differingFrom: preset.configuration)
            if candidate.count < best.settings.count { best = (preset.name, candidate) }
        }
        return best.settings.isEmpty ? best.name : best.name + ":" + best.settings.joined(separator: ",")
    }
}
