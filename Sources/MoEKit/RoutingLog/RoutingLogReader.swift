import CHDF5
import Foundation

/// Reads a routing log (schema versions 1 and 2), also while another process is still writing it: the
/// file is opened for SWMR reading when its format allows, and `refresh()` picks up the steps
/// written since. A step counts once every step-axis dataset holds its row, so a step in flight
/// is never returned half-written.
///
/// Opening checks, in order: the file is HDF5 (`.notHDF5` otherwise), it is a MoEKit routing log
/// (`.notARoutingLog`), its version is not newer than this build's (`.newerVersion`), and every
/// schema dataset exists with the shape the header implies (`.missingDataset`, `.invalidDataset`).
public final class RoutingLogReader {
    public let path: String
    public let header: RoutingLogHeader
    /// True when opened with SWMR read (every log MoEKit writes; false for old-format files).
    public let isSWMR: Bool
    /// Complete steps visible at the last open or `refresh()`.
    public private(set) var stepCount = 0
    /// Rows on the per-token axis belonging to complete steps (0 without a per-token trace).
    public private(set) var tokenRowCount = 0

    private let file: HDF5File
    private let datasets: [String: HDF5Dataset]

    public init(path: String) throws {
        HDF5.prepare()
        self.path = path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw RoutingLogError.cannotOpen(file: path, reason: "no such file")
        }
        guard !isDirectory.boolValue else { throw RoutingLogError.cannotOpen(file: path, reason: "is a directory") }
        guard HDF5.isHDF5(path) else {
            _ = H5Eclear2(moekit_H5E_DEFAULT())
            throw RoutingLogError.notHDF5(file: path)
        }
        let (file, isSWMR) = try HDF5File.openForReading(path: path)
        self.file = file
        self.isSWMR = isSWMR
        header = try RoutingLogSchema.readHeader(file)
        datasets = try RoutingLogSchema.openDatasets(file, header: header)
        try refresh()
    }

    private func dataset(_ name: String) throws -> HDF5Dataset {
        guard let dataset = datasets[name] else { throw RoutingLogError.missingDataset(file: path, dataset: name) }
        return dataset
    }

    /// Re-reads dataset extents (SWMR) and recounts the complete steps.
    public func refresh() throws {
        HDF5.prepare()
        if isSWMR { for dataset in datasets.values { try dataset.refresh() } }
        let schema = RoutingLogSchema.datasets(for: header)
        var steps = Int.max
        for entry in schema where entry.axis == .steps { steps = min(steps, try dataset(entry.name).shape()[0]) }
        stepCount = steps
        if header.perToken {
            let tokens = try dataset(RoutingLogSchema.tokens).read(rows: 0 ..< steps, trailingShape: [], as: Int64.self)
            var available = Int.max
            for entry in schema where entry.axis == .tokens { available = min(available, try dataset(entry.name).shape()[0]) }
            // Rows of the step in flight may already be on disk; they are not counted.
            var rows = 0, complete = 0
            for count in tokens {
                guard count >= 0, rows + Int(count) <= available else { break }
                rows += Int(count)
                complete += 1
            }
            stepCount = complete
            tokenRowCount = rows
        }
    }

    private func checkRows(_ rows: Range<Int>) throws {
        guard rows.lowerBound >= 0, rows.upperBound <= stepCount else {
            throw RoutingLogError.outOfRange(file: path, what: "step row", index: rows.lowerBound < 0 ? rows.lowerBound : rows.upperBound - 1, available: stepCount)
        }
    }

    /// The step column `/steps/step` for rows `rows` (all complete steps by default).
    public func stepIndices(_ rows: Range<Int>? = nil) throws -> [Int] {
        HDF5.prepare()
        let rows = rows ?? 0 ..< stepCount
        try checkRows(rows)
        return try dataset(RoutingLogSchema.step).read(rows: rows, trailingShape: [], as: Int64.self).map { Int($0) }
    }

    /// Steps at rows `rows` with their per-layer statistics (without the per-token trace).
    public func steps(_ rows: Range<Int>) throws -> [RoutingLogStep] {
        HDF5.prepare()
        try checkRows(rows)
        let layers = header.numLayers, experts = header.numExperts
        func read<Element: HDF5Element>(_ name: String, _ trailing: [Int], _ type: Element.Type) throws -> [Element] {
            try dataset(name).read(rows: rows, trailingShape: trailing, as: type)
        }
        let indices = try read(RoutingLogSchema.step, [], Int64.self)
        let tokens = try read(RoutingLogSchema.tokens, [], Int64.self)
        let losses = try read(RoutingLogSchema.loss, [], Float.self)
        let rates = try read(RoutingLogSchema.learningRate, [], Float.self)
        let dense = header.isDense
        let counts = dense ? [] : try read(RoutingLogSchema.expertCounts, [layers, experts], Int64.self)
        let probabilities = dense ? [] : try read(RoutingLogSchema.probabilityMean, [layers, experts], Float.self)
        let aux = dense ? [] : try read(RoutingLogSchema.auxLoss, [layers], Float.self)
        let z = dense ? [] : try read(RoutingLogSchema.zLoss, [layers], Float.self)
        let entropy = dense ? [] : try read(RoutingLogSchema.entropy, [layers], Float.self)
        let dropped = dense ? [] : try read(RoutingLogSchema.dropped, [layers], Int64.self)
        let coactivation = dense ? [] : try read(RoutingLogSchema.coactivation, [layers, experts, experts], Int64.self)
        let variable = !dense && header.variableActiveExperts
        let histograms = variable ? try read(RoutingLogSchema.activeExperts, [layers, experts + 1], Int64.self) : []
        let domains = header.domains.count
        let domainCounts = dense || domains == 0 ? [] : try read(RoutingLogSchema.domainCounts, [layers, domains, experts], Int64.self)
        let lmLosses = header.training ? try read(RoutingLogSchema.languageModelLoss, [], Float.self) : []
        let gradientNorms = header.training ? try read(RoutingLogSchema.gradientNorm, [], Float.self) : []
        let validationLosses = header.training ? try read(RoutingLogSchema.validationLoss, [], Float.self) : []
        return (0 ..< rows.count).map { row in
            let statistics = (0 ..< layers).map { layer -> RoutingLogLayerStatistics in
                let perLayer = row * layers + layer
                let expertRange = perLayer * experts ..< (perLayer + 1) * experts
                let pairRange = perLayer * experts * experts ..< (perLayer + 1) * experts * experts
                let domainRange = perLayer * domains * experts ..< (perLayer + 1) * domains * experts
                return RoutingLogLayerStatistics(expertCounts: counts[expertRange].map { Int($0) }, probabilityMean: Array(probabilities[expertRange]),
                                                 auxLoss: aux[perLayer], zLoss: z[perLayer], entropy: entropy[perLayer],
                                                 dropped: Int(dropped[perLayer]), coactivation: coactivation[pairRange].map { Int($0) },
                                                 domainCounts: domains == 0 ? nil : domainCounts[domainRange].map { Int($0) },
                                                 activeExperts: variable ? histograms[perLayer * (experts + 1) ..< (perLayer + 1) * (experts + 1)].map { Int($0) } : nil)
            }
            let training = header.training
                ? RoutingLogTrainingColumns(languageModelLoss: lmLosses[row], gradientNorm: gradientNorms[row], validationLoss: validationLosses[row])
                : nil
            return RoutingLogStep(step: Int(indices[row]), tokens: Int(tokens[row]), loss: losses[row], learningRate: rates[row], layers: statistics,
                                  training: training)
        }
    }

    /// The step at row `row`, with its per-token trace when the log has one.
    public func step(at row: Int) throws -> RoutingLogStep {
        try checkRows(row ..< row + 1)
        var step = try steps(row ..< row + 1)[0]
        if header.perToken {
            let start = try dataset(RoutingLogSchema.tokens).read(rows: 0 ..< row, trailingShape: [], as: Int64.self).reduce(0) { $0 + Int($1) }
            step.tokenTrace = try tokenTrace(start ..< start + step.tokens)
        }
        return step
    }

    /// Per-token rows `rows`; nil when the log has no per-token trace.
    public func tokenTrace(_ rows: Range<Int>) throws -> RoutingLogTokenTrace? {
        HDF5.prepare()
        guard header.perToken else { return nil }
        guard rows.lowerBound >= 0, rows.upperBound <= tokenRowCount else {
            throw RoutingLogError.outOfRange(file: path, what: "token row", index: rows.upperBound - 1, available: tokenRowCount)
        }
        let perToken = [header.numLayers, header.slotsPerToken]
        return RoutingLogTokenTrace(
            ids: try dataset(RoutingLogSchema.tokenIDs).read(rows: rows, trailingShape: [], as: Int32.self),
            sequence: try dataset(RoutingLogSchema.tokenSequence).read(rows: rows, trailingShape: [], as: Int32.self),
            position: try dataset(RoutingLogSchema.tokenPosition).read(rows: rows, trailingShape: [], as: Int32.self),
            experts: try dataset(RoutingLogSchema.tokenExperts).read(rows: rows, trailingShape: perToken, as: Int16.self),
            weights: try dataset(RoutingLogSchema.tokenWeights).read(rows: rows, trailingShape: perToken, as: Float.self))
    }
}
