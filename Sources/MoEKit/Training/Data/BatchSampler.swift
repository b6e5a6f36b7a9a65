/// Fixed-length training windows drawn from a `TokenDataset`, deterministic for a seed, and the
/// held-out validation windows.
///
/// The stream is split once: the last ⌊`validationFraction`·N⌋ tokens are held out for validation,
/// the first N − that for training. A window is T + 1 consecutive tokens w: inputs w[0..<T],
/// targets w[1...T] (every target is a real next token; none is masked). Windows ignore document
/// boundaries: documents are already joined by separator tokens in the stream, and a window may
/// hold the end of one document, its separator and the start of the next (nanoGPT's convention).
///
/// **Training batches** are a pure function of (seed, step): `batch(at: s)` draws B window starts
/// uniformly from [0, N_train − T − 1] with a generator seeded by (seed, "batch s"), so step s gives
/// the same batch whether it is reached in one run or after a resume, and no state needs saving.
/// Windows never reach into the validation tokens.
///
/// **Validation batches** are the held-out tokens cut into consecutive windows starting at the
/// split, stride T (window k covers validation tokens [kT, kT + T]), grouped B at a time in order
/// (the last batch may be smaller): every held-out token is predicted exactly once.
public struct BatchSampler: Sendable {
    let dataset: TokenDataset
    /// B, sequences per batch.
    public let batchSize: Int
    /// T, tokens per sequence.
    public let sequenceLength: Int
    public let seed: UInt64
    /// Token indices used for training windows.
    public let trainingRange: Range<Int>
    /// Token indices held out for validation (empty without a split).
    public let validationRange: Range<Int>

    /// - Parameter validationFraction: the share of the stream (from its end) held out, in [0, 1);
    ///   when positive, at least T + 1 tokens must be held out.
    init(dataset: TokenDataset, batchSize: Int, sequenceLength: Int, seed: UInt64,
                validationFraction: Double = 0) throws(TrainingError) {
        guard batchSize >= 1 else { throw .invalidOption(name: "batch", reason: "must be ≥ 1, got \(batchSize)") }
        guard sequenceLength >= 1 else { throw .invalidOption(name: "seq", reason: "must be ≥ 1, got \(sequenceLength)") }
        guard validationFraction.isFinite, validationFraction >= 0, validationFraction < 1 else {
            throw .invalidOption(name: "validation-fraction", reason: "must be in [0, 1), got \(validationFraction)")
        }
        let validationCount = Int(Double(dataset.count) * validationFraction)
        if validationFraction > 0 && validationCount < sequenceLength + 1 {
            throw .invalidData(path: dataset.source, reason: "a validation fraction of \(validationFraction) holds out \(validationCount) of \(dataset.count) tokens; a window of --seq \(sequenceLength) needs \(sequenceLength + 1)")
        }
        let trainingCount = dataset.count - validationCount
        guard trainingCount >= sequenceLength + 1 else {
            throw .invalidData(path: dataset.source, reason: "\(trainingCount) training tokens; a window of --seq \(sequenceLength) needs \(sequenceLength + 1)")
        }
        self.dataset = dataset
        self.batchSize = batchSize
        self.sequenceLength = sequenceLength
        self.seed = seed
        self.trainingRange = 0 ..< trainingCount
        self.validationRange = trainingCount ..< dataset.count
    }

    /// The training batch of step `step` (≥ 0): B windows at seeded uniform starts.
    func batch(at step: Int) -> TrainingBatch {
        makeBatch(starts: windowStarts(at: step))
    }

    /// The window starts of step `step` (what `batch(at:)` reads), for inspection and tests.
    func windowStarts(at step: Int) -> [Int] {
        precondition(step >= 0, "steps count from 0")
        var random = SeededRandom(seed: seed, stream: "batch \(step)")
        return (0 ..< batchSize).map { _ in trainingRange.lowerBound + random.uniformIndex(below: trainingRange.count - sequenceLength) }
    }

    /// The number of validation windows, ⌊(N_val − 1)/T⌋.
    var validationWindowCount: Int {
        validationRange.isEmpty ? 0 : (validationRange.count - 1) / sequenceLength
    }

    /// The number of validation batches, ⌈windows / B⌉.
    var validationBatchCount: Int { (validationWindowCount + batchSize - 1) / batchSize }

    /// The validation batches in order (at most `maximumBatches` of them): the same every call.
    func validationBatches(maximumBatches: Int? = nil) -> [TrainingBatch] {
        let windows = validationWindowCount
        let count = min(validationBatchCount, maximumBatches ?? .max)
        return (0 ..< count).map { batchIndex in
            let first = batchIndex * batchSize
            let starts = (first ..< min(first + batchSize, windows)).map { validationRange.lowerBound + $0 * sequenceLength }
            return makeBatch(starts: starts)
        }
    }

    /// Windows of T + 1 tokens at `starts`, as inputs/targets/domains.
    func makeBatch(starts: [Int]) -> TrainingBatch {
        let tokens = dataset.tokens
        let t = sequenceLength
        let inputs = starts.map { start in (start ..< start + t).map { Int(tokens[$0]) } }
        let targets = starts.map { start in (start + 1 ... start + t).map { Int(tokens[$0]) } }
        var domains: [[Int]]?
        if let labels = dataset.domains {
            domains = starts.map { start in
                (start ..< start + t).map { labels[$0] == DomainLabels.unlabelled ? -1 : Int(labels[$0]) }
            }
        }
        return TrainingBatch(inputs: inputs, targets: targets, domains: domains)
    }
}

extension SeededRandom {
    /// Uniform in [0, n) by Lemire's multiply-high (bias < n/2⁶⁴, negligible here), the same on
    /// every platform — unlike `Int.random(in:using:)`, whose algorithm the standard library may change.
    mutating func uniformIndex(below n: Int) -> Int {
        precondition(n > 0)
        return Int(UInt64(n).multipliedFullWidth(by: next()).high)
    }
}
