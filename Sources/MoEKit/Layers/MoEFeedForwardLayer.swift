import Foundation

/// Forward/backward of the MiniCPM-MoE layer (inference and training share it): router → top-k dispatch → SwiGLU
/// experts → weighted combine, plus the router's auxiliary losses (`RouterLoss`, coefficients
/// included) whose gradient flows into the gate weight together with the gradient through the
/// combine weights.
///
/// ## Forward (what is differentiated)
///
/// For tokens x `[T, H]`, gate weight W `[E, H]` and `ConfigurableRouter` (see `RouterConfiguration`):
///
///     x' = x ⊙ f                        f ~ U(1−ε, 1+ε) input jitter (training), else x' = x
///     z  = x·Wᵀ                         clean logits: `RoutedTokens.logits`, what the losses use
///     z̃  = x'·Wᵀ + σ_n·n + σ ⊙ ε        selection logits (`noisyLogits`, or z without noise)
///          σ = softplus(A), A = x'·W_noiseᵀ   (noisy top-k; n, ε ~ N(0, 1) held fixed)
///     s̃  = softmax(z̃) or sigmoid(z̃)     selection scores
///     K_t = top-k of (s̃_t + b), or of (z̃_t + b) for softmax-over-selected (b: loss-free bias)
///     w_t,j for the chosen c_j ∈ K_t, × weightScale c:
///         renormalized          w_j = c · s̃_c_j / S,  S = Σ_{i∈K} s̃_i
///         unnormalized          w_j = c · s̃_c_j
///         softmaxOverSelected   w_j = c · q_j,  q = softmax(z̃_K) over the chosen logits
///         expert choice         w = c · s̃_t,e for each (t, e) an expert took
///     capacity drops set a slot's weight to 0 (expert −1) *after* weighting: the other weights
///     keep S (which still includes the dropped expert's score) — not renormalised.
///     y_t = Σ_j w_t,j · expert_c_j(x_t)
///     aux = RouterLoss.evaluate(routed) on the clean logits z (selection and counts constant)
///
/// The selection K, the bias b, capacity drops and all noise samples (f, n, ε) are constants:
/// their derivative is zero almost everywhere, and gradients hold them fixed as every published
/// implementation does.
///
/// ## Backward
///
/// For dy = ∂L/∂y `[T, H]`:
///
/// 1. Experts. For assignment a (token t, expert e, weight w): the combine weight's gradient
///    ∂L/∂w_a = ⟨dy_t, expert_e(x_t)⟩ (the expert's unweighted output is cached), and the expert's
///    output gradient w_a · dy_t. Each expert's rows are gathered in one block (the forward's
///    `ExpertDispatchPlan`) and run through the SwiGLU GEMM backward (`GroupedSwiGLU`, one pool of
///    tiles over all experts); the blocks' input
///    gradients are scattered back (summed) into ∂L/∂x. Dropped slots have no expert output, so
///    ∂L/∂w is 0 for them.
/// 2. Combine weights → selection scores/logits, per token (dw_j = ∂L/∂w_j, 0 for dropped slots):
///    - renormalized: ∂w_j/∂s̃_i = c(δ_ij/S − s̃_c_j/S²) for i ∈ K (including a dropped expert,
///      whose score is still in S), so ∂L/∂s̃_i = (c/S) · (dw_i − Σ_j dw_j · s̃_c_j/S), 0 outside K;
///    - unnormalized, expert choice and ReLU routing: ∂L/∂s̃_c_j = c · dw_j;
///    - softmaxOverSelected: ∂L/∂z̃_c_i = c · q_i · (dw_i − Σ_j q_j dw_j), 0 outside K (no scores);
///    - then the scoring function: softmax ∂L/∂z̃_t = s̃_t ⊙ (∂L/∂s̃_t − ⟨∂L/∂s̃_t, s̃_t⟩);
///      sigmoid ∂L/∂z̃ = ∂L/∂s̃ ⊙ s̃ ⊙ (1 − s̃); ReLU (ReMoE) ∂L/∂z̃ = ∂L/∂s̃ ⊙ 1[z̃ > 0].
/// 3. Auxiliary losses: `RouterLoss.evaluate`'s gradient g = ∂aux/∂z (weight 1, coefficients
///    already inside). Its load term (noisy top-k only) is split with
///    `RouterLosses.loadLossPartials`: the numerator part stays on z, the threshold part θ = z̃_j*
///    goes to ∂L/∂z̃ (θ is a noisy logit, read through x' and σ ⊙ ε), and the ∂/∂σ part to σ.
/// 4. Into the parameters, with G̃ = ∂L/∂z̃ (steps 2 and the load's θ part):
///
///        ∂L/∂W       = G̃ᵀ·x' + gᵀ·x                      [E, H]
///        ∂L/∂σ       = G̃ ⊙ ε + ∂aux/∂σ,   ∂L/∂A = ∂L/∂σ ⊙ sigmoid(A),   sigmoid(A) = 1 − e^(−σ)
///        ∂L/∂W_noise = (∂L/∂A)ᵀ·x'                       [E, H]
///        ∂L/∂x      += (G̃·W + (∂L/∂A)·W_noise) ⊙ f + g·W  [T, H]
///
///    (without jitter x' = x, f = 1, and G̃ + g goes through one GEMM pair).
///
/// Cost: the experts' backward is two GEMM-equivalents per forward one (forward + backward ≈ 3 ×
/// the forward's GEMM FLOPs); the router adds O(T·E·H) GEMMs and O(T·E·k) loops. No per-token
/// loop runs an expert. The auxiliary-loss-free bias is not updated here (the trainer calls
/// `ConfigurableRouter.updateBalancingBias` with the step's expert counts).
enum MoEFeedForwardLayer {
    /// What `forward` keeps for `backward`.
    struct Cache: Sendable {
        /// `[T, H]` the layer's input x.
        var input = Tensor(shape: [0, 0])
        /// The routing the forward used, with the noise it applied.
        var routed = RoutedTokens(decision: MoEFeedForwardLayer.emptyDecision, logits: [])
        /// The router's configuration, k, and the state the forward read (bias, noise weight).
        var configuration = RouterConfiguration()
        var topK = 1
        var balancingBias: [Float]?
        /// `[E, H]` W_noise of this layer when noisy top-k noise was applied.
        var noiseWeight: Tensor?
        /// `[T, E]` ∂aux/∂z on the clean logits (everything but the load term's θ and σ parts).
        var auxiliaryLogitGradient: [Float] = []
        /// `[T, E]` ∂aux/∂z̃ and ∂aux/∂σ of the load term (noisy top-k with a load coefficient only).
        var auxiliaryNoisyLogitGradient: [Float]?
        var auxiliaryDeviationGradient: [Float]?
        /// Dispatch: assignments sorted by expert, and each one's flat slot index t·slots + slot.
        var plan = ExpertDispatchPlan(MoEFeedForwardLayer.emptyDecision)
        var assignmentSlots: [Int] = []
        var intermediateSize = 0
        /// Per sorted assignment: `[A, H]` gathered inputs, `[A, 2I]` [g | u], `[A, I]` silu(g) ⊙ u,
        /// `[A, H]` the expert's (unweighted) output.
        var gathered: [Float] = []
        var gateUp: [Float] = []
        var activated: [Float] = []
        var expertOutputs: [Float] = []

        init() {}
    }

    struct Output: Sendable {
        /// `[tokens, hidden]` Σ_j w_j · expert_j(x).
        var output: Tensor
        /// The routing (decision, clean logits, noise) — for logs and the auxiliary-loss-free bias.
        var routed: RoutedTokens
        /// The weighted auxiliary loss of this layer and its terms (`total` is added to the training
        /// loss); nil when no loss was asked for (inference).
        var auxiliaryLoss: RouterLoss.Value?
        /// What `backward` needs; nil unless `keepCache`.
        var cache: Cache?
    }

    struct Gradients: Sendable {
        /// `[tokens, hidden]` ∂L/∂x (through the experts and through the router).
        var input: Tensor
        /// `[experts, hidden]` ∂L/∂W_gate: combine-weight path plus the auxiliary losses' gradient.
        var gateWeight: Tensor
        /// Per expert; experts that received no token have zero gradients.
        var experts: [SwiGLUWeights]
        /// `[experts, hidden]` ∂L/∂W_noise of noisy top-k (the router's `noiseWeights[layer]`), through
        /// the combine weights and the load loss; `nil` unless the forward applied noisy top-k noise.
        var noiseWeight: Tensor?
    }

    /// x `[tokens, hidden]` of `sequenceLengths` (summing to tokens; used by the per-sequence loss).
    /// Routes with `router` (advancing its noise stream), runs the experts grouped, and, given a
    /// `loss`, evaluates it with k = the router's top-k. Inference passes no loss and
    /// `keepCache: false`; training needs a `ConfigurableRouter` (its configuration, bias and noise
    /// weights are what the backward differentiates).
    static func forward(_ x: Tensor, weights: MoEWeights, router: ExpertRouter, layer: Int, loss: RouterLoss?,
                               sequenceLengths: [Int], keepCache: Bool = true, timer: StageTimer? = nil) -> Output {
        let tokens = x.rows, hidden = x.columns, experts = weights.experts
        precondition(weights.router.shape == [experts.count, hidden], "MoE layer: router \(weights.router.shape) for \(experts.count) experts of \(hidden)")
        let intermediate = experts.first?.intermediateSize ?? 0
        precondition(experts.allSatisfy { $0.hiddenSize == hidden && $0.intermediateSize == intermediate }, "MoE layer: experts must all be [\(intermediate), \(hidden)]")
        precondition(sequenceLengths.allSatisfy { $0 >= 0 } && sequenceLengths.reduce(0, +) == tokens,
                     "MoE layer: sequence lengths \(sequenceLengths) do not add up to \(tokens) tokens")
        let input = x.rank == 2 ? x : x.reshaped([tokens, hidden])
        let configurable = router as? ConfigurableRouter
        precondition((loss == nil && !keepCache) || configurable != nil, "training the MoE layer needs a ConfigurableRouter")

        let routed = timer.measure(.router) { router.route(inputs: input, gateWeight: weights.router, layer: layer) }
        let topK = configurable?.topK ?? router.slotsPerToken
        let auxiliaryLoss = loss.map { $0.evaluate(routed, topK: topK, sequenceLengths: sequenceLengths) }

        var cache: Cache? = nil
        if keepCache, let router = configurable, let loss, let auxiliaryLoss {
            var kept = Cache()
            kept.input = input
            kept.routed = routed
            kept.configuration = router.configuration
            kept.topK = router.topK
            kept.balancingBias = router.configuration.auxiliaryLossFreeBalancing ? router.balancingBias[layer] : nil
            kept.noiseWeight = routed.noisyTopKSamples != nil ? router.noiseWeights[layer] : nil
            kept.auxiliaryLogitGradient = auxiliaryLoss.gradient
            if loss.loadCoefficient != 0, let noisyLogits = routed.noisyLogits, let deviations = routed.noiseStandardDeviations {
                // Re-split the load term: RouterLoss lets θ move with z; here it moves with z̃ (and σ).
                var withoutLoad = loss
                withoutLoad.loadCoefficient = 0
                var clean = withoutLoad.evaluate(routed, topK: router.topK, sequenceLengths: sequenceLengths).gradient
                let partials = RouterLosses.loadLossPartials(logits: routed.logits, noisyLogits: noisyLogits, noiseStandardDeviations: deviations,
                                                             tokens: tokens, experts: router.experts, topK: router.topK)
                let c = loss.loadCoefficient
                for i in clean.indices { clean[i] += c * partials.logits[i] }
                kept.auxiliaryLogitGradient = clean
                kept.auxiliaryNoisyLogitGradient = partials.noisyLogits.map { c * $0 }
                kept.auxiliaryDeviationGradient = partials.standardDeviations.map { c * $0 }
            }
            cache = kept
        }

        let output = runExperts(input, decision: routed.decision, experts: experts, intermediate: intermediate, cache: &cache, timer: timer)
        return Output(output: output, routed: routed, auxiliaryLoss: auxiliaryLoss, cache: cache)
    }

    /// dy `[tokens, hidden]` → gradients; the auxiliary loss's logit gradient is added with weight 1
    /// (its coefficients are already inside `RouterLoss`).
    static func backward(_ outputGradient: Tensor, cache: Cache, weights: MoEWeights) -> Gradients {
        let x = cache.input, tokens = x.rows, hidden = x.columns
        precondition(outputGradient.count == tokens * hidden, "MoE backward: gradient \(outputGradient.shape) for [\(tokens), \(hidden)]")
        precondition(weights.experts.count == cache.plan.experts && weights.router.shape == [weights.experts.count, hidden], "MoE backward: weights do not match the cache")
        let expertPass = expertsBackward(outputGradient, cache: cache, experts: weights.experts)
        var inputGradient = expertPass.input
        let router = routerBackward(combineWeightGradient: expertPass.combineWeights, cache: cache, gateWeight: weights.router)
        Kernels.add(router.input, to: &inputGradient)
        return Gradients(input: inputGradient, gateWeight: router.gateWeight, experts: expertPass.experts, noiseWeight: router.noiseWeight)
    }

    // MARK: Experts

    static let emptyDecision = RoutingDecision(tokens: 0, experts: 0, slotsPerToken: 0, selectedExperts: [], combineWeights: [], probabilities: [])

    /// Gather → the experts' SwiGLU on their blocks as one pool of tiles (`GroupedSwiGLU`) →
    /// weighted scatter (megablocks' grouping, llama.cpp's schedule: no per-token loop over
    /// experts, no work for unused experts). With a cache, the blocks' activations and outputs are
    /// kept in it.
    private static func runExperts(_ x: Tensor, decision: RoutingDecision, experts: [SwiGLUWeights], intermediate: Int,
                                   cache: inout Cache?, timer: StageTimer?) -> Tensor {
        let hidden = x.columns
        let plan = timer.measure(.dispatch) { ExpertDispatchPlan(decision) }
        let assignments = plan.assignmentCount
        let keep = cache != nil
        let blocks = (0 ..< experts.count).map { plan.range(of: $0) }
        var gathered = [Float].uninitialized(count: assignments * hidden)
        var gateUp = [Float].uninitialized(count: keep ? assignments * 2 * intermediate : 0)
        var activated = [Float].uninitialized(count: assignments * intermediate)
        var expertOutputs = [Float].uninitialized(count: assignments * hidden)
        var output = Tensor(shape: [x.rows, hidden])
        if assignments > 0 {
            x.values.withUnsafeBufferPointer { input in
                gathered.withUnsafeMutableBufferPointer { g in
                    timer.measure(.dispatch) { plan.gather(input.baseAddress!, width: hidden, into: g.baseAddress!) }
                }
            }
            gathered.withUnsafeBufferPointer { g in
                gateUp.withUnsafeMutableBufferPointer { f in
                    activated.withUnsafeMutableBufferPointer { h in
                        expertOutputs.withUnsafeMutableBufferPointer { y in
                            timer.measure(.expertGEMM) {
                                GroupedSwiGLU.forward(blocks: blocks, input: g.baseAddress!, experts: experts, gateUp: keep ? f.baseAddress! : nil,
                                                      activated: h.baseAddress!, output: y.baseAddress!)
                            }
                            timer.measure(.combine) {
                                output.values.withUnsafeMutableBufferPointer { out in
                                    plan.scatterAdd(y.baseAddress!, width: hidden, into: out.baseAddress!, weighted: true)
                                }
                            }
                        }
                    }
                }
            }
        }
        if keep {
            cache!.plan = plan
            cache!.assignmentSlots = assignmentSlots(decision, plan: plan)
            cache!.intermediateSize = intermediate
            cache!.gathered = gathered
            cache!.gateUp = gateUp
            cache!.activated = activated
            cache!.expertOutputs = expertOutputs
        }
        return output
    }

    /// The flat slot index t·slots + slot of each assignment, in the plan's order (the same stable
    /// counting sort as `ExpertDispatchPlan`).
    static func assignmentSlots(_ decision: RoutingDecision, plan: ExpertDispatchPlan) -> [Int] {
        var cursor = Array(plan.offsets.dropLast())
        var slots = [Int](repeating: 0, count: plan.assignmentCount)
        let k = decision.slotsPerToken
        for t in 0 ..< decision.tokens {
            for slot in 0 ..< k {
                let expert = Int(decision.selectedExperts[t * k + slot])
                guard expert >= 0 else { continue }
                slots[cursor[expert]] = t * k + slot
                cursor[expert] += 1
            }
        }
        return slots
    }

    /// Step 1 of the backward: ∂L/∂w per slot `[T, slots]`, the experts' weight gradients, and
    /// ∂L/∂x through the experts.
    private static func expertsBackward(_ outputGradient: Tensor, cache: Cache, experts: [SwiGLUWeights])
        -> (input: Tensor, experts: [SwiGLUWeights], combineWeights: [Float]) {
        let tokens = cache.input.rows, hidden = cache.input.columns, intermediate = cache.intermediateSize
        let plan = cache.plan, assignments = plan.assignmentCount
        var combineWeightGradient = [Float](repeating: 0, count: tokens * cache.routed.decision.slotsPerToken)
        var inputGradient = Tensor(shape: [tokens, hidden])
        guard assignments > 0 else { return (inputGradient, experts.map { $0.zeros() }, combineWeightGradient) }

        // Per assignment: ∂L/∂w_a = ⟨dy_t, expert_e(x_t)⟩, and the expert's output gradient w_a · dy_t.
        var expertOutputGradient = [Float].uninitialized(count: assignments * hidden)
        outputGradient.values.withUnsafeBufferPointer { dy in
            cache.expertOutputs.withUnsafeBufferPointer { y in
                expertOutputGradient.withUnsafeMutableBufferPointer { d in
                    combineWeightGradient.withUnsafeMutableBufferPointer { dw in
                        // Assignments are independent (each writes its own row and slot): row groups on every core.
                        Kernels.forEachRowGroup(assignments, columns: hidden) { group in
                            for a in group {
                                let row = dy.baseAddress! + Int(plan.tokens[a]) * hidden
                                let output = y.baseAddress! + a * hidden
                                let gradient = d.baseAddress! + a * hidden
                                let weight = plan.weights[a]
                                var dot: Float = 0
                                for j in 0 ..< hidden {
                                    dot += row[j] * output[j]
                                    gradient[j] = weight * row[j]
                                }
                                dw[cache.assignmentSlots[a]] = dot
                            }
                        }
                    }
                }
            }
        }

        // The experts' SwiGLU backward on their gathered blocks, as one pool of tiles.
        var groupedInputGradient = [Float].uninitialized(count: assignments * hidden)
        var gateUpGradient = [Float].uninitialized(count: assignments * 2 * intermediate)
        let blocks = (0 ..< experts.count).map { plan.range(of: $0) }
        let expertGradients = expertOutputGradient.withUnsafeBufferPointer { dy in
            cache.gathered.withUnsafeBufferPointer { x in
                cache.gateUp.withUnsafeBufferPointer { f in
                    cache.activated.withUnsafeBufferPointer { h in
                        groupedInputGradient.withUnsafeMutableBufferPointer { dx in
                            gateUpGradient.withUnsafeMutableBufferPointer { s in
                                GroupedSwiGLU.backward(blocks: blocks, outputGradient: dy.baseAddress!, input: x.baseAddress!, gateUp: f.baseAddress!,
                                                       activated: h.baseAddress!, experts: experts, inputGradient: dx.baseAddress!,
                                                       gateUpGradient: s.baseAddress!)
                            }
                        }
                    }
                }
            }
        }

        // Scatter the blocks' input gradients back to their tokens (a token's k experts add up).
        groupedInputGradient.withUnsafeBufferPointer { source in
            inputGradient.values.withUnsafeMutableBufferPointer { destination in
                plan.scatterAdd(source.baseAddress!, width: hidden, into: destination.baseAddress!, weighted: false)
            }
        }
        return (inputGradient, expertGradients, combineWeightGradient)
    }

    // MARK: Router

    /// Steps 2–4 of the backward: from ∂L/∂w per slot to ∂L/∂W, ∂L/∂W_noise and the router's part of ∂L/∂x.
    private static func routerBackward(combineWeightGradient: [Float], cache: Cache, gateWeight: Tensor)
        -> (input: Tensor, gateWeight: Tensor, noiseWeight: Tensor?) {
        let routed = cache.routed, tokens = routed.decision.tokens, experts = routed.decision.experts
        let x = cache.input
        // G̃ = ∂L/∂z̃: through the combine weights, plus the load loss's θ part.
        var selectionGradient = selectionLogitGradient(combineWeightGradient: combineWeightGradient, routed: routed,
                                                       configuration: cache.configuration, balancingBias: cache.balancingBias)
        if let noisy = cache.auxiliaryNoisyLogitGradient { for i in selectionGradient.indices { selectionGradient[i] += noisy[i] } }
        let jitter = routed.inputJitterFactors
        var selectionInput = x
        if let jitter { for i in selectionInput.values.indices { selectionInput.values[i] *= jitter[i] } }

        // Noisy top-k: ∂L/∂A = (G̃ ⊙ ε + ∂aux/∂σ) ⊙ sigmoid(A), sigmoid(A) = 1 − e^(−softplus(A)).
        var noiseGradient: Tensor?
        if let samples = routed.noisyTopKSamples, let deviations = routed.noiseStandardDeviations, cache.noiseWeight != nil {
            var gradient = Tensor(shape: [tokens, experts])
            for i in 0 ..< tokens * experts {
                let deviationGradient = selectionGradient[i] * samples[i] + (cache.auxiliaryDeviationGradient?[i] ?? 0)
                gradient.values[i] = deviationGradient * -expm1f(-deviations[i])
            }
            noiseGradient = gradient
        }

        var cleanGradient: Tensor? = Tensor(shape: [tokens, experts], values: cache.auxiliaryLogitGradient)
        if jitter == nil, let clean = cleanGradient {
            // z̃ and z both come from x: one GEMM pair for G̃ + g.
            for i in selectionGradient.indices { selectionGradient[i] += clean.values[i] }
            cleanGradient = nil
        }
        let selection = Tensor(shape: [tokens, experts], values: selectionGradient)
        var gateGradient = MatrixMultiply.product(selection, selectionInput, transposeA: true)      // [E, H]
        var inputGradient = MatrixMultiply.product(selection, gateWeight)                           // [T, H]
        var noiseWeightGradient: Tensor?
        if let noiseGradient, let noiseWeight = cache.noiseWeight {
            noiseWeightGradient = MatrixMultiply.product(noiseGradient, selectionInput, transposeA: true)
            Kernels.add(MatrixMultiply.product(noiseGradient, noiseWeight), to: &inputGradient)
        }
        if let jitter { for i in inputGradient.values.indices { inputGradient.values[i] *= jitter[i] } }
        if let cleanGradient {
            Kernels.add(MatrixMultiply.product(cleanGradient, x, transposeA: true), to: &gateGradient)
            Kernels.add(MatrixMultiply.product(cleanGradient, gateWeight), to: &inputGradient)
        }
        return (inputGradient, gateGradient, noiseWeightGradient)
    }

    /// ∂L/∂z̃ `[T, E]` through the combine weights alone (step 2 of the type's documentation), for
    /// ∂L/∂w per slot `[T, slots]` (0 for empty slots).
    static func selectionLogitGradient(combineWeightGradient dw: [Float], routed: RoutedTokens, configuration: RouterConfiguration,
                                       balancingBias: [Float]?) -> [Float] {
        let decision = routed.decision
        let tokens = decision.tokens, experts = decision.experts, slots = decision.slotsPerToken
        let logits = routed.noisyLogits ?? routed.logits
        let scale = configuration.weightScale
        var logitGradient = [Float](repeating: 0, count: tokens * experts)

        if configuration.mode == .tokenChoice && configuration.weighting == .softmaxOverSelected {
            let chosen = selectionBeforeCapacity(routed, ranked: logits, balancingBias: balancingBias)
            var q = [Float](repeating: 0, count: slots)
            for t in 0 ..< tokens {
                var maximum = -Float.infinity
                for j in 0 ..< slots { maximum = max(maximum, logits[t * experts + Int(chosen[t * slots + j])]) }
                var sum: Float = 0
                for j in 0 ..< slots { q[j] = expf(logits[t * experts + Int(chosen[t * slots + j])] - maximum); sum += q[j] }
                var expected: Float = 0
                for j in 0 ..< slots { q[j] /= sum; expected += q[j] * dw[t * slots + j] }
                for j in 0 ..< slots {
                    logitGradient[t * experts + Int(chosen[t * slots + j])] += scale * q[j] * (dw[t * slots + j] - expected)
                }
            }
            return logitGradient
        }

        let scores = RoutingFunctions.scores(logits, columns: experts, scoring: configuration.scoring)
        var scoreGradient = [Float](repeating: 0, count: tokens * experts)
        if configuration.mode == .tokenChoice && configuration.weighting == .renormalized {
            let chosen = selectionBeforeCapacity(routed, ranked: scores, balancingBias: balancingBias)
            for t in 0 ..< tokens {
                var sum: Float = 0
                for j in 0 ..< slots { sum += scores[t * experts + Int(chosen[t * slots + j])] }
                var expected: Float = 0
                for j in 0 ..< slots { expected += dw[t * slots + j] * scores[t * experts + Int(chosen[t * slots + j])] / sum }
                for j in 0 ..< slots {
                    scoreGradient[t * experts + Int(chosen[t * slots + j])] += scale / sum * (dw[t * slots + j] - expected)
                }
            }
        } else {
            // Unnormalised token choice, expert choice and ReLU routing: w = c · s̃ for every filled slot.
            for t in 0 ..< tokens {
                for j in 0 ..< slots {
                    let expert = Int(decision.selectedExperts[t * slots + j])
                    if expert >= 0 { scoreGradient[t * experts + expert] += scale * dw[t * slots + j] }
                }
            }
        }
        switch configuration.scoring {
        case .softmax:
            for t in 0 ..< tokens {
                var inner: Float = 0
                for e in 0 ..< experts { inner += scoreGradient[t * experts + e] * scores[t * experts + e] }
                for e in 0 ..< experts {
                    logitGradient[t * experts + e] = scores[t * experts + e] * (scoreGradient[t * experts + e] - inner)
                }
            }
        case .sigmoid:
            for i in logitGradient.indices { logitGradient[i] = scoreGradient[i] * scores[i] * (1 - scores[i]) }
        case .relu:
            for i in logitGradient.indices where logits[i] > 0 { logitGradient[i] = scoreGradient[i] }
        }
        return logitGradient
    }

    /// K_t, each token's top-k before capacity drops (`[T, k]`): the decision's own selection when
    /// nothing was dropped, else the router's top-k of `ranked + bias` recomputed (it must agree
    /// with every slot capacity kept).
    static func selectionBeforeCapacity(_ routed: RoutedTokens, ranked: [Float], balancingBias: [Float]?) -> [Int32] {
        let decision = routed.decision
        guard decision.droppedAssignments > 0 else { return decision.selectedExperts }
        let tokens = decision.tokens, experts = decision.experts, k = decision.slotsPerToken
        let chosen = RoutingFunctions.topKRows(ranked, tokens: tokens, experts: experts, k: k, bias: balancingBias)
        for t in 0 ..< tokens {
            for slot in 0 ..< k {
                let kept = decision.selectedExperts[t * k + slot]
                precondition(kept < 0 || kept == chosen[t * k + slot], "MoE backward: the routing does not match the router's top-k")
            }
        }
        return chosen
    }
}
