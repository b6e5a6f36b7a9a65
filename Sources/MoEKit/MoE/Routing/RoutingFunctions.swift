import Foundation

/// The steps routers are made of, as plain functions on row-major f32 buffers: top-k selection,
/// scoring functions, capacity and dropping, expert choice. `ConfigurableRouter` composes them.
enum RoutingFunctions {
    // MARK: Selection

    /// Writes the indices of the `k` largest of `scores[0 ..< count]` into `indices`, largest first.
    /// Among equal scores the lower index wins, so the result is deterministic; NaN never wins
    /// over a number.
    @inlinable
    static func topK(_ scores: UnsafePointer<Float>, count: Int, k: Int, into indices: UnsafeMutablePointer<Int32>) {
        for slot in 0 ..< k {
            var best = -1
            var bestScore = -Float.infinity
            for candidate in 0 ..< count {
                var taken = false
                for previous in 0 ..< slot where indices[previous] == Int32(candidate) { taken = true; break }
                if taken { continue }
                let score = scores[candidate].isNaN ? -Float.infinity : scores[candidate]
                if best < 0 || score > bestScore { best = candidate; bestScore = score }
            }
            indices[slot] = Int32(best)
        }
    }

    /// `topK` on an array, for one row.
    static func topK(_ scores: [Float], k: Int) -> [Int32] {
        var indices = [Int32](repeating: -1, count: k)
        scores.withUnsafeBufferPointer { s in
            indices.withUnsafeMutableBufferPointer { topK(s.baseAddress!, count: scores.count, k: k, into: $0.baseAddress!) }
        }
        return indices
    }

    /// Per row of `ranked` `[tokens, experts]`, the indices of the `k` largest of (row + `bias`)
    /// (`bias` `[experts]`, the auxiliary-loss-free bias, or none), as `topK` chooses them:
    /// `[tokens, k]`, largest first.
    static func topKRows(_ ranked: [Float], tokens: Int, experts: Int, k: Int, bias: [Float]?) -> [Int32] {
        precondition(ranked.count == tokens * experts, "topKRows: \(ranked.count) scores for \(tokens)×\(experts)")
        var selected = [Int32](repeating: -1, count: tokens * k)
        var row = [Float](repeating: 0, count: experts)
        selected.withUnsafeMutableBufferPointer { s in
            for t in 0 ..< tokens {
                for e in 0 ..< experts { row[e] = ranked[t * experts + e] + (bias?[e] ?? 0) }
                row.withUnsafeBufferPointer { r in topK(r.baseAddress!, count: experts, k: k, into: s.baseAddress! + t * k) }
            }
        }
        return selected
    }

    // MARK: Scoring

    /// σ(z) = 1 / (1 + e^(−z)), element-wise, in place.
    static func sigmoid(_ x: inout [Float]) {
        for i in x.indices { x[i] = 1 / (1 + expf(-x[i])) }
    }

    /// softplus(z) = log(1 + e^z), computed as max(z, 0) + log1p(e^(−|z|)) so large |z| neither
    /// overflows nor loses the small term.
    @inlinable
    static func softplus(_ z: Float) -> Float {
        max(z, 0) + log1pf(expf(-abs(z)))
    }

    /// Scores of `[rows, columns]` logits under a scoring function (softmax per row in f32, sigmoid, or ReLU).
    static func scores(_ logits: [Float], columns: Int, scoring: RouterConfiguration.Scoring) -> [Float] {
        var scores = logits
        switch scoring {
        case .softmax: scores.withUnsafeMutableBufferPointer { Kernels.softmaxRows($0, columns: columns) }
        case .sigmoid: sigmoid(&scores)
        case .relu: for i in scores.indices { scores[i] = max(scores[i], 0) }
        }
        return scores
    }

    // MARK: Capacity

    /// C = ceil(T·k/E · cf): how many assignments one expert takes out of a batch of `tokens`.
    /// Capped at T·k, the batch's assignments (a larger C changes nothing), so a huge cf
    /// (`cf=1e308`) means "no limit" rather than overflowing `Int`.
    static func capacity(tokens: Int, topK: Int, experts: Int, capacityFactor: Double) -> Int {
        let assignments = Double(tokens) * Double(topK)
        return Int(min(assignments, (assignments / Double(experts) * capacityFactor).rounded(.up)))
    }

    /// Enforces an expert capacity on a token-choice decision: each expert keeps at most `capacity`
    /// of the assignments made to it; the others become empty slots (expert −1, weight 0).
    /// Returns the number of assignments dropped.
    ///
    /// `.probability`: an expert keeps its assignments of highest `probabilities[t, e]`; among equal
    /// probabilities the earlier token is kept. `.position`: slot 0 of every token in token order
    /// first, then slot 1 of every token, and so on (GShard/Switch priority: first choices before
    /// second choices), each expert keeping the first `capacity` it receives.
    static func applyCapacity(selectedExperts: inout [Int32], combineWeights: inout [Float], probabilities: [Float],
                                     tokens: Int, experts: Int, capacity: Int, policy: RouterConfiguration.DropPolicy) -> Int {
        guard tokens > 0 else { return 0 }
        let slots = selectedExperts.count / tokens
        // Assignments (flat slot index) per expert, in the order the policy ranks them.
        var assignments = [[Int]](repeating: [], count: experts)
        for slot in 0 ..< slots {
            for t in 0 ..< tokens {
                let expert = selectedExperts[t * slots + slot]
                if expert >= 0 { assignments[Int(expert)].append(t * slots + slot) }
            }
        }
        var dropped = 0
        for expert in 0 ..< experts where assignments[expert].count > capacity {
            var ranked = assignments[expert]
            if policy == .probability {
                ranked.sort { a, b in
                    let pa = probabilities[(a / slots) * experts + expert], pb = probabilities[(b / slots) * experts + expert]
                    return pa != pb ? pa > pb : a / slots < b / slots
                }
            }
            for index in ranked[capacity...] {
                selectedExperts[index] = -1
                combineWeights[index] = 0
                dropped += 1
            }
        }
        return dropped
    }

    // MARK: Expert choice

    /// Expert-choice routing (Zhou et al. 2022): each expert takes the `capacity` tokens of highest
    /// `scores[t, e]` (ties: the earlier token), weighted by that score.
    ///
    /// Returns `[tokens, experts]` slots: token t's slots list the experts that took it in
    /// increasing expert order, then empty slots (−1, weight 0). A token no expert took passes
    /// through the residual. Non-causal: a token's experts depend on every other token of the batch.
    static func expertChoice(scores: [Float], tokens: Int, experts: Int, capacity: Int) -> (selectedExperts: [Int32], combineWeights: [Float]) {
        let taken = min(capacity, tokens)
        var chosen = [Bool](repeating: false, count: tokens * experts)
        var order = Array(0 ..< tokens)
        for expert in 0 ..< experts {
            // A full sort per expert, O(T log T), rather than k rounds of selection: C grows with T.
            order.sort { a, b in
                let sa = scores[a * experts + expert], sb = scores[b * experts + expert]
                let ka = sa.isNaN ? -Float.infinity : sa, kb = sb.isNaN ? -Float.infinity : sb
                return ka != kb ? ka > kb : a < b
            }
            for token in order[..<taken] { chosen[token * experts + expert] = true }
        }
        var selected = [Int32](repeating: -1, count: tokens * experts)
        var weights = [Float](repeating: 0, count: tokens * experts)
        for t in 0 ..< tokens {
            var slot = 0
            for expert in 0 ..< experts where chosen[t * experts + expert] {
                selected[t * experts + slot] = Int32(expert)
                weights[t * experts + slot] = scores[t * experts + expert]
                slot += 1
            }
        }
        return (selected, weights)
    }
}
