import Foundation
import Testing
@testable import MoEKit

/// The router configuration: defaults, `moekit_router` JSON, the `--router` text form and their errors.
@Suite struct RouterConfigurationTests {
    /// A configuration with every field away from its default.
    static var everythingChanged: RouterConfiguration {
        var c = RouterConfiguration()
        c.scoring = .sigmoid
        c.weighting = .unnormalized
        c.topK = 3
        c.weightScale = 2.5
        c.inputJitter = 0.01
        c.logitNoise = 0.5
        c.noisyTopK = true
        c.noiseSeed = 42
        c.capacityFactor = 1.25
        c.dropPolicy = .position
        c.auxiliaryLossFreeBalancing = true
        c.biasUpdateRate = 0.002
        c.loadBalancingLoss = .perSequence
        c.loadBalancingCoefficient = 0.001
        c.zLossCoefficient = 0.001
        c.importanceCoefficient = 0.1
        c.loadCoefficient = 0.02
        return c
    }

    /// Defaults are MiniCPM-MoE's routing: softmax → top-k → renormalise, no noise, dropless,
    /// load-balancing coefficient 0.01, z-loss 0; the text form of the defaults is `softmax-topk`.
    @Test func defaultsAreMiniCPMMoERouting() throws {
        let c = RouterConfiguration()
        #expect(c.scoring == .softmax && c.weighting == .renormalized && c.mode == .tokenChoice)
        #expect(c.topK == nil && c.weightScale == 1)
        #expect(c.inputJitter == nil && c.logitNoise == nil && !c.noisyTopK)
        #expect(c.capacityFactor == nil && !c.auxiliaryLossFreeBalancing && c.biasUpdateRate == 1e-3)
        #expect(c.loadBalancingLoss == .switch && c.loadBalancingCoefficient == 0.01 && c.zLossCoefficient == 0)
        #expect(c.description == "softmax-topk")
        #expect(try RouterConfiguration(json: .object([:])) == c)
    }

    /// Codable round trip: every field survives JSON encoding and decoding under snake_case keys.
    @Test func codableRoundTripKeepsEveryField() throws {
        let original = Self.everythingChanged
        let data = try JSONEncoder().encode(original)
        let object = try #require(JSONValue.parse(data)?.objectValue)
        #expect(Set(object.keys) == Set(RouterConfiguration.CodingKeys.allCases.map(\.rawValue)))
        #expect(object["capacity_factor"] == .number(1.25) && object["drop_policy"] == .string("position"))
        #expect(try JSONDecoder().decode(RouterConfiguration.self, from: data) == original)
        #expect(try RouterConfiguration(json: original.jsonValue) == original)
    }

    /// The configuration is stored in config.json under `moekit_router` and read back from it; a
    /// config without the key gives the defaults.
    @Test func configJSONKeyRoundTrip() throws {
        var model = MiniCPMConfig(hiddenSize: 8, intermediateSize: 16, numHiddenLayers: 2, numAttentionHeads: 2,
                                  numKeyValueHeads: 2, vocabSize: 32)
        model.numExperts = 4
        model.topK = 2
        #expect(RouterConfiguration(modelConfig: model) == RouterConfiguration())
        var expertChoice = RouterConfiguration()
        expertChoice.mode = .expertChoice
        expertChoice.capacityFactor = 2
        expertChoice.store(in: &model)
        let directory = TemporaryDirectory()
        let path = directory.file("config.json")
        try model.serialized().write(to: URL(fileURLWithPath: path))
        let reread = try MiniCPMConfig(path: path)
        #expect(RouterConfiguration(modelConfig: reread) == expertChoice)
    }

    /// Bad `moekit_router` entries are typed errors naming the file and the field.
    @Test func badJSONNamesFileAndField() {
        let cases: [(JSONValue, String)] = [
            (.object(["capacity_factor": .string("lots")]), "capacity_factor"),
            (.object(["scoring": .string("tanh")]), "scoring"),
            (.object(["top_k": .integer(0)]), "top_k"),
            (.object(["top_k": .number(2.5)]), "moekit_router.top_k"),
            (.object(["top_k": .number(2)]), "moekit_router.top_k"),
            (.object(["noisy_top_k": .integer(1)]), "moekit_router.noisy_top_k"),
            (.object(["capacity": .integer(2)]), "moekit_router.capacity"),
            (.object(["mode": .string("expert_choice")]), "capacity_factor"),
            (.array([]), "moekit_router"),
        ]
        for (json, field) in cases {
            do {
                _ = try RouterConfiguration(json: json, source: "/m/config.json")
                Issue.record("\(json) was accepted")
            } catch {
                let message = error.errorDescription ?? ""
                #expect(message.hasPrefix("/m/config.json: router setting '"), "\(message)")
                #expect(message.contains(field), "\(message) does not name \(field)")
            }
        }
    }

    /// `moekit_router` decodes straight from the parsed JSON with its strictness: an integer
    /// setting must be a JSON integer (`2.0` is refused above), a number setting takes an integer.
    @Test func jsonDecodesDirectlyWithIntegersAsNumbers() throws {
        let decoded = try RouterConfiguration(json: .object(["top_k": .integer(3), "weight_scale": .integer(2), "capacity_factor": .number(1.25),
                                                             "noise_seed": .integer(7), "scoring": .string("sigmoid")]))
        var expected = RouterConfiguration()
        expected.topK = 3
        expected.weightScale = 2
        expected.capacityFactor = 1.25
        expected.noiseSeed = 7
        expected.scoring = .sigmoid
        #expect(decoded == expected)
    }

    /// Text-form round trip: `RouterConfiguration(text: c.description)` gives back `c`, for every
    /// preset and for configurations away from every preset.
    @Test func textFormRoundTrip() throws {
        var configurations = RouterConfiguration.presets.map(\.configuration)
        configurations.append(Self.everythingChanged)
        var c = RouterConfiguration()
        c.capacityFactor = 1.0
        c.dropPolicy = .position
        configurations.append(c)
        c.loadBalancingLoss = .huggingFace
        c.topK = 1
        configurations.append(c)
        for configuration in configurations {
            let text = configuration.description
            #expect(!text.contains(" ") && !text.contains("\n"))
            #expect(try RouterConfiguration(text: text) == configuration, "\(text)")
        }
        #expect(RouterConfiguration.presets.map(\.configuration.description) == RouterConfiguration.presets.map(\.name))
    }

    /// The documented examples parse to the fields they name.
    @Test func textFormExamplesParse() throws {
        let switchRouting = try RouterConfiguration(text: "switch")
        #expect(switchRouting.weighting == .unnormalized && switchRouting.scoring == .softmax)
        let expertChoice = try RouterConfiguration(text: "expert-choice:cf=1.25")
        #expect(expertChoice.mode == .expertChoice && expertChoice.capacityFactor == 1.25)
        let dropping = try RouterConfiguration(text: "topk:cf=1.0,drop=probability")
        #expect(dropping.capacityFactor == 1.0 && dropping.dropPolicy == .probability)
        let settingsOnly = try RouterConfiguration(text: "jitter=0.01, z=1e-3, loss=hf, noise_seed=7")
        #expect(settingsOnly.inputJitter == 0.01 && settingsOnly.zLossCoefficient == 1e-3)
        #expect(settingsOnly.loadBalancingLoss == .huggingFace && settingsOnly.noiseSeed == 7)
        #expect(try RouterConfiguration(text: "minicpm") == RouterConfiguration())
        #expect(try RouterConfiguration(text: "sigmoid:weighting=unnormalized").scoring == .sigmoid)
        #expect(try RouterConfiguration(text: "expert-choice:cf=none,mode=token-choice").capacityFactor == nil)
    }

    /// Every `moekit_router` JSON field name is a `--router` key, with its JSON values (`null`
    /// included), and gives the configuration that JSON object decodes to.
    @Test func textKeysAreTheJSONFieldNames() throws {
        let json: [String: JSONValue] = [
            "scoring": .string("sigmoid"), "weighting": .string("unnormalized"), "top_k": .integer(3), "weight_scale": .number(2.5),
            "input_jitter": .number(0.01), "logit_noise": .null, "noisy_top_k": .bool(false), "noise_seed": .integer(7),
            "mode": .string("token_choice"), "capacity_factor": .number(1.25), "drop_policy": .string("position"),
            "aux_loss_free_balancing": .bool(true), "bias_update_rate": .number(0.002), "l1_initial_coefficient": .number(2e-8),
            "l1_coefficient_multiplier": .number(1.5), "load_balancing_loss": .string("hugging_face"),
            "load_balancing_coefficient": .number(0.02), "z_loss_coefficient": .number(0.001), "importance_coefficient": .number(0.1),
            "load_coefficient": .integer(0),
        ]
        #expect(Set(json.keys) == Set(RouterConfiguration.CodingKeys.allCases.map(\.rawValue)))
        let text = json.keys.sorted().map { key -> String in
            switch json[key]! {
            case .string(let value): return "\(key)=\(value)"
            case .integer(let value): return "\(key)=\(value)"
            case .number(let value): return "\(key)=\(value)"
            case .bool(let value): return "\(key)=\(value)"
            default: return "\(key)=null"
            }
        }.joined(separator: ",")
        let fromText = try RouterConfiguration(text: text)
        #expect(fromText == (try RouterConfiguration(json: .object(json))))
        #expect(fromText.topK == 3 && fromText.capacityFactor == 1.25 && fromText.logitNoise == nil && fromText.dropPolicy == .position)
        // The description keeps the short forms routing logs have always recorded.
        #expect(try RouterConfiguration(text: "switch:capacity_factor=1.25").description == "switch:cf=1.25")
    }

    /// Bad text is a typed error that quotes the text and says what is wrong and what was expected.
    @Test func badTextGivesClearErrors() {
        let cases: [(String, String)] = [
            ("", "empty"),
            ("fancy", "unknown preset 'fancy'"),
            ("switch:cf", "'cf' is not key=value"),
            ("switch:capacity=2", "unknown key 'capacity'; keys are the moekit_router fields scoring, weighting, top_k,"),
            ("cf=lots", "expected a number > 0 or none"),
            ("drop=random", "expected probability or position"),
            ("cf=1,cf=2", "given twice"),
            ("cf=-1", "capacity_factor' must be a positive number"),
            ("sigmoid:weighting=softmax-over-selected", "needs softmax scoring"),
            ("mode=expert-choice", "is required by expert-choice routing"),
            ("jitter=1.5", "input_jitter' must be in [0, 1)"),
        ]
        for (text, fragment) in cases {
            do {
                _ = try RouterConfiguration(text: text)
                Issue.record("'\(text)' was accepted")
            } catch {
                let message = error.errorDescription ?? ""
                #expect(message.hasPrefix("--router '\(text)'"), "\(message)")
                #expect(message.contains(fragment), "'\(message)' lacks '\(fragment)'")
            }
        }
    }
}
