import Foundation

/// What an upcycling run will write, worked out before a byte is written: the output config,
/// every output tensor with its shape, storage type and where it comes from, the parameter counts
/// and the other files to copy. `moekit upcycle --dry-run` prints it; `Upcycler` executes it.
public struct UpcyclePlan: @unchecked Sendable {
    /// Where an output tensor comes from.
    public enum Source: Sendable, Equatable {
        /// A dense tensor copied unchanged (attention, norms, embeddings, head, unknown tensors):
        /// raw bytes when its dtype is kept, converted otherwise.
        case dense(String)
        /// Expert `expert`'s matrix of `layer`, cut from the dense MLP.
        case expert(layer: Int, expert: Int, projection: ExpertProjection)
        /// The freshly initialised router of `layer`.
        case router(layer: Int)
        /// The S shared experts of `layer` (one matrix of S·I neurons): S copies of the dense MLP's matrix.
        case sharedExperts(layer: Int, projection: ExpertProjection)
    }

    public struct PlannedTensor: Sendable, Equatable {
        public var name: String
        public var shape: [Int]
        public var dtype: SafetensorsDType
        public var source: Source
        /// The dense tensor's storage type (`nil` for the router or without a checkpoint).
        var sourceDType: SafetensorsDType?
        public var byteCount: Int { shape.reduce(1, *) * dtype.size }
    }

    public static let reportFileName = "upcycle-report.json"
    /// Files of the dense directory that are not copied: its config (rewritten) and its weights.
    public static func isDenseWeightOrConfig(_ name: String) -> Bool {
        name == "config.json" || ModelCheckpoint.isWeightFile(name) || name == reportFileName
    }

    public let denseDirectory: String
    public let options: UpcycleOptions
    public let denseConfig: MiniCPMConfig
    /// The MiniCPM-MoE config to write.
    public let config: MiniCPMConfig
    /// How each layer's experts are cut from the dense MLP (neuron groups of `partition` are
    /// per layer and filled in while writing; this holds the layer-independent part).
    public let expertIntermediateSize: Int
    /// Output tensors in name order (the order they are written).
    public let tensors: [PlannedTensor]
    /// The dense checkpoint (`nil` for a config-only dry run).
    public let checkpoint: ModelCheckpoint?
    /// Dense tensors the config does not explain, copied through unchanged.
    public let passthroughTensors: [String]
    /// Other files of the dense directory, copied unchanged (names relative to it).
    public let otherFiles: [String]
    /// Notes for the user (also in the report).
    public let warnings: [String]

    public var parameters: MiniCPMLayout.ParameterCounts { MiniCPMLayout(config: config).parameterCounts }
    public var denseParameters: MiniCPMLayout.ParameterCounts { MiniCPMLayout(config: denseConfig).parameterCounts }
    public var totalBytes: Int { tensors.reduce(0) { $0 + $1.byteCount } }

    /// Plans the upcycling of `denseDirectory`. With `requireWeights == false` (dry run) only
    /// `config.json` is needed; weights, when present, are still checked and their dtypes used.
    public init(denseDirectory: String, options: UpcycleOptions, requireWeights: Bool = true) throws(UpcycleError) {
        try options.validate()
        self.denseDirectory = denseDirectory
        self.options = options
        let manager = FileManager.default
        var isDirectory: ObjCBool = false
        guard manager.fileExists(atPath: denseDirectory, isDirectory: &isDirectory) else { throw .checkpoint(.missingFile(path: denseDirectory)) }
        guard isDirectory.boolValue else { throw .checkpoint(.notADirectory(path: denseDirectory)) }
        let configPath = denseDirectory + "/config.json"
        let dense: MiniCPMConfig
        do { dense = try MiniCPMConfig(path: configPath) } catch { throw .checkpoint(error) }
        if let experts = dense.numExperts { throw .alreadyMoE(directory: denseDirectory, evidence: "config.json has num_experts = \(experts)") }
        denseConfig = dense

        // Expert size and divisibility.
        let experts = options.experts
        let intermediate = dense.intermediateSize
        switch options.method {
        case .copy, .noise, .drop:
            expertIntermediateSize = intermediate
        case .partition:
            guard intermediate % experts == 0 else {
                throw .indivisibleIntermediateSize(directory: denseDirectory, intermediateSize: intermediate, parts: experts, option: "--experts with --method partition")
            }
            expertIntermediateSize = intermediate / experts
        case .granular:
            guard intermediate % options.granularity == 0 else {
                throw .indivisibleIntermediateSize(directory: denseDirectory, intermediateSize: intermediate, parts: options.granularity, option: "--granularity")
            }
            expertIntermediateSize = intermediate / options.granularity
        }

        // The dense weights, checked against the config.
        var checkpoint: ModelCheckpoint?
        var passthrough: [String] = []
        let hasWeights = ModelCheckpoint.weightLayout(directory: denseDirectory) != nil
        if requireWeights || hasWeights {
            let opened: ModelCheckpoint
            do { opened = try ModelCheckpoint(directory: denseDirectory) } catch { throw .checkpoint(error) }
            if let moeTensor = opened.names.first(where: { $0.contains(".mlp.experts.") || $0.hasSuffix(".mlp.gate.weight") }) {
                throw .alreadyMoE(directory: denseDirectory, evidence: "it holds tensor '\(moeTensor)'")
            }
            do { passthrough = try MiniCPMLayout(config: dense).check(opened) } catch { throw .checkpoint(error) }
            checkpoint = opened
        }
        self.checkpoint = checkpoint
        passthroughTensors = passthrough

        // Output tensors and their storage types.
        let fallbackDType = options.dtype ?? dense.torchDtype.flatMap { SafetensorsDType(torchName: $0) } ?? .bfloat16
        func sourceDType(_ name: String) -> SafetensorsDType? { try? checkpoint?.info(name).dtype }
        var planned: [PlannedTensor] = []
        var output = dense
        output.numExperts = experts
        output.topK = options.topK
        output.intermediateSize = expertIntermediateSize
        output.numSharedExperts = options.sharedExperts
        // Checked before the tensor list is built from it (--experts × layers bounds its length).
        do { try output.checkLimits(path: "config.json (output)") } catch { throw .checkpoint(error) }
        for entry in MiniCPMLayout(config: output).entries {
            let source: Source
            let denseName: String?
            if let (layer, expert, projection) = Self.parseExpertName(entry.name) {
                source = .expert(layer: layer, expert: expert, projection: projection)
                denseName = projection.denseTensorName(layer: layer)
            } else if let (layer, projection) = Self.parseSharedExpertsName(entry.name) {
                source = .sharedExperts(layer: layer, projection: projection)
                denseName = projection.denseTensorName(layer: layer)
            } else if let layer = Self.parseRouterName(entry.name) {
                source = .router(layer: layer)
                denseName = MiniCPMTensorNames.gateProjection(layer)  // the router takes the MLP's dtype
            } else {
                source = .dense(entry.name)
                denseName = entry.name
            }
            let original = denseName.flatMap(sourceDType)
            let dtype = options.dtype ?? original ?? fallbackDType
            planned.append(PlannedTensor(name: entry.name, shape: entry.shape, dtype: dtype, source: source,
                                         sourceDType: { if case .router = source { return nil } else { return original } }()))
        }
        for name in passthrough {
            guard let info = try? checkpoint?.info(name) else { continue }
            planned.append(PlannedTensor(name: name, shape: info.shape, dtype: options.dtype ?? info.dtype, source: .dense(name), sourceDType: info.dtype))
        }
        planned.sort { $0.name < $1.name }

        // Types the computation can handle: computed tensors are decoded to f32 and encoded back.
        let rawExperts = options.method == .copy && ((try? options.routingWeightScale()) ?? 1) == 1 && options.sharedExperts == 0
        for tensor in planned {
            let computed: Bool
            switch tensor.source {
            case .router, .sharedExperts: computed = true
            case .expert: computed = !rawExperts || tensor.dtype != tensor.sourceDType
            case .dense: computed = tensor.sourceDType != nil && tensor.dtype != tensor.sourceDType
            }
            guard computed else { continue }
            if let original = tensor.sourceDType, !original.isConvertibleToFloat {
                throw .unsupportedDType(directory: denseDirectory, tensor: tensor.name, dtype: original.rawValue)
            }
            if !tensor.dtype.isWritable {
                throw .unsupportedDType(directory: denseDirectory, tensor: tensor.name, dtype: tensor.dtype.rawValue)
            }
        }
        tensors = planned

        // The MiniCPM-MoE config: MiniCPM-MoE-8x2B keeps model_type "minicpm" and architecture
        // "MiniCPMForCausalLM"; vLLM's minicpm.py and the MoE repo's modeling_minicpm.py switch
        // to the MoE MLP on num_experts > 0.
        var bytesByType: [SafetensorsDType: Int] = [:]
        for tensor in planned { bytesByType[tensor.dtype, default: 0] += tensor.byteCount }
        output.torchDtype = bytesByType.max { ($0.value, $0.key.rawValue) < ($1.value, $1.key.rawValue) }?.key.torchName ?? dense.torchDtype
        if dense.architecture == .llama {
            // A Llama becomes a Mixtral, which transformers, vLLM and llama.cpp load natively.
            output.otherKeys = ArchitectureConfigKeys.mixtralFromLlama(output.otherKeys, config: output)
        } else {
            Self.markAsMiniCPMMoE(&output, dense: dense)
        }
        options.router?.store(in: &output)
        do { try output.validate(path: "config.json (output)") } catch { throw .checkpoint(error) }
        config = output

        // Other files, and a warning when the modeling code cannot build the MoE MLP.
        var others: [String] = []
        var warnings: [String] = []
        if let names = try? manager.contentsOfDirectory(atPath: denseDirectory) {
            others = names.filter { !Self.isDenseWeightOrConfig($0) && !$0.hasPrefix(".") }.sorted()
        }
        if others.contains("modeling_minicpm.py"),
           let code = manager.contents(atPath: denseDirectory + "/modeling_minicpm.py"),
           !String(decoding: code, as: UTF8.self).contains("num_experts") {
            warnings.append("modeling_minicpm.py (copied from the dense model) has no MoE branch: transformers with trust_remote_code needs MiniCPM-MoE-8x2B's modeling_minicpm.py; vLLM loads the output as it is")
        }
        if !passthrough.isEmpty {
            warnings.append("copied \(passthrough.count) tensor\(passthrough.count == 1 ? "" : "s") the config does not explain: \(passthrough.prefix(5).joined(separator: ", "))")
        }
        otherFiles = others
        self.warnings = warnings
    }

    /// Whether expert tensors are the dense bytes unchanged (`copy` without a routing factor).
    public var copiesExpertsRaw: Bool { options.method == .copy && routingWeightScale == 1 }

    /// The factor every routed expert's `W2` absorbs: the routing's (`--weight-scale auto`, else 1)
    /// divided by S + 1 with S shared experts.
    public var routingWeightScale: Float { ((try? options.routingWeightScale()) ?? 1) / Float(1 + options.sharedExperts) }

    /// The factor the shared experts' `W2` absorbs: 1/(S + 1).
    public var sharedExpertsScale: Float { 1 / Float(1 + options.sharedExperts) }

    /// The architecture, model type and `auto_map` entries MiniCPM-MoE-8x2B's config carries.
    static func markAsMiniCPMMoE(_ output: inout MiniCPMConfig, dense: MiniCPMConfig) {
        output.otherKeys["architectures"] = .array([.string("MiniCPMForCausalLM")])
        output.otherKeys["model_type"] = .string("minicpm")
        var autoMap = dense.otherKeys["auto_map"]?.objectValue ?? [:]
        autoMap["AutoConfig"] = .string("configuration_minicpm.MiniCPMConfig")
        autoMap["AutoModel"] = .string("modeling_minicpm.MiniCPMModel")
        autoMap["AutoModelForCausalLM"] = .string("modeling_minicpm.MiniCPMForCausalLM")
        output.otherKeys["auto_map"] = .object(autoMap)
    }

    /// The slicing shared by every layer (`partition` builds its own per layer from the groups).
    var sharedSlicing: ExpertSlicing? {
        switch options.method {
        case .copy, .noise, .drop: return .whole(intermediateSize: denseConfig.intermediateSize)
        case .granular: return .granular(intermediateSize: denseConfig.intermediateSize, granularity: options.granularity, experts: options.experts)
        case .partition: return nil
        }
    }

    /// `model.layers.L.mlp.experts.E.wN.weight` → (L, E, projection).
    static func parseExpertName(_ name: String) -> (Int, Int, ExpertProjection)? {
        let parts = name.split(separator: ".")
        guard parts.count == 8, parts[0] == "model", parts[1] == "layers", let layer = Int(parts[2]), parts[3] == "mlp",
              parts[4] == "experts", let expert = Int(parts[5]), let projection = ExpertProjection(rawValue: String(parts[6])),
              parts[7] == "weight" else { return nil }
        return (layer, expert, projection)
    }

    /// `model.layers.L.mlp.shared_experts.{gate,up,down}_proj.weight` → (L, projection).
    static func parseSharedExpertsName(_ name: String) -> (Int, ExpertProjection)? {
        let parts = name.split(separator: ".")
        guard parts.count == 7, parts[0] == "model", parts[1] == "layers", let layer = Int(parts[2]), parts[3] == "mlp",
              parts[4] == "shared_experts", parts[6] == "weight" else { return nil }
        switch parts[5] {
        case "gate_proj": return (layer, .gate)
        case "up_proj": return (layer, .up)
        case "down_proj": return (layer, .down)
        default: return nil
        }
    }

    /// `model.layers.L.mlp.gate.weight` → L.
    static func parseRouterName(_ name: String) -> Int? {
        let parts = name.split(separator: ".")
        guard parts.count == 6, parts[0] == "model", parts[1] == "layers", let layer = Int(parts[2]), parts[3] == "mlp",
              parts[4] == "gate", parts[5] == "weight" else { return nil }
        return layer
    }
}
