import CHDF5
import Foundation

/// The root attributes of a routing log (schema version 1, see docs/routing-log.md).
public struct RoutingLogHeader: Sendable, Equatable {
    public var numLayers: Int
    public var numExperts: Int
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
    /// Schema version (1 for everything this MoEKit writes).
    public var version: Int

    public init(numLayers: Int, numExperts: Int, topK: Int, router: String, modelConfig: String, source: String,
                created: Date = Date(), perToken: Bool = false) {
        self.numLayers = numLayers
        self.numExperts = numExperts
        self.topK = topK
        self.router = router
        self.modelConfig = modelConfig
        self.source = source
        self.created = ISO8601DateFormatter().string(from: created)
        self.perToken = perToken
        self.version = Int(RoutingLogSchema.version)
    }
}

/// Schema version 1: names, element types and shapes of every dataset. The step axis (or token
/// axis for `/tokens/*`) is the first, unlimited, dimension; the trailing dimensions are fixed.
enum RoutingLogSchema {
    static let format = "moekit-routing"
    static let version: Int64 = 1

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
    static let step = "/steps/step"
    static let tokens = "/steps/tokens"
    static let loss = "/steps/loss"
    static let learningRate = "/steps/lr"
    static let tokenIDs = "/tokens/ids"
    static let tokenSequence = "/tokens/sequence"
    static let tokenPosition = "/tokens/position"
    static let tokenExperts = "/tokens/experts"
    static let tokenWeights = "/tokens/weights"

    static let groups = ["/routing", "/steps"]
    static let tokenGroup = "/tokens"

    /// Every dataset of a log with this shape, step-axis datasets first, `/steps/*` last (the
    /// writer writes in this order, so the step columns are the last thing a step adds).
    static func datasets(layers: Int, experts: Int, topK: Int, perToken: Bool) -> [Dataset] {
        let i64 = moekit_H5T_STD_I64LE(), f32 = moekit_H5T_IEEE_F32LE()
        var all: [Dataset] = [
            Dataset(name: expertCounts, axis: .steps, fileType: i64, isFloatingPoint: false, trailingShape: [layers, experts]),
            Dataset(name: probabilityMean, axis: .steps, fileType: f32, isFloatingPoint: true, trailingShape: [layers, experts]),
            Dataset(name: auxLoss, axis: .steps, fileType: f32, isFloatingPoint: true, trailingShape: [layers]),
            Dataset(name: zLoss, axis: .steps, fileType: f32, isFloatingPoint: true, trailingShape: [layers]),
            Dataset(name: entropy, axis: .steps, fileType: f32, isFloatingPoint: true, trailingShape: [layers]),
            Dataset(name: dropped, axis: .steps, fileType: i64, isFloatingPoint: false, trailingShape: [layers]),
            Dataset(name: coactivation, axis: .steps, fileType: i64, isFloatingPoint: false, trailingShape: [layers, experts, experts]),
        ]
        if perToken {
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

        func count(_ name: String, limit: Int64) throws -> Int {
            guard let value = try file.integerAttribute(name) else {
                throw RoutingLogError.invalidAttribute(file: path, attribute: name, reason: "missing")
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
        var header = RoutingLogHeader(numLayers: layers, numExperts: experts, topK: topK, router: try text("router"),
                                      modelConfig: try text("model_config"), source: try text("source"),
                                      perToken: file.linkExists(tokenGroup))
        header.created = try text("created")
        header.version = Int(version)
        return header
    }

    /// Opens every dataset of the schema and checks rank, trailing shape and element type class.
    static func openDatasets(_ file: HDF5File, header: RoutingLogHeader) throws -> [String: HDF5Dataset] {
        var opened: [String: HDF5Dataset] = [:]
        for expected in datasets(layers: header.numLayers, experts: header.numExperts, topK: header.topK, perToken: header.perToken) {
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
