import Foundation

extension CausalAttentionLayer {
    /// The forward pass token by token with plain loops in Double (projections by the reference
    /// product, RoPE from its definition), for tests.
    static func referenceForward(_ x: Tensor, weights: Weights, geometry: Geometry, sequenceLengths: [Int]) -> Tensor {
        let core = referenceCore(x, weights: weights, geometry: geometry, sequenceLengths: sequenceLengths)
        return MatrixMultiply.referenceProduct(core.context, weights.output, transposeB: true)
    }

    /// The backward pass from the formulas, element by element in Double, for tests.
    static func referenceBackward(_ outputGradient: Tensor, input x: Tensor, weights: Weights, geometry: Geometry,
                                         sequenceLengths: [Int]) -> (input: Tensor, weights: Weights) {
        let d = geometry.headDim, heads = geometry.heads, groupSize = heads / geometry.keyValueHeads
        let core = referenceCore(x, weights: weights, geometry: geometry, sequenceLengths: sequenceLengths)
        let contextGradient = MatrixMultiply.referenceProduct(outputGradient, weights.output)
        let outputWeightGradient = MatrixMultiply.referenceProduct(outputGradient, core.context, transposeA: true)
        var dq = Tensor(shape: core.queries.shape), dk = Tensor(shape: core.keys.shape), dv = Tensor(shape: core.values.shape)
        let scale = 1 / Double(d).squareRoot()
        var start = 0
        for length in sequenceLengths {
            for head in 0 ..< heads {
                let g = head / groupSize
                for i in 0 ..< length {
                    let p = core.probabilities(start, head, i)
                    // dP_ij = dc_i · v_j
                    let dP = (0 ... i).map { j in (0 ..< d).reduce(0.0) { $0 + Double(contextGradient[start + i, head * d + $1]) * Double(core.values[start + j, g * d + $1]) } }
                    let dot = (0 ... i).reduce(0.0) { $0 + p[$1] * dP[$1] }
                    for j in 0 ... i {
                        let dS = p[j] * (dP[j] - dot) * scale
                        for e in 0 ..< d {
                            dv[start + j, g * d + e] += Float(p[j] * Double(contextGradient[start + i, head * d + e]))
                            dq[start + i, head * d + e] += Float(dS * Double(core.keys[start + j, g * d + e]))
                            dk[start + j, g * d + e] += Float(dS * Double(core.queries[start + i, head * d + e]))
                        }
                    }
                }
            }
            start += length
        }
        let positions = positions(sequenceLengths: sequenceLengths)
        dq = RotaryLayer.referenceBackward(dq, heads: heads, headDim: d, positions: positions, theta: geometry.rotary.theta)
        dk = RotaryLayer.referenceBackward(dk, heads: geometry.keyValueHeads, headDim: d, positions: positions, theta: geometry.rotary.theta)
        var dx = MatrixMultiply.referenceProduct(dq, weights.query)
        Kernels.add(MatrixMultiply.referenceProduct(dk, weights.key), to: &dx)
        Kernels.add(MatrixMultiply.referenceProduct(dv, weights.value), to: &dx)
        let gradients = Weights(query: MatrixMultiply.referenceProduct(dq, x, transposeA: true),
                                key: MatrixMultiply.referenceProduct(dk, x, transposeA: true),
                                value: MatrixMultiply.referenceProduct(dv, x, transposeA: true),
                                output: outputWeightGradient)
        return (dx, gradients)
    }

    fileprivate struct ReferenceCore {
        var queries: Tensor, keys: Tensor, values: Tensor, context: Tensor
        var probabilities: (_ start: Int, _ head: Int, _ row: Int) -> [Double]
    }

    fileprivate static func referenceCore(_ x: Tensor, weights: Weights, geometry: Geometry, sequenceLengths: [Int]) -> ReferenceCore {
        let d = geometry.headDim, heads = geometry.heads, groupSize = heads / geometry.keyValueHeads
        let positions = positions(sequenceLengths: sequenceLengths)
        let theta = geometry.rotary.theta
        let queries = ReferenceKernels.applyRotary(MatrixMultiply.referenceProduct(x, weights.query, transposeB: true),
                                                   heads: heads, headDim: d, positions: positions, theta: theta)
        let keys = ReferenceKernels.applyRotary(MatrixMultiply.referenceProduct(x, weights.key, transposeB: true),
                                                heads: geometry.keyValueHeads, headDim: d, positions: positions, theta: theta)
        let values = MatrixMultiply.referenceProduct(x, weights.value, transposeB: true)
        // Row i of a sequence starting at `start` attends to rows start ... start + i.
        func probabilities(_ start: Int, _ head: Int, _ i: Int) -> [Double] {
            let g = head / groupSize
            let scores = (0 ... i).map { j in
                (0 ..< d).reduce(0.0) { $0 + Double(queries[start + i, head * d + $1]) * Double(keys[start + j, g * d + $1]) } / Double(d).squareRoot()
            }
            let maximum = scores.max() ?? 0
            let exponentials = scores.map { Foundation.exp($0 - maximum) }
            let sum = exponentials.reduce(0, +)
            return exponentials.map { $0 / sum }
        }
        var context = Tensor(shape: [x.rows, heads * d])
        var start = 0
        for length in sequenceLengths {
            for head in 0 ..< heads {
                let g = head / groupSize
                for i in 0 ..< length {
                    let p = probabilities(start, head, i)
                    for e in 0 ..< d {
                        context[start + i, head * d + e] = Float((0 ... i).reduce(0.0) { $0 + p[$1] * Double(values[start + $1, g * d + e]) })
                    }
                }
            }
            start += length
        }
        return ReferenceCore(queries: queries, keys: keys, values: values, context: context, probabilities: probabilities)
    }
}
