import Foundation

/// Every knob of a `moekit train` run, in one record (the CLI fills it; `Trainer` runs it).
///
/// Defaults follow MiniCPM: AdamW (β₁ 0.9, β₂ 0.95, weight decay 0.1), gradient clipping at 1,
/// Warmup-Stable-Decay with exponential decay over the last 10 % of the steps to 0.1·η, the
/// tensor-program learning-rate rule for hidden matrices, and the router's own auxiliary-loss
/// coefficients (MiniCPM-MoE: load balancing 0.01, no z-loss) unless overridden.
public struct TrainingOptions: Sendable, Equatable {
    // MARK: Length and batches

    /// Optimiser steps in the whole run (a resumed run continues to this count).
    public var steps: Int
    /// B, sequences per batch.
    public var batchSize: Int
    /// T, tokens per sequence.
    public var sequenceLength: Int
    /// Seed of the batch sampler (batches are a pure function of seed and step) and of router noise.
    public var seed: UInt64 = 0

    // MARK: Learning rate

    public enum ScheduleKind: String, Sendable, CaseIterable { case wsd, cosine, constant }
    /// η, the peak learning rate (before per-tensor multipliers).
    public var learningRate: Float
    public var schedule: ScheduleKind = .wsd
    /// Linear warmup steps. `nil`: 1 % of the steps (at least 1).
    public var warmupSteps: Int?
    /// WSD: the share of the steps spent decaying (MiniCPM: about 10 %).
    public var decayFraction: Double = 0.1
    /// WSD: exponential (MiniCPM) or linear decay.
    public var decayShape: LearningRateSchedule.DecayShape = .exponential
    /// WSD and cosine: the learning rate at the last step, as a fraction of η.
    public var finalLearningRateRatio: Float = 0.1
    /// Apply MiniCPM's tensor-program rule (hidden matrices' η divided by hidden/dim_model_base).
    public var tensorProgram = true

    // MARK: Optimiser

    public var weightDecay: Float = 0.1
    /// Clip the gradient's global L2 norm to this; `nil`: no clipping.
    public var maxGradientNorm: Float? = 1
    public var beta1: Float = 0.9
    public var beta2: Float = 0.95

    // MARK: Router (MoE models)

    /// Replaces the router configuration of the model's config.json (`--router`).
    public var router: RouterConfiguration?
    /// Overrides the load-balancing loss coefficient (`--aux-loss`).
    public var auxiliaryLossCoefficient: Float?
    /// Overrides the z-loss coefficient (`--z-loss`).
    public var zLossCoefficient: Float?

    // MARK: Gradient accumulation and balancing granularity

    /// N, micro-batches per optimiser step (`--accumulate`): the B sequences of a step are split
    /// into N micro-batches of B/N, each run forward and backward in turn, and their gradients
    /// summed into the gradient of the global batch's objective (`MiniCPMModel.MicroBatch`).
    public var accumulationSteps = 1
    /// Over which tokens load balancing pools f_i and P_i (`--balance`, see `RouterLoss.Balance`).
    public var balance: RouterLoss.Balance = .micro

    // MARK: Data, evaluation, saving

    /// Raw `.bin` element type; `nil` picks by vocabulary size (see `TokenDataType.defaultFor`).
    public var binaryDataType: TokenDataType?
    /// The share of the data (from its end) held out for validation; 0: none.
    public var validationFraction: Double = 0
    /// Evaluate on the held-out data every this many steps (and after the last); 0: only after the last.
    public var evaluationInterval: Int = 0
    /// At most this many validation batches per evaluation.
    public var validationBatches: Int = 8
    /// Save OUT_DIR every this many steps (and after the last); 0: only after the last.
    public var saveInterval: Int = 0

    public init(steps: Int, batchSize: Int, sequenceLength: Int, learningRate: Float) {
        self.steps = steps
        self.batchSize = batchSize
        self.sequenceLength = sequenceLength
        self.learningRate = learningRate
    }

    /// The warmup actually used.
    public var effectiveWarmupSteps: Int { warmupSteps ?? max(1, steps / 100) }

    /// The learning-rate schedule these options describe.
    public var learningRateSchedule: LearningRateSchedule {
        switch schedule {
        case .wsd:
            return .warmupStableDecay(peak: learningRate, warmupSteps: effectiveWarmupSteps, totalSteps: steps,
                                      decayFraction: decayFraction, decay: decayShape, finalRatio: finalLearningRateRatio)
        case .cosine:
            return .cosine(peak: learningRate, warmupSteps: effectiveWarmupSteps, totalSteps: steps, finalRatio: finalLearningRateRatio)
        case .constant:
            return .constant(peak: learningRate, warmupSteps: effectiveWarmupSteps)
        }
    }

    var adamWOptions: AdamWOptions {
        AdamWOptions(beta1: beta1, beta2: beta2, weightDecay: weightDecay, maxGradientNorm: maxGradientNorm)
    }

    /// Checks every option; the error names the command-line option.
    /// Upper bounds on the sizes, checked before anything is sized by them.
    public static let maximumSteps = 1 << 40
    public static let maximumBatchSize = 1 << 16
    public static let maximumTokensPerStep = 1 << 24

    public func validate() throws(TrainingError) {
        guard steps >= 1, steps <= Self.maximumSteps else { throw .invalidOption(name: "steps", reason: "must be in 1...\(Self.maximumSteps), got \(steps)") }
        guard batchSize >= 1, batchSize <= Self.maximumBatchSize else {
            throw .invalidOption(name: "batch", reason: "must be in 1...\(Self.maximumBatchSize), got \(batchSize)")
        }
        guard sequenceLength >= 1, sequenceLength <= ConfigLimits.maxPositionEmbeddings else {
            throw .invalidOption(name: "seq", reason: "must be in 1...\(ConfigLimits.maxPositionEmbeddings), got \(sequenceLength)")
        }
        guard batchSize * sequenceLength <= Self.maximumTokensPerStep else {
            throw .invalidOption(name: "batch", reason: "× --seq is \(batchSize * sequenceLength) tokens per step, above the limit of \(Self.maximumTokensPerStep)")
        }
        guard validationBatches <= Self.maximumBatchSize else {
            throw .invalidOption(name: "val-batches", reason: "must be at most \(Self.maximumBatchSize), got \(validationBatches)")
        }
        guard learningRate.isFinite, learningRate > 0 else { throw .invalidOption(name: "lr", reason: "must be a positive number, got \(learningRate)") }
        if let warmupSteps, warmupSteps < 0 || warmupSteps > steps {
            throw .invalidOption(name: "warmup", reason: "must be in 0...\(steps) (--steps), got \(warmupSteps)")
        }
        guard evaluationInterval >= 0 else { throw .invalidOption(name: "eval-every", reason: "must be ≥ 0, got \(evaluationInterval)") }
        guard validationBatches >= 1 else { throw .invalidOption(name: "val-batches", reason: "must be ≥ 1, got \(validationBatches)") }
        guard saveInterval >= 0 else { throw .invalidOption(name: "save-every", reason: "must be ≥ 0, got \(saveInterval)") }
        if let auxiliaryLossCoefficient, !(auxiliaryLossCoefficient.isFinite && auxiliaryLossCoefficient >= 0) {
            throw .invalidOption(name: "aux-loss", reason: "must be a finite number ≥ 0, got \(auxiliaryLossCoefficient)")
        }
        if let zLossCoefficient, !(zLossCoefficient.isFinite && zLossCoefficient >= 0) {
            throw .invalidOption(name: "z-loss", reason: "must be a finite number ≥ 0, got \(zLossCoefficient)")
        }
        guard accumulationSteps >= 1, accumulationSteps <= batchSize, batchSize % accumulationSteps == 0 else {
            throw .invalidOption(name: "accumulate", reason: "must divide --batch \(batchSize) into equal micro-batches (1...\(batchSize)), got \(accumulationSteps)")
        }
        try adamWOptions.validate()
        try learningRateSchedule.validate()
    }

    /// What a saved trainer state without a key (written before the option existed) ran with.
    static let resumeDefaults = ["accumulate": "1", "balance": RouterLoss.Balance.micro.rawValue]

    /// The options that must not change when a run is resumed, by command-line name, as text.
    var resumeSignature: [String: String] {
        var signature: [String: String] = [
            "steps": "\(steps)", "batch": "\(batchSize)", "seq": "\(sequenceLength)", "seed": "\(seed)",
            "lr": "\(learningRate)", "schedule": schedule.rawValue, "warmup": "\(effectiveWarmupSteps)",
            "weight-decay": "\(weightDecay)", "clip": maxGradientNorm.map { "\($0)" } ?? "none",
            "validation-fraction": "\(validationFraction)", "tensor-program": "\(tensorProgram)",
            "accumulate": "\(accumulationSteps)", "balance": balance.rawValue,
        ]
        if schedule == .wsd {
            signature["decay-fraction"] = "\(decayFraction)"
            signature["decay"] = decayShape.rawValue
        }
        if schedule != .constant { signature["final-lr-ratio"] = "\(finalLearningRateRatio)" }
        return signature
    }
}
