import Foundation

/// Upper bounds on the sizes a `config.json` may declare, checked when the config is read and
/// before anything is sized by them. A hostile or damaged config (`num_hidden_layers:
/// 2147483646`) is refused in microseconds instead of exhausting memory. The bounds are far above
/// every published model (MiniCPM-2.4B: hidden 2304, 40 layers, vocabulary 122,753; the largest
/// open MoE models have ≤ 384 experts and ≤ 128 layers), and with them every parameter and byte
/// count MoEKit derives from a config fits in `Int` without overflow.
public enum ConfigLimits {
    public static let hiddenSize = 1 << 16
    public static let intermediateSize = 1 << 20
    public static let numHiddenLayers = 1 << 10
    public static let vocabSize = 1 << 22
    public static let maxPositionEmbeddings = 1 << 20
    public static let numExperts = 1 << 14
    /// Experts over all layers (layers × experts): bounds the number of tensors a config implies.
    static let totalExperts = 1 << 17
}

extension MiniCPMConfig {
    /// Checks every size field against `ConfigLimits`; errors name the file and the field.
    func checkLimits(path: String) throws(CheckpointError) {
        func check(_ field: String, _ value: Int, _ limit: Int) throws(CheckpointError) {
            guard value <= limit else {
                throw .invalidField(path: path, field: field, reason: "(\(value)) is above MoEKit's limit of \(limit)")
            }
        }
        try check("hidden_size", hiddenSize, ConfigLimits.hiddenSize)
        try check("intermediate_size", intermediateSize, ConfigLimits.intermediateSize)
        try check("num_hidden_layers", numHiddenLayers, ConfigLimits.numHiddenLayers)
        try check("num_attention_heads", numAttentionHeads, hiddenSize)
        try check("num_key_value_heads", numKeyValueHeads, numAttentionHeads)
        try check("vocab_size", vocabSize, ConfigLimits.vocabSize)
        try check("max_position_embeddings", maxPositionEmbeddings, ConfigLimits.maxPositionEmbeddings)
        if let numExperts {
            try check("num_experts", numExperts, ConfigLimits.numExperts)
            guard numExperts * numHiddenLayers <= ConfigLimits.totalExperts else {
                throw .invalidField(path: path, field: "num_experts",
                                    reason: "(\(numExperts)) × num_hidden_layers (\(numHiddenLayers)) is above MoEKit's limit of \(ConfigLimits.totalExperts) experts in all")
            }
        }
    }
}
