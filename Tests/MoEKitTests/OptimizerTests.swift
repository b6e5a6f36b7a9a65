import Foundation
import Testing
@testable import MoEKit

/// A model's typed weights seen by checkpoint name, so optimiser tests can state per-tensor facts.
struct NamedParameters: Equatable {
    let config: MiniCPMConfig
    var weights: MiniCPMWeights
    var names: [String] { MiniCPMLayout(config: config).entries.map(\.name) }

    subscript(name: String) -> Tensor {
        get { weights.tensor(named: name, config: config)! }
        set { weights.setTensor(newValue, named: name, config: config) }
    }

    func zeros() -> NamedParameters { NamedParameters(config: config, weights: weights.zeros()) }

    static func == (a: NamedParameters, b: NamedParameters) -> Bool {
        a.config == b.config && a.weights.parameterTensors == b.weights.parameterTensors
    }
}

extension AdamW {
    init(parameters: NamedParameters, options: AdamWOptions = AdamWOptions(), learningRateMultipliers: [String: Float] = [:]) throws {
        try self.init(parameters: parameters.weights, config: parameters.config, options: options, learningRateMultipliers: learningRateMultipliers)
    }

    init(resumingFrom path: String, parameters: NamedParameters, options: AdamWOptions = AdamWOptions(), learningRateMultipliers: [String: Float] = [:]) throws {
        try self.init(resumingFrom: path, parameters: parameters.weights, config: parameters.config, options: options,
                      learningRateMultipliers: learningRateMultipliers)
    }

    @discardableResult
    mutating func step(_ parameters: inout NamedParameters, gradients: NamedParameters, learningRate: Float) -> Float {
        step(&parameters.weights, gradients: gradients.weights, learningRate: learningRate)
    }

    var decayedParameters: Set<String> { Set(zip(names, decayed).filter(\.1).map(\.0)) }
    func firstMoment(_ name: String) -> Tensor { moments(of: name)!.first }
    func secondMoment(_ name: String) -> Tensor { moments(of: name)!.second }
}

/// A one-layer small model's parameters with random values, and random gradients of the same names.
private func makeParameters(experts: Int? = nil, seed: UInt64 = 1) throws -> NamedParameters {
    let config = SmallModels.config(experts: experts, layers: 1)
    let weights = SmallModels.weights(for: config, seed: seed)
    return NamedParameters(config: config, weights: try MiniCPMWeights(config: config) { weights[$0]! })
}

private func randomGradients(like parameters: NamedParameters, seed: UInt64, standardDeviation: Float = 0.1) -> NamedParameters {
    var gradients = parameters.zeros()
    for (index, name) in parameters.names.enumerated() {
        gradients[name] = randomTensor(parameters[name].shape, seed: seed &* 1_000_003 &+ UInt64(index), standardDeviation: standardDeviation)
    }
    return gradients
}

@Suite struct AdamWTests {
    /// Two AdamW steps on p = [1, −2] by hand (β₁ 0.9, β₂ 0.99, ε 1e-8, lr 0.1, λ 0.1):
    ///
    /// step 1, g = [0.5, −1]: m = 0.1·g = [0.05, −0.1], v = 0.01·g² = [0.0025, 0.01];
    ///   m̂ = m/0.1 = [0.5, −1], v̂ = v/0.01 = [0.25, 1], m̂/(√v̂+ε) = [1, −1] (to 1e-8);
    ///   p ← p − 0.1·([1, −1] + 0.1·[1, −2]) = [1 − 0.11, −2 + 0.12] = [0.89, −1.88].
    /// step 2, g = [0.1, 0.2]: m = 0.9·m + 0.1·g = [0.055, −0.07], v = 0.99·v + 0.01·g² = [0.002575, 0.0103];
    ///   1 − β₁² = 0.19, 1 − β₂² = 0.0199: m̂ = [0.2894737, −0.3684211], v̂ = [0.1293970, 0.5175879];
    ///   √v̂ = [0.3597179, 0.7194358], m̂/√v̂ = [0.8047241, −0.5120972];
    ///   p ← [0.89 − 0.1·(0.8047241 + 0.089), −1.88 − 0.1·(−0.5120972 − 0.188)] = [0.8006276, −1.8099903].
    @Test func twoHandComputedSteps() {
        var p: [Float] = [1, -2], m: [Float] = [0, 0], v: [Float] = [0, 0]
        func step(_ g: [Float], t: Int) {
            AdamW.update(parameter: &p, firstMoment: &m, secondMoment: &v, gradient: g, gradientScale: 1, learningRate: 0.1,
                         weightDecay: 0.1, beta1: 0.9, beta2: 0.99, epsilon: 1e-8,
                         biasCorrection1: Float(1 - pow(0.9, Double(t))), biasCorrection2: Float(1 - pow(0.99, Double(t))))
        }
        step([0.5, -1], t: 1)
        #expect(isClose(m, [0.05, -0.1], relativeTolerance: 1e-6))
        #expect(isClose(v, [0.0025, 0.01], relativeTolerance: 1e-6))
        #expect(isClose(p, [0.89, -1.88], relativeTolerance: 1e-6))
        step([0.1, 0.2], t: 2)
        #expect(isClose(m, [0.055, -0.07], relativeTolerance: 1e-6))
        #expect(isClose(v, [0.002575, 0.0103], relativeTolerance: 1e-6))
        #expect(isClose(p, [0.8006276, -1.8099903], relativeTolerance: 1e-6))
    }

    /// The interleaved f64 sum of squares agrees with a plain Double loop (and a hand case:
    /// 1² + … + 19² = 19·20·39/6 = 2470, exactly), tail included.
    @Test func sumOfSquaresMatchesPlainLoop() {
        let hand = (1 ... 19).map { Float($0) }
        #expect(hand.withUnsafeBufferPointer { GradientClipping.sumOfSquares($0.baseAddress!, count: 19) } == 2470)
        let x = randomTensor([1003], seed: 15).values
        let plain = x.reduce(0.0) { $0 + Double($1) * Double($1) }
        let fast = x.withUnsafeBufferPointer { GradientClipping.sumOfSquares($0.baseAddress!, count: x.count) }
        #expect(abs(fast - plain) <= 1e-12 * plain)
    }

    /// The update in SIMD lanes gives bit for bit what the scalar loop gives (same operations in
    /// the same order per element), over a length that leaves a scalar tail and spans several chunks.
    @Test func updateInLanesEqualsScalarLoopBitForBit() {
        let count = AdamW.elementsPerChunk + 37
        let p0 = randomTensor([count], seed: 11).values, g = randomTensor([count], seed: 12).values
        let m0 = randomTensor([count], seed: 13, standardDeviation: 0.1).values
        let v0 = randomTensor([count], seed: 14, standardDeviation: 0.1).values.map { $0 * $0 }
        var p = p0, m = m0, v = v0
        AdamW.update(parameter: &p, firstMoment: &m, secondMoment: &v, gradient: g, gradientScale: 0.7, learningRate: 0.01,
                     weightDecay: 0.1, beta1: 0.9, beta2: 0.95, epsilon: 1e-8, biasCorrection1: 0.19, biasCorrection2: 0.0975)
        var pScalar = p0, mScalar = m0, vScalar = v0
        let stepSize: Float = 0.01 / 0.19, inverseSqrtBiasCorrection2 = 1 / Float(0.0975).squareRoot(), decayFactor: Float = 1 - 0.01 * 0.1
        for i in 0 ..< count {
            let gi = g[i] * 0.7
            let mi = 0.9 * mScalar[i] + (1 - 0.9) * gi
            let vi = 0.95 * vScalar[i] + (1 - 0.95) * gi * gi
            mScalar[i] = mi
            vScalar[i] = vi
            pScalar[i] = pScalar[i] * decayFactor - stepSize * mi / (vi.squareRoot() * inverseSqrtBiasCorrection2 + 1e-8)
        }
        #expect(p == pScalar && m == mScalar && v == vScalar)
    }

    /// `step` on a whole parameter set (multipliers, decay mask, clipping active) equals the f64
    /// reference formula applied tensor by tensor, over three steps.
    @Test func stepMatchesReferenceFormula() throws {
        var parameters = try makeParameters(experts: 2)
        let multipliers = TensorProgramRules.learningRateMultipliers(config: parameters.config)
        var optimizer = try AdamW(parameters: parameters, options: AdamWOptions(beta1: 0.8, beta2: 0.9, weightDecay: 0.05, maxGradientNorm: 0.5),
                                  learningRateMultipliers: multipliers)
        for step in 0 ..< 3 {
            let gradients = randomGradients(like: parameters, seed: UInt64(step))
            let norm = GradientClipping.globalNorm(gradients.weights.parameterTensors)
            let scale = GradientClipping.coefficient(norm: norm, maxNorm: 0.5)
            #expect(scale < 1)
            let before = parameters, m = optimizer.firstMoments, v = optimizer.secondMoments
            let reported = optimizer.step(&parameters, gradients: gradients, learningRate: 0.01)
            #expect(reported == norm)
            #expect(optimizer.stepCount == step + 1)
            for name in parameters.names {
                let index = parameters.names.firstIndex(of: name)!
                let reference = AdamW.referenceUpdate(parameter: before[name].values, firstMoment: m[index].values, secondMoment: v[index].values,
                                                      gradient: gradients[name].values, gradientScale: scale, learningRate: 0.01 * (multipliers[name] ?? 1),
                                                      weightDecay: optimizer.decayedParameters.contains(name) ? 0.05 : 0, beta1: 0.8, beta2: 0.9,
                                                      epsilon: 1e-8, step: step + 1)
                #expect(isClose(parameters[name].values, reference.parameter.map(Float.init), relativeTolerance: 1e-6), "\(name)")
                #expect(isClose(optimizer.firstMoment(name).values, reference.firstMoment.map(Float.init), relativeTolerance: 1e-6), "\(name)")
                #expect(isClose(optimizer.secondMoment(name).values, reference.secondMoment.map(Float.init), relativeTolerance: 1e-5), "\(name)")
            }
        }
    }

    /// The global norm is √(Σ g²) over all tensors; clipping scales by maxNorm/(norm + 1e-6) only
    /// above the threshold and returns the norm before clipping.
    @Test func clipsByGlobalNorm() throws {
        let parameters = try makeParameters()
        var gradients = parameters.zeros()
        let first = parameters.names[0], last = parameters.names.last!
        gradients[first] = { var t = gradients[first]; t.values[0] = 3; return t }()
        gradients[last] = { var t = gradients[last]; t.values[1] = -4; return t }()
        #expect(GradientClipping.globalNorm(gradients.weights.parameterTensors) == 5)

        var unchanged = gradients
        #expect(GradientClipping.clip(&unchanged.weights, maxNorm: 10) == 5)
        #expect(unchanged == gradients)

        var clipped = gradients
        #expect(GradientClipping.clip(&clipped.weights, maxNorm: 1) == 5)
        let scale: Float = 1 / (5 + 1e-6)
        #expect(clipped[first].values[0] == 3 * scale)
        #expect(clipped[last].values[1] == -4 * scale)
        #expect(abs(GradientClipping.globalNorm(clipped.weights.parameterTensors) - 1) < 1e-6)
    }

    /// Clipping inside `step` is the same as clipping first and stepping without a threshold.
    @Test func stepClipsLikeClipThenStep() throws {
        var a = try makeParameters(), b = a
        let gradients = randomGradients(like: a, seed: 7, standardDeviation: 1)
        var clipping = try AdamW(parameters: a, options: AdamWOptions(maxGradientNorm: 0.25))
        var plain = try AdamW(parameters: b, options: AdamWOptions(maxGradientNorm: nil))
        let norm = clipping.step(&a, gradients: gradients, learningRate: 1e-3)
        var clipped = gradients
        #expect(GradientClipping.clip(&clipped.weights, maxNorm: 0.25) == norm)
        plain.step(&b, gradients: clipped, learningRate: 1e-3)
        #expect(a == b)
    }

    /// A learning-rate multiplier scales a parameter's step: Adam's first step moves every element
    /// by lr·sign(g) (m̂/√v̂ = g/|g|), so with λ = 0 the move is lr·multiplier exactly.
    @Test func multipliersScaleTheStep() throws {
        var parameters = try makeParameters()
        let before = parameters
        let scaled = MiniCPMTensorNames.queryProjection(0), plain = MiniCPMTensorNames.keyProjection(0)
        var optimizer = try AdamW(parameters: parameters, options: AdamWOptions(epsilon: 1e-20, weightDecay: 0, maxGradientNorm: nil),
                                  learningRateMultipliers: [scaled: 0.25])
        let gradients = randomGradients(like: parameters, seed: 3)
        optimizer.step(&parameters, gradients: gradients, learningRate: 0.01)
        for (name, multiplier) in [(scaled, Float(0.25)), (plain, Float(1))] {
            for i in 0 ..< parameters[name].count {
                let move = before[name].values[i] - parameters[name].values[i]
                let expected = 0.01 * multiplier * (gradients[name].values[i] > 0 ? 1 : -1)
                #expect(abs(move - expected) <= 1e-4 * abs(expected), "\(name)[\(i)]")
            }
        }
    }

    /// By default weight decay reaches every rank-2 tensor and no norm gain: with zero gradients a
    /// decayed tensor shrinks by exactly (1 − lr·λ) and a norm is unchanged.
    @Test func defaultDecayMaskSkipsNorms() throws {
        var parameters = try makeParameters()
        let before = parameters
        var optimizer = try AdamW(parameters: parameters, options: AdamWOptions(weightDecay: 0.5))
        #expect(optimizer.decayedParameters.contains(MiniCPMTensorNames.embedTokens))
        #expect(optimizer.decayedParameters.contains(MiniCPMTensorNames.outputProjection(0)))
        #expect(!optimizer.decayedParameters.contains(MiniCPMTensorNames.inputLayerNorm(0)))
        #expect(!optimizer.decayedParameters.contains(MiniCPMTensorNames.finalNorm))
        optimizer.step(&parameters, gradients: parameters.zeros(), learningRate: 0.1)
        #expect(parameters[MiniCPMTensorNames.finalNorm] == before[MiniCPMTensorNames.finalNorm])
        #expect(parameters[MiniCPMTensorNames.inputLayerNorm(0)] == before[MiniCPMTensorNames.inputLayerNorm(0)])
        let name = MiniCPMTensorNames.upProjection(0)
        #expect(isClose(parameters[name].values, before[name].values.map { $0 * (1 - 0.1 * 0.5) }, relativeTolerance: 1e-6))
    }

    /// A non-finite gradient leaves everything as it was and is reported.
    @Test func nonFiniteGradientSkipsTheStep() throws {
        var parameters = try makeParameters()
        let before = parameters
        var optimizer = try AdamW(parameters: parameters)
        var gradients = randomGradients(like: parameters, seed: 2)
        gradients[MiniCPMTensorNames.finalNorm] = { var t = gradients[MiniCPMTensorNames.finalNorm]; t.values[0] = .nan; return t }()
        #expect(optimizer.step(&parameters, gradients: gradients, learningRate: 0.1).isNaN)
        #expect(parameters == before)
        #expect(optimizer.stepCount == 0)
    }

    /// Options and multipliers out of range are rejected with the flag's name.
    @Test func rejectsBadOptions() throws {
        let parameters = try makeParameters()
        #expect(throws: TrainingError.invalidOption(name: "beta2", reason: "must be in [0, 1), got 1.0")) {
            _ = try AdamW(parameters: parameters, options: AdamWOptions(beta2: 1))
        }
        #expect(throws: TrainingError.invalidOption(name: "lr-multiplier", reason: "'nope' names no parameter of the model")) {
            _ = try AdamW(parameters: parameters, learningRateMultipliers: ["nope": 1])
        }
    }
}

@Suite struct TensorProgramRulesTests {
    /// MiniCPM's μP rule on the tiny preset (hidden 128, dim_model_base 32, so d/d_base = 4):
    /// hidden matrices of attention, MLP, experts and router at 1/4; embedding, head and norms at 1.
    @Test func dividesHiddenMatricesOnly() {
        var config = MiniCPMPreset.tiny.config
        config.numHiddenLayers = 1
        #expect(TensorProgramRules.widthMultiplier(config: config) == 4)
        let dense = TensorProgramRules.learningRateMultipliers(config: config, names: MiniCPMLayout(config: config).entries.map(\.name))
        for name in [MiniCPMTensorNames.queryProjection(0), MiniCPMTensorNames.keyProjection(0), MiniCPMTensorNames.valueProjection(0),
                     MiniCPMTensorNames.outputProjection(0), MiniCPMTensorNames.gateProjection(0), MiniCPMTensorNames.upProjection(0),
                     MiniCPMTensorNames.downProjection(0)] {
            #expect(dense[name] == 0.25, "\(name)")
        }
        for name in [MiniCPMTensorNames.embedTokens, MiniCPMTensorNames.inputLayerNorm(0), MiniCPMTensorNames.postAttentionLayerNorm(0),
                     MiniCPMTensorNames.finalNorm] {
            #expect(dense[name] == 1, "\(name)")
        }

        config.numExperts = 2
        config.topK = 1
        config.tieWordEmbeddings = false
        let moe = TensorProgramRules.learningRateMultipliers(config: config, names: MiniCPMLayout(config: config).entries.map(\.name))
        for name in [MiniCPMTensorNames.router(0), MiniCPMTensorNames.expertGate(0, 1), MiniCPMTensorNames.expertUp(0, 0), MiniCPMTensorNames.expertDown(0, 1)] {
            #expect(moe[name] == 0.25, "\(name)")
        }
        #expect(moe[MiniCPMTensorNames.lmHead] == 1)
        #expect(moe.count == MiniCPMLayout(config: config).entries.count)
    }
}

@Suite struct AdamWStateTests {
    /// Save after 2 steps, load into a fresh optimiser, take 2 more: parameters and moments equal
    /// the 4-step uninterrupted run bit for bit.
    @Test func resumeIsBitExact() throws {
        let directory = TemporaryDirectory()
        let start = try makeParameters(experts: 2)
        let options = AdamWOptions(weightDecay: 0.1, maxGradientNorm: 0.3)
        let multipliers = TensorProgramRules.learningRateMultipliers(config: start.config)
        let rates: [Float] = [0.01, 0.02, 0.015, 0.005]

        var straight = start
        var uninterrupted = try AdamW(parameters: straight, options: options, learningRateMultipliers: multipliers)
        for step in 0 ..< 4 { uninterrupted.step(&straight, gradients: randomGradients(like: start, seed: UInt64(step)), learningRate: rates[step]) }

        var resumed = start
        var first = try AdamW(parameters: resumed, options: options, learningRateMultipliers: multipliers)
        for step in 0 ..< 2 { first.step(&resumed, gradients: randomGradients(like: start, seed: UInt64(step)), learningRate: rates[step]) }
        let path = directory.file("optimizer.safetensors")
        try first.save(to: path)
        var second = try AdamW(resumingFrom: path, parameters: resumed, options: options, learningRateMultipliers: multipliers)
        #expect(second.stepCount == 2)
        #expect(second.firstMoments == first.firstMoments && second.secondMoments == first.secondMoments)
        for step in 2 ..< 4 { second.step(&resumed, gradients: randomGradients(like: start, seed: UInt64(step)), learningRate: rates[step]) }

        #expect(resumed == straight)
        #expect(second.firstMoments == uninterrupted.firstMoments)
        #expect(second.secondMoments == uninterrupted.secondMoments)
        #expect(second.stepCount == 4)

        let file = try SafetensorsFile(path: path)
        #expect(file.metadata?["format"] == "moekit-adamw")
        #expect(file.metadata?["step"] == "2")
        #expect(file.contains("exp_avg_sq." + MiniCPMTensorNames.router(0)))
        #expect(file.names.count == 2 * start.names.count)
    }

    /// Damaged or mismatched state files are `invalidState` errors naming the file and the tensor.
    @Test func damagedStateIsRejected() throws {
        let directory = TemporaryDirectory()
        let parameters = try makeParameters()
        var optimizer = try AdamW(parameters: parameters)
        var stepped = parameters
        optimizer.step(&stepped, gradients: randomGradients(like: parameters, seed: 1), learningRate: 0.01)
        let good = directory.file("good.safetensors")
        try optimizer.save(to: good)
        let goodFile = try SafetensorsFile(path: good)
        let metadata = optimizer.stateMetadata
        let norm = MiniCPMTensorNames.finalNorm
        var entries: [(name: String, tensor: Tensor, dtype: SafetensorsDType)] = []
        for name in goodFile.names { entries.append((name, try goodFile.floatTensor(name), .float32)) }

        func expectState(_ path: String, options: AdamWOptions = AdamWOptions(), mentions: String) {
            do {
                _ = try AdamW(resumingFrom: path, parameters: stepped, options: options)
                Issue.record("\(path) was accepted")
            } catch let TrainingError.invalidState(errorPath, reason) {
                #expect(errorPath == path)
                #expect(reason.contains(mentions), "\(reason)")
            } catch {
                Issue.record("unexpected error \(error)")
            }
        }
        func write(_ name: String, _ entries: [(name: String, tensor: Tensor, dtype: SafetensorsDType)], metadata: [String: String]) throws -> String {
            let path = directory.file(name)
            try SafetensorsWriter.write(entries, to: path, metadata: metadata)
            return path
        }

        expectState(try write("missing.safetensors", entries.filter { $0.name != "exp_avg_sq." + norm }, metadata: metadata),
                    mentions: "missing tensor 'exp_avg_sq.\(norm)'")
        expectState(try write("shape.safetensors", entries.map { $0.name == "exp_avg." + norm ? ($0.name, Tensor(shape: [3]), .float32) : $0 }, metadata: metadata),
                    mentions: "tensor 'exp_avg.\(norm)' has shape [3]")
        expectState(try write("dtype.safetensors", entries.map { $0.name == "exp_avg." + norm ? ($0.name, $0.tensor, .bfloat16) : $0 }, metadata: metadata),
                    mentions: "tensor 'exp_avg.\(norm)' is BF16")
        expectState(try write("extra.safetensors", entries + [("exp_avg.model.layers.9.mlp.up_proj.weight", Tensor(shape: [1]), .float32)], metadata: metadata),
                    mentions: "'exp_avg.model.layers.9.mlp.up_proj.weight' belongs to no parameter")
        var negative = entries
        negative[negative.firstIndex { $0.name == "exp_avg_sq." + norm }!].tensor.values[2] = -1
        expectState(try write("negative.safetensors", negative, metadata: metadata), mentions: "'exp_avg_sq.\(norm)' element 2 is -1.0")
        expectState(try write("format.safetensors", entries, metadata: ["format": "pt"]), mentions: "'format' is 'pt'")
        var noStep = metadata
        noStep["step"] = "-3"
        expectState(try write("step.safetensors", entries, metadata: noStep), mentions: "'step' is '-3'")
        expectState(good, options: AdamWOptions(beta2: 0.999), mentions: "beta2 is 0.95 in the state but 0.999 was requested")

        let truncated = directory.file("truncated.safetensors")
        let bytes = try Data(contentsOf: URL(fileURLWithPath: good))
        try bytes.prefix(bytes.count - 5).write(to: URL(fileURLWithPath: truncated))
        expectState(truncated, mentions: "not a readable optimiser state")
        expectState(directory.file("absent.safetensors"), mentions: "not a readable optimiser state")
    }
}
