/// Token → expert assignments sorted by expert, megablocks-style: histogram of assignments per
/// expert → exclusive prefix sum → stable counting sort. Expert e's assignments are
/// `offsets[e] ..< offsets[e+1]`, in token order.
struct ExpertDispatchPlan: Sendable, Equatable {
    let experts: Int
    /// `[experts + 1]` start of each expert's block; `offsets[experts]` is the number of assignments.
    let offsets: [Int]
    /// Token of each sorted assignment.
    let tokens: [Int32]
    /// Combine weight of each sorted assignment.
    let weights: [Float]

    init(_ decision: RoutingDecision) {
        let experts = decision.experts
        var counts = [Int](repeating: 0, count: experts)
        for expert in decision.selectedExperts where expert >= 0 { counts[Int(expert)] += 1 }
        var offsets = [Int](repeating: 0, count: experts + 1)
        for e in 0 ..< experts { offsets[e + 1] = offsets[e] + counts[e] }
        var cursor = offsets
        var tokens = [Int32](repeating: 0, count: offsets[experts])
        var weights = [Float](repeating: 0, count: offsets[experts])
        let k = decision.slotsPerToken
        for t in 0 ..< decision.tokens {
            for slot in 0 ..< k {
                let expert = Int(decision.selectedExperts[t * k + slot])
                guard expert >= 0 else { continue }
                tokens[cursor[expert]] = Int32(t)
                weights[cursor[expert]] = decision.combineWeights[t * k + slot]
                cursor[expert] += 1
            }
        }
        self.experts = experts
        self.offsets = offsets
        self.tokens = tokens
        self.weights = weights
    }

    var assignmentCount: Int { offsets[experts] }
    func range(of expert: Int) -> Range<Int> { offsets[expert] ..< offsets[expert + 1] }

    /// Dispatch: row a of `blocks` `[assignments, width]` = row `tokens[a]` of `rows` `[tokens, width]`.
    func gather(_ rows: UnsafePointer<Float>, width: Int, into blocks: UnsafeMutablePointer<Float>) {
        for a in 0 ..< assignmentCount {
            (blocks + a * width).update(from: rows + Int(tokens[a]) * width, count: width)
        }
    }

    /// Combine: row `tokens[a]` of `rows` += w_a · row a of `blocks`, with w_a the assignment's
    /// combine weight (`weighted`) or 1 (summing a token's k input gradients in the backward pass).
    func scatterAdd(_ blocks: UnsafePointer<Float>, width: Int, into rows: UnsafeMutablePointer<Float>, weighted: Bool) {
        for a in 0 ..< assignmentCount {
            let weight: Float = weighted ? weights[a] : 1
            let source = blocks + a * width
            let destination = rows + Int(tokens[a]) * width
            for j in 0 ..< width { destination[j] += weight * source[j] }
        }
    }
}
