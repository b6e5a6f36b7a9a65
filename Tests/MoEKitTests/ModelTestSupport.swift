import Foundation
@testable import MoEKit

/// Small MiniCPM configurations and random weights for forward-pass tests.
enum SmallModels {
    /// hidden 32, 4 heads over 2 kv heads (GQA), intermediate 48, 2 layers, vocab 50, MiniCPM's scalings.
    static func config(experts: Int? = nil, topK: Int = 2, tied: Bool = true, layers: Int = 2) -> MiniCPMConfig {
        var config = MiniCPMConfig(hiddenSize: 32, intermediateSize: 48, numHiddenLayers: layers, numAttentionHeads: 4,
                                   numKeyValueHeads: 2, vocabSize: 50)
        config.maxPositionEmbeddings = 64
        config.scaleEmb = 12
        config.dimModelBase = 8
        config.scaleDepth = 1.4
        config.rmsNormEps = 1e-5
        config.tieWordEmbeddings = tied
        if let experts {
            config.numExperts = experts
            config.topK = topK
        }
        return config
    }

    /// Random weights for every tensor of the config: matrices N(0, 0.2²), norms 1 + N(0, 0.1²).
    static func weights(for config: MiniCPMConfig, seed: UInt64) -> [String: Tensor] {
        var result: [String: Tensor] = [:]
        for (index, entry) in MiniCPMLayout(config: config).entries.enumerated() {
            var tensor = randomTensor(entry.shape, seed: seed &+ UInt64(index) &* 7919, standardDeviation: entry.shape.count == 1 ? 0.1 : 0.2)
            if entry.shape.count == 1 { tensor.values = tensor.values.map { 1 + $0 } }
            result[entry.name] = tensor
        }
        return result
    }

    static func model(_ config: MiniCPMConfig, weights: [String: Tensor]) throws -> MiniCPMModel {
        try MiniCPMModel(config: config) { name in
            guard let tensor = weights[name] else { throw CheckpointError.missingTensor(directory: "<test>", tensor: name) }
            return tensor
        }
    }

    /// MoE weights whose every expert is a copy of the dense MLP, with a random router.
    static func upcycledWeights(dense: [String: Tensor], denseConfig: MiniCPMConfig, experts: Int, seed: UInt64) -> [String: Tensor] {
        var result = dense
        for layer in 0 ..< denseConfig.numHiddenLayers {
            let gate = result.removeValue(forKey: MiniCPMTensorNames.gateProjection(layer))!
            let up = result.removeValue(forKey: MiniCPMTensorNames.upProjection(layer))!
            let down = result.removeValue(forKey: MiniCPMTensorNames.downProjection(layer))!
            for expert in 0 ..< experts {
                result[MiniCPMTensorNames.expertGate(layer, expert)] = gate
                result[MiniCPMTensorNames.expertUp(layer, expert)] = up
                result[MiniCPMTensorNames.expertDown(layer, expert)] = down
            }
            result[MiniCPMTensorNames.router(layer)] = randomTensor([experts, denseConfig.hiddenSize], seed: seed &+ UInt64(layer))
        }
        return result
    }
}

/// An independent MiniCPM forward pass, one token at a time with plain loops in Double, written
/// from the published modeling code without sharing any kernel with MoEKit.
enum PerTokenReference {
    static func logits(config c: MiniCPMConfig, weights w: [String: Tensor], sequence: [Int]) -> [[Double]] {
        let hidden = c.hiddenSize, heads = c.numAttentionHeads, kvHeads = c.numKeyValueHeads, d = c.headDim
        func matrixVector(_ m: Tensor, _ x: [Double]) -> [Double] {
            (0 ..< m.shape[0]).map { r in (0 ..< m.shape[1]).reduce(0.0) { $0 + Double(m[r, $1]) * x[$1] } }
        }
        func rmsNorm(_ x: [Double], _ weight: Tensor) -> [Double] {
            let meanSquare = x.reduce(0) { $0 + $1 * $1 } / Double(x.count)
            return x.indices.map { x[$0] / (meanSquare + c.rmsNormEps).squareRoot() * Double(weight.values[$0]) }
        }
        func rope(_ v: [Double], position: Int) -> [Double] {
            var out = v
            for h in 0 ..< v.count / d {
                for i in 0 ..< d {
                    let pair = i < d / 2 ? i + d / 2 : i - d / 2
                    let rotated = i < d / 2 ? -v[h * d + pair] : v[h * d + pair]
                    let angle = Double(position) / pow(c.ropeTheta, Double(2 * (i % (d / 2))) / Double(d))
                    out[h * d + i] = v[h * d + i] * cos(angle) + rotated * sin(angle)
                }
            }
            return out
        }
        func swiGLU(_ x: [Double], gate: Tensor, up: Tensor, down: Tensor) -> [Double] {
            let g = matrixVector(gate, x), u = matrixVector(up, x)
            return matrixVector(down, g.indices.map { g[$0] / (1 + exp(-g[$0])) * u[$0] })
        }
        let residualScale = c.scaleDepth / Double(c.numHiddenLayers).squareRoot()
        var states = sequence.map { token in (0 ..< hidden).map { Double(w[MiniCPMTensorNames.embedTokens]![token, $0]) * c.scaleEmb } }
        for layer in 0 ..< c.numHiddenLayers {
            let normed = states.map { rmsNorm($0, w[MiniCPMTensorNames.inputLayerNorm(layer)]!) }
            let queries = normed.enumerated().map { rope(matrixVector(w[MiniCPMTensorNames.queryProjection(layer)]!, $1), position: $0) }
            let keys = normed.enumerated().map { rope(matrixVector(w[MiniCPMTensorNames.keyProjection(layer)]!, $1), position: $0) }
            let values = normed.map { matrixVector(w[MiniCPMTensorNames.valueProjection(layer)]!, $0) }
            for t in states.indices {
                var context = [Double](repeating: 0, count: hidden)
                for h in 0 ..< heads {
                    let kv = h / (heads / kvHeads)
                    let scores = (0 ... t).map { s in (0 ..< d).reduce(0.0) { $0 + queries[t][h * d + $1] * keys[s][kv * d + $1] } / Double(d).squareRoot() }
                    let maximum = scores.max()!
                    let exps = scores.map { exp($0 - maximum) }
                    let total = exps.reduce(0, +)
                    for s in 0 ... t { for i in 0 ..< d { context[h * d + i] += exps[s] / total * values[s][kv * d + i] } }
                }
                let attended = matrixVector(w[MiniCPMTensorNames.outputProjection(layer)]!, context)
                for j in 0 ..< hidden { states[t][j] += attended[j] * residualScale }
            }
            for t in states.indices {
                let x = rmsNorm(states[t], w[MiniCPMTensorNames.postAttentionLayerNorm(layer)]!)
                var output = [Double](repeating: 0, count: hidden)
                if let experts = c.numExperts {
                    let routerLogits = matrixVector(w[MiniCPMTensorNames.router(layer)]!, x)
                    let maximum = routerLogits.max()!
                    let exps = routerLogits.map { exp($0 - maximum) }
                    let probabilities = exps.map { $0 / exps.reduce(0, +) }
                    let chosen = Array(probabilities.indices.sorted { probabilities[$0] > probabilities[$1] || (probabilities[$0] == probabilities[$1] && $0 < $1) }.prefix(c.topK!))
                    let total = chosen.reduce(0.0) { $0 + probabilities[$1] }
                    for e in chosen where e < experts {
                        let y = swiGLU(x, gate: w[MiniCPMTensorNames.expertGate(layer, e)]!, up: w[MiniCPMTensorNames.expertUp(layer, e)]!,
                                       down: w[MiniCPMTensorNames.expertDown(layer, e)]!)
                        for j in 0 ..< hidden { output[j] += probabilities[e] / total * y[j] }
                    }
                    // Shared experts, each its own slice of the stored S·I neurons: Σ_s FFN_s(x).
                    let size = c.intermediateSize
                    for s in 0 ..< c.numSharedExperts {
                        let gate = w[MiniCPMTensorNames.sharedExpertsGate(layer)]!.rows(s * size ..< (s + 1) * size)
                        let up = w[MiniCPMTensorNames.sharedExpertsUp(layer)]!.rows(s * size ..< (s + 1) * size)
                        let fullDown = w[MiniCPMTensorNames.sharedExpertsDown(layer)]!
                        var down = Tensor(shape: [hidden, size])
                        for r in 0 ..< hidden { for i in 0 ..< size { down[r, i] = fullDown[r, s * size + i] } }
                        let y = swiGLU(x, gate: gate, up: up, down: down)
                        for j in 0 ..< hidden { output[j] += y[j] }
                    }
                } else {
                    output = swiGLU(x, gate: w[MiniCPMTensorNames.gateProjection(layer)]!, up: w[MiniCPMTensorNames.upProjection(layer)]!,
                                    down: w[MiniCPMTensorNames.downProjection(layer)]!)
                }
                for j in 0 ..< hidden { states[t][j] += output[j] * residualScale }
            }
        }
        let head = w[MiniCPMTensorNames.lmHead] ?? w[MiniCPMTensorNames.embedTokens]!
        return states.map { state in
            let normed = rmsNorm(state, w[MiniCPMTensorNames.finalNorm]!).map { $0 / (Double(hidden) / c.dimModelBase) }
            return matrixVector(head, normed)
        }
    }
}
