import Foundation

/// A learning-rate schedule: the base learning rate η_s of every optimiser step s.
///
/// Steps count from 0: `learningRate(at: s)` is the rate of the (s+1)-th update, which is
/// `AdamW.stepCount == s` before the call. With W warmup steps, S total steps and D decay steps:
///
/// - **warmup** (s < W): η·(s+1)/W — linear, reaching η on step W−1 (no update is wasted at 0);
/// - **constant**: η after warmup;
/// - **Warmup-Stable-Decay** (MiniCPM, arXiv 2404.06395 §4.2):
///   WSD(T; s) = η for W ≤ s < T, then f(s − T)·η for T ≤ s < S, with T = S − D,
///   D = round(`decayFraction`·S) (the paper finds ~10 % of the steps enough, 2.5 % not). With
///   progress p = min(1, (s − T + 1)/D) so the last step ends exactly on the final ratio r:
///   - exponential: f = r^p. The paper's exponential decay is "f(s − T) = 0.5^((s−S)/T)" with T a
///     half-life (its symbols are overloaded: read it as a halving every T_half steps from the start
///     of the decay, which is what OpenBMB's `WarmupStableExp` computes,
///     `lr · drop_rate^((s − drop_begin)/drop_iter)` with drop_rate 0.5 and drop_iter the half-life).
///     r^p is the same curve with T_half = D·ln 2 / ln(1/r) (`exponentialHalfLife`), named by where
///     it ends rather than by how fast it falls;
///   - linear: f = 1 − (1 − r)·p (OpenBMB's `WarmupStableDrop`: `lr·(0.1 + 0.9·(end − s)/drop_iter)`, i.e. r = 0.1);
/// - **cosine** (for comparison): for s ≥ W, p = min(1, (s − W + 1)/(S − W)),
///   η·(r + (1 − r)·(1 + cos πp)/2), from η down to r·η on the last step (OpenBMB's `Cosine` uses r = 0.1).
///
/// Past the last step every schedule stays at its final value.
public enum LearningRateSchedule: Sendable, Equatable {
    /// η after a linear warmup of `warmupSteps`.
    case constant(peak: Float, warmupSteps: Int)
    /// MiniCPM's Warmup-Stable-Decay.
    case warmupStableDecay(peak: Float, warmupSteps: Int, totalSteps: Int, decayFraction: Double, decay: DecayShape, finalRatio: Float)
    /// Linear warmup, then half a cosine from η to `finalRatio`·η at the last step.
    case cosine(peak: Float, warmupSteps: Int, totalSteps: Int, finalRatio: Float)

    /// The shape of WSD's decay phase.
    public enum DecayShape: String, Sendable, CaseIterable {
        case exponential, linear
    }

    /// Which part of the schedule a step is in (for logging, e.g. comparing the stable and decay
    /// phases' losses).
    public enum Phase: String, Sendable {
        case warmup, stable, decay
    }

    /// The names `init(named:…)` takes: `wsd` (exponential decay), `wsd-linear`, `cosine`, `constant`.
    public static let names = ["wsd", "wsd-linear", "cosine", "constant"]

    /// The schedule a CLI names (`--schedule wsd|wsd-linear|cosine|constant`), validated. Fields a
    /// schedule does not use are ignored (`decayFraction` outside WSD, `totalSteps` and
    /// `finalRatio` for constant).
    public init(named name: String, peak: Float, warmupSteps: Int, totalSteps: Int, decayFraction: Double = 0.1,
                finalRatio: Float = 0.1) throws(TrainingError) {
        switch name {
        case "wsd", "wsd-exponential":
            self = .warmupStableDecay(peak: peak, warmupSteps: warmupSteps, totalSteps: totalSteps, decayFraction: decayFraction,
                                      decay: .exponential, finalRatio: finalRatio)
        case "wsd-linear":
            self = .warmupStableDecay(peak: peak, warmupSteps: warmupSteps, totalSteps: totalSteps, decayFraction: decayFraction,
                                      decay: .linear, finalRatio: finalRatio)
        case "cosine":
            self = .cosine(peak: peak, warmupSteps: warmupSteps, totalSteps: totalSteps, finalRatio: finalRatio)
        case "constant":
            self = .constant(peak: peak, warmupSteps: warmupSteps)
        default:
            throw .invalidOption(name: "schedule", reason: "unknown schedule '\(name)'; choose one of \(Self.names.joined(separator: ", "))")
        }
        try validate()
    }

    /// MiniCPM's recipe: WSD with exponential decay over the last 10 % of the steps to 0.1·η.
    static func minicpm(peak: Float, warmupSteps: Int, totalSteps: Int) -> LearningRateSchedule {
        .warmupStableDecay(peak: peak, warmupSteps: warmupSteps, totalSteps: totalSteps, decayFraction: 0.1, decay: .exponential, finalRatio: 0.1)
    }

    public var peak: Float {
        switch self {
        case let .constant(peak, _), let .warmupStableDecay(peak, _, _, _, _, _), let .cosine(peak, _, _, _): return peak
        }
    }

    public var warmupSteps: Int {
        switch self {
        case let .constant(_, warmup), let .warmupStableDecay(_, warmup, _, _, _, _), let .cosine(_, warmup, _, _): return warmup
        }
    }

    /// D, the number of WSD decay steps, round(decayFraction·S); 0 for the other schedules.
    var decaySteps: Int {
        guard case let .warmupStableDecay(_, _, total, fraction, _, _) = self else { return 0 }
        return Int((fraction * Double(total)).rounded())
    }

    /// For WSD with exponential decay, the half-life D·ln 2 / ln(1/r) in steps (the paper's T_half);
    /// `nil` otherwise.
    var exponentialHalfLife: Double? {
        guard case let .warmupStableDecay(_, _, _, _, .exponential, ratio) = self, ratio > 0, ratio < 1 else { return nil }
        return Double(decaySteps) * Foundation.log(2) / Foundation.log(1 / Double(ratio))
    }

    /// Checks the fields: η > 0 finite, 0 ≤ W, S ≥ 1, 0 ≤ decayFraction ≤ 1, 0 ≤ r ≤ 1 (r > 0 for
    /// an exponential decay), W + D ≤ S (WSD) or W < S (cosine). Errors name the CLI flag.
    public func validate() throws(TrainingError) {
        guard peak.isFinite, peak > 0 else { throw .invalidOption(name: "lr", reason: "must be positive, got \(peak)") }
        guard warmupSteps >= 0 else { throw .invalidOption(name: "warmup", reason: "must be ≥ 0, got \(warmupSteps)") }
        switch self {
        case .constant:
            break
        case let .warmupStableDecay(_, warmup, total, fraction, decay, ratio):
            guard total >= 1 else { throw .invalidOption(name: "steps", reason: "must be ≥ 1, got \(total)") }
            guard fraction.isFinite, fraction >= 0, fraction <= 1 else {
                throw .invalidOption(name: "decay-fraction", reason: "must be in [0, 1], got \(fraction)")
            }
            try Self.validateRatio(ratio, exponential: decay == .exponential)
            guard warmup + decaySteps <= total else {
                throw .invalidOption(name: "warmup", reason: "\(warmup) warmup steps and \(decaySteps) decay steps do not fit in \(total) steps")
            }
        case let .cosine(_, warmup, total, ratio):
            guard total >= 1 else { throw .invalidOption(name: "steps", reason: "must be ≥ 1, got \(total)") }
            try Self.validateRatio(ratio, exponential: false)
            guard warmup < total else { throw .invalidOption(name: "warmup", reason: "\(warmup) warmup steps leave no cosine phase in \(total) steps") }
        }
    }

    private static func validateRatio(_ ratio: Float, exponential: Bool) throws(TrainingError) {
        guard ratio.isFinite, ratio >= 0, ratio <= 1 else { throw .invalidOption(name: "final-lr-ratio", reason: "must be in [0, 1], got \(ratio)") }
        guard !exponential || ratio > 0 else {
            throw .invalidOption(name: "final-lr-ratio", reason: "an exponential decay cannot reach 0; use a positive ratio or a linear decay")
        }
    }

    /// η_s, the learning rate of step `step` (0-based). Assumes `validate()` passed.
    public func learningRate(at step: Int) -> Float {
        precondition(step >= 0, "steps count from 0")
        let warmup = warmupSteps
        if step < warmup { return peak * Float(step + 1) / Float(warmup) }
        switch self {
        case .constant:
            return peak
        case let .warmupStableDecay(peak, _, total, _, decay, ratio):
            let decayLength = decaySteps
            let decayStart = total - decayLength
            guard step >= decayStart, decayLength > 0 else { return peak }
            let progress = min(1, Double(step - decayStart + 1) / Double(decayLength))
            switch decay {
            case .exponential: return peak * Float(Foundation.pow(Double(ratio), progress))
            case .linear: return peak * Float(1 - (1 - Double(ratio)) * progress)
            }
        case let .cosine(peak, warmup, total, ratio):
            let progress = min(1, Double(step - warmup + 1) / Double(total - warmup))
            let r = Double(ratio)
            return peak * Float(r + (1 - r) * (1 + Foundation.cos(Double.pi * progress)) / 2)
        }
    }

    /// The phase of `step`: warmup before W; for WSD decay from T = S − D on; for cosine every
    /// post-warmup step is decay; constant is stable after warmup.
    public func phase(at step: Int) -> Phase {
        if step < warmupSteps { return .warmup }
        switch self {
        case .constant: return .stable
        case let .warmupStableDecay(_, _, total, _, _, _): return decaySteps > 0 && step >= total - decaySteps ? .decay : .stable
        case .cosine: return .decay
        }
    }
}

extension LearningRateSchedule: CustomStringConvertible {
    /// One line for logs, e.g. `wsd η=0.01: warmup 10, stable to step 90, exponential decay over 10 steps to 0.1η`.
    public var description: String {
        switch self {
        case let .constant(peak, warmup):
            return "constant η=\(peak)" + (warmup > 0 ? ": warmup \(warmup)" : "")
        case let .warmupStableDecay(peak, warmup, total, _, decay, ratio):
            return "wsd η=\(peak): warmup \(warmup), stable to step \(total - decaySteps), \(decay.rawValue) decay over \(decaySteps) steps to \(ratio)η"
        case let .cosine(peak, warmup, total, ratio):
            return "cosine η=\(peak): warmup \(warmup), cosine to \(ratio)η at step \(total - 1)"
        }
    }
}
