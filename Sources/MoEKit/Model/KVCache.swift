/// Keys and values of one sequence's past tokens, per layer, for incremental decoding.
///
/// Keys are stored after RoPE, `[length, num_key_value_heads · head_dim]` per layer.
public final class KVCache {
    public let layers: Int
    var keys: [[Float]]
    var values: [[Float]]
    /// Tokens already in the cache (the position of the next token).
    private(set) var length = 0

    public init(config: MiniCPMConfig) {
        layers = config.numHiddenLayers
        keys = Array(repeating: [], count: layers)
        values = Array(repeating: [], count: layers)
    }

    /// Appends `count` new rows for `layer` (`[count, num_key_value_heads · head_dim]` each).
    func append(layer: Int, keys newKeys: UnsafeBufferPointer<Float>, values newValues: UnsafeBufferPointer<Float>) {
        keys[layer].append(contentsOf: newKeys)
        values[layer].append(contentsOf: newValues)
    }

    /// Marks `count` tokens as added (after every layer appended them).
    func advance(by count: Int) { length += count }

    /// Forgets everything.
    func reset() {
        length = 0
        for layer in 0 ..< layers { keys[layer].removeAll(keepingCapacity: true); values[layer].removeAll(keepingCapacity: true) }
    }
}
