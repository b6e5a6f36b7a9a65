import Foundation

/// The three matrices of a SwiGLU expert, named as MiniCPM-MoE names them.
public enum ExpertProjection: String, Sendable, CaseIterable, Codable {
    /// `w1`, from the dense `gate_proj` `[intermediate, hidden]`.
    case gate = "w1"
    /// `w3`, from the dense `up_proj` `[intermediate, hidden]`.
    case up = "w3"
    /// `w2`, from the dense `down_proj` `[hidden, intermediate]`.
    case down = "w2"

    /// The dense tensor this expert matrix is cut from.
    func denseTensorName(layer: Int) -> String {
        switch self {
        case .gate: return MiniCPMTensorNames.gateProjection(layer)
        case .up: return MiniCPMTensorNames.upProjection(layer)
        case .down: return MiniCPMTensorNames.downProjection(layer)
        }
    }

    /// The expert tensor's checkpoint name.
    func expertTensorName(layer: Int, expert: Int) -> String {
        switch self {
        case .gate: return MiniCPMTensorNames.expertGate(layer, expert)
        case .up: return MiniCPMTensorNames.expertUp(layer, expert)
        case .down: return MiniCPMTensorNames.expertDown(layer, expert)
        }
    }
}

/// How one layer's experts are cut from its dense MLP: which intermediate neurons each expert
/// keeps, and the factor each matrix is multiplied by.
///
/// The dense MLP is `y = W2 · (silu(W1 x) ⊙ (W3 x))` with `W1, W3` `[I, H]` and `W2` `[H, I]`.
/// Expert `e` keeping neurons `N_e` is `y_e = s_down · W2[:, N_e] · (silu(s_gu · W1[N_e] x) ⊙ (s_gu · W3[N_e] x))`.
/// MiniCPM-MoE combines `y = Σ_{e ∈ top-k} g_e · y_e` with the top-k softmax weights renormalised
/// to sum to 1 (vLLM's `renormalize=True`).
struct ExpertSlicing: Sendable, Equatable {
    let denseIntermediateSize: Int
    /// Neurons per expert, `|N_e|`.
    let expertIntermediateSize: Int
    /// `N_e` for every expert, each ascending; `nil` when every expert keeps all neurons in order.
    let neuronsForExpert: [[Int]]?
    /// Factor on `W1[N_e]` and `W3[N_e]`.
    let gateUpScale: Float
    /// Factor on `W2[:, N_e]`.
    let downScale: Float

    /// `copy` and `noise`: every expert is the whole dense MLP, unscaled.
    static func whole(intermediateSize: Int) -> ExpertSlicing {
        ExpertSlicing(denseIntermediateSize: intermediateSize, expertIntermediateSize: intermediateSize,
                      neuronsForExpert: nil, gateUpScale: 1, downScale: 1)
    }

    /// The output scale of `partition`: `s = E`.
    ///
    /// Derivation. Neurons are independent, so the dense output splits exactly into the groups'
    /// contributions, `y = Σ_{e=1..E} y_e`, and with neurons assigned at random `E[y_e] = y / E`.
    /// The MoE output is `s · Σ_{e ∈ top-k} g_e y_e` with `Σ g_e = 1` (renormalised top-k), whose
    /// expectation is `s · y / E`. Keeping the expected output magnitude therefore needs `s = E`,
    /// applied to `W2` only so the scaling is exact (the SiLU sees unscaled inputs). With `K = E`
    /// and a zero router (`g_e = 1/E`) the upcycled layer reproduces the dense layer exactly.
    /// (LLaMA-MoE's `E/k` assumes gates that are not renormalised; MiniCPM-MoE renormalises.)
    static func partitionOutputScale(experts: Int) -> Float { Float(experts) }

    /// `partition`: expert `e` keeps neuron group `groups[e]`, `W2` scaled by `E`.
    static func partition(groups: [[Int]], intermediateSize: Int) -> ExpertSlicing {
        ExpertSlicing(denseIntermediateSize: intermediateSize, expertIntermediateSize: groups.first?.count ?? 0,
                      neuronsForExpert: groups.map { $0.sorted() }, gateUpScale: 1,
                      downScale: partitionOutputScale(experts: groups.count))
    }

    /// Megatron-Core's weight scale for fine-grained GLU experts, `s = G^(1/3)`, put on all of
    /// `W1`, `W3` and `W2`.
    ///
    /// Megatron-Core (`upcycling_utils.py`, arXiv 2410.07524) wants the expert activations scaled
    /// by `a = G` when the softmax comes after the top-k selection (equivalently: top-k weights
    /// renormalised, MiniCPM-MoE's routing), and `a = E·G/k` with softmax before top-k without
    /// renormalisation. A GLU expert's output is cubic in a common weight scale (`W2` × gate ×
    /// up), so each matrix gets `a^(1/3)`; for a ReLU/GELU MLP it would be `a^(1/2)`. The
    /// argument treats the activation as homogeneous; SiLU only is for large inputs, so the
    /// function is preserved approximately, not exactly.
    static func granularWeightScale(granularity: Int) -> Float {
        Float(Foundation.pow(Double(granularity), 1.0 / 3.0))
    }

    /// `granular`: the dense FFN cut into `G` contiguous slices of `I/G` neurons, replicated
    /// `E/G` times: expert `e` keeps slice `e mod G`, every matrix scaled by `G^(1/3)`.
    /// (Megatron-Core's `tensor_split(…, G)` followed by `params * expansion_rate`.)
    static func granular(intermediateSize: Int, granularity: Int, experts: Int) -> ExpertSlicing {
        let size = intermediateSize / granularity
        let groups = (0 ..< experts).map { expert in Array((expert % granularity) * size ..< (expert % granularity + 1) * size) }
        let scale = granularWeightScale(granularity: granularity)
        return ExpertSlicing(denseIntermediateSize: intermediateSize, expertIntermediateSize: size,
                             neuronsForExpert: groups, gateUpScale: scale, downScale: scale)
    }

    /// Whether expert matrices are the dense bytes unchanged (no slicing, no scaling).
    var isIdentity: Bool { neuronsForExpert == nil && gateUpScale == 1 && downScale == 1 }

    /// Expert `expert`'s matrix `projection` computed from the dense matrix (`[I, H]` for gate and
    /// up, `[H, I]` for down): rows `N_e` (gate, up) or columns `N_e` (down), times the scale.
    func weight(_ projection: ExpertProjection, expert: Int, dense: Tensor) -> Tensor {
        let scale = projection == .down ? downScale : gateUpScale
        guard let neurons = neuronsForExpert?[expert] else {
            var result = dense
            if scale != 1 { for i in result.values.indices { result.values[i] *= scale } }
            return result
        }
        switch projection {
        case .gate, .up:
            // dense is (I, H); result is (|N|, H): row r = dense row neurons[r]
            let hidden = dense.columns
            var values = [Float](repeating: 0, count: neurons.count * hidden)
            dense.values.withUnsafeBufferPointer { source in
                for (row, neuron) in neurons.enumerated() {
                    for column in 0 ..< hidden { values[row * hidden + column] = source[neuron * hidden + column] * scale }
                }
            }
            return Tensor(shape: [neurons.count, hidden], values: values)
        case .down:
            // dense is (H, I); result is (H, |N|): column c = dense column neurons[c]
            let hidden = dense.rows, intermediate = dense.columns
            var values = [Float](repeating: 0, count: hidden * neurons.count)
            dense.values.withUnsafeBufferPointer { source in
                for row in 0 ..< hidden {
                    for (column, neuron) in neurons.enumerated() {
                        values[row * neurons.count + column] = source[row * intermediate + neuron] * scale
                    }
                }
            }
            return Tensor(shape: [hidden, neurons.count], values: values)
        }
    }
}

/// The `noise` method's perturbation.
enum ExpertNoise {
    /// Adds `N(0, (relative · reference)²)` to every element: `reference` is the dense matrix's
    /// own standard deviation, so `relative` is the noise-to-signal ratio.
    static func add(to tensor: inout Tensor, relativeStandardDeviation relative: Double, referenceStandardDeviation reference: Double,
                           random: inout SeededRandom) {
        let sigma = Float(relative * reference)
        guard sigma > 0 else { return }
        for i in tensor.values.indices { tensor.values[i] += Float(random.nextNormal()) * sigma }
    }

    /// The population standard deviation `sqrt(mean((x − mean x)²))`, accumulated in Double.
    static func standardDeviation(_ values: [Float]) -> Double {
        guard !values.isEmpty else { return 0 }
        var sum = 0.0, sumOfSquares = 0.0
        for value in values { sum += Double(value); sumOfSquares += Double(value) * Double(value) }
        let mean = sum / Double(values.count)
        return max(0, sumOfSquares / Double(values.count) - mean * mean).squareRoot()
    }
}
