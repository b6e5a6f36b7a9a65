import Foundation

/// Errors of training: data files, options, router configurations that cannot be trained, resume state.
public enum TrainingError: Error, Equatable, LocalizedError {
    /// A router configuration the training backward pass does not differentiate.
    case unsupportedRouter(reason: String)
    /// A data file that cannot be used (path, what is wrong).
    case invalidData(path: String, reason: String)
    /// A bad training option (which, why).
    case invalidOption(name: String, reason: String)
    /// Optimiser/resume state that does not match the model or is damaged (path, what).
    case invalidState(path: String, reason: String)
    /// The loss became NaN or infinite (the step, the value) — lower the learning rate.
    case nonFiniteLoss(step: Int, loss: Float)
    /// The gradient's norm was NaN or infinite at this step (nothing was updated).
    case nonFiniteGradient(step: Int)

    public var errorDescription: String? {
        switch self {
        case let .unsupportedRouter(reason): return "router cannot be trained: \(reason)"
        case let .invalidData(path, reason): return "\(path): \(reason)"
        case let .invalidOption(name, reason): return "--\(name): \(reason)"
        case let .invalidState(path, reason): return "\(path): \(reason)"
        case let .nonFiniteLoss(step, loss): return "step \(step): the loss is \(loss); training diverged (try a lower --lr or a longer --warmup)"
        case let .nonFiniteGradient(step): return "step \(step): the gradient is not finite; training diverged (try a lower --lr or a longer --warmup)"
        }
    }
}
