/// Model shapes MoEKit can create from scratch with `moekit init`.
public enum MiniCPMPreset: String, CaseIterable, Sendable {
    /// A few MB: hidden 128, 4 layers, 4 heads (2 kv heads), vocab 1024, MiniCPM's scalings.
    case tiny
    /// MiniCPM-1B (often called 1.2B): hidden 1536, intermediate 3840, 52 layers, 24 heads, 8 kv heads.
    case minicpm1_2b = "minicpm-1.2b"
    /// MiniCPM-2B (2.4B): hidden 2304, intermediate 5760, 40 layers, 36 heads, vocab 122753.
    case minicpm2_4b = "minicpm-2.4b"

    public var config: MiniCPMConfig {
        var config: MiniCPMConfig
        switch self {
        case .tiny:
            config = MiniCPMConfig(hiddenSize: 128, intermediateSize: 320, numHiddenLayers: 4, numAttentionHeads: 4,
                                   numKeyValueHeads: 2, vocabSize: 1024)
            config.maxPositionEmbeddings = 512
            config.dimModelBase = 32
        case .minicpm1_2b:
            config = MiniCPMConfig(hiddenSize: 1536, intermediateSize: 3840, numHiddenLayers: 52, numAttentionHeads: 24,
                                   numKeyValueHeads: 8, vocabSize: 73440)
            config.maxPositionEmbeddings = 4096
            config.dimModelBase = 256
        case .minicpm2_4b:
            config = MiniCPMConfig(hiddenSize: 2304, intermediateSize: 5760, numHiddenLayers: 40, numAttentionHeads: 36,
                                   numKeyValueHeads: 36, vocabSize: 122753)
            config.maxPositionEmbeddings = 4096
            config.dimModelBase = 256
        }
        config.scaleEmb = 12
        config.scaleDepth = 1.4
        config.rmsNormEps = 1e-5
        config.ropeTheta = 10000
        config.tieWordEmbeddings = true
        config.otherKeys = [
            "architectures": .array([.string("MiniCPMForCausalLM")]),
            "model_type": .string("minicpm"),
            "hidden_act": .string("silu"),
            "initializer_range": .number(0.1),
            "bos_token_id": .integer(1),
            "eos_token_id": .integer(2),
            "use_cache": .bool(true),
            "auto_map": .object([
                "AutoConfig": .string("configuration_minicpm.MiniCPMConfig"),
                "AutoModel": .string("modeling_minicpm.MiniCPMModel"),
                "AutoModelForCausalLM": .string("modeling_minicpm.MiniCPMForCausalLM"),
            ]),
        ]
        return config
    }
}
