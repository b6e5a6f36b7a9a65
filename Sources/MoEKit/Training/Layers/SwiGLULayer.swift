// PINNED INTERFACE — implemented on branch `moe` (helper "moe"). Bodies here are placeholders
// so other branches compile against the signatures; they must be replaced before any issue closes.

/// Forward/backward of MiniCPM's SwiGLU MLP, `y = down(silu(gate(x)) ⊙ up(x))`, for training.
public enum SwiGLULayer {
    /// What `forward` keeps for `backward`.
    public struct Cache: Sendable {
        public init() {}
    }

    /// x `[rows, hidden]` → y `[rows, hidden]`.
    public static func forward(_ x: Tensor, weights: SwiGLUWeights) -> (output: Tensor, cache: Cache) {
        fatalError("SwiGLULayer.forward: implemented on branch moe")
    }

    /// dy `[rows, hidden]` → dx `[rows, hidden]` and the weights' gradients (fresh tensors).
    public static func backward(_ outputGradient: Tensor, cache: Cache, weights: SwiGLUWeights) -> (input: Tensor, weights: SwiGLUWeights) {
        fatalError("SwiGLULayer.backward: implemented on branch moe")
    }
}
