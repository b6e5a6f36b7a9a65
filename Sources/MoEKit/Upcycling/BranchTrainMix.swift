import Foundation

/// BTX, Branch-Train-MiX (Sukhbaatar et al. 2024, arXiv 2403.07816): N dense models branched from
/// one seed model and trained apart (one domain each) are mixed into one MoE. Layer `l` gets `N`
/// experts, expert `i` being model `i`'s FFN (`w1 = gate_proj`, `w3 = up_proj`, `w2 = down_proj`);
/// every other parameter (embeddings, attention, norms, head) is the average `θ = (1/N) Σ_i θ_i`;
/// the router is new. `moekit merge` writes it; the MoE is then fine-tuned ("MiX").
public struct MergeOptions: Sendable, Equatable {
    /// Experts per token, `1 ≤ K ≤ N`.
    public var topK: Int
    public var routerInitialization: RouterInitialization = .normal
    public var routerStandardDeviation: Double = 0.1
    /// Stored in the output config as `moekit_router`; `nil` keeps MiniCPM-MoE's routing.
    public var router: RouterConfiguration?
    public var seed: UInt64 = 0
    /// Storage type of every output tensor; `nil` keeps the first model's type per tensor.
    public var dtype: SafetensorsDType?
    public var maximumShardBytes: Int = ShardedSafetensorsWriter.defaultShardSize
    public var replaceExisting: Bool = false
    public var progress: ProgressReporter.Style = .automatic

    public init(topK: Int) { self.topK = topK }
}

/// Why a merge was refused or failed. Each message names the directory and the field or tensor.
public enum MergeError: Error, LocalizedError, Equatable, Sendable {
    case invalidOption(option: String, reason: String)
    /// Two checkpoints' configs differ in an architecture field.
    case configMismatch(directory: String, field: String, expected: String, found: String, reference: String)
    /// A tensor is missing from, extra in, or shaped differently in one checkpoint.
    case tensorMismatch(directory: String, tensor: String, reason: String, reference: String)
    case alreadyMoE(directory: String, evidence: String)
    case unsupportedDType(directory: String, tensor: String, dtype: String)
    case checkpoint(CheckpointError)
    case safetensors(SafetensorsError)
    case file(FileError)
    case write(directory: String, reason: String)

    public var errorDescription: String? {
        switch self {
        case let .invalidOption(option, reason):
            return "\(option): \(reason)"
        case let .configMismatch(directory, field, expected, found, reference):
            return "\(directory)/config.json: \(field) is \(found) but \(reference) has \(expected); BTX merges checkpoints of one architecture"
        case let .tensorMismatch(directory, tensor, reason, reference):
            return "\(directory): tensor '\(tensor)' \(reason) (compared with \(reference)); BTX merges checkpoints of one architecture"
        case let .alreadyMoE(directory, evidence):
            return "\(directory): already a mixture-of-experts checkpoint (\(evidence)); merge dense MiniCPM checkpoints"
        case let .unsupportedDType(directory, tensor, dtype):
            return "\(directory): tensor '\(tensor)' is stored as \(dtype), which merge cannot average; pass --dtype bf16|f16|f32"
        case let .checkpoint(error):
            return error.errorDescription
        case let .safetensors(error):
            return error.errorDescription
        case let .file(error):
            return error.errorDescription
        case let .write(directory, reason):
            return "\(directory): write failed: \(reason)"
        }
    }
}

/// What `moekit merge` will write: the MoE config and every tensor with its source.
public struct MergePlan: @unchecked Sendable {
    public enum Source: Sendable, Equatable {
        /// Expert `expert` of `layer`: model `expert`'s dense MLP matrix.
        case expert(layer: Int, expert: Int, projection: ExpertProjection)
        /// The new router of `layer`.
        case router(layer: Int)
        /// `(1/N) Σ_i` of the tensor of that name in every model.
        case average(String)
    }

    public struct PlannedTensor: Sendable, Equatable {
        public var name: String
        public var shape: [Int]
        public var dtype: SafetensorsDType
        public var source: Source
        public var byteCount: Int { shape.reduce(1, *) * dtype.size }
    }

    public static let reportFileName = "merge-report.json"

    /// The architecture fields every config must agree on (`config.json` keys).
    public static let architectureFields = [
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
        "rms_norm_eps", "rope_theta", "rope_scaling", "max_position_embeddings", "scale_emb", "dim_model_base", "scale_depth",
        "tie_word_embeddings", "hidden_act",
    ]

    public let denseDirectories: [String]
    public let options: MergeOptions
    public let denseConfig: MiniCPMConfig
    public let config: MiniCPMConfig
    public let tensors: [PlannedTensor]
    public let checkpoints: [ModelCheckpoint]
    /// Files of the first model's directory copied unchanged (tokenizer, …).
    public let otherFiles: [String]

    public var experts: Int { denseDirectories.count }
    public var totalBytes: Int { tensors.reduce(0) { $0 + $1.byteCount } }

    public init(denseDirectories: [String], options: MergeOptions) throws(MergeError) {
        guard denseDirectories.count >= 2 else {
            throw .invalidOption(option: "DENSE", reason: "BTX needs at least 2 dense models to merge, got \(denseDirectories.count)")
        }
        guard options.topK >= 1, options.topK <= denseDirectories.count else {
            throw .invalidOption(option: "--top-k", reason: "must be between 1 and the number of models (\(denseDirectories.count)), got \(options.topK)")
        }
        guard options.routerStandardDeviation.isFinite, options.routerStandardDeviation >= 0 else {
            throw .invalidOption(option: "--router-std", reason: "must be a finite number ≥ 0, got \(options.routerStandardDeviation)")
        }
        guard options.maximumShardBytes > 0 else { throw .invalidOption(option: "--shard-size", reason: "must be positive") }
        if let dtype = options.dtype, !dtype.isWritable {
            throw .invalidOption(option: "--dtype", reason: "MoEKit writes bf16, f16 or f32, not \(dtype.rawValue)")
        }
        self.denseDirectories = denseDirectories
        self.options = options

        // Configs: dense, and equal in every architecture field.
        var configs: [MiniCPMConfig] = []
        var configJSON: [[String: JSONValue]] = []
        for directory in denseDirectories {
            let config: MiniCPMConfig
            do { config = try MiniCPMConfig(path: directory + "/config.json") } catch { throw .checkpoint(error) }
            if let experts = config.numExperts { throw .alreadyMoE(directory: directory, evidence: "config.json has num_experts = \(experts)") }
            configs.append(config)
            let data = FileManager.default.contents(atPath: directory + "/config.json") ?? Data()
            configJSON.append(JSONValue.parse(data)?.objectValue ?? [:])
        }
        let reference = denseDirectories[0]
        for index in 1 ..< configs.count {
            for field in Self.architectureFields {
                let expected = Self.fieldValue(field, config: configs[0], raw: configJSON[0])
                let found = Self.fieldValue(field, config: configs[index], raw: configJSON[index])
                if expected != found {
                    throw .configMismatch(directory: denseDirectories[index], field: field, expected: expected, found: found, reference: reference)
                }
            }
        }
        denseConfig = configs[0]

        // Checkpoints: the same tensors, shapes equal.
        var opened: [ModelCheckpoint] = []
        for directory in denseDirectories {
            let checkpoint: ModelCheckpoint
            do { checkpoint = try ModelCheckpoint(directory: directory) } catch { throw .checkpoint(error) }
            if let moeTensor = checkpoint.names.first(where: { $0.contains(".mlp.experts.") || $0.hasSuffix(".mlp.gate.weight") }) {
                throw .alreadyMoE(directory: directory, evidence: "it holds tensor '\(moeTensor)'")
            }
            do { _ = try MiniCPMLayout(config: configs[0]).check(checkpoint) } catch { throw .checkpoint(error) }
            opened.append(checkpoint)
        }
        let referenceNames = opened[0].names
        for (index, checkpoint) in opened.enumerated().dropFirst() {
            let names = checkpoint.names
            if let missing = referenceNames.first(where: { !checkpoint.contains($0) }) {
                throw .tensorMismatch(directory: denseDirectories[index], tensor: missing, reason: "is missing", reference: reference)
            }
            if let extra = names.first(where: { !opened[0].contains($0) }) {
                throw .tensorMismatch(directory: denseDirectories[index], tensor: extra, reason: "is not in the first model", reference: reference)
            }
            for name in referenceNames {
                let a: CheckpointTensorInfo, b: CheckpointTensorInfo
                do { a = try opened[0].info(name); b = try checkpoint.info(name) } catch { throw .checkpoint(error) }
                if a.shape != b.shape {
                    throw .tensorMismatch(directory: denseDirectories[index], tensor: name, reason: "has shape \(b.shape), not \(a.shape)", reference: reference)
                }
            }
        }
        checkpoints = opened

        // The MoE: N experts, top-K, every other tensor averaged.
        var output = configs[0]
        output.numExperts = denseDirectories.count
        output.topK = options.topK
        UpcyclePlan.markAsMiniCPMMoE(&output, dense: configs[0])
        options.router?.store(in: &output)
        var planned: [PlannedTensor] = []
        func dtype(of name: String) -> SafetensorsDType? { try? opened[0].info(name).dtype }
        var explained = Set<String>()
        for entry in MiniCPMLayout(config: output).entries {
            let source: Source
            let denseName: String
            if let (layer, expert, projection) = UpcyclePlan.parseExpertName(entry.name) {
                source = .expert(layer: layer, expert: expert, projection: projection)
                denseName = projection.denseTensorName(layer: layer)
            } else if let layer = UpcyclePlan.parseRouterName(entry.name) {
                source = .router(layer: layer)
                denseName = MiniCPMTensorNames.gateProjection(layer)
            } else {
                source = .average(entry.name)
                denseName = entry.name
            }
            explained.insert(denseName)
            planned.append(PlannedTensor(name: entry.name, shape: entry.shape, dtype: options.dtype ?? dtype(of: denseName) ?? .bfloat16, source: source))
        }
        // Tensors the config does not explain are averaged too (they are in every model).
        let denseNames = Set(MiniCPMLayout(config: configs[0]).entries.map(\.name))
        for name in referenceNames where !explained.contains(name) && !denseNames.contains(name) {
            guard let info = try? opened[0].info(name) else { continue }
            planned.append(PlannedTensor(name: name, shape: info.shape, dtype: options.dtype ?? info.dtype, source: .average(name)))
        }
        planned.sort { $0.name < $1.name }
        for tensor in planned {
            if case .expert = tensor.source { continue }  // raw copies when the dtype is kept
            if !tensor.dtype.isWritable { throw .unsupportedDType(directory: reference, tensor: tensor.name, dtype: tensor.dtype.rawValue) }
            if case .average(let name) = tensor.source {
                for (index, checkpoint) in opened.enumerated() {
                    if let info = try? checkpoint.info(name), !info.dtype.isConvertibleToFloat {
                        throw .unsupportedDType(directory: denseDirectories[index], tensor: name, dtype: info.dtype.rawValue)
                    }
                }
            }
        }
        tensors = planned
        do { try output.validate(path: "config.json (output)") } catch { throw .checkpoint(error) }
        config = output
        let names = (try? FileManager.default.contentsOfDirectory(atPath: reference)) ?? []
        otherFiles = names.filter { !UpcyclePlan.isDenseWeightOrConfig($0) && $0 != Self.reportFileName && !$0.hasPrefix(".") && !$0.hasPrefix("training_state") }.sorted()
    }

    /// A config field's value as text, from the parsed config (typed fields) or the raw JSON.
    static func fieldValue(_ field: String, config: MiniCPMConfig, raw: [String: JSONValue]) -> String {
        switch field {
        case "hidden_size": return "\(config.hiddenSize)"
        case "intermediate_size": return "\(config.intermediateSize)"
        case "num_hidden_layers": return "\(config.numHiddenLayers)"
        case "num_attention_heads": return "\(config.numAttentionHeads)"
        case "num_key_value_heads": return "\(config.numKeyValueHeads)"
        case "vocab_size": return "\(config.vocabSize)"
        case "rms_norm_eps": return "\(config.rmsNormEps)"
        case "rope_theta": return "\(config.ropeTheta)"
        case "max_position_embeddings": return "\(config.maxPositionEmbeddings)"
        case "scale_emb": return "\(config.scaleEmb)"
        case "dim_model_base": return "\(config.dimModelBase)"
        case "scale_depth": return "\(config.scaleDepth)"
        case "tie_word_embeddings": return "\(config.tieWordEmbeddings)"
        default:
            guard let value = config.otherKeys[field] ?? raw[field] else { return "absent" }
            return String(decoding: value.serialized(pretty: false), as: UTF8.self)
        }
    }
}

/// Executes a `MergePlan`: streams the tensors, in name order, into a directory built under a
/// temporary name and renamed into place when complete (as `Upcycler`). An averaged tensor holds
/// the running sum and one model's f32 copy at a time; experts are raw byte copies when the dtype
/// is kept.
public enum Merger {
    public struct Result: Sendable {
        public var outputDirectory: String
        public var files: [String]
        public var bytesWritten: Int
        public var report: JSONValue
    }

    @discardableResult
    public static func run(_ plan: MergePlan, outputDirectory: String) throws(MergeError) -> Result {
        let directory: AtomicDirectory
        do { directory = try AtomicDirectory(destination: outputDirectory, replaceExisting: plan.options.replaceExisting) } catch { throw .file(error) }
        let files: [String]
        do {
            files = try writeWeights(plan, into: directory.temporaryPath)
            try plan.config.write(to: directory.path("config.json"))
        } catch let error as MergeError {
            throw error
        } catch let error as CheckpointError {
            throw .checkpoint(error)
        } catch let error as SafetensorsError {
            throw .safetensors(error)
        } catch {
            throw .write(directory: outputDirectory, reason: "\(error)")
        }
        for name in plan.otherFiles {
            do {
                try FileManager.default.copyItem(atPath: plan.denseDirectories[0] + "/" + name, toPath: directory.path(name))
            } catch {
                throw .file(.cannotCopy(path: plan.denseDirectories[0] + "/" + name, destination: outputDirectory, reason: error.localizedDescription))
            }
        }
        let report = self.report(plan, outputDirectory: directory.destination, files: files + [SafetensorsIndex.fileName])
        do {
            try AtomicFileWriter.write(report.serialized(), to: directory.path(MergePlan.reportFileName))
            try directory.commit()
        } catch {
            throw .file(error)
        }
        return Result(outputDirectory: directory.destination, files: files, bytesWritten: plan.totalBytes, report: report)
    }

    static func writeWeights(_ plan: MergePlan, into path: String) throws -> [String] {
        let specs = plan.tensors.map { TensorSpec(name: $0.name, dtype: $0.dtype, shape: $0.shape) }
        let byName = Dictionary(plan.tensors.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let writer = try ShardedSafetensorsWriter(directory: path, tensors: specs, maximumShardBytes: plan.options.maximumShardBytes, alwaysIndex: true)
        let reporter = ProgressReporter(label: "merge", totalBytes: plan.totalBytes, style: plan.options.progress)
        while let spec = writer.nextTensor {
            guard let tensor = byName[spec.name] else { throw MergeError.write(directory: path, reason: "unplanned tensor '\(spec.name)'") }
            switch tensor.source {
            case let .expert(layer, expert, projection):
                try writer.appendTensor(projection.denseTensorName(layer: layer), from: plan.checkpoints[expert], as: tensor.dtype, reporter: reporter)
            case .router:
                let router = RouterInitializer.weights(experts: plan.experts, hidden: plan.denseConfig.hiddenSize,
                                                       initialization: plan.options.routerInitialization,
                                                       standardDeviation: plan.options.routerStandardDeviation,
                                                       seed: plan.options.seed, streamName: tensor.name)
                try router.values.withUnsafeBufferPointer { (values) in try writer.append(floats: values) }
            case .average(let name):
                // (1/N) Σ_i θ_i: summed in model order in f32, one model's copy in memory at a time.
                var mean = try plan.checkpoints[0].floatTensor(name)
                plan.checkpoints[0].release(name)
                for checkpoint in plan.checkpoints.dropFirst() {
                    let values = try checkpoint.floatTensor(name)
                    checkpoint.release(name)
                    for i in mean.values.indices { mean.values[i] += values.values[i] }
                }
                let scale = 1 / Float(plan.checkpoints.count)
                for i in mean.values.indices { mean.values[i] *= scale }
                try mean.values.withUnsafeBufferPointer { (values) in try writer.append(floats: values) }
            }
            reporter.update(bytesDone: writer.tensorBytesWritten)
        }
        try writer.finish()
        reporter.finish(bytesDone: writer.tensorBytesWritten)
        return writer.shardFiles
    }

    /// `merge-report.json`: `method` ("btx"), `sources` (expert i ← directory i), `output`, `options`
    /// (top_k, router_init, router_std, router, seed, dtype, shard_size), `averaged` (tensor names),
    /// `parameters` (total, active_per_token, non_embedding, active_non_embedding), `bytes_written`, `files`.
    static func report(_ plan: MergePlan, outputDirectory: String, files: [String]) -> JSONValue {
        let counts = MiniCPMLayout(config: plan.config).parameterCounts
        var averaged: [JSONValue] = []
        for tensor in plan.tensors { if case .average(let name) = tensor.source { averaged.append(.string(name)) } }
        return .object([
            "method": .string("btx"),
            "sources": .array(plan.denseDirectories.enumerated().map { index, path in
                .object(["expert": .integer(Int64(index)), "directory": .string(URL(fileURLWithPath: path).standardizedFileURL.path)])
            }),
            "output": .string(outputDirectory),
            "options": .object([
                "top_k": .integer(Int64(plan.options.topK)),
                "router_init": .string(plan.options.routerInitialization.rawValue),
                "router_std": .number(plan.options.routerStandardDeviation),
                "router": plan.options.router?.jsonValue ?? .null,
                "seed": .integer(Int64(bitPattern: plan.options.seed)),
                "dtype": .string(plan.options.dtype?.rawValue ?? "keep"),
                "shard_size": .integer(Int64(plan.options.maximumShardBytes)),
            ]),
            "averaged": .array(averaged),
            "parameters": .object([
                "total": .integer(Int64(counts.total)), "active_per_token": .integer(Int64(counts.activePerToken)),
                "non_embedding": .integer(Int64(counts.nonEmbedding)), "active_non_embedding": .integer(Int64(counts.activeNonEmbedding)),
            ]),
            "bytes_written": .integer(Int64(plan.totalBytes)),
            "files": .array(files.map { .string($0) }),
        ])
    }
}
