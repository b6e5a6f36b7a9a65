/// Runs a model directory on token sequences: the seam `--verify` uses to compare the dense and
/// the upcycled model, so the upcycler does not depend on how the forward pass is built.
public protocol LogitsProvider {
    /// Logits `[total tokens, vocab]` (f32) of the model in `modelDirectory` for `sequences`.
    func logits(modelDirectory: String, sequences: [[Int]]) throws -> Tensor
}

/// The outcome of `--verify N`.
public struct UpcycleVerification: Sendable, Equatable {
    public var tokens: Int
    /// max|upcycled − dense| / max|dense| over all logits (`Tensor.maxRelativeDifference`).
    public var maxRelativeDifference: Float
    /// The bound the method must meet (`copy`: 1e-5); `nil` when the difference is only reported.
    public var tolerance: Float?
    var passed: Bool

    /// The fixed tokens `--verify N` runs: one sequence, token `i` = `(1 + 7919·i) mod vocab`,
    /// so every run and every machine checks the same input.
    public static func tokens(count: Int, vocabularySize: Int) -> [Int] {
        (0 ..< count).map { (1 + 7919 * $0) % max(1, vocabularySize) }
    }
}

/// The `LogitsProvider` `moekit upcycle --verify` uses: MoEKit's own forward pass
/// (`MiniCPMModel`, the code behind `moekit forward`), loading each directory in f32.
public struct MiniCPMForwardLogits: LogitsProvider {
    public init() {}

    public func logits(modelDirectory: String, sequences: [[Int]]) throws -> Tensor {
        try MiniCPMModel(directory: modelDirectory).logits(for: sequences)
    }
}
