/// One training batch: B sequences of T tokens with their next-token targets.
struct TrainingBatch: Sendable, Equatable {
    /// `[B][T]` input token ids.
    var inputs: [[Int]]
    /// `[B][T]` the token each position must predict (the input shifted by one). A negative target
    /// is ignored: it adds nothing to the loss and is not counted in its mean.
    var targets: [[Int]]
    /// `[B][T]` the domain of every input token, when the data carries domains (synthetic corpus).
    var domains: [[Int]]?

    init(inputs: [[Int]], targets: [[Int]], domains: [[Int]]? = nil) {
        precondition(inputs.count == targets.count && zip(inputs, targets).allSatisfy { $0.count == $1.count },
                     "inputs and targets must have the same shape")
        self.inputs = inputs
        self.targets = targets
        self.domains = domains
    }

    var sequenceCount: Int { inputs.count }
    var tokenCount: Int { inputs.reduce(0) { $0 + $1.count } }
}
