/// MiniCPM's SwiGLU MLP, `down(silu(gate(x)) · up(x))`, with gate and up fused into one GEMM.
public struct FeedForward: Sendable {
    /// `[2 · intermediate, hidden]`: the gate projection's rows, then the up projection's.
    public let gateUpWeight: Tensor
    /// `[hidden, intermediate]`.
    public let downWeight: Tensor
    public var intermediateSize: Int { downWeight.columns }
    public var hiddenSize: Int { downWeight.rows }

    /// From PyTorch-layout weights: gate and up `[intermediate, hidden]`, down `[hidden, intermediate]`.
    public init(gate: Tensor, up: Tensor, down: Tensor) {
        precondition(gate.shape == up.shape && down.shape == [gate.shape[1], gate.shape[0]], "SwiGLU shapes \(gate.shape), \(up.shape), \(down.shape)")
        gateUpWeight = Tensor(shape: [2 * gate.shape[0], gate.shape[1]], values: gate.values + up.values)
        downWeight = down
    }

    /// `[tokens, hidden]` → `[tokens, hidden]`.
    public func forward(_ x: Tensor) -> Tensor {
        var output = Tensor(uninitializedShape: [x.rows, hiddenSize])
        x.values.withUnsafeBufferPointer { input in
            output.values.withUnsafeMutableBufferPointer { out in
                apply(rows: x.rows, input: input.baseAddress!, output: out.baseAddress!)
            }
        }
        return output
    }

    /// `output[rows, hidden] = down(silu(gate(x)) · up(x))` for `input[rows, hidden]`, on raw buffers
    /// (the MoE layer runs each expert on its gathered rows through this).
    public func apply(rows: Int, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>) {
        guard rows > 0 else { return }
        let hidden = hiddenSize, intermediate = intermediateSize
        var fused = [Float].uninitialized(count: rows * 2 * intermediate)
        var activated = [Float].uninitialized(count: rows * intermediate)
        gateUpWeight.values.withUnsafeBufferPointer { w13 in
            downWeight.values.withUnsafeBufferPointer { w2 in
                fused.withUnsafeMutableBufferPointer { f in
                    activated.withUnsafeMutableBufferPointer { a in
                        MatrixMultiply.gemm(m: rows, n: 2 * intermediate, k: hidden, a: input, lda: hidden,
                                            b: w13.baseAddress!, ldb: hidden, transposeB: true, c: f.baseAddress!, ldc: 2 * intermediate)
                        Kernels.swiGLU(fused: f.baseAddress!, rows: rows, width: intermediate, out: a.baseAddress!)
                        MatrixMultiply.gemm(m: rows, n: hidden, k: intermediate, a: a.baseAddress!, lda: intermediate,
                                            b: w2.baseAddress!, ldb: intermediate, transposeB: true, c: output, ldc: hidden)
                    }
                }
            }
        }
    }

    /// The same function by plain loops, for tests.
    public func referenceForward(_ x: Tensor) -> Tensor {
        let intermediate = intermediateSize
        var output = Tensor(shape: [x.rows, hiddenSize])
        for t in 0 ..< x.rows {
            var activated = [Double](repeating: 0, count: intermediate)
            for i in 0 ..< intermediate {
                var gate = 0.0, up = 0.0
                for j in 0 ..< x.columns {
                    gate += Double(gateUpWeight[i, j]) * Double(x[t, j])
                    up += Double(gateUpWeight[intermediate + i, j]) * Double(x[t, j])
                }
                activated[i] = gate / (1 + _exp(-gate)) * up
            }
            for o in 0 ..< hiddenSize {
                var sum = 0.0
                for i in 0 ..< intermediate { sum += Double(downWeight[o, i]) * activated[i] }
                output[t, o] = Float(sum)
            }
        }
        return output
    }
}

import Foundation
@inline(__always) private func _exp(_ x: Double) -> Double { Foundation.exp(x) }
