import Foundation

/// Runs a MoE model over token data in batches and logs each batch's routing as one step of a
/// routing log (`moekit trace`).
///
/// Sequences are packed into batches of at most `batchTokens` tokens in input order; a sequence
/// that does not fit in the rest of a batch is split, its remainder continuing in the next batch
/// from its KV cache, so every token is routed with its full causal context.
public struct RoutingTracer {
    public struct Options: Sendable {
        public var batchTokens = 512
        public var perToken = false
        /// `nil`: run the same batches without computing statistics or writing a log (what the
        /// logging-overhead benchmark compares against).
        public var logPath: String?
        public var mode: RoutingLogWriter.Mode = .create
        public init() {}
    }

    public struct Progress: Sendable {
        public var step: Int
        public var steps: Int
        public var tokensDone: Int
        public var tokens: Int
        public var seconds: Double
    }

    public struct Summary: Sendable {
        public var steps: Int
        public var tokens: Int
        public var firstStep: Int
        public var seconds: Double
        /// Seconds per step, in order (for overhead measurements).
        public var stepSeconds: [Double]
        /// Seconds per step spent on logging: building routing statistics and writing the step.
        public var loggingSeconds: [Double]
    }

    /// One batch: pieces of sequences (sequence index, token range within it).
    struct Batch {
        var pieces: [(sequence: Int, range: Range<Int>)]
        var tokenCount: Int { pieces.reduce(0) { $0 + $1.range.count } }
    }

    static func batches(_ sequences: [[Int]], batchTokens: Int) -> [Batch] {
        var result: [Batch] = []
        var current = Batch(pieces: [])
        var room = batchTokens
        for (index, sequence) in sequences.enumerated() {
            var start = 0
            while start < sequence.count {
                let take = min(room, sequence.count - start)
                current.pieces.append((index, start ..< start + take))
                start += take
                room -= take
                if room == 0 {
                    result.append(current)
                    current = Batch(pieces: [])
                    room = batchTokens
                }
            }
        }
        if !current.pieces.isEmpty { result.append(current) }
        return result
    }

    public let model: MiniCPMModel
    public let options: Options

    public init(model: MiniCPMModel, options: Options) throws {
        guard model.config.isMoE, let router = model.router else {
            throw RoutingLogError.notMoEModel(model: model.source)
        }
        if let configurable = router as? ConfigurableRouter, configurable.configuration.mode == .expertChoice {
            throw RoutingLogError.expertChoiceRouter(model: model.source)
        }
        precondition(options.batchTokens >= 1, "trace: batchTokens must be at least 1 (the CLI checks --batch-tokens)")
        self.model = model
        self.options = options
    }

    /// The log header for this model and router.
    public func header() -> RoutingLogHeader {
        let config = model.config
        let routerDescription = (model.router as? ConfigurableRouter)?.configuration.description ?? String(describing: type(of: model.router!))
        let configText = String(decoding: config.serialized(), as: UTF8.self)
        return RoutingLogHeader(numLayers: config.numHiddenLayers, numExperts: config.numExperts ?? 0,
                                topK: model.configurableRouter?.configuration.mode == .relu ? model.configurableRouter?.topK ?? 1
                                    : model.router?.slotsPerToken ?? 1, router: routerDescription, modelConfig: configText,
                                source: model.source, perToken: options.perToken,
                                variableActiveExperts: model.configurableRouter?.configuration.mode == .relu)
    }

    public func run(_ sequences: [[Int]], source: String = "input", progress: (Progress) -> Void = { _ in }) throws -> Summary {
        guard !sequences.isEmpty else { throw ModelError.emptyInput(source: source) }
        for (index, sequence) in sequences.enumerated() {
            guard !sequence.isEmpty else { throw ModelError.emptySequence(source: source, sequence: index) }
            for (position, token) in sequence.enumerated() where token < 0 || token >= model.config.vocabSize {
                throw ModelError.tokenOutOfRange(source: source, sequence: index, position: position, token: token, vocabularySize: model.config.vocabSize)
            }
            guard sequence.count <= model.config.maxPositionEmbeddings else {
                throw ModelError.sequenceTooLong(source: source, sequence: index, length: sequence.count, maximum: model.config.maxPositionEmbeddings)
            }
        }
        let writer = try options.logPath.map { try RoutingLogWriter(path: $0, header: header(), mode: options.mode) }
        let firstStep = writer?.lastStep.map { $0 + 1 } ?? 0
        let plan = Self.batches(sequences, batchTokens: options.batchTokens)
        let total = sequences.reduce(0) { $0 + $1.count }
        var caches: [Int: KVCache] = [:]
        var done = 0
        var stepSeconds: [Double] = []
        var loggingSeconds: [Double] = []
        let timer = StageTimer()
        let start = Date()
        let detail: RoutingRecord.Detail = writer == nil ? .none : options.perToken ? .perToken : .statistics
        for (index, batch) in plan.enumerated() {
            let stepStart = DispatchTime.now().uptimeNanoseconds
            var chunks: [(tokens: [Int], cache: KVCache)] = []
            var ids: [Int32] = [], sequenceIndices: [Int32] = [], positions: [Int32] = []
            for piece in batch.pieces {
                let cache = caches[piece.sequence] ?? model.makeCache()
                caches[piece.sequence] = cache
                let tokens = Array(sequences[piece.sequence][piece.range])
                chunks.append((tokens, cache))
                if options.perToken {
                    ids += tokens.map { Int32($0) }
                    sequenceIndices += Array(repeating: Int32(piece.sequence), count: tokens.count)
                    positions += piece.range.map { Int32($0) }
                }
            }
            timer.reset()
            let output = try model.forward(chunks, detail: detail, logitRows: .none, timer: timer, source: source)
            for piece in batch.pieces where piece.range.upperBound == sequences[piece.sequence].count {
                caches[piece.sequence] = nil  // finished: free its cache
            }
            if let writer {
                let trace = options.perToken ? RoutingLogTokenTrace(ids: ids, sequence: sequenceIndices, position: positions, records: output.routing) : nil
                try timer.measure(.logWrite) {
                    try writer.append(RoutingLogStep(step: firstStep + index, records: output.routing, tokenTrace: trace))
                }
            }
            loggingSeconds.append((timer.seconds[.routingStatistics] ?? 0) + (timer.seconds[.logWrite] ?? 0))
            stepSeconds.append(Double(DispatchTime.now().uptimeNanoseconds - stepStart) * 1e-9)
            done += batch.tokenCount
            progress(Progress(step: index + 1, steps: plan.count, tokensDone: done, tokens: total, seconds: Date().timeIntervalSince(start)))
        }
        try writer?.close()
        return Summary(steps: plan.count, tokens: total, firstStep: firstStep, seconds: Date().timeIntervalSince(start), stepSeconds: stepSeconds, loggingSeconds: loggingSeconds)
    }
}
