import CHDF5
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Writes a routing log (schema versions 1 and 2, docs/routing-log.md) one step at a time, as a live
/// SWMR file: the latest HDF5 format, every dataset created before SWMR writing starts, and after
/// every step the datasets are extended, written and the file flushed, so a concurrent reader
/// (`h5py.File(path, "r", swmr=True)`, `RoutingLogReader`) sees each completed step and a killed
/// writer loses at most the step in flight.
///
/// A new log is built under a temporary name beside `path` and moved into place once its schema
/// is complete, so `path` never holds a log without its datasets. Every step is validated first:
/// array sizes must match the header, and for every layer Σ_expert expert_counts = tokens · k − dropped.
public final class RoutingLogWriter {
    public enum Mode: Sendable {
        /// Create a new log; refuse an existing path.
        case create
        /// Create a new log, replacing whatever is at the path.
        case replace
        /// Continue the step axis of an existing log; refuse one whose layers, experts, k or
        /// per-token trace differ from the header given.
        case append
    }

    public let path: String
    /// The header as stored in the file (on append: the existing log's).
    public let header: RoutingLogHeader
    /// Rows on the step axis so far.
    public private(set) var stepCount: Int
    /// Rows on the per-token axis so far (0 without a per-token trace).
    public private(set) var tokenRowCount: Int
    /// The index of the last step written, nil for an empty log.
    public private(set) var lastStep: Int?

    private var file: HDF5File?
    private var datasets: [(RoutingLogSchema.Dataset, HDF5Dataset)] = []

    public init(path: String, header: RoutingLogHeader, mode: Mode = .create) throws {
        HDF5.prepare()
        self.path = path
        let denseTraining = header.isDense && header.numLayers == 0 && header.topK == 0 && header.training && header.domains.isEmpty && !header.perToken
        guard denseTraining || (header.numLayers >= 1 && header.numExperts >= 1 && header.numExperts <= Int(Int16.max) &&
              header.topK >= 1 && header.topK <= header.numExperts) else {
            throw RoutingLogError.invalidAttribute(file: path, attribute: "num_layers/num_experts/top_k",
                                                   reason: "\(header.numLayers) layers, \(header.numExperts) experts, top-\(header.topK) is not a valid MoE shape")
        }
        let exists = FileManager.default.fileExists(atPath: path)
        if mode == .append {
            guard exists else { throw RoutingLogError.cannotOpen(file: path, reason: "no routing log to append to") }
            let (file, existing, opened, rows, tokenRows, last) = try Self.openForAppend(path: path, requested: header)
            self.file = file
            self.header = existing
            self.datasets = opened
            self.stepCount = rows
            self.tokenRowCount = tokenRows
            self.lastStep = last
        } else {
            if mode == .create, exists { throw RoutingLogError.alreadyExists(file: path) }
            let (file, opened) = try Self.createAndPublish(path: path, header: header, replace: mode == .replace)
            self.file = file
            self.header = header
            self.datasets = opened
            self.stepCount = 0
            self.tokenRowCount = 0
            self.lastStep = nil
        }
    }

    // MARK: Creating

    private static func createAndPublish(path: String, header: RoutingLogHeader, replace: Bool) throws
        -> (HDF5File, [(RoutingLogSchema.Dataset, HDF5Dataset)]) {
        let url = URL(fileURLWithPath: path)
        let temporary = url.deletingLastPathComponent().path + "/." + url.lastPathComponent + ".tmp-\(getpid())-\(UInt32.random(in: 0 ... .max))"
        TemporaryPaths.register(temporary)
        defer {
            TemporaryPaths.unregister(temporary)
            unlink(temporary)
        }
        let file = try HDF5File.create(actualPath: temporary, displayPath: path)
        try file.writeAttribute("format", RoutingLogSchema.format)
        try file.writeAttribute("version", Int64(header.version))
        try file.writeAttribute("num_layers", Int64(header.numLayers))
        try file.writeAttribute("num_experts", Int64(header.numExperts))
        try file.writeAttribute("top_k", Int64(header.topK))
        try file.writeAttribute("router", header.router)
        try file.writeAttribute("model_config", header.modelConfig)
        try file.writeAttribute("source", header.source)
        try file.writeAttribute("created", header.created)
        if header.variableActiveExperts { try file.writeAttribute("variable_k", Int64(1)) }
        if header.version >= 2 {
            try file.writeAttribute("training", Int64(header.training ? 1 : 0))
            if !header.domains.isEmpty {
                let names = String(decoding: JSONValue.array(header.domains.map(JSONValue.string)).serialized(pretty: false), as: UTF8.self)
                try file.writeAttribute("domains", names)
            }
        }
        for group in RoutingLogSchema.groups(for: header) {
            try file.createGroup(group)
        }
        var opened: [(RoutingLogSchema.Dataset, HDF5Dataset)] = []
        for dataset in RoutingLogSchema.datasets(for: header) {
            let created = try file.createExtendibleDataset(dataset.name, fileType: dataset.fileType, trailingShape: dataset.trailingShape,
                                                           chunkRows: RoutingLogSchema.chunkRows(for: dataset))
            opened.append((dataset, created))
        }
        try file.startSWMRWrite()
        try file.flush()
        if replace {
            guard rename(temporary, path) == 0 else { throw RoutingLogError.cannotOpen(file: path, reason: String(cString: strerror(errno))) }
        } else {
            // link() refuses an existing destination atomically, unlike rename().
            guard link(temporary, path) == 0 else {
                if errno == EEXIST { throw RoutingLogError.alreadyExists(file: path) }
                throw RoutingLogError.cannotOpen(file: path, reason: String(cString: strerror(errno)))
            }
        }
        return (file, opened)
    }

    // MARK: Appending

    private static func openForAppend(path: String, requested: RoutingLogHeader) throws
        -> (HDF5File, RoutingLogHeader, [(RoutingLogSchema.Dataset, HDF5Dataset)], Int, Int, Int?) {
        guard HDF5.isHDF5(path) else { throw RoutingLogError.notHDF5(file: path) }
        let file = try HDF5File.openForReadWrite(path: path)
        let existing = try RoutingLogSchema.readHeader(file)
        let comparisons: [(String, Int, Int)] = [("num_layers", existing.numLayers, requested.numLayers),
                                                 ("num_experts", existing.numExperts, requested.numExperts),
                                                 ("top_k", existing.topK, requested.topK)]
        for (field, have, want) in comparisons where have != want {
            throw RoutingLogError.incompatibleAppend(file: path, field: field, existing: "\(have)", requested: "\(want)")
        }
        if existing.variableActiveExperts != requested.variableActiveExperts {
            throw RoutingLogError.incompatibleAppend(file: path, field: "variable_k", existing: existing.variableActiveExperts ? "1" : "0",
                                                     requested: requested.variableActiveExperts ? "1" : "0")
        }
        if existing.perToken != requested.perToken {
            throw RoutingLogError.incompatibleAppend(file: path, field: "per-token trace", existing: existing.perToken ? "yes" : "no",
                                                     requested: requested.perToken ? "yes" : "no")
        }
        if existing.training != requested.training {
            throw RoutingLogError.incompatibleAppend(file: path, field: "training columns", existing: existing.training ? "yes" : "no",
                                                     requested: requested.training ? "yes" : "no")
        }
        if existing.domains != requested.domains {
            throw RoutingLogError.incompatibleAppend(file: path, field: "domains", existing: existing.domains.joined(separator: ","),
                                                     requested: requested.domains.joined(separator: ","))
        }
        let byName = try RoutingLogSchema.openDatasets(file, header: existing)
        let schema = RoutingLogSchema.datasets(for: existing)
        let opened = try schema.map { dataset -> (RoutingLogSchema.Dataset, HDF5Dataset) in
            guard let handle = byName[dataset.name] else { throw RoutingLogError.missingDataset(file: path, dataset: dataset.name) }
            return (dataset, handle)
        }
        // A writer killed mid-step can leave some datasets one row longer than others: keep the
        // rows every dataset holds (the step in flight is dropped), as a reader would.
        var rows = Int.max
        for (dataset, handle) in opened where dataset.axis == .steps { rows = min(rows, try handle.shape()[0]) }
        for (dataset, handle) in opened where dataset.axis == .steps { try handle.setExtent([rows] + dataset.trailingShape) }
        var tokenRows = 0
        if existing.perToken {
            let tokensDataset = try handle(RoutingLogSchema.tokens, in: opened, path: path)
            tokenRows = try tokensDataset.read(rows: 0 ..< rows, trailingShape: [], as: Int64.self).reduce(0) { $0 + Int($1) }
            for (dataset, handle) in opened where dataset.axis == .tokens {
                let have = try handle.shape()[0]
                guard have >= tokenRows else {
                    throw RoutingLogError.invalidDataset(file: path, dataset: dataset.name,
                                                         reason: "holds \(have) token rows, but /steps/tokens accounts for \(tokenRows)")
                }
                try handle.setExtent([tokenRows] + dataset.trailingShape)
            }
        }
        let stepDataset = try handle(RoutingLogSchema.step, in: opened, path: path)
        let last = rows > 0 ? try stepDataset.read(rows: rows - 1 ..< rows, trailingShape: [], as: Int64.self).first.map { Int($0) } : nil
        try file.startSWMRWrite()
        try file.flush()
        return (file, existing, opened, rows, tokenRows, last)
    }

    private static func handle(_ name: String, in opened: [(RoutingLogSchema.Dataset, HDF5Dataset)], path: String) throws -> HDF5Dataset {
        guard let found = opened.first(where: { $0.0.name == name })?.1 else { throw RoutingLogError.missingDataset(file: path, dataset: name) }
        return found
    }

    // MARK: Writing steps

    /// Checks `step` against the header and the invariant; throws the first problem found.
    public func validate(_ step: RoutingLogStep) throws {
        let layers = header.numLayers, experts = header.numExperts, topK = header.topK, slots = header.slotsPerToken
        func invalid(_ layer: Int?, _ reason: String) -> RoutingLogError { .invalidStep(file: path, step: step.step, layer: layer, reason: reason) }
        if let lastStep, step.step <= lastStep { throw RoutingLogError.stepOutOfOrder(file: path, step: step.step, previous: lastStep) }
        guard step.tokens >= 0 else { throw invalid(nil, "negative token count \(step.tokens)") }
        guard step.layers.count == layers else { throw invalid(nil, "\(step.layers.count) layers of statistics, the log has \(layers)") }
        for (index, layer) in step.layers.enumerated() {
            guard layer.expertCounts.count == experts else { throw invalid(index, "\(layer.expertCounts.count) expert counts, the log has \(experts) experts") }
            guard layer.probabilityMean.count == experts else { throw invalid(index, "\(layer.probabilityMean.count) mean probabilities for \(experts) experts") }
            guard layer.coactivation.count == experts * experts else { throw invalid(index, "coactivation has \(layer.coactivation.count) entries, expected \(experts)×\(experts)") }
            guard layer.dropped >= 0 else { throw invalid(index, "negative dropped count \(layer.dropped)") }
            if let negative = layer.expertCounts.firstIndex(where: { $0 < 0 }) { throw invalid(index, "expert \(negative) has a negative count") }
            let sum = layer.expertCounts.reduce(0, +)
            var expected = step.tokens * topK - layer.dropped
            if header.variableActiveExperts {
                // Variable active experts: Σ counts = Σ_n n · (tokens with n active), Σ_n = tokens.
                guard let histogram = layer.activeExperts, histogram.count == experts + 1 else {
                    throw invalid(index, "a variable-k log needs the active-experts histogram of \(experts + 1) values")
                }
                guard histogram.allSatisfy({ $0 >= 0 }), histogram.reduce(0, +) == step.tokens else {
                    throw invalid(index, "active-experts histogram \(histogram) does not count \(step.tokens) tokens")
                }
                expected = histogram.enumerated().reduce(0) { $0 + $1.offset * $1.element }
            } else if layer.activeExperts != nil {
                throw invalid(index, "active-experts histogram given, but the log was created without variable_k")
            }
            guard sum == expected else {
                throw RoutingLogError.invariantViolated(file: path, step: step.step, layer: index, countSum: sum, expected: expected)
            }
            if header.domains.isEmpty {
                guard layer.domainCounts == nil else { throw invalid(index, "domain counts given, but the log was created without domains") }
            } else {
                let domains = header.domains.count
                guard let domainCounts = layer.domainCounts else { throw invalid(index, "the log has domains but the step carries no domain counts") }
                guard domainCounts.count == domains * experts else {
                    throw invalid(index, "domain counts hold \(domainCounts.count) values, expected domains·experts = \(domains * experts)")
                }
                for expert in 0 ..< experts {
                    var sum = 0
                    for domain in 0 ..< domains {
                        let count = domainCounts[domain * experts + expert]
                        guard count >= 0 else { throw invalid(index, "negative domain count for domain \(domain), expert \(expert)") }
                        sum += count
                    }
                    guard sum == layer.expertCounts[expert] else {
                        throw invalid(index, "domain counts of expert \(expert) sum to \(sum), but its expert count is \(layer.expertCounts[expert])")
                    }
                }
            }
            for i in 0 ..< experts {
                guard layer.coactivation[i * experts + i] == 0 else { throw invalid(index, "coactivation diagonal [\(i), \(i)] is not 0") }
                for j in 0 ..< i where layer.coactivation[i * experts + j] != layer.coactivation[j * experts + i] || layer.coactivation[i * experts + j] < 0 {
                    throw invalid(index, "coactivation [\(i), \(j)] is negative or not symmetric")
                }
            }
        }
        if header.perToken {
            guard let trace = step.tokenTrace else { throw invalid(nil, "the log has a per-token trace but the step carries none") }
            let n = step.tokens
            guard trace.ids.count == n, trace.sequence.count == n, trace.position.count == n else {
                throw invalid(nil, "per-token ids/sequence/position hold \(trace.ids.count)/\(trace.sequence.count)/\(trace.position.count) rows for \(n) tokens")
            }
            guard trace.experts.count == n * layers * slots, trace.weights.count == n * layers * slots else {
                throw invalid(nil, "per-token experts/weights hold \(trace.experts.count)/\(trace.weights.count) values, expected tokens·layers·slots = \(n * layers * slots)")
            }
            if let bad = trace.experts.first(where: { $0 < -1 || Int($0) >= experts }) {
                throw invalid(nil, "per-token expert index \(bad) is outside -1..<\(experts)")
            }
        } else if step.tokenTrace != nil {
            throw invalid(nil, "the step carries a per-token trace but the log was created without one")
        }
        if header.training {
            guard step.training != nil else { throw invalid(nil, "the log has training columns but the step carries none") }
        } else if step.training != nil {
            throw invalid(nil, "the step carries training columns but the log was created without them")
        }
    }

    /// Validates `step`, appends it to every dataset and flushes the file.
    public func append(_ step: RoutingLogStep) throws {
        HDF5.prepare()
        guard let file else { throw RoutingLogError.closed(file: path) }
        try validate(step)
        let row = stepCount ..< stepCount + 1
        let tokenRows = tokenRowCount ..< tokenRowCount + step.tokens
        for (dataset, handle) in datasets {
            let rows = dataset.axis == .steps ? row : tokenRows
            try handle.setExtent([rows.upperBound] + dataset.trailingShape)
            switch dataset.name {
            case RoutingLogSchema.expertCounts: try handle.write(step.layers.flatMap { $0.expertCounts.map(Int64.init) }, rows: rows, trailingShape: dataset.trailingShape)
            case RoutingLogSchema.probabilityMean: try handle.write(step.layers.flatMap(\.probabilityMean), rows: rows, trailingShape: dataset.trailingShape)
            case RoutingLogSchema.auxLoss: try handle.write(step.layers.map(\.auxLoss), rows: rows, trailingShape: dataset.trailingShape)
            case RoutingLogSchema.zLoss: try handle.write(step.layers.map(\.zLoss), rows: rows, trailingShape: dataset.trailingShape)
            case RoutingLogSchema.entropy: try handle.write(step.layers.map(\.entropy), rows: rows, trailingShape: dataset.trailingShape)
            case RoutingLogSchema.dropped: try handle.write(step.layers.map { Int64($0.dropped) }, rows: rows, trailingShape: dataset.trailingShape)
            case RoutingLogSchema.coactivation: try handle.write(step.layers.flatMap { $0.coactivation.map(Int64.init) }, rows: rows, trailingShape: dataset.trailingShape)
            case RoutingLogSchema.activeExperts: try handle.write(step.layers.flatMap { ($0.activeExperts ?? []).map(Int64.init) }, rows: rows, trailingShape: dataset.trailingShape)
            case RoutingLogSchema.domainCounts: try handle.write(step.layers.flatMap { ($0.domainCounts ?? []).map(Int64.init) }, rows: rows, trailingShape: dataset.trailingShape)
            case RoutingLogSchema.tokenIDs: try handle.write(step.tokenTrace?.ids ?? [], rows: rows, trailingShape: [])
            case RoutingLogSchema.tokenSequence: try handle.write(step.tokenTrace?.sequence ?? [], rows: rows, trailingShape: [])
            case RoutingLogSchema.tokenPosition: try handle.write(step.tokenTrace?.position ?? [], rows: rows, trailingShape: [])
            case RoutingLogSchema.tokenExperts: try handle.write(step.tokenTrace?.experts ?? [], rows: rows, trailingShape: dataset.trailingShape)
            case RoutingLogSchema.tokenWeights: try handle.write(step.tokenTrace?.weights ?? [], rows: rows, trailingShape: dataset.trailingShape)
            case RoutingLogSchema.step: try handle.write([Int64(step.step)], rows: rows, trailingShape: [])
            case RoutingLogSchema.tokens: try handle.write([Int64(step.tokens)], rows: rows, trailingShape: [])
            case RoutingLogSchema.loss: try handle.write([step.loss], rows: rows, trailingShape: [])
            case RoutingLogSchema.learningRate: try handle.write([step.learningRate], rows: rows, trailingShape: [])
            case RoutingLogSchema.languageModelLoss: try handle.write([step.training?.languageModelLoss ?? .nan], rows: rows, trailingShape: [])
            case RoutingLogSchema.gradientNorm: try handle.write([step.training?.gradientNorm ?? .nan], rows: rows, trailingShape: [])
            case RoutingLogSchema.validationLoss: try handle.write([step.training?.validationLoss ?? .nan], rows: rows, trailingShape: [])
            default: throw RoutingLogError.invalidDataset(file: path, dataset: dataset.name, reason: "not in schema version \(header.version)")
            }
        }
        try file.flush()
        stepCount += 1
        tokenRowCount += step.tokens
        lastStep = step.step
    }

    /// Flushes and closes the file; further appends throw `.closed`. Dropping the writer closes it too.
    public func close() throws {
        HDF5.prepare()
        guard let file else { return }
        defer {
            datasets = []
            self.file = nil
        }
        try file.flush()
    }
}
