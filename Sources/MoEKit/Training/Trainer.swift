import Foundation

/// Runs `moekit train`: trains a dense or MoE MiniCPM checkpoint on a token file with AdamW under a
/// learning-rate schedule, logs every step to an HDF5 routing log (schema version 2; 3 for ReLU routers), and saves the
/// result as a Hugging Face directory with its training state beside it.
///
/// One step s: batch(s) = `BatchSampler.batch(at: s)` (a pure function of seed and step) →
/// router noise reseeded for s → loss and gradients (`MiniCPMModel.lossAndGradients`) → AdamW with
/// η_s = schedule(s) × the tensor-program multipliers, gradient clipped by global norm → the
/// auxiliary-loss-free bias updated from the step's expert counts (when configured) → ReMoE's L1
/// coefficient λ updated from the step's realised sparsity (ReLU routing; saved in
/// `trainer_state.json`) → log row. Because nothing else carries state between steps, a run resumed
/// from a save at step s computes exactly what the uninterrupted run computes.
///
/// OUT_DIR layout: `config.json` (with the `moekit_router` used), `model.safetensors` (f32, and
/// `mlp.gate.moekit_bias` per layer when the router keeps a bias), the source's other files
/// (tokenizer etc.), and `training_state/` with `optimizer.safetensors` and `trainer_state.json`
/// (a subdirectory, so loaders that glob `*.safetensors` — vLLM — see only the model). Every save
/// builds the whole directory under a temporary name and renames it into place.
public final class Trainer {
    public static let stateDirectoryName = "training_state"
    public static let optimizerFileName = "optimizer.safetensors"

    /// One step's figures, for a progress line.
    public struct Progress: Sendable {
        public var step: Int
        public var totalSteps: Int
        public var loss: Float
        public var languageModelLoss: Float
        public var learningRate: Float
        public var gradientNorm: Float
        public var validationLoss: Float?
        /// Training tokens per second over this run's steps so far (evaluation and saving excluded).
        public var tokensPerSecond: Double
        /// Seconds since the run started, and the estimate for the remaining steps.
        public var elapsed: Double
        public var remaining: Double
        /// True when OUT_DIR was saved after this step.
        public var saved: Bool
    }

    /// What a finished run did.
    public struct Summary: Sendable {
        public var firstStep: Int
        public var completedSteps: Int
        public var tokens: Int
        public var trainingSeconds: Double
        public var tokensPerSecond: Double
        public var finalLoss: Float
        public var finalLanguageModelLoss: Float
        public var finalValidationLoss: Float?
        public var outputDirectory: String
        public var logPath: String?
    }

    /// The model being trained, its weights f32 master copies (`MiniCPMModel(directory:ownedFloat32Weights:)`).
    public let model: MiniCPMModel
    public let options: TrainingOptions
    public let sampler: BatchSampler
    public let schedule: LearningRateSchedule
    private(set) var optimizer: AdamW
    /// The step's `[vocab, hidden]` gradient buffers, reused from step to step.
    private let gradientWorkspace = GradientWorkspace()
    public let outputDirectory: String
    public let logPath: String?
    /// The model directory the weights came from (OUT_DIR when resuming).
    public let source: String
    /// Steps completed before this run (0 unless resuming).
    public let startStep: Int
    /// Domain names as logged (the data's, plus "unlabelled" when some tokens carry no domain).
    public let domainNames: [String]
    private let initialModel: String
    private let dataPath: String
    private var logWriter: RoutingLogWriter?
    private var tokensSeen: Int

    /// Prepares a run: loads the model (from `outputDirectory` when `resume`), the data, the
    /// optimiser (its saved moments when resuming) and opens the log.
    ///
    /// Without `resume`, an existing `outputDirectory` or log is refused unless `replaceExisting`.
    /// With `resume`, `outputDirectory/training_state/trainer_state.json` must exist and the
    /// options that shape the run (steps, batch, seq, seed, lr, schedule, …) must equal the saved
    /// ones; the log, when it exists, is continued.
    public init(modelDirectory: String, dataPath: String, outputDirectory: String, logPath: String?, options: TrainingOptions,
                resume: Bool = false, replaceExisting: Bool = false) throws {
        try options.validate()
        self.options = options
        self.outputDirectory = outputDirectory
        self.logPath = logPath
        self.dataPath = dataPath
        let manager = FileManager.default
        let stateDirectory = outputDirectory + "/" + Self.stateDirectoryName

        var state: TrainerState?
        if resume {
            let loaded = try TrainerState(path: stateDirectory + "/" + TrainerState.fileName)
            let signature = options.resumeSignature
            for key in signature.keys.sorted() {
                let saved = loaded.options[key] ?? TrainingOptions.resumeDefaults[key]
                guard saved != signature[key] else { continue }
                throw TrainingError.invalidOption(name: key, reason: "is \(signature[key] ?? "unset") but the run in \(outputDirectory) used \(saved ?? "unset"); resume with the same value")
            }
            guard loaded.completedSteps <= options.steps else {
                throw TrainingError.invalidState(path: stateDirectory + "/" + TrainerState.fileName,
                                                 reason: "\(loaded.completedSteps) steps already done, more than --steps \(options.steps)")
            }
            state = loaded
            source = outputDirectory
            initialModel = loaded.initialModel
        } else {
            if manager.fileExists(atPath: outputDirectory) && !replaceExisting { throw FileError.alreadyExists(path: outputDirectory) }
            if let logPath, manager.fileExists(atPath: logPath) && !replaceExisting { throw RoutingLogError.alreadyExists(file: logPath) }
            source = modelDirectory
            initialModel = modelDirectory
        }

        // The model (f32 master copies of every weight it trains), with the router the options ask
        // for (keeping any saved balancing bias).
        let loaded = try MiniCPMModel(directory: source, ownedFloat32Weights: true)
        if let baseRouter = loaded.configurableRouter {
            var configuration = options.router ?? baseRouter.configuration
            if let coefficient = options.auxiliaryLossCoefficient { configuration.loadBalancingCoefficient = coefficient }
            if let coefficient = options.zLossCoefficient { configuration.zLossCoefficient = coefficient }
            if resume && configuration != baseRouter.configuration {
                // OUT_DIR's config.json holds the router the run used (options applied): a resumed run must route the same.
                var withoutCoefficients = configuration, saved = baseRouter.configuration
                withoutCoefficients.loadBalancingCoefficient = saved.loadBalancingCoefficient
                withoutCoefficients.zLossCoefficient = saved.zLossCoefficient
                let option = withoutCoefficients != saved ? "router"
                    : configuration.loadBalancingCoefficient != saved.loadBalancingCoefficient ? "aux-loss" : "z-loss"
                throw TrainingError.invalidOption(name: option, reason: "gives the router '\(configuration.description)' but the run in \(outputDirectory) used '\(saved.description)'; resume with the same value")
            }
            if configuration != baseRouter.configuration {
                let router = try ConfigurableRouter(configuration: configuration, model: loaded.config)
                for layer in 0 ..< router.layers { try router.setBalancingBias(baseRouter.balancingBias[layer], layer: layer) }
                loaded.router = router
            }
            model = loaded
            if configuration.noisyTopK {
                // NOTE: MoEFeedForwardLayer computes ∂L/∂W_noise, but the noise weights live in the router,
                // outside ParameterSet, AdamW and the saved checkpoint; training them silently at zero would
                // misreport the run.
                throw TrainingError.unsupportedRouter(reason: "noisy_top_k: its learned noise weights are not yet optimised or saved by moekit train")
            }
            switch (options.balance, configuration.loadBalancingLoss) {
            case (.global, .perSequence):
                throw TrainingError.invalidOption(name: "balance", reason: "global pools f_i over the global batch, but the router's load_balancing_loss is per_sequence; use --balance sequence or a switch/hf loss")
            case (.sequence, .huggingFace), (.sequence, .perSequence):
                throw TrainingError.invalidOption(name: "balance", reason: "sequence is DeepSeek-V3's sequence-wise loss (f_i = E·count_i/(k·T_s)); the router's load_balancing_loss \(configuration.loadBalancingLoss.rawValue) would be ignored, so set it to switch")
            default: break
            }
            if configuration.mode == .relu, options.auxiliaryLossCoefficient != nil {
                throw TrainingError.invalidOption(name: "aux-loss", reason: "ReLU routing (ReMoE) replaces the load-balancing loss by its L1 penalty with an adaptive coefficient; set its start and rate in --router (l1-init, l1-multiplier)")
            }
            if configuration.mode == .relu, options.balance == .sequence {
                throw TrainingError.invalidOption(name: "balance", reason: "sequence is DeepSeek-V3's sequence-wise loss on normalised scores; ReLU routing (ReMoE) balances with its L1 penalty, use micro or global")
            }
            if configuration.mode == .relu, let router = model.configurableRouter {
                // ReMoE's λ continues where the saved run stood (the configured λ₀ only starts a run).
                if let coefficient = state?.l1Coefficient { router.l1Coefficient = coefficient }
            }
            if logPath != nil, configuration.mode == .expertChoice {
                throw TrainingError.unsupportedRouter(reason: "expert-choice routing has no fixed k per token, which routing logs need; train without --log or with a top-k router")
            }
        } else {
            if options.router != nil || options.auxiliaryLossCoefficient != nil || options.zLossCoefficient != nil || options.balance != .micro {
                throw TrainingError.invalidOption(name: options.router != nil ? "router" : options.auxiliaryLossCoefficient != nil ? "aux-loss"
                                                    : options.zLossCoefficient != nil ? "z-loss" : "balance",
                                                  reason: "\(source) is a dense model (config.json has no num_experts)")
            }
            model = loaded
        }

        // Data.
        let dataset = try TokenDataset(path: dataPath, vocabularySize: model.config.vocabSize, binaryDataType: options.binaryDataType)
        sampler = try BatchSampler(dataset: dataset, batchSize: options.batchSize, sequenceLength: options.sequenceLength,
                                   seed: options.seed, validationFraction: options.validationFraction)
        guard options.sequenceLength <= model.config.maxPositionEmbeddings else {
            throw TrainingError.invalidOption(name: "seq", reason: "\(options.sequenceLength) is longer than the model's max_position_embeddings \(model.config.maxPositionEmbeddings)")
        }
        var names = dataset.domains == nil ? [] : dataset.domainNames
        if let labels = dataset.domains, labels.contains(where: { Int($0) >= dataset.domainNames.count }) { names.append("unlabelled") }
        domainNames = names
        if let state, state.data != dataPath {
            throw TrainingError.invalidOption(name: "data", reason: "is \(dataPath) but the run in \(outputDirectory) trained on \(state.data); resume with the same data")
        }

        // Optimiser.
        schedule = options.learningRateSchedule
        let multipliers = options.tensorProgram ? TensorProgramRules.learningRateMultipliers(config: model.config) : [:]
        if let state {
            let path = stateDirectory + "/" + Self.optimizerFileName
            optimizer = try AdamW(resumingFrom: path, parameters: model.weights, config: model.config, options: options.adamWOptions,
                                  learningRateMultipliers: multipliers)
            guard optimizer.stepCount == state.completedSteps else {
                throw TrainingError.invalidState(path: path, reason: "holds \(optimizer.stepCount) optimiser steps, trainer_state.json says \(state.completedSteps)")
            }
        } else {
            optimizer = try AdamW(parameters: model.weights, config: model.config, options: options.adamWOptions, learningRateMultipliers: multipliers)
        }
        startStep = state?.completedSteps ?? 0
        tokensSeen = state?.tokensSeen ?? 0

        // Log.
        if let logPath {
            let header = Self.logHeader(model: model, source: source, domains: domainNames)
            let mode: RoutingLogWriter.Mode = resume && manager.fileExists(atPath: logPath) ? .append : (resume || replaceExisting ? .replace : .create)
            logWriter = try RoutingLogWriter(path: logPath, header: header, mode: mode)
        }
    }

    /// The header of a training log for `model`: MoE layers, experts and k, or all zero for a dense model.
    static func logHeader(model: MiniCPMModel, source: String, domains: [String]) -> RoutingLogHeader {
        let config = model.config
        let configText = String(decoding: config.serialized(), as: UTF8.self)
        guard let router = model.configurableRouter else {
            return RoutingLogHeader(numLayers: 0, numExperts: 0, topK: 0, router: "dense", modelConfig: configText, source: source, training: true)
        }
        let relu = router.configuration.mode == .relu
        return RoutingLogHeader(numLayers: router.layers, numExperts: router.experts, topK: relu ? router.topK : router.slotsPerToken,
                                router: router.configuration.description, modelConfig: configText, source: source,
                                training: true, domains: domains, variableActiveExperts: relu)
    }

    /// Runs the steps from `startStep` to `options.steps`, saving OUT_DIR at the save interval and
    /// after the last step. `progress` is called after every step; an error it throws stops the
    /// run there (what was saved stays saved, the log keeps every completed step).
    @discardableResult
    public func run(progress: (Progress) throws -> Void = { _ in }) throws -> Summary {
        let start = Date()
        var trainingSeconds = 0.0
        var tokensThisRun = 0
        var last: (loss: Float, languageModelLoss: Float) = (.nan, .nan)
        var lastValidation: Float?
        for step in startStep ..< options.steps {
            let stepStart = Date()
            let batch = sampler.batch(at: step)
            let result = try lossAndGradients(batch, step: step)
            guard result.loss.isFinite, let gradients = result.gradients else { throw TrainingError.nonFiniteLoss(step: step, loss: result.loss) }
            let learningRate = schedule.learningRate(at: step)
            let gradientNorm = optimizer.step(&model.weights, gradients: gradients, learningRate: learningRate)
            // AdamW leaves everything unchanged on a non-finite gradient; a run must not go on as if it had stepped.
            guard gradientNorm.isFinite else { throw TrainingError.nonFiniteGradient(step: step) }
            if let router = model.configurableRouter, router.configuration.auxiliaryLossFreeBalancing {
                router.updateBalancingBias(expertCounts: result.expertCounts)
            }
            model.configurableRouter?.updateL1Coefficient(expertCounts: result.expertCounts, tokens: batch.tokenCount)
            trainingSeconds += Date().timeIntervalSince(stepStart)
            tokensThisRun += batch.tokenCount
            tokensSeen += batch.tokenCount
            last = (result.loss, result.languageModelLoss)

            let isLast = step == options.steps - 1
            var validationLoss: Float?
            if sampler.validationRange.count > 0, isLast || (options.evaluationInterval > 0 && (step + 1) % options.evaluationInterval == 0) {
                validationLoss = try validate()
                lastValidation = validationLoss
            }
            try log(step: step, batch: batch, result: result, learningRate: learningRate, gradientNorm: gradientNorm, validationLoss: validationLoss)
            let save = isLast || (options.saveInterval > 0 && (step + 1) % options.saveInterval == 0)
            if save {
                try self.save(completedSteps: step + 1, loss: result.loss, languageModelLoss: result.languageModelLoss,
                              validationLoss: lastValidation ?? .nan)
            }
            let done = step + 1 - startStep
            let perStep = Date().timeIntervalSince(start) / Double(done)
            try progress(Progress(step: step, totalSteps: options.steps, loss: result.loss, languageModelLoss: result.languageModelLoss,
                              learningRate: learningRate, gradientNorm: gradientNorm, validationLoss: validationLoss,
                              tokensPerSecond: trainingSeconds > 0 ? Double(tokensThisRun) / trainingSeconds : 0,
                              elapsed: Date().timeIntervalSince(start), remaining: perStep * Double(options.steps - step - 1), saved: save))
        }
        try logWriter?.close()
        return Summary(firstStep: startStep, completedSteps: options.steps, tokens: tokensThisRun, trainingSeconds: trainingSeconds,
                       tokensPerSecond: trainingSeconds > 0 ? Double(tokensThisRun) / trainingSeconds : 0,
                       finalLoss: last.loss, finalLanguageModelLoss: last.languageModelLoss, finalValidationLoss: lastValidation,
                       outputDirectory: outputDirectory, logPath: logPath)
    }

    /// The loss and gradient of one step's global batch, run as `options.accumulationSteps`
    /// micro-batches of consecutive sequences whose weighted parts (`MiniCPMModel.MicroBatch`) add
    /// up to the global objective. The router's noise is reseeded for `step` before the pass.
    ///
    /// Global balancing with N > 1 routes every micro-batch forward first (noise reseeded the same
    /// way, so the routing is the one the second pass makes) to count f_i over the global batch;
    /// the second pass runs forward and backward with those counts. This costs one extra forward
    /// per micro-batch and makes the gradient exact (docs/routers.md, "Balancing granularity").
    /// The result's routing is the micro-batches' routings in order (the global batch's tokens),
    /// its router-loss terms the global objective's (Σ_m share_m · term_m).
    func lossAndGradients(_ batch: TrainingBatch, step: Int) throws -> MiniCPMModel.StepResult {
        let router = model.configurableRouter
        let parts = Self.microBatches(batch, count: options.accumulationSteps)
        guard parts.count > 1 else {
            router?.reseedNoise(step: step)
            return try model.lossAndGradients(batch, microBatch: MiniCPMModel.MicroBatch(languageModelWeight: 1, share: 1, balance: options.balance),
                                              workspace: gradientWorkspace)
        }
        var globalCounts: [[Int]]?
        if options.balance == .global, let router {
            router.reseedNoise(step: step)
            var counts = [[Int]](repeating: [Int](repeating: 0, count: router.experts), count: router.layers)
            for part in parts {
                for (layer, routed) in try model.trainingRouting(part).enumerated() {
                    for (expert, count) in routed.decision.expertCounts.enumerated() { counts[layer][expert] += count }
                }
            }
            globalCounts = counts
        }
        router?.reseedNoise(step: step)
        let countedTargets = parts.map { $0.targets.reduce(0) { $0 + $1.filter { $0 >= 0 }.count } }
        let allTargets = countedTargets.reduce(0, +), allTokens = batch.tokenCount
        var combined: MiniCPMModel.StepResult?
        var routings: [[RoutedTokens]] = []
        for (index, part) in parts.enumerated() {
            let microBatch = MiniCPMModel.MicroBatch(languageModelWeight: allTargets > 0 ? Float(countedTargets[index]) / Float(allTargets) : 0,
                                                     share: Float(part.tokenCount) / Float(allTokens), balance: options.balance,
                                                     globalExpertCounts: globalCounts, globalTokens: allTokens)
            // Every micro-batch after the first finds the buffers still held by the running sum (a copy on write).
            let result = try model.lossAndGradients(part, microBatch: microBatch, workspace: gradientWorkspace)
            guard result.loss.isFinite, let gradients = result.gradients else { return result }
            routings.append(result.routing)
            guard var sum = combined, var total = sum.gradients else {
                combined = result
                combined?.languageModelLoss = microBatch.languageModelWeight * result.languageModelLoss
                combined?.routerLosses = result.routerLosses.map { Self.weighted($0, by: microBatch.share) }
                continue
            }
            sum.loss += result.loss
            sum.languageModelLoss += microBatch.languageModelWeight * result.languageModelLoss
            sum.countedTokens += result.countedTokens
            for layer in sum.routerLosses.indices {
                let term = Self.weighted(result.routerLosses[layer], by: microBatch.share)
                sum.routerLosses[layer].total += term.total
                sum.routerLosses[layer].loadBalancing += term.loadBalancing
                sum.routerLosses[layer].zLoss += term.zLoss
                sum.routerLosses[layer].importance += term.importance
                if let load = term.load { sum.routerLosses[layer].load = (sum.routerLosses[layer].load ?? 0) + load }
            }
            combined = nil    // `total` holds the only reference to the running sum: added to in place
            sum.gradients = nil
            let tensors = gradients.parameterTensors
            var tensorIndex = 0
            total.updateEachParameter { Kernels.add(tensors[tensorIndex], to: &$0); tensorIndex += 1 }
            sum.gradients = total
            combined = sum
        }
        guard var result = combined else { preconditionFailure("a global batch without micro-batches") }
        result.routing = routings.first.map { first in first.indices.map { layer in Self.concatenated(routings.map { $0[layer] }) } } ?? []
        return result
    }

    /// `count` micro-batches of consecutive sequences, equal in size (`count` divides the batch).
    static func microBatches(_ batch: TrainingBatch, count: Int) -> [TrainingBatch] {
        guard count > 1 else { return [batch] }
        let size = batch.sequenceCount / count
        return (0 ..< count).map { index in
            let range = index * size ..< (index + 1) * size
            return TrainingBatch(inputs: Array(batch.inputs[range]), targets: Array(batch.targets[range]), domains: batch.domains.map { Array($0[range]) })
        }
    }

    /// A micro-batch's router-loss terms as parts of the global objective: `total` already carries
    /// the share (its coefficients were scaled); the unweighted terms get it here. The logit gradient is dropped.
    private static func weighted(_ value: RouterLoss.Value, by share: Float) -> RouterLoss.Value {
        RouterLoss.Value(total: value.total, loadBalancing: share * value.loadBalancing, zLoss: share * value.zLoss,
                         importance: share * value.importance, load: value.load.map { share * $0 }, gradient: [])
    }

    /// The routings of consecutive token blocks as one routing of all their tokens (for logs and counts).
    static func concatenated(_ parts: [RoutedTokens]) -> RoutedTokens {
        guard let first = parts.first, parts.count > 1 else { return parts.first ?? RoutedTokens(decision: MoEFeedForwardLayer.emptyDecision, logits: []) }
        let decision = RoutingDecision(tokens: parts.reduce(0) { $0 + $1.decision.tokens }, experts: first.decision.experts,
                                       slotsPerToken: first.decision.slotsPerToken, selectedExperts: parts.flatMap(\.decision.selectedExperts),
                                       combineWeights: parts.flatMap(\.decision.combineWeights), probabilities: parts.flatMap(\.decision.probabilities),
                                       droppedAssignments: parts.reduce(0) { $0 + $1.decision.droppedAssignments })
        return RoutedTokens(decision: decision, logits: parts.flatMap(\.logits))
    }

    /// Mean language-model cross-entropy over the held-out batches (at most `options.validationBatches`),
    /// weighted by the number of predicted tokens; the router evaluates without noise.
    public func validate() throws -> Float {
        var total = 0.0, counted = 0
        for batch in sampler.validationBatches(maximumBatches: options.validationBatches) {
            let result = try model.evaluate(batch)
            total += Double(result.languageModelLoss) * Double(result.countedTokens)
            counted += result.countedTokens
        }
        return counted > 0 ? Float(total / Double(counted)) : .nan
    }

    private func log(step: Int, batch: TrainingBatch, result: MiniCPMModel.StepResult, learningRate: Float, gradientNorm: Float,
                     validationLoss: Float?) throws {
        guard let logWriter else { return }
        // A run resumed from an earlier save than the log's last row recomputes those steps
        // exactly; their rows are already in the log.
        if let lastLogged = logWriter.lastStep, step <= lastLogged { return }
        var domainOfToken: [Int]?
        if let domains = batch.domains, !domainNames.isEmpty {
            let unlabelled = domainNames.count - 1
            domainOfToken = domains.flatMap { $0.map { $0 >= 0 && $0 < domainNames.count ? $0 : unlabelled } }
        }
        // ReLU routing logs k, the target (its aux_loss column is then ReMoE's L_reg, f_e = count_e/(T·k)).
        let relu = model.configurableRouter?.configuration.mode == .relu
        let topK = relu ? model.configurableRouter?.topK ?? 0 : model.router?.slotsPerToken ?? 0
        let layers = result.routing.map {
            TrainingRoutingStatistics.layerStatistics($0, topK: topK, domainOfToken: domainOfToken, domains: domainNames.count,
                                                      variableActiveExperts: relu)
        }
        try logWriter.append(RoutingLogStep(step: step, tokens: batch.tokenCount, loss: result.loss, learningRate: learningRate, layers: layers,
                                            training: RoutingLogTrainingColumns(languageModelLoss: result.languageModelLoss, gradientNorm: gradientNorm,
                                                                                validationLoss: validationLoss ?? .nan)))
    }

    /// Writes OUT_DIR (weights, config, other files, optimiser and trainer state) atomically.
    public func save(completedSteps: Int, loss: Float, languageModelLoss: Float, validationLoss: Float) throws {
        let directory = try AtomicDirectory(destination: outputDirectory, replaceExisting: true)
        var config = model.config
        config.torchDtype = "float32"
        if let router = model.configurableRouter { config.router = router.configuration }
        try config.write(to: directory.path("config.json"))

        var tensors = model.weights.namedTensors(config: model.config).map { (name: $0.name, tensor: $0.tensor, dtype: SafetensorsDType.float32) }
        if let router = model.configurableRouter, router.configuration.auxiliaryLossFreeBalancing || router.balancingBias.contains(where: { $0.contains { $0 != 0 } }) {
            for layer in 0 ..< router.layers {
                tensors.append((name: MiniCPMTensorNames.routerBias(layer), tensor: Tensor(shape: [router.experts], values: router.balancingBias[layer]),
                                dtype: .float32))
            }
        }
        // Stored under the names of the model's architecture (Mixtral's `block_sparse_moe`, see ModelArchitecture).
        tensors = tensors.map { (name: config.architecture.storedName($0.name), tensor: $0.tensor, dtype: $0.dtype) }
        try SafetensorsWriter.write(tensors, to: directory.path("model.safetensors"))

        let manager = FileManager.default
        if let names = try? manager.contentsOfDirectory(atPath: source) {
            for name in names.sorted() where Self.isCarriedOver(name) {
                do {
                    try manager.copyItem(atPath: source + "/" + name, toPath: directory.path(name))
                } catch {
                    throw FileError.cannotCopy(path: source + "/" + name, destination: outputDirectory, reason: error.localizedDescription)
                }
            }
        }

        let stateDirectory = directory.path(Self.stateDirectoryName)
        do {
            try manager.createDirectory(atPath: stateDirectory, withIntermediateDirectories: false)
        } catch {
            throw FileError.cannotCreateDirectory(path: stateDirectory, reason: error.localizedDescription)
        }
        try optimizer.save(to: stateDirectory + "/" + Self.optimizerFileName)
        let state = TrainerState(completedSteps: completedSteps, options: options.resumeSignature, data: dataPath, initialModel: initialModel,
                                 tokensSeen: tokensSeen, lastLoss: loss, lastLanguageModelLoss: languageModelLoss, lastValidationLoss: validationLoss,
                                 l1Coefficient: model.configurableRouter.flatMap { $0.configuration.mode == .relu ? $0.l1Coefficient : nil })
        try AtomicFileWriter.write(state.serialized(), to: stateDirectory + "/" + TrainerState.fileName)
        try directory.commit()
    }

    /// Files of the source directory that travel with the trained weights (tokenizer, modeling
    /// code, generation config); weights, configs, reports and training state do not.
    static func isCarriedOver(_ name: String) -> Bool {
        if name.hasPrefix(".") || name == "config.json" || name == stateDirectoryName || name == UpcyclePlan.reportFileName { return false }
        if name.hasSuffix(".safetensors") || name.hasSuffix(".safetensors.index.json") { return false }
        if name.hasPrefix("pytorch_model") && (name.hasSuffix(".bin") || name.hasSuffix(".bin.index.json")) { return false }
        return true
    }
}
