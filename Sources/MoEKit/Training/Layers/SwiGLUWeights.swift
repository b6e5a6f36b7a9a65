/// The three projections of a SwiGLU MLP or of one MoE expert, in PyTorch's `[out, in]` layout:
/// `gate` (`gate_proj` / `w1`) and `up` (`up_proj` / `w3`) `[intermediate, hidden]`, `down`
/// (`down_proj` / `w2`) `[hidden, intermediate]`. The same struct holds their gradients.
public struct SwiGLUWeights: Sendable, Equatable {
    public var gate: Tensor
    public var up: Tensor
    public var down: Tensor

    public init(gate: Tensor, up: Tensor, down: Tensor) {
        precondition(gate.shape == up.shape && gate.rank == 2 && down.shape == [gate.shape[1], gate.shape[0]],
                     "SwiGLU shapes \(gate.shape), \(up.shape), \(down.shape)")
        self.gate = gate
        self.up = up
        self.down = down
    }

    /// Zeros of the same shapes (a gradient accumulator).
    public func zeros() -> SwiGLUWeights {
        SwiGLUWeights(gate: Tensor(shape: gate.shape), up: Tensor(shape: up.shape), down: Tensor(shape: down.shape))
    }
}
