import CHDF5
import Foundation

/// The root attributes of a routing log (schema versions 1 to 3, see docs/routing-log.md).
///
/// Version 2 adds what training logs need; a log that uses none of it is written as version 1,
/// so `trace` logs stay readable by version-1 readers:
/// - `training` logs carry `/steps/lm_loss`, `/steps/grad_norm` and `/steps/val_loss`;
/// - `domains` (non-empty) adds `/routing/domain_counts` `[step, layer, domain, expert]`;
/// - a dense model's training log has `num_layers = num_experts = top_k = 0` and no `/routing`.
///
/// Version 3 adds logs of routers whose number of active experts varies per token (ReMoE's ReLU
/// routing), written as version 3 only when `variableActiveExperts` is set: root attribute
/// `variable_k = 1`, `/routing/active_experts` `[step, layer, E + 1]` (tokens with exactly n active
/// experts), per-token rows of E slots, and `top_k` then the target k (sparsity 1 − k/E).
public struct RoutingLogHeader: Sendable, Equatable {
    /// MoE layers (0 for a dense model's training log).
    public var numLayers: Int
    /// Experts per MoE layer (0 for a dense model's training log).
    public var numExperts: Int
    /// Experts per token (0 for a dense model's training log).
    public var topK: Int
    /// A short description of the router (e.g. "top-2 softmax, aux 0.01").
    public var router: String
    /// The model's config.json text.
    public var modelConfig: String
    /// The model path the log was produced from.
    public var source: String
    /// Creation time, ISO 8601 (UTC).
    public var created: String
    /// Whether the log has the per-token trace (`/tokens/*`).
    public var perToken: Bool
    /// Whether the log has the training columns (`/steps/lm_loss`, `/steps/grad_norm`, `/steps/val_loss`).
    public var training: Bool
    /// Names of the data's domains, in domain-id order; non-empty adds `/routing/domain_counts`.
    public var domains: [String]
    /// True when a token's number of active experts varies (ReLU routing): `topK` is the target k,
    /// each layer row carries the active-experts histogram, and per-token rows have E slots.
    public var variableActiveExperts: Bool
    /// Schema version: 3 with variable active experts, 2 when the log uses a version-2 feature
    /// (training columns, domains, a dense model), else 1.
    public var version: Int

    /// Slots of a per-token row: k, or E with variable active experts.
    public var slotsPerToken: Int { variableActiveExperts ? numExperts : topK }

    /// True for a dense model's training log: no MoE layers, no `/routing` group.
    public var isDense: Bool { numExperts == 0 }

    public init(numLayers: Int, numExperts: Int, topK: Int, router: String, modelConfig: String, source: String,
                created: Date = Date(), perToken: Bool = false, training: Bool = false, domains: [String] = [],
                variableActiveExperts: Bool = false) {
        self.numLayers = numLayers
        self.numExperts = numExperts
        self.topK = topK
        self.router = router
        self.modelConfig = modelConfig
        self.source = source
        self.created = ISO8601DateFormatter().string(from: created)
        self.perToken = perToken
        self.training = training
        self.domains = domains
        self.variableActiveExperts = variableActiveExperts
        self.version = variableActiveExperts ? 3 : training || !domains.isEmpty || numExperts == 0 ? 2 : 1
    }
}

/// Schema version 1: names, element types and shapes of every dataset. The step axis (or token
/// axis for `/tokens/*`) is the first, unlimited, dimension; the trailing dimensions are fixed.
enum RoutingLogSchema {
    static let format = "moekit-routing"
    /// The newest version this build reads and writes.
    static let version: Int64 = 3

    enum Axis { case steps, tokens }

    struct Dataset {
        let name: String
        let axis: Axis
        /// On-disk type (little-endian, fixed width).
        let fileType: hid_t
        let isFloatingPoint: Bool
        let trailingShape: [Int]
    }

    static let expertCounts = "/routing/expert_counts"
    static let probabilityMean = "/routing/prob_mean"
    static let auxLoss = "/routing/aux_loss"
    static let zLoss = "/routing/z_loss"
    static let entropy = "/routing/entropy"
    static let dropped = "/routing/dropped"
    static let coactivation = "/routing/coactivation"
    static let domainCounts = "/routing/domain_counts"
    static let activeExperts = "/routing/active_experts"
    static let step = "/steps/step"
    static let tokens = "/steps/tokens"
    static let loss = "/steps/loss"
    static let learningRate = "/steps/lr"
    static let languageModelLoss = "/steps/lm_loss"
    static let gradientNorm = "/steps/grad_norm"
    static let validationLoss = "/steps/val_loss"
    static let tokenIDs = "/tokens/ids"
    static let tokenSequence = "/tokens/sequence"
    static let tokenPosition = "/tokens/position"
    static let tokenExperts = "/tokens/experts"
    static let tokenWeights = "/tokens/weights"

    static let routingGroup = "/routing"
    static let stepsGroup = "/steps"
    static let tokenGroup = "/tokens"

    /// The groups a log with this header has.
    static func groups(for header: RoutingLogHeader) -> [String] {
        (header.isDense ? [] : [routingGroup]) + [stepsGroup] + (header.perToken ? [tokenGroup] : [])
    }

    /// Every dataset of a log with this header, step-axis datasets first, `/steps/*` last (the
    /// writer writes in this order, so the step columns are the last thing a step adds).
    static func datasets(for header: RoutingLogHeader) -> [Dataset] {
        let layers = header.numLayers, experts = header.numExperts, topK = header.slotsPerToken
        let i64 = moekit_H5T_STD_I64LE(), f32 = moekit_H5T_IEEE_F32LE()
        var all: [Dataset] = header.isDense ? [] : [
            Dataset(name: expertCounts, axis: .steps, fileType: i64, isFloatingPoint: false, trailingShape: [layers, experts]),
            Dataset(name: probabilityMean, axis: .steps, fileType: f32, isFloatingPoint: true, trailingShape: [layers, experts]),
            Dataset(name: auxLoss, axis: .steps, fileType: f32, isFloatingPoint: true, trailingShape: [layers]),
            Dataset(name: zLoss, axis: .steps, fileType: f32, isFloatingPoint: true, trailingShape: [layers]),
            Dataset(name: entropy, axis: .steps, fileType: f32, isFloatingPoint: true, trailingShape: [layers]),
            Dataset(name: dropped, axis: .steps, fileType: i64, isFloatingPoint: false, trailingShape: [layers]),
            Dataset(name: coactivation, axis: .steps, fileType: i64, isFloatingPoint: false, trailingShape: [layers, experts, experts]),
        ]
        if !header.isDense, !header.domains.isEmpty {
            all.append(Dataset(name: domainCounts, axis: .steps, fileType: i64, isFloatingPoint: false,
                               trailingShape: [layers, header.domains.count, experts]))
        }
        if !header.isDense, header.variableActiveExperts {
            all.append(Dataset(name: activeExperts, axis: .steps, fileType: i64, isFloatingPoint: false, trailingShape: [layers, experts + 1]))
        }
        if header.perToken {
            let i32 = moekit_H5T_STD_I32LE(), i16 = moekit_H5T_STD_I16LE()
            all += [
                Dataset(name: tokenIDs, axis: .tokens, fileType: i32, isFloatingPoint: false, trailingShape: []),
                Dataset(name: tokenSequence, axis: .tokens, fileType: i32, isFloatingPoint: false, trailingShape: []),
                Dataset(name: tokenPosition, axis: .tokens, fileType: i32, isFloatingPoint: false, trailingShape: []),
                Dataset(name: tokenExperts, axis: .tokens, fileType: i16, isFloatingPoint: false, trailingShape: [layers, topK]),
                Dataset(name: tokenWeights, axis: .tokens, fileType: f32, isFloatingPoint: true, trailingShape: [layers, topK]),
            ]
        }
        all += [
            Dataset(name: step, axis: .steps, fileType: i64, isFloatingPoint: false, trailingShape: []),
            Dataset(name: tokens, axis: .steps, fileType: i64, isFloatingPoint: false, trailingShape: []),
            Dataset(name: loss, axis: .steps, fileType: f32, isFloatingPoint: true, trailingShape: []),
            Dataset(name: learningRate, axis: .steps, fileType: f32, isFloatingPoint: true, trailingShape: []),
        ]
        if header.training {
            all += [
                Dataset(name: languageModelLoss, axis: .steps, fileType: f32, isFloatingPoint: true, trailingShape: []),
                Dataset(name: gradientNorm, axis: .steps, fileType: f32, isFloatingPoint: true, trailingShape: []),
                Dataset(name: validationLoss, axis: .steps, fileType: f32, isFloatingPoint: true, trailingShape: []),
            ]
        }
        return all
    }

    /// Rows per chunk: about 8 KiB of raw data per chunk, at most 64 step rows or 512 token rows.
    /// NOTE: every per-step flush rewrites the (recompressed) chunk being filled and HDF5 does not
    /// reuse the old space in SWMR mode, so large chunks make the file grow quadratically within a
    /// chunk; small chunks keep that waste and the flush cost low, at some cost in compression.
    static func chunkRows(for dataset: Dataset) -> Int {
        let elementBytes = dataset.fileType == moekit_H5T_STD_I16LE() ? 2 : dataset.isFloatingPoint || dataset.fileType == moekit_H5T_STD_I32LE() ? 4 : 8
        let rowBytes = max(1, dataset.trailingShape.reduce(1, *) * elementBytes)
        return max(1, min(dataset.axis == .tokens ? 512 : 64, 8192 / rowBytes))
    }

    /// Reads and validates the root attributes: a foreign file, a newer version or an
    /// out-of-range shape are typed errors.
    static func readHeader(_ file: HDF5File) throws -> RoutingLogHeader {
        let path = file.path
        guard let format = try? file.stringAttribute("format") else {
            throw RoutingLogError.notARoutingLog(file: path, reason: "no string root attribute 'format'")
        }
        guard format == Self.format else {
            throw RoutingLogError.notARoutingLog(file: path, reason: "root attribute format = \"\(format)\", expected \"\(Self.format)\"")
        }
        guard let version = try file.integerAttribute("version") else {
            throw RoutingLogError.invalidAttribute(file: path, attribute: "version", reason: "missing")
        }
        guard version <= Self.version else { throw RoutingLogError.newerVersion(file: path, found: version, supported: Self.version) }
        guard version >= 1 else { throw RoutingLogError.invalidAttribute(file: path, attribute: "version", reason: "\(version) is not a schema version") }

        // A version-2 log may be a dense model's training log: all three shape attributes 0.
        let dense = try version >= 2 && file.integerAttribute("num_experts") == 0
        func count(_ name: String, limit: Int64) throws -> Int {
            guard let value = try file.integerAttribute(name) else {
                throw RoutingLogError.invalidAttribute(file: path, attribute: name, reason: "missing")
            }
            if dense {
                guard value == 0 else {
                    throw RoutingLogError.invalidAttribute(file: path, attribute: name, reason: "\(value), but a dense log (num_experts = 0) must have 0")
                }
                return 0
            }
            guard value >= 1, value <= limit else {
                throw RoutingLogError.invalidAttribute(file: path, attribute: name, reason: "\(value) is outside 1...\(limit)")
            }
            return Int(value)
        }
        func text(_ name: String) throws -> String {
            guard let value = try file.stringAttribute(name) else {
                throw RoutingLogError.invalidAttribute(file: path, attribute: name, reason: "missing")
            }
            return value
        }
        let layers = try count("num_layers", limit: 1 << 16)
        let experts = try count("num_experts", limit: Int64(Int16.max))
        let topK = try count("top_k", limit: Int64(experts))
        var training = false
        var domains: [String] = []
        let variable = try version >= 3 && (file.integerAttribute("variable_k") ?? 0) != 0
        if version >= 2 {
            training = (try file.integerAttribute("training") ?? 0) != 0
            if let names = try file.stringAttribute("domains") {
                guard let parsed = JSONValue.parse(Data(names.utf8)), case .array(let items) = parsed else {
                    throw RoutingLogError.invalidAttribute(file: path, attribute: "domains", reason: "not a JSON array of names")
                }
                domains = try items.map { item in
                    guard case .string(let name) = item else {
                        throw RoutingLogError.invalidAttribute(file: path, attribute: "domains", reason: "not a JSON array of names")
                    }
                    return name
                }
            }
        }
        var header = RoutingLogHeader(numLayers: layers, numExperts: experts, topK: topK, router: try text("router"),
                                      modelConfig: try text("model_config"), source: try text("source"),
                                      perToken: file.linkExists(tokenGroup), training: training, domains: domains,
                                      variableActiveExperts: variable)
        header.created = try text("created")
        header.version = Int(version)
        return header
    }

    /// Opens every dataset of the schema and checks rank, trailing shape and element type class.
    static func openDatasets(_ file: HDF5File, header: RoutingLogHeader) throws -> [String: HDF5Dataset] {
        var opened: [String: HDF5Dataset] = [:]
        for expected in datasets(for: header) {
            let dataset = try file.openDataset(expected.name)
            let shape = try dataset.shape()
            guard shape.count == expected.trailingShape.count + 1, Array(shape.dropFirst()) == expected.trailingShape else {
                let axis = expected.axis == .steps ? "step" : "n"
                throw RoutingLogError.invalidDataset(file: file.path, dataset: expected.name,
                                                     reason: "shape \(shape), expected [\(([axis] + expected.trailingShape.map(String.init)).joined(separator: ", "))]")
            }
            let typeClass = try dataset.typeClass()
            guard typeClass == (expected.isFloatingPoint ? H5T_FLOAT : H5T_INTEGER) else {
                throw RoutingLogError.invalidDataset(file: file.path, dataset: expected.name,
                                                     reason: "element type is not \(expected.isFloatingPoint ? "floating point" : "integer")")
            }
            opened[expected.name] = dataset
        }
        return opened
    }
}
