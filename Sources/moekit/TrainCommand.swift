import ArgumentParser
import Foundation
import MoEKit

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a dense or MoE MiniCPM checkpoint on a token file (AdamW, WSD schedule), logging every step to HDF5.",
        discussion: """
        Each step samples --batch windows of --seq tokens (deterministic for --seed and the step), \
        runs the forward and backward pass (for MoE models: the router's combine weights and its \
        auxiliary losses included), clips the gradient and takes an AdamW step with the scheduled \
        learning rate; hidden matrices use η ÷ (hidden/dim_model_base), MiniCPM's tensor-program rule. \
        Warmup-Stable-Decay (default) holds η after warmup and decays over the last --decay-fraction \
        of the steps. The log (docs/routing-log.md, schema 2) holds loss, lr, gradient norm, \
        validation loss and, for MoE models, each layer's routing statistics and per-domain expert \
        counts when the data has a domain sidecar. OUT_DIR is a Hugging Face directory (f32 \
        safetensors) with training_state/ beside the weights; --resume continues it exactly. \
        Memory: training holds f32 master copies of every parameter it trains (4 bytes each, plus \
        8 for AdamW's moments and 4 for the gradient), whatever dtype the checkpoint stores; \
        forward and trace keep the weights mapped in their stored dtype instead.
        """
    )

    @Argument(help: "Model directory to start from (dense or MoE).")
    var modelDirectory: String

    @Option(help: "Token data: .txt (ids, one document per line), .npy, or raw .bin (uint16/uint32); a NAME.domains.bin sidecar adds domains.")
    var data: String

    @Option(help: "Optimiser steps in the whole run.")
    var steps: Int

    @Option(help: "Sequences per batch.")
    var batch: Int = 8

    @Option(help: "Tokens per sequence.")
    var seq: Int = 128

    @Option(help: "Peak learning rate η.")
    var lr: Float

    @Option(help: "Learning-rate schedule.")
    var schedule: TrainingOptions.ScheduleKind = .wsd

    @Option(help: "Linear warmup steps (default: 1% of --steps, at least 1).")
    var warmup: Int?

    @Option(help: "WSD: share of the steps spent decaying.")
    var decayFraction: Double = 0.1

    @Option(help: "WSD: decay shape.")
    var decay: LearningRateSchedule.DecayShape = .exponential

    @Option(help: "WSD/cosine: final learning rate as a fraction of η.")
    var finalLrRatio: Float = 0.1

    @Option(help: "Load-balancing loss coefficient (default: the router's, 0.01 for MiniCPM-MoE).")
    var auxLoss: Float?

    @Option(help: "Router z-loss coefficient (default: the router's, 0).")
    var zLoss: Float?

    @Option(help: "Router to train with instead of the model's (a preset such as switch, sigmoid, remoe, and/or moekit_router fields, e.g. \"switch:z_loss_coefficient=0.001\"; see docs/routers.md).")
    var router: String?

    @Option(help: "Gradient accumulation: split each step's --batch sequences into N equal micro-batches, run one after another; the summed gradient is the global batch's exactly.")
    var accumulate: Int = 1

    @Option(help: "Load-balancing granularity: micro (the loss per micro-batch), global (f_i counted over the whole step's batch; Qwen, Megatron global_aux_loss) or sequence (DeepSeek-V3's sequence-wise loss on s/Σs). See docs/routers.md.")
    var balance: RouterLoss.Balance = .micro

    @Option(help: "AdamW decoupled weight decay.")
    var weightDecay: Float = 0.1

    @Option(help: "Clip the gradient's global L2 norm to this (0: no clipping).")
    var clip: Float = 1

    @Option(help: "Seed of batch sampling and router noise.")
    var seed: UInt64 = 0

    @Option(help: "Element type of a raw .bin data file (default: by vocabulary size).")
    var dataDtype: TokenDataType?

    @Option(help: "Share of the data (from its end) held out for validation.")
    var validationFraction: Double = 0

    @Option(help: "Evaluate on the held-out data every N steps (0: only after the last).")
    var evalEvery: Int = 0

    @Option(help: "At most this many validation batches per evaluation.")
    var valBatches: Int = 8

    @Option(help: "Save OUT_DIR every N steps (0: only after the last).")
    var saveEvery: Int = 0

    @Flag(help: "Do not divide hidden matrices' learning rate by hidden/dim_model_base.")
    var noTensorProgram = false

    @Option(help: "Output model directory.")
    var out: String

    @OptionGroup var log: LogOptions

    @Flag(help: "Continue the run saved in OUT_DIR (same options), appending to the log.")
    var resume = false

    @OptionGroup var output: OutputOptions

    @OptionGroup var compute: ComputeOptions

    func validate() throws {
        if resume && output.force { throw ValidationError("--resume and --force exclude each other") }
        guard accumulate >= 1, accumulate <= batch, batch % accumulate == 0 else {
            throw ValidationError("--accumulate must divide --batch \(batch) into equal micro-batches, got \(accumulate)")
        }
        if clip < 0 || !clip.isFinite { throw ValidationError("--clip must be a finite number ≥ 0") }
        try OptionRanges.check("--steps", steps, OptionRanges.steps)
        try OptionRanges.check("--batch", batch, OptionRanges.batch)
        try OptionRanges.check("--seq", seq, OptionRanges.sequenceLength)
        try OptionRanges.check("--batch × --seq", batch * seq, 1 ... TrainingOptions.maximumTokensPerStep)
        if let warmup { try OptionRanges.check("--warmup", warmup, 0 ... steps) }
        try OptionRanges.check("--lr", Double(lr), Double(Float.leastNonzeroMagnitude) ... 1e6)
        try OptionRanges.check("--decay-fraction", decayFraction, 0 ... 1)
        try OptionRanges.check("--final-lr-ratio", Double(finalLrRatio), 0 ... 1)
        if let auxLoss { try OptionRanges.check("--aux-loss", Double(auxLoss), 0 ... 1e6) }
        if let zLoss { try OptionRanges.check("--z-loss", Double(zLoss), 0 ... 1e6) }
        try OptionRanges.check("--weight-decay", Double(weightDecay), 0 ... 1e6)
        try OptionRanges.check("--validation-fraction", validationFraction, 0 ... 0.99)
        try OptionRanges.check("--eval-every", evalEvery, 0 ... steps)
        try OptionRanges.check("--val-batches", valBatches, OptionRanges.batch)
        try OptionRanges.check("--save-every", saveEvery, 0 ... steps)
    }

    func makeOptions() throws -> TrainingOptions {
        var options = TrainingOptions(steps: steps, batchSize: batch, sequenceLength: seq, learningRate: lr)
        options.schedule = schedule
        options.warmupSteps = warmup
        options.decayFraction = decayFraction
        options.decayShape = decay
        options.finalLearningRateRatio = finalLrRatio
        options.auxiliaryLossCoefficient = auxLoss
        options.zLossCoefficient = zLoss
        options.router = try router.map { try RouterConfiguration(text: $0) }
        options.accumulationSteps = accumulate
        options.balance = balance
        options.weightDecay = weightDecay
        options.maxGradientNorm = clip > 0 ? clip : nil
        options.seed = seed
        options.binaryDataType = dataDtype
        options.validationFraction = validationFraction
        options.evaluationInterval = evalEvery
        options.validationBatches = valBatches
        options.saveInterval = saveEvery
        options.tensorProgram = !noTensorProgram
        return options
    }

    func run() throws {
        try reportingErrors {
            compute.apply()
            try OptionRanges.checkMemory(modelDirectory: modelDirectory, what: "training with --batch \(batch) × --seq \(seq)") {
                MemoryEstimate.trainingBytes($0, batch: batch / max(accumulate, 1), seq: seq)
            }
            // --resume appends to the log: check it can be read without HDF5 failing on it.
            if resume, let log = log.path { try IsolatedLogRead.check(log) }
            let trainer = try Trainer(modelDirectory: modelDirectory, dataPath: data, outputDirectory: out, logPath: log.path,
                                      options: try makeOptions(), resume: resume, replaceExisting: output.force)
            let kind = trainer.model.configurableRouter.map { "MoE, \($0.experts) experts, top-\($0.topK)" } ?? "dense"
            print("train: \(trainer.source) (\(kind), \(trainer.model.weights.elementCount) parameters) on \(data): "
                + "\(trainer.sampler.trainingRange.count) training tokens, \(trainer.sampler.validationRange.count) held out"
                + (trainer.domainNames.isEmpty ? "" : ", domains \(trainer.domainNames.joined(separator: ", "))"))
            if trainer.startStep > 0 { print("  resuming after step \(trainer.startStep) of \(steps)") }
            let reporter = TrainingProgressPrinter(style: output.progress)
            let summary = try trainer.run(progress: reporter.report)
            print(String(format: "train: steps %d…%d, %d tokens in %.1fs (%.0f tokens/s); final loss %.4f (lm %.4f)",
                         summary.firstStep, summary.completedSteps - 1, summary.tokens, summary.trainingSeconds, summary.tokensPerSecond,
                         summary.finalLoss, summary.finalLanguageModelLoss)
                + (summary.finalValidationLoss.map { String(format: ", validation %.4f", $0) } ?? ""))
            print("  model: \(summary.outputDirectory) (training state in \(summary.outputDirectory)/\(Trainer.stateDirectoryName))")
            if let log = summary.logPath { print("  log: \(log) (moekit inspect \(log))") }
        }
    }
}

/// Each training step's line (loss, learning rate, gradient norm, throughput, time), shown through
/// the one progress printer, `ProgressReporter`; the last step and evaluations stay on screen.
struct TrainingProgressPrinter {
    let reporter: ProgressReporter

    init(style: ProgressReporter.Style) { reporter = ProgressReporter(label: "train", style: style) }

    func report(_ progress: Trainer.Progress) {
        var line = String(format: "step %d/%d  loss %.4f (lm %.4f)  lr %.2e  |g| %.3f  %.0f tok/s",
                          progress.step + 1, progress.totalSteps, progress.loss, progress.languageModelLoss, progress.learningRate,
                          progress.gradientNorm, progress.tokensPerSecond)
            + "  elapsed \(ProgressReporter.duration(progress.elapsed))  ETA \(ProgressReporter.duration(progress.remaining))"
        if let validation = progress.validationLoss { line += String(format: "  val %.4f", validation) }
        if progress.saved { line += "  saved" }
        reporter.show(line, persistent: progress.step + 1 == progress.totalSteps || progress.validationLoss != nil)
    }
}
