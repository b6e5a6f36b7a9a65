import ArgumentParser
import Foundation
import MoEKit

struct TraceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trace",
        abstract: "Run a MiniCPM-MoE model over token ids or text and log its routing to HDF5, one step per batch.",
        discussion: """
        The log (schema 1; schema 3 for ReLU routers such as remoe, docs/routing-log.md) is written with HDF5's SWMR mode and flushed after \
        every step: h5py (swmr=True), notebooks and `moekit inspect` can read it while it grows, and \
        a killed run keeps every completed step.
        """
    )

    @Argument(help: "MiniCPM-MoE model directory (safetensors or PyTorch .bin weights).")
    var modelDirectory: String

    @OptionGroup var input: TokenInputOptions

    @OptionGroup var log: LogOptions

    @Option(help: "Tokens per batch (one log step per batch).")
    var batchTokens: Int = 512

    @Flag(help: "Also log every token's experts and weights (/tokens/*).")
    var perToken = false

    @Option(help: "Router to use instead of the model's (a preset such as softmax-topk, switch, sigmoid, and/or moekit_router fields, e.g. \"topk:capacity_factor=1.25\"); see docs/routers.md.")
    var router: String?

    @Flag(help: "Continue an existing log's step axis (refused when layers, experts or k differ).")
    var append = false

    @Flag(help: "Run the same batches without logging (to measure logging overhead).")
    var noLog = false

    @Option(name: .customLong("compute"), help: ComputePrecision.help)
    var computePrecision: ComputePrecision = .float32
    @OptionGroup var output: OutputOptions

    @OptionGroup var compute: ComputeOptions

    func validate() throws {
        if output.force && append { throw ValidationError("--force and --append exclude each other") }
        if log.path == nil && !noLog { throw ValidationError("--log is required (or --no-log to run without one)") }
        if log.path != nil && noLog { throw ValidationError("--log and --no-log exclude each other") }
        try OptionRanges.check("--batch-tokens", batchTokens, OptionRanges.tokensPerCall)
        try computePrecision.validateForThisCPU()
    }

    func run() throws {
        try reportingErrors {
            compute.apply()
            let sequences = try input.source.read(modelDirectory: modelDirectory)
            let longest = sequences.map(\.count).max() ?? 0
            let what = "tracing \(min(batchTokens, longest))-token batches of sequences up to \(longest) tokens"
            let estimate = { MemoryEstimate.forwardBytes($0, tokens: min(batchTokens, longest), sequence: longest) }
            try OptionRanges.checkMemory(modelDirectory: modelDirectory, what: what, estimate: estimate)
            let model = try MiniCPMModel(directory: modelDirectory)
            if computePrecision != .float32 {
                try OptionRanges.checkMemory(forCompute: computePrecision, model: model, what: what, estimate: estimate)
                model.weights = model.weights.forCompute(computePrecision)
            }
            if let router { try model.useRouter(RouterConfiguration(text: router)) }
            var options = RoutingTracer.Options()
            options.batchTokens = batchTokens
            options.perToken = perToken
            options.logPath = noLog ? nil : log.path
            options.mode = append ? .append : output.force ? .replace : .create
            // The log to append to is first read by a child process (HDF5 can crash or loop on damaged metadata).
            if append, let log = log.path { try IsolatedLogRead.check(log) }
            let tracer = try RoutingTracer(model: model, options: options)
            let reporter = ProgressReporter(label: "trace", style: output.progress)
            let summary = try tracer.run(sequences, source: input.source.path) { progress in
                let rate = Double(progress.tokensDone) / max(progress.seconds, 1e-9)
                reporter.show("trace: step \(progress.step)/\(progress.steps), \(progress.tokensDone)/\(progress.tokens) tokens, \(Int(rate)) tokens/s",
                              persistent: progress.step == progress.steps)
            }
            let medianStep = summary.stepSeconds.sorted()[summary.stepSeconds.count / 2]
            print("\(modelDirectory): \(summary.tokens) tokens in \(summary.steps) steps (\(String(format: "%.2f", summary.seconds))s, median \(String(format: "%.4f", medianStep))s per step)")
            if let log = options.logPath {
                print("  logged steps \(summary.firstStep)…\(summary.firstStep + summary.steps - 1) to \(log)")
                let logging = summary.loggingSeconds.reduce(0, +), total = summary.stepSeconds.reduce(0, +)
                print(String(format: "  logging (statistics + HDF5 write and flush): %.2f ms per step, %.2f%% of step time",
                             1000 * logging / Double(max(summary.steps, 1)), 100 * logging / max(total, 1e-12)))
            }
        }
    }
}
