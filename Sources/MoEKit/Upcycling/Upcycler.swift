import Foundation

/// Executes an `UpcyclePlan`: streams the dense checkpoint tensor by tensor into a MiniCPM-MoE
/// directory built under a temporary name beside the destination and renamed into place only
/// when everything (weights, config, other files, verification, report) succeeded.
///
/// Memory: tensors are read from the memory map and their pages released after use. Copied
/// tensors whose dtype is kept go through as raw bytes; converted ones in 1 M-element chunks.
/// Methods that compute on the MLP hold the current layer's dense matrices in f32 (three
/// `I × H` matrices) and one expert matrix at a time, so peak memory is a small multiple of the
/// largest tensor whatever the number of layers or experts.
public enum Upcycler {
    public struct Result: Sendable {
        public var outputDirectory: String
        public var files: [String]
        public var bytesWritten: Int
        public var verification: UpcycleVerification?
        public var report: JSONValue
    }

    /// Runs the plan into `outputDirectory`. `verifier` is required when
    /// `plan.options.verifyTokens > 0`.
    @discardableResult
    public static func run(_ plan: UpcyclePlan, outputDirectory: String, verifier: LogitsProvider?) throws(UpcycleError) -> Result {
        let options = plan.options
        guard let checkpoint = plan.checkpoint else { throw .checkpoint(.noWeights(directory: plan.denseDirectory)) }
        if options.verifyTokens > 0 && verifier == nil {
            throw .verificationUnavailable(reason: "no forward pass available to run the models; pass --verify 0")
        }
        let directory: AtomicDirectory
        do { try OutputPaths.refuseOverlap(input: plan.denseDirectory, output: outputDirectory) } catch { throw .file(error) }
        do { directory = try AtomicDirectory(destination: outputDirectory, replaceExisting: options.replaceExisting) } catch { throw .file(error) }
        let shardFiles: [String]
        let layers = LayerSource(plan: plan, checkpoint: checkpoint)
        do {
            shardFiles = try writeWeights(plan, checkpoint: checkpoint, into: directory.temporaryPath, layers: layers)
        } catch let error as UpcycleError {
            throw error
        } catch let error as SafetensorsError {
            throw .safetensors(error)
        } catch let error as CheckpointError {
            throw .checkpoint(error)
        } catch {
            throw .write(directory: outputDirectory, reason: "\(error)")
        }
        do { try plan.config.write(to: directory.path("config.json")) } catch { throw .checkpoint(error) }
        for name in plan.otherFiles {
            do {
                try FileManager.default.copyItem(atPath: plan.denseDirectory + "/" + name, toPath: directory.path(name))
            } catch {
                throw .file(.cannotCopy(path: plan.denseDirectory + "/" + name, destination: outputDirectory, reason: error.localizedDescription))
            }
        }

        var verification: UpcycleVerification?
        if options.verifyTokens > 0, let verifier {
            verification = try verify(plan, upcycledDirectory: directory.temporaryPath, outputDirectory: outputDirectory, verifier: verifier)
        }

        let report = UpcycleReport.json(plan: plan, outputDirectory: directory.destination, files: shardFiles + [SafetensorsIndex.fileName],
                                        bytesWritten: plan.totalBytes, verification: verification,
                                        drop: plan.options.method == .drop ? layers.dropRecord : nil)
        do {
            try AtomicFileWriter.write(report.serialized(), to: directory.path(UpcyclePlan.reportFileName))
            try directory.commit()
        } catch {
            throw .file(error)
        }
        return Result(outputDirectory: directory.destination, files: shardFiles, bytesWritten: plan.totalBytes,
                      verification: verification, report: report)
    }

    /// Runs both models on the fixed tokens and compares the logits; `copy` must be within 1e-5.
    static func verify(_ plan: UpcyclePlan, upcycledDirectory: String, outputDirectory: String,
                       verifier: LogitsProvider) throws(UpcycleError) -> UpcycleVerification {
        let tokens = UpcycleVerification.tokens(count: plan.options.verifyTokens, vocabularySize: plan.denseConfig.vocabSize)
        let dense: Tensor, upcycled: Tensor
        do {
            dense = try verifier.logits(modelDirectory: plan.denseDirectory, sequences: [tokens])
            upcycled = try verifier.logits(modelDirectory: upcycledDirectory, sequences: [tokens])
        } catch {
            throw .verificationUnavailable(reason: (error as? LocalizedError)?.errorDescription ?? "\(error)")
        }
        guard dense.shape == upcycled.shape else {
            throw .verificationUnavailable(reason: "logit shapes differ: dense \(dense.shape), upcycled \(upcycled.shape)")
        }
        let difference = upcycled.maxRelativeDifference(to: dense)
        // Shared experts keep it exact: S/(S+1) + 1/(S+1) of the dense MLP when the routed weights sum to 1.
        let exact = plan.options.method == .copy && ((try? plan.options.routingWeightScale()) ?? 1) == 1 && plan.options.routingWeightsSumToOne
        let tolerance: Float? = exact ? UpcycleOptions.copyTolerance : nil
        let passed = tolerance.map { difference <= $0 } ?? true
        if let tolerance, !(difference <= tolerance) {
            throw .verificationFailed(directory: outputDirectory, tokens: tokens.count, maxRelativeDifference: difference, tolerance: tolerance)
        }
        return UpcycleVerification(tokens: tokens.count, maxRelativeDifference: difference, tolerance: tolerance, passed: passed)
    }

    // MARK: Streaming the weights

    /// Writes every planned tensor in name order into shards plus the index, computed expert
    /// matrices drawn from `layers` (which keeps `drop`'s record); returns the shard names.
    static func writeWeights(_ plan: UpcyclePlan, checkpoint: ModelCheckpoint, into path: String, layers: LayerSource) throws -> [String] {
        // Written under the output architecture's names (a Llama's upcycle is a Mixtral).
        let architecture = plan.config.architecture
        let specs = plan.tensors.map { TensorSpec(name: architecture.storedName($0.name), dtype: $0.dtype, shape: $0.shape) }
        let byName = Dictionary(plan.tensors.map { (architecture.storedName($0.name), $0) }, uniquingKeysWith: { a, _ in a })
        let writer = try ShardedSafetensorsWriter(directory: path, tensors: specs, maximumShardBytes: plan.options.maximumShardBytes, alwaysIndex: true)
        let reporter = ProgressReporter(label: "upcycle", totalBytes: plan.totalBytes, style: plan.options.progress)
        while let spec = writer.nextTensor {
            guard let tensor = byName[spec.name] else { throw UpcycleError.write(directory: path, reason: "unplanned tensor '\(spec.name)'") }
            switch tensor.source {
            case .dense(let name):
                try writer.appendTensor(name, from: checkpoint, as: tensor.dtype, reporter: reporter)
            case .router:
                let router = RouterInitializer.weights(
                    experts: plan.options.experts, hidden: plan.denseConfig.hiddenSize, initialization: plan.options.routerInitialization,
                    standardDeviation: plan.options.routerStandardDeviation,
                    granularity: plan.options.method == .granular ? plan.options.granularity : 1,
                    seed: plan.options.seed, streamName: tensor.name)
                try router.values.withUnsafeBufferPointer { (values) in try writer.append(floats: values) }
            case let .sharedExperts(layer, projection):
                let weight = try layers.sharedExpertsWeight(layer: layer, projection: projection)
                try weight.values.withUnsafeBufferPointer { (values) in try writer.append(floats: values) }
            case let .expert(layer, expert, projection):
                let denseName = projection.denseTensorName(layer: layer)
                if plan.copiesExpertsRaw && tensor.dtype == tensor.sourceDType {
                    try writer.appendTensor(denseName, from: checkpoint, as: tensor.dtype, reporter: reporter)
                } else {
                    let weight = try layers.expertWeight(layer: layer, expert: expert, projection: projection, name: tensor.name)
                    try weight.values.withUnsafeBufferPointer { (values) in try writer.append(floats: values) }
                }
            }
            reporter.update(bytesDone: writer.tensorBytesWritten)
        }
        try writer.finish()
        reporter.finish(bytesDone: writer.tensorBytesWritten)
        return writer.shardFiles
    }
}

/// The dense MLP of the layer being written, decoded to f32 on first use and dropped when the
/// writer moves to the next layer (output names sort layer by layer), plus that layer's slicing.
final class LayerSource {
    private let plan: UpcyclePlan
    private let checkpoint: ModelCheckpoint
    private var layer = -1
    private var dense: [ExpertProjection: Tensor] = [:]
    private var standardDeviations: [ExpertProjection: Double] = [:]
    private var slicing: ExpertSlicing?
    /// `drop`: per layer and expert, the redrawn neurons and each matrix's statistics, in write order.
    private(set) var dropRecord = DropUpcycling.Record()

    init(plan: UpcyclePlan, checkpoint: ModelCheckpoint) {
        self.plan = plan
        self.checkpoint = checkpoint
    }

    private func enter(_ newLayer: Int) {
        guard newLayer != layer else { return }
        layer = newLayer
        dense = [:]
        standardDeviations = [:]
        slicing = nil
    }

    func denseMatrix(_ projection: ExpertProjection) throws -> Tensor {
        if let cached = dense[projection] { return cached }
        let name = projection.denseTensorName(layer: layer)
        let tensor = try checkpoint.floatTensor(name)
        checkpoint.release(name)
        dense[projection] = tensor
        return tensor
    }

    func layerSlicing() throws -> ExpertSlicing {
        if let slicing { return slicing }
        let options = plan.options
        let result: ExpertSlicing
        if let shared = plan.sharedSlicing {
            result = shared
        } else {
            let intermediate = plan.denseConfig.intermediateSize
            var random = SeededRandom(seed: options.seed, stream: MiniCPMTensorNames.layer(layer) + ".mlp.partition")
            let groups: [[Int]]
            switch options.partitionBy {
            case .random:
                groups = NeuronPartition.random(neurons: intermediate, groups: options.experts, random: &random)
            case .cluster:
                let gate = try denseMatrix(.gate), up = try denseMatrix(.up)
                groups = NeuronPartition.balancedKMeans(features: Self.concatenatedRows(gate, up), groups: options.experts, random: &random)
            }
            result = .partition(groups: groups, intermediateSize: intermediate)
        }
        slicing = result
        return result
    }

    /// `[I, 2H]`: neuron i's gate row followed by its up row (the clustering features).
    static func concatenatedRows(_ a: Tensor, _ b: Tensor) -> Tensor {
        let rows = a.rows, width = a.columns + b.columns
        var values = [Float](repeating: 0, count: rows * width)
        for row in 0 ..< rows {
            for c in 0 ..< a.columns { values[row * width + c] = a.values[row * a.columns + c] }
            for c in 0 ..< b.columns { values[row * width + a.columns + c] = b.values[row * b.columns + c] }
        }
        return Tensor(shape: [rows, width], values: values)
    }

    /// The S shared experts' matrix of `projection`: gate/up `[S·I, H]` are the dense rows S times,
    /// down `[H, S·I]` the dense columns S times, times 1/(S + 1) (`UpcyclePlan.sharedExpertsScale`).
    func sharedExpertsWeight(layer newLayer: Int, projection: ExpertProjection) throws -> Tensor {
        enter(newLayer)
        let source = try denseMatrix(projection)
        let copies = plan.options.sharedExperts
        switch projection {
        case .gate, .up:
            return Tensor(shape: [copies * source.rows, source.columns], values: Array([[Float]](repeating: source.values, count: copies).joined()))
        case .down:
            let scale = plan.sharedExpertsScale, width = source.columns
            var values = [Float](repeating: 0, count: source.rows * copies * width)
            for row in 0 ..< source.rows {
                for copy in 0 ..< copies {
                    for column in 0 ..< width { values[(row * copies + copy) * width + column] = scale * source.values[row * width + column] }
                }
            }
            return Tensor(shape: [source.rows, copies * width], values: values)
        }
    }

    func expertWeight(layer newLayer: Int, expert: Int, projection: ExpertProjection, name: String) throws -> Tensor {
        enter(newLayer)
        let source = try denseMatrix(projection)
        var weight = try layerSlicing().weight(projection, expert: expert, dense: source)
        if plan.options.method == .noise {
            let reference: Double
            if let cached = standardDeviations[projection] { reference = cached } else {
                reference = ExpertNoise.standardDeviation(source.values)
                standardDeviations[projection] = reference
            }
            var random = SeededRandom(seed: plan.options.seed, stream: name)
            ExpertNoise.add(to: &weight, relativeStandardDeviation: plan.options.noiseStandardDeviation,
                            referenceStandardDeviation: reference, random: &random)
        }
        if plan.options.method == .drop {
            let neurons = DropUpcycling.redrawnNeurons(intermediateSize: plan.denseConfig.intermediateSize, ratio: plan.options.dropRatio,
                                                       seed: plan.options.seed, layer: newLayer, expert: expert)
            var random = DropUpcycling.valueStream(seed: plan.options.seed, tensorName: name)
            let statistics = DropUpcycling.redraw(projection, weight: &weight, neurons: neurons, random: &random)
            dropRecord.add(layer: newLayer, expert: expert, neurons: neurons, projection: projection, statistics: statistics)
        }
        let routingScale = plan.routingWeightScale
        if projection == .down && routingScale != 1 {
            for i in weight.values.indices { weight.values[i] *= routingScale }
        }
        return weight
    }
}
