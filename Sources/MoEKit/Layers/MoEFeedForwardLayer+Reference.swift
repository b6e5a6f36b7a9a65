import Foundation

extension MoEFeedForwardLayer {
    /// The layer's expert output for a given routing decision, computed token by token, expert by
    /// expert with `SwiGLULayer.referenceForward` (for tests).
    static func referenceForward(_ x: Tensor, decision: RoutingDecision, experts: [SwiGLUWeights]) -> Tensor {
        let hidden = x.columns
        var output = Tensor(shape: [x.rows, hidden])
        for t in 0 ..< x.rows {
            let token = x.rows(t ..< t + 1)
            for slot in 0 ..< decision.slotsPerToken {
                let expert = Int(decision.selectedExperts[t * decision.slotsPerToken + slot])
                guard expert >= 0 else { continue }
                let y = SwiGLULayer.referenceForward(token, weights: experts[expert])
                let weight = decision.combineWeights[t * decision.slotsPerToken + slot]
                for j in 0 ..< hidden { output[t, j] += weight * y[0, j] }
            }
        }
        return output
    }

    /// The backward computed token by token, expert by expert, with plain loops and Double
    /// accumulators, for tests. Independent of the fast path where it matters: each (token, expert)
    /// pair recomputes the expert with `SwiGLULayer.referenceForward`/`referenceBackward`, and the
    /// router's part multiplies ∂L/∂w by the explicit Jacobian ∂w_t,j/∂z̃_t,m built from the
    /// scoring function's Jacobian (softmax s_i(δ_im − s_m), sigmoid δ_im s_i(1 − s_i), ReLU δ_im·1[z_i > 0]) and the
    /// weighting's ∂w/∂s, rather than by the vector formulas of `selectionLogitGradient`.
    /// Reads from `cache` only the input, the routing (with its noise), the router state the
    /// forward saw and the auxiliary loss's logit gradients.
    static func referenceBackward(_ outputGradient: Tensor, cache: Cache, gateWeight: Tensor, experts: [SwiGLUWeights]) -> Gradients {
        let x = cache.input, routed = cache.routed, decision = routed.decision
        let tokens = x.rows, hidden = x.columns, expertCount = decision.experts, slots = decision.slotsPerToken
        let configuration = cache.configuration, scale = Double(configuration.weightScale)

        // Experts, one (token, slot) at a time.
        var inputGradient = [Double](repeating: 0, count: tokens * hidden)
        var expertGradients = experts.map { expert in
            (gate: [Double](repeating: 0, count: expert.gateUp.elementCount / 2), up: [Double](repeating: 0, count: expert.gateUp.elementCount / 2),
             down: [Double](repeating: 0, count: expert.down.elementCount))
        }
        var combineWeightGradient = [Double](repeating: 0, count: tokens * slots)
        for t in 0 ..< tokens {
            let token = x.rows(t ..< t + 1)
            for slot in 0 ..< slots {
                let e = Int(decision.selectedExperts[t * slots + slot])
                guard e >= 0 else { continue }
                let y = SwiGLULayer.referenceForward(token, weights: experts[e])
                var dot = 0.0
                for j in 0 ..< hidden { dot += Double(outputGradient[t, j]) * Double(y[0, j]) }
                combineWeightGradient[t * slots + slot] = dot
                let weight = decision.combineWeights[t * slots + slot]
                let scaled = Tensor(shape: [1, hidden], values: (0 ..< hidden).map { weight * outputGradient[t, $0] })
                let backward = SwiGLULayer.referenceBackward(scaled, input: token, weights: experts[e])
                for j in 0 ..< hidden { inputGradient[t * hidden + j] += Double(backward.input[0, j]) }
                let gate = backward.weights.gate.values, up = backward.weights.up.values, down = backward.weights.downTensor.values
                for i in gate.indices {
                    expertGradients[e].gate[i] += Double(gate[i])
                    expertGradients[e].up[i] += Double(up[i])
                }
                for i in down.indices { expertGradients[e].down[i] += Double(down[i]) }
            }
        }

        // ∂L/∂z̃ per token: Σ_j ∂L/∂w_j · ∂w_j/∂z̃ by explicit Jacobians.
        let selectionLogits = routed.noisyLogits ?? routed.logits
        var selectionGradient = [Double](repeating: 0, count: tokens * expertCount)
        for t in 0 ..< tokens {
            let z = (0 ..< expertCount).map { Double(selectionLogits[t * expertCount + $0]) }
            var s = [Double](repeating: 0, count: expertCount)
            var scoreJacobian = [[Double]](repeating: [Double](repeating: 0, count: expertCount), count: expertCount)  // ∂s_i/∂z_m
            switch configuration.scoring {
            case .softmax:
                let maximum = z.max() ?? 0
                let exponentials = z.map { exp($0 - maximum) }
                let sum = exponentials.reduce(0, +)
                s = exponentials.map { $0 / sum }
                for i in 0 ..< expertCount { for m in 0 ..< expertCount { scoreJacobian[i][m] = s[i] * ((i == m ? 1 : 0) - s[m]) } }
            case .sigmoid:
                s = z.map { 1 / (1 + exp(-$0)) }
                for i in 0 ..< expertCount { scoreJacobian[i][i] = s[i] * (1 - s[i]) }
            case .relu:
                s = z.map { max($0, 0) }
                for i in 0 ..< expertCount { scoreJacobian[i][i] = z[i] > 0 ? 1 : 0 }
            }
            // The experts the weights were computed over: the router's top-k before capacity drops.
            var chosen = (0 ..< slots).map { Int(decision.selectedExperts[t * slots + $0]) }
            if configuration.mode == .tokenChoice {
                let ranking = configuration.weighting == .softmaxOverSelected
                    ? (0 ..< expertCount).map { selectionLogits[t * expertCount + $0] }
                    : RoutingFunctions.scores(Array(selectionLogits[t * expertCount ..< (t + 1) * expertCount]), columns: expertCount,
                                              scoring: configuration.scoring)
                let biased = (0 ..< expertCount).map { ranking[$0] + (cache.balancingBias?[$0] ?? 0) }
                chosen = RoutingFunctions.topK(biased, k: slots).map { Int($0) }
            }
            for slot in 0 ..< slots where decision.selectedExperts[t * slots + slot] >= 0 {
                let dw = combineWeightGradient[t * slots + slot]
                let e = Int(decision.selectedExperts[t * slots + slot])
                var jacobian = [Double](repeating: 0, count: expertCount)  // ∂w_slot/∂z̃_m
                switch (configuration.mode, configuration.weighting) {
                case (.expertChoice, _), (.relu, _), (.tokenChoice, .unnormalized):
                    for m in 0 ..< expertCount { jacobian[m] = scale * scoreJacobian[e][m] }
                case (.tokenChoice, .renormalized):
                    let sum = chosen.reduce(0.0) { $0 + s[$1] }
                    for i in chosen {
                        let weightByScore = scale * ((i == e ? 1 : 0) / sum - s[e] / (sum * sum))  // ∂w/∂s_i
                        for m in 0 ..< expertCount { jacobian[m] += weightByScore * scoreJacobian[i][m] }
                    }
                case (.tokenChoice, .softmaxOverSelected):
                    let maximum = chosen.map { z[$0] }.max() ?? 0
                    let sum = chosen.reduce(0.0) { $0 + exp(z[$1] - maximum) }
                    let q = { (i: Int) in exp(z[i] - maximum) / sum }
                    for i in chosen { jacobian[i] = scale * q(e) * ((i == e ? 1 : 0) - q(i)) }
                }
                for m in 0 ..< expertCount { selectionGradient[t * expertCount + m] += dw * jacobian[m] }
            }
        }
        if let noisy = cache.auxiliaryNoisyLogitGradient { for i in selectionGradient.indices { selectionGradient[i] += Double(noisy[i]) } }

        // Into W (through x' for z̃ and x for the clean-logit loss gradient), W_noise and x.
        let jitter = routed.inputJitterFactors
        let clean = cache.auxiliaryLogitGradient
        var gateGradient = [Double](repeating: 0, count: expertCount * hidden)
        var noiseGradient: [Double]? = cache.noiseWeight == nil ? nil : [Double](repeating: 0, count: expertCount * hidden)
        for t in 0 ..< tokens {
            let factor = (0 ..< hidden).map { Double(jitter?[t * hidden + $0] ?? 1) }
            let jittered = (0 ..< hidden).map { Double(x[t, $0]) * factor[$0] }
            for e in 0 ..< expertCount {
                let index = t * expertCount + e
                let dz = selectionGradient[index], g = Double(clean[index])
                for h in 0 ..< hidden {
                    gateGradient[e * hidden + h] += dz * jittered[h] + g * Double(x[t, h])
                    inputGradient[t * hidden + h] += dz * Double(gateWeight[e, h]) * factor[h] + g * Double(gateWeight[e, h])
                }
                if let noiseWeight = cache.noiseWeight, let samples = routed.noisyTopKSamples {
                    var preactivation = 0.0
                    for h in 0 ..< hidden { preactivation += jittered[h] * Double(noiseWeight[e, h]) }
                    let deviationGradient = dz * Double(samples[index]) + Double(cache.auxiliaryDeviationGradient?[index] ?? 0)
                    let dA = deviationGradient / (1 + exp(-preactivation))
                    for h in 0 ..< hidden {
                        noiseGradient?[e * hidden + h] += dA * jittered[h]
                        inputGradient[t * hidden + h] += dA * Double(noiseWeight[e, h]) * factor[h]
                    }
                }
            }
        }
        func tensor(_ values: [Double], _ shape: [Int]) -> Tensor { Tensor(shape: shape, values: values.map { Float($0) }) }
        return Gradients(
            input: tensor(inputGradient, [tokens, hidden]), gateWeight: tensor(gateGradient, [expertCount, hidden]),
            experts: zip(experts, expertGradients).map { expert, gradient in
                SwiGLUWeights(gate: tensor(gradient.gate, expert.gate.shape), up: tensor(gradient.up, expert.up.shape),
                              down: tensor(gradient.down, expert.down.shape))
            },
            noiseWeight: noiseGradient.map { tensor($0, [expertCount, hidden]) })
    }
}
