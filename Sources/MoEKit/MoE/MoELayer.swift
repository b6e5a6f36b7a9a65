/// The MiniCPM-MoE layer that replaces the MLP: a router and E SwiGLU experts
/// (w1 = gate, w3 = up, w2 = down), output = Σ_j w_j · expert_j(x) over the chosen experts.
///
/// Experts run grouped, as megablocks and llama.cpp do: assignments are counting-sorted by expert
/// (`ExpertDispatchPlan`), each expert's rows are gathered into one block, each active expert runs
/// one fused gate+up GEMM and one down GEMM on its block, and the outputs are scattered back,
/// scaled by their combine weights. No per-token loop over experts, no work for unused experts.
public struct MoELayer: Sendable {
    /// `[experts, hidden]`: `mlp.gate.weight`.
    public let gateWeight: Tensor
    public let experts: [FeedForward]
    public let topK: Int

    public init(gateWeight: Tensor, experts: [FeedForward], topK: Int) {
        precondition(gateWeight.rows == experts.count, "router has \(gateWeight.rows) rows for \(experts.count) experts")
        self.gateWeight = gateWeight
        self.experts = experts
        self.topK = topK
    }

    public var hiddenSize: Int { gateWeight.columns }

    /// `[tokens, hidden]` → `[tokens, hidden]`, plus the routing record when `detail` asks for one.
    public func forward(_ x: Tensor, layer: Int, router: ExpertRouter, detail: RoutingRecord.Detail = .none,
                        timer: StageTimer? = nil) -> (output: Tensor, record: RoutingRecord?) {
        let routed = timer.measure(.router) { router.route(inputs: x, gateWeight: gateWeight, layer: layer) }
        let output = run(x, decision: routed.decision, timer: timer)
        let record: RoutingRecord? = detail == .none ? nil : timer.measure(.routingStatistics) {
            RoutingStatistics.record(routed, topK: router.slotsPerToken, detail: detail)
        }
        return (output, record)
    }

    /// Runs the experts for a given routing decision.
    public func run(_ x: Tensor, decision: RoutingDecision, timer: StageTimer? = nil) -> Tensor {
        let hidden = hiddenSize
        let plan = timer.measure(.dispatch) { ExpertDispatchPlan(decision) }
        let assignments = plan.assignmentCount
        var gathered = [Float].uninitialized(count: assignments * hidden)
        var expertOutputs = [Float].uninitialized(count: assignments * hidden)
        var output = Tensor(shape: [x.rows, hidden])
        x.values.withUnsafeBufferPointer { input in
            gathered.withUnsafeMutableBufferPointer { g in
                expertOutputs.withUnsafeMutableBufferPointer { y in
                    timer.measure(.dispatch) { plan.gather(input.baseAddress!, width: hidden, into: g.baseAddress!) }
                    timer.measure(.expertGEMM) {
                        for (e, expert) in experts.enumerated() {
                            let block = plan.range(of: e)
                            guard !block.isEmpty else { continue }
                            expert.apply(rows: block.count, input: g.baseAddress! + block.lowerBound * hidden,
                                         output: y.baseAddress! + block.lowerBound * hidden)
                        }
                    }
                    timer.measure(.combine) {
                        output.values.withUnsafeMutableBufferPointer { out in
                            plan.scatterAdd(y.baseAddress!, width: hidden, into: out.baseAddress!, weighted: true)
                        }
                    }
                }
            }
        }
        return output
    }

    /// The same layer computed token by token, expert by expert, with plain loops (for tests).
    public func referenceForward(_ x: Tensor, decision: RoutingDecision) -> Tensor {
        var output = Tensor(shape: [x.rows, hiddenSize])
        for t in 0 ..< x.rows {
            let token = x.rows(t ..< t + 1)
            for slot in 0 ..< decision.slotsPerToken {
                let expert = Int(decision.selectedExperts[t * decision.slotsPerToken + slot])
                guard expert >= 0 else { continue }
                let y = experts[expert].referenceForward(token)
                let weight = decision.combineWeights[t * decision.slotsPerToken + slot]
                for j in 0 ..< hiddenSize { output[t, j] += weight * y[0, j] }
            }
        }
        return output
    }
}
