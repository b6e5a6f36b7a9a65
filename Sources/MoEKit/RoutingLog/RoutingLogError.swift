import Foundation

/// Everything that can go wrong reading or writing a routing log, each naming the file and, where
/// there is one, the dataset, attribute, step or layer.
public enum RoutingLogError: Error, LocalizedError, Equatable, Sendable {
    /// The path cannot be opened or created (missing, permissions, locked by a crashed writer…).
    case cannotOpen(file: String, reason: String)
    /// The file exists but is not an HDF5 file (or is damaged beyond HDF5 recognising it).
    case notHDF5(file: String)
    /// An HDF5 file, but not a MoEKit routing log (no `format = "moekit-routing"` root attribute).
    case notARoutingLog(file: String, reason: String)
    /// A routing log written by a newer MoEKit with a schema this build does not know.
    case newerVersion(file: String, found: Int64, supported: Int64)
    /// A root attribute is missing, of the wrong type, or out of range.
    case invalidAttribute(file: String, attribute: String, reason: String)
    /// A schema dataset is missing.
    case missingDataset(file: String, dataset: String)
    /// A schema dataset has the wrong rank, shape or element type.
    case invalidDataset(file: String, dataset: String, reason: String)
    /// `create` was asked for a path that already exists (use replace or append).
    case alreadyExists(file: String)
    /// `append` to a log whose `num_layers`, `num_experts`, `top_k` or per-token trace differ.
    case incompatibleAppend(file: String, field: String, existing: String, requested: String)
    /// A step handed to the writer is malformed (wrong array sizes, negative counts…).
    case invalidStep(file: String, step: Int, layer: Int?, reason: String)
    /// Σ_expert expert_counts ≠ tokens · k − dropped for one step and layer.
    case invariantViolated(file: String, step: Int, layer: Int, countSum: Int, expected: Int)
    /// Step indices must increase strictly along the step axis.
    case stepOutOfOrder(file: String, step: Int, previous: Int)
    /// A read asked for a step row or layer the log does not hold.
    case outOfRange(file: String, what: String, index: Int, available: Int)
    /// An HDF5 call failed; `object` names the dataset or attribute, `reason` is HDF5's own message.
    case hdf5(file: String, operation: String, object: String, reason: String)
    /// The writer was used after `close()`.
    case closed(file: String)
    /// `RoutingTracer` was given a dense model: there is no routing to log.
    case notMoEModel(model: String)
    /// `RoutingTracer` was given an expert-choice router, which has no fixed k per token.
    case expertChoiceRouter(model: String)

    public var errorDescription: String? {
        switch self {
        case let .cannotOpen(file, reason):
            return "\(file): cannot open routing log: \(reason)"
        case let .notHDF5(file):
            return "\(file): not an HDF5 file (corrupt, truncated or another format)"
        case let .notARoutingLog(file, reason):
            return "\(file): HDF5 file but not a MoEKit routing log: \(reason)"
        case let .newerVersion(file, found, supported):
            return "\(file): routing log schema version \(found) is newer than this MoEKit supports (\(supported)); upgrade MoEKit"
        case let .invalidAttribute(file, attribute, reason):
            return "\(file): attribute '\(attribute)': \(reason)"
        case let .missingDataset(file, dataset):
            return "\(file): dataset '\(dataset)' is missing"
        case let .invalidDataset(file, dataset, reason):
            return "\(file): dataset '\(dataset)': \(reason)"
        case let .alreadyExists(file):
            return "\(file): already exists; pass --force to replace it or --append to continue its step axis"
        case let .incompatibleAppend(file, field, existing, requested):
            return "\(file): cannot append: the log has \(field) = \(existing), this run has \(requested)"
        case let .invalidStep(file, step, layer, reason):
            return "\(file): step \(step)\(layer.map { ", layer \($0)" } ?? ""): \(reason)"
        case let .invariantViolated(file, step, layer, countSum, expected):
            return "\(file): step \(step), layer \(layer): expert counts sum to \(countSum), but tokens · k − dropped = \(expected)"
        case let .stepOutOfOrder(file, step, previous):
            return "\(file): step \(step) does not follow step \(previous) (step indices must increase)"
        case let .outOfRange(file, what, index, available):
            return "\(file): \(what) \(index) out of range (the log holds \(available))"
        case let .hdf5(file, operation, object, reason):
            return "\(file): \(operation) '\(object)' failed: \(reason)"
        case let .closed(file):
            return "\(file): routing log writer already closed"
        case let .notMoEModel(model):
            return "\(model): trace needs a MiniCPM-MoE model (config.json has no num_experts)"
        case let .expertChoiceRouter(model):
            return "\(model): expert-choice routing has no fixed k per token, which routing logs (schema 1) require; trace it with a top-k router"
        }
    }
}
