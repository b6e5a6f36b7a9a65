import Foundation

/// Everything that can stop an upcycling run: bad options, an unsuitable dense checkpoint, a
/// failed write or a failed function-preservation check. Each message names the directory and
/// the option, field or tensor at fault. No run that throws leaves `OUT_DIR` behind.
public enum UpcycleError: Error, LocalizedError, Equatable, Sendable {
    /// An option out of range (`--experts 1`, `--top-k 9 --experts 8`, …).
    case invalidOption(option: String, reason: String)
    /// The dense intermediate size cannot be split as the method needs.
    case indivisibleIntermediateSize(directory: String, intermediateSize: Int, parts: Int, option: String)
    /// The input is already a mixture-of-experts checkpoint.
    case alreadyMoE(directory: String, evidence: String)
    /// A tensor the method computes on has a storage type MoEKit cannot convert or write.
    case unsupportedDType(directory: String, tensor: String, dtype: String)
    /// The dense checkpoint is missing, unreadable, or inconsistent with its config.
    case checkpoint(CheckpointError)
    /// Writing a shard of the output failed.
    case safetensors(SafetensorsError)
    /// Creating, copying into or renaming the output directory failed.
    case file(FileError)
    /// Writing the output failed.
    case write(directory: String, reason: String)
    /// `--verify` found the upcycled model's logits too far from the dense model's.
    case verificationFailed(directory: String, tokens: Int, maxRelativeDifference: Float, tolerance: Float)
    /// `--verify` could not run the forward pass.
    case verificationUnavailable(reason: String)

    public var errorDescription: String? {
        switch self {
        case let .invalidOption(option, reason):
            return "\(option): \(reason)"
        case let .indivisibleIntermediateSize(directory, size, parts, option):
            return "\(directory)/config.json: intermediate_size \(size) is not divisible by \(parts) (\(option)); each expert must get the same number of neurons"
        case let .alreadyMoE(directory, evidence):
            return "\(directory): already a mixture-of-experts checkpoint (\(evidence)); upcycle a dense MiniCPM checkpoint"
        case let .unsupportedDType(directory, tensor, dtype):
            return "\(directory): tensor '\(tensor)' is stored as \(dtype), which this method cannot compute on; pass --dtype bf16|f16|f32"
        case let .checkpoint(error):
            return error.errorDescription
        case let .safetensors(error):
            return error.errorDescription
        case let .file(error):
            return error.errorDescription
        case let .write(directory, reason):
            return "\(directory): write failed: \(reason)"
        case let .verificationFailed(directory, tokens, difference, tolerance):
            return "\(directory): verification failed: on \(tokens) tokens the upcycled logits differ from the dense logits by \(difference) (max relative), above the tolerance \(tolerance); nothing was written"
        case let .verificationUnavailable(reason):
            return "--verify: \(reason)"
        }
    }
}
