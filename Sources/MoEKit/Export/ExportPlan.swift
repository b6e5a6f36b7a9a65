import Foundation

/// What `moekit export` will write, worked out before a byte is written.
///
/// MiniCPM's three scalars fold into weights exactly (in real arithmetic):
///
///     embed_tokens ← embed_tokens · scale_emb
///     o_proj, down_proj, every expert's w2 ← · scale_depth / √L      (the residual branch's factor)
///     lm_head ← lm_head / (hidden_size / dim_model_base)             (tied: a scaled copy of embed_tokens)
///
/// after which the model computes the same logits with scale_emb 1, residual factor 1 and logit
/// divisor 1: a Llama (dense) or Mixtral (MoE). Each folded value is the exact product rounded once
/// to the output dtype; `ExportFoldError` reports that rounding. A model with neutral scalars (an
/// imported Llama/Mixtral) folds by factors of exactly 1 and is copied bit for bit.
public struct ExportPlan: @unchecked Sendable {
    /// Which of MiniCPM's scalars a tensor absorbs.
    public enum Fold: String, Sendable, CaseIterable {
        case embedding = "embed_tokens × scale_emb"
        case residual = "o_proj, down_proj/w2 × scale_depth/√L"
        case head = "lm_head ÷ (hidden_size/dim_model_base)"
    }

    public struct PlannedTensor: Sendable, Equatable {
        /// The name written (the target architecture's).
        var outputName: String
        /// The MiniCPM name read from the source checkpoint.
        var sourceName: String
        public var shape: [Int]
        public var dtype: SafetensorsDType
        var sourceDType: SafetensorsDType
        /// The factor folded in (exactly 1 for tensors copied as they are; 0 for the all-zero
        /// tensors a Qwen2-MoE shared expert needs, which have no source).
        var scale: Double
        public var fold: Fold?
        public var byteCount: Int { shape.reduce(1, *) * dtype.size }
        /// Copied without arithmetic: raw bytes when the dtype is kept, converted otherwise.
        var isCopy: Bool { scale == 1 }
        var isZero: Bool { scale == 0 }
    }

    public struct Options: Sendable {
        public var format: ExportFormat
        /// Storage dtype of every tensor (`nil` keeps each tensor's).
        public var dtype: SafetensorsDType?
        public var maximumShardBytes: Int = ShardedSafetensorsWriter.defaultShardSize
        public var replaceExisting = false
        public var progress: ProgressReporter.Style = .automatic

        public init(format: ExportFormat, dtype: SafetensorsDType? = nil) {
            self.format = format
            self.dtype = dtype
        }
    }

    public static let reportFileName = "export-report.json"

    public let sourceDirectory: String
    public let options: Options
    public let sourceConfig: MiniCPMConfig
    /// The config written, already in the target architecture's names.
    public let outputConfig: MiniCPMConfig
    /// Output tensors in output-name order.
    public let tensors: [PlannedTensor]
    public let checkpoint: ModelCheckpoint
    /// Files copied from the source directory (tokenizer, generation config; modeling code for MiniCPM).
    public let otherFiles: [String]
    /// Tied embeddings written as a separate `lm_head.weight`.
    public let untied: Bool
    /// Settings the target drops (training-only router options) and other remarks.
    public let notes: [String]

    public var totalBytes: Int { tensors.reduce(0) { $0 + $1.byteCount } }

    public init(directory: String, options: Options) throws(ExportError) {
        sourceDirectory = directory
        self.options = options
        let format = options.format
        let config: MiniCPMConfig
        let checkpoint: ModelCheckpoint
        let unexplained: [String]
        do {
            config = try MiniCPMConfig(path: directory + "/config.json")
            checkpoint = try ModelCheckpoint(directory: directory)
            unexplained = try MiniCPMLayout(config: config).check(checkpoint)
        } catch { throw .checkpoint(error) }
        sourceConfig = config
        self.checkpoint = checkpoint

        // MoEKit's router biases (`moekit_bias`, which the layout check explains) are planned below;
        // anything unexplained would be lost.
        let biasNames = Set((0 ..< config.numHiddenLayers).map(MiniCPMTensorNames.routerBias))
        let storedBiases = biasNames.filter(checkpoint.contains).sorted()
        // A Qwen2-MoE's shared expert is all zero (ModelCheckpoint checked it): it adds nothing.
        let lost = unexplained.filter {
            !biasNames.contains($0) && $0 != MiniCPMTensorNames.lmHead
                && !([.qwen2MoE, .glm4MoE].contains(config.architecture) && ModelArchitecture.isSharedExpertTensor($0))
        }
        guard lost.isEmpty else { throw .unexplainedTensors(directory: directory, tensors: lost.map(checkpoint.storedName)) }
        var biasIsZero = true
        for name in storedBiases {
            do {
                if try checkpoint.floatTensor(name).values.contains(where: { $0 != 0 }) { biasIsZero = false }
            } catch { throw .checkpoint(error) }
        }

        // Dense or MoE, and the router.
        var notes: [String] = []
        var routing: ExportRouting?
        switch format {
        case .llama where config.isMoE:
            throw .wrongKind(directory: directory, format: "llama", reason: "it is an MoE (num_experts \(config.numExperts ?? 0)); use --format mixtral")
        case .mixtral where !config.isMoE, .qwen2MoE where !config.isMoE, .glm4MoE where !config.isMoE:
            throw .wrongKind(directory: directory, format: format.rawValue, reason: "it is a dense model; use --format llama")
        case .mixtral where config.numSharedExperts > 0:
            throw .wrongKind(directory: directory, format: "mixtral", reason: "it has \(config.numSharedExperts) shared expert\(config.numSharedExperts == 1 ? "" : "s") (n_shared_experts), which Mixtral cannot hold; use --format qwen2_moe, glm4_moe or minicpm")
        case .mixtral, .qwen2MoE, .glm4MoE:
            let router = RouterConfiguration(modelConfig: config)
            let mapped = try ExportRouting(router, layers: config.numHiddenLayers, modelTopK: config.topK ?? 2,
                                            biasIsZero: biasIsZero, path: directory + "/config.json", format: format)
            if format == .qwen2MoE && mapped.jitterNoise != 0 { notes.append("input_jitter (training only) is not in Qwen2-MoE's config") }
            notes += mapped.notes
            routing = mapped
        default:
            break
        }

        // The folds, computed in double precision.
        let residual = config.scaleDepth / Double(config.numHiddenLayers).squareRoot()
        let divisor = Double(config.hiddenSize) / config.dimModelBase
        let headSource = checkpoint.contains(MiniCPMTensorNames.lmHead) ? MiniCPMTensorNames.lmHead : MiniCPMTensorNames.embedTokens
        let tied = headSource == MiniCPMTensorNames.embedTokens && config.scaleEmb == 1 && divisor == 1
        untied = config.tieWordEmbeddings && !tied

        var output = config
        output.scaleEmb = 1
        output.dimModelBase = Double(config.hiddenSize)
        output.scaleDepth = Double(config.numHiddenLayers).squareRoot()
        output.tieWordEmbeddings = tied
        if let routing { output.topK = routing.topK }
        // Shared experts: MiniCPM keeps them under its own names (the layout below); Qwen2-MoE and
        // GLM-4.5-MoE hold them in their own tensors, planned with the formats' other extras.
        let sharedExperts = config.numSharedExperts
        if format != .minicpm { output.numSharedExperts = 0 }

        let target = format.architecture
        var planned: [PlannedTensor] = []
        func plan(_ name: String, from source: String, scale: Double, fold: Fold?) throws(ExportError) {
            let info: CheckpointTensorInfo
            do { info = try checkpoint.info(source) } catch { throw .checkpoint(error) }
            let dtype = options.dtype ?? info.dtype
            guard info.dtype.isConvertibleToFloat || (scale == 1 && dtype == info.dtype) else { throw .checkpoint(checkpoint.unsupportedDType(source)) }
            guard dtype.isWritable || dtype == info.dtype else { throw .checkpoint(checkpoint.unsupportedDType(source)) }
            planned.append(PlannedTensor(outputName: target.storedName(name), sourceName: source, shape: info.shape, dtype: dtype,
                                         sourceDType: info.dtype, scale: scale, fold: scale == 1 ? nil : fold))
        }
        let layout = MiniCPMLayout(config: output)
        for entry in layout.entries where entry.name != MiniCPMTensorNames.lmHead {
            let isResidualOutput = Self.isResidualOutput(entry.name, config: config)
            if entry.name == MiniCPMTensorNames.embedTokens {
                try plan(entry.name, from: entry.name, scale: config.scaleEmb, fold: .embedding)
            } else if isResidualOutput {
                try plan(entry.name, from: entry.name, scale: residual, fold: .residual)
            } else {
                try plan(entry.name, from: entry.name, scale: 1, fold: nil)
            }
        }
        if !tied { try plan(MiniCPMTensorNames.lmHead, from: headSource, scale: 1 / divisor, fold: .head) }
        if format == .glm4MoE && sharedExperts > 0 {
            // GLM-4.5-MoE's shared experts are DeepSeek's: mlp.shared_experts.* of n_shared_experts · moe_intermediate_size neurons, no gate.
            for layer in 0 ..< config.numHiddenLayers {
                try plan(MiniCPMTensorNames.sharedExpertsGate(layer), from: MiniCPMTensorNames.sharedExpertsGate(layer), scale: 1, fold: nil)
                try plan(MiniCPMTensorNames.sharedExpertsUp(layer), from: MiniCPMTensorNames.sharedExpertsUp(layer), scale: 1, fold: nil)
                try plan(MiniCPMTensorNames.sharedExpertsDown(layer), from: MiniCPMTensorNames.sharedExpertsDown(layer), scale: residual, fold: .residual)
            }
        } else if format == .glm4MoE {
            let dtype = options.dtype ?? (try? checkpoint.info(MiniCPMTensorNames.expertGate(0, 0)).dtype) ?? .float32
            let size = config.intermediateSize, hidden = config.hiddenSize
            for layer in 0 ..< config.numHiddenLayers {
                let prefix = MiniCPMTensorNames.layer(layer) + ".mlp.shared_experts"
                for (suffix, shape) in [(".gate_proj.weight", [size, hidden]), (".up_proj.weight", [size, hidden]), (".down_proj.weight", [hidden, size])] {
                    planned.append(PlannedTensor(outputName: prefix + suffix, sourceName: "", shape: shape, dtype: dtype,
                                                 sourceDType: dtype, scale: 0, fold: nil))
                }
            }
        }
        if format == .qwen2MoE && sharedExperts > 0 {
            // Qwen2-MoE's one shared expert of S·I neurons is gated by sigmoid(x·w_gate): w_gate = 0
            // gives exactly ½, which down_proj × 2 undoes (exact in binary floating point).
            let dtype = options.dtype ?? (try? checkpoint.info(MiniCPMTensorNames.router(0)).dtype) ?? .float32
            for layer in 0 ..< config.numHiddenLayers {
                let prefix = MiniCPMTensorNames.layer(layer) + ".mlp.shared_expert"
                func planShared(_ suffix: String, from source: String, scale: Double, fold: Fold?) throws(ExportError) {
                    try plan(source, from: source, scale: scale, fold: fold)
                    planned[planned.count - 1].outputName = prefix + suffix
                }
                try planShared(".gate_proj.weight", from: MiniCPMTensorNames.sharedExpertsGate(layer), scale: 1, fold: nil)
                try planShared(".up_proj.weight", from: MiniCPMTensorNames.sharedExpertsUp(layer), scale: 1, fold: nil)
                try planShared(".down_proj.weight", from: MiniCPMTensorNames.sharedExpertsDown(layer), scale: 2 * residual, fold: .residual)
                planned.append(PlannedTensor(outputName: prefix + "_gate.weight", sourceName: "", shape: [1, config.hiddenSize], dtype: dtype,
                                             sourceDType: dtype, scale: 0, fold: nil))
            }
        } else if format == .qwen2MoE {
            let dtype = options.dtype ?? (try? checkpoint.info(MiniCPMTensorNames.router(0)).dtype) ?? .float32
            for layer in 0 ..< config.numHiddenLayers {
                let prefix = MiniCPMTensorNames.layer(layer) + ".mlp.shared_expert"
                for (suffix, shape) in [(".gate_proj.weight", [1, config.hiddenSize]), (".up_proj.weight", [1, config.hiddenSize]),
                                        (".down_proj.weight", [config.hiddenSize, 1]), ("_gate.weight", [1, config.hiddenSize])] {
                    planned.append(PlannedTensor(outputName: prefix + suffix, sourceName: "", shape: shape, dtype: dtype,
                                                 sourceDType: dtype, scale: 0, fold: nil))
                }
            }
        }
        // MiniCPM keeps MoEKit's router biases; GLM-4.5-MoE holds them as e_score_correction_bias (f32,
        // zero when the source has none); the other formats cannot hold them (ExportRouting refused
        // a bias that is used).
        if format == .minicpm {
            for name in storedBiases { try plan(name, from: name, scale: 1, fold: nil) }
        } else if format == .glm4MoE, let experts = config.numExperts {
            for layer in 0 ..< config.numHiddenLayers {
                let name = MiniCPMTensorNames.routerBias(layer)
                if checkpoint.contains(name) {
                    planned.append(PlannedTensor(outputName: target.storedName(name), sourceName: name, shape: [experts], dtype: .float32,
                                                 sourceDType: (try? checkpoint.info(name).dtype) ?? .float32, scale: 1, fold: nil))
                } else {
                    planned.append(PlannedTensor(outputName: target.storedName(name), sourceName: "", shape: [experts], dtype: .float32,
                                                 sourceDType: .float32, scale: 0, fold: nil))
                }
            }
        }
        planned.sort { $0.outputName < $1.outputName }
        tensors = planned

        // The config in the target's names, every value explicit.
        var bytesByType: [SafetensorsDType: Int] = [:]
        for tensor in planned { bytesByType[tensor.dtype, default: 0] += tensor.byteCount }
        output.torchDtype = bytesByType.max { ($0.value, $0.key.rawValue) < ($1.value, $1.key.rawValue) }?.key.torchName ?? config.torchDtype
        output.otherKeys = ArchitectureConfigKeys.otherKeys(config.otherKeys, config: output, format: format, routing: routing)
        if sharedExperts > 0 && format == .qwen2MoE {
            output.otherKeys["shared_expert_intermediate_size"] = .integer(Int64(sharedExperts * config.intermediateSize))
        } else if sharedExperts > 0 && format == .glm4MoE {
            output.otherKeys["n_shared_experts"] = .integer(Int64(sharedExperts))
        }
        do { try output.validate(path: "config.json (output)") } catch { throw .checkpoint(error) }
        outputConfig = output
        if untied { notes.append("tied embeddings untied: lm_head.weight is embed_tokens ÷ \(Self.format(divisor)), embed_tokens × \(Self.format(config.scaleEmb))") }

        // Other files: tokenizer, generation config, chat templates; MiniCPM's modeling code only for MiniCPM.
        var others: [String] = []
        if let names = try? FileManager.default.contentsOfDirectory(atPath: directory) {
            others = names.filter { name in
                var isDirectory: ObjCBool = false
                _ = FileManager.default.fileExists(atPath: directory + "/" + name, isDirectory: &isDirectory)
                if isDirectory.boolValue || name.hasPrefix(".") || name == "config.json" || ModelCheckpoint.isWeightFile(name) { return false }
                if name == UpcyclePlan.reportFileName || name == Self.reportFileName { return false }
                if name.hasSuffix(".py") && format != .minicpm { return false }
                return true
            }.sorted()
        }
        otherFiles = others
        self.notes = notes
    }

    /// Whether `name` is the last matrix of a residual branch (o_proj, the MLP's down_proj, an expert's w2).
    static func isResidualOutput(_ name: String, config: MiniCPMConfig) -> Bool {
        guard name.hasPrefix("model.layers."), name.hasSuffix(".weight") else { return false }
        return name.hasSuffix(".self_attn.o_proj.weight") || name.hasSuffix(".mlp.down_proj.weight")
            || name.hasSuffix(".mlp.shared_experts.down_proj.weight")
            || (name.contains(".mlp.experts.") && name.hasSuffix(".w2.weight"))
    }

    static func format(_ value: Double) -> String {
        value.rounded() == value && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }
}
