import ArgumentParser
import Foundation
import MoEKit

/// The ranges numeric options are checked against in `validate()`, so a value such as
/// `--batch 9223372036854775807` is a one-line usage error before anything is sized by it.
/// Counts that size memory are also checked against an estimate of the run's memory need
/// (`MemoryEstimate`) once the model's config is known.
enum OptionRanges {
    static let threads = 1 ... 1024
    static let experts = 2 ... ConfigLimits.numExperts
    static let layers = 1 ... ConfigLimits.numHiddenLayers
    static let tokensPerCall = 1 ... (1 << 24)
    static let sequenceLength = 1 ... ConfigLimits.maxPositionEmbeddings
    static let batch = 1 ... TrainingOptions.maximumBatchSize
    static let steps = 1 ... TrainingOptions.maximumSteps
    static let repeats = 1 ... 100_000
    static let decodeSteps = 0 ... (1 << 16)
    static let corpusTokens = 1 ... (1 << 31)

    /// Throws a usage error unless `range` holds `value`.
    static func check<Value: Comparable>(_ option: String, _ value: Value, _ range: ClosedRange<Value>) throws {
        guard range.contains(value) else {
            throw ValidationError("\(option) must be in \(range.lowerBound)...\(range.upperBound), got \(value)")
        }
    }

    /// Throws a usage error unless `value` is finite and in `range`.
    static func check(_ option: String, _ value: Double, _ range: ClosedRange<Double>) throws {
        guard value.isFinite, range.contains(value) else {
            throw ValidationError("\(option) must be a finite number in \(range.lowerBound)...\(range.upperBound), got \(value)")
        }
    }

    /// Refuses a run whose estimated memory (from the model directory's config.json) exceeds the
    /// machine's, before the model is loaded.
    static func checkMemory(modelDirectory: String, what: String, estimate: (MiniCPMConfig) -> Int) throws {
        let config = try MiniCPMConfig(path: modelDirectory + "/config.json")
        try MemoryEstimate.check(estimate(config), for: what)
    }

    /// Refuses `--compute bf16` on a loaded (mapped) model when the bf16 copies of its f32 or f16
    /// matrices, added to the run's estimate, exceed the machine's memory: checked before
    /// `forCompute` allocates them. A bf16 checkpoint needs no copies.
    static func checkMemory(forCompute precision: ComputePrecision, model: MiniCPMModel, what: String, estimate: (MiniCPMConfig) -> Int) throws {
        let copies = model.weights.bytesAllocated(forCompute: precision)
        guard copies > 0 else { return }
        try MemoryEstimate.check(MemoryEstimate.sum(estimate(model.config), copies),
                                 for: "\(what) with --compute bf16 (bf16 copies of the checkpoint's f32/f16 matrices: \(ByteSize.format(copies)); `moekit convert --dtype bf16` makes a checkpoint that needs none)")
    }
}
