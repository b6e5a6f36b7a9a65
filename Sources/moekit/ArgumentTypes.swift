import ArgumentParser
import Foundation
import MoEKit

// Option values as types: `--help` lists every enum's cases, and a value outside them is a usage
// error naming the accepted ones, before `run()` starts.

extension MiniCPMPreset: ExpressibleByArgument {}
extension UpcycleMethod: ExpressibleByArgument {}
extension RouterInitialization: ExpressibleByArgument {}
extension NeuronGrouping: ExpressibleByArgument {}
extension WeightScaling: ExpressibleByArgument {}
extension ExportFormat: ExpressibleByArgument {}
extension TokenDataType: ExpressibleByArgument {}
extension TrainingOptions.ScheduleKind: ExpressibleByArgument {}
extension LearningRateSchedule.DecayShape: ExpressibleByArgument {}
extension RouterLoss.Balance: ExpressibleByArgument {}
extension ThroughputBenchmark.Routing: ExpressibleByArgument {}

/// The storage dtype of written weights (`--dtype`); `bfloat16`, `float16`, `fp32`, … are
/// accepted as spellings of the same three.
enum StorageDType: String, CaseIterable, ExpressibleByArgument {
    case bf16, f16, f32

    init?(argument: String) {
        switch argument.lowercased() {
        case "bf16", "bfloat16": self = .bf16
        case "f16", "fp16", "float16": self = .f16
        case "f32", "fp32", "float32": self = .f32
        default: return nil
        }
    }

    var safetensors: SafetensorsDType {
        switch self {
        case .bf16: return .bfloat16
        case .f16: return .float16
        case .f32: return .float32
        }
    }
}

/// `--dtype` of the commands that rewrite a checkpoint: keep each tensor's stored dtype, or
/// convert floating-point tensors to one.
enum OutputDType: String, CaseIterable, ExpressibleByArgument {
    case keep, bf16, f16, f32

    init?(argument: String) {
        if argument.lowercased() == "keep" { self = .keep; return }
        guard let storage = StorageDType(argument: argument) else { return nil }
        self.init(rawValue: storage.rawValue)
    }

    /// The requested dtype, `nil` for `keep`.
    var safetensors: SafetensorsDType? { StorageDType(rawValue: rawValue)?.safetensors }
}

/// `moekit bench --level`.
enum BenchLevel: String, CaseIterable, ExpressibleByArgument {
    case layer, model, all, training

    var includesLayers: Bool { self == .all || self == .layer }
    var includesModel: Bool { self == .all || self == .model }
}

/// A byte size option such as `--shard-size 5GB` (`ByteSize`: 5GB, 500MB, 2GiB, 4096).
struct ByteSizeArgument: ExpressibleByArgument {
    let bytes: Int
    let text: String

    init?(argument: String) {
        guard let bytes = ByteSize.parse(argument) else { return nil }
        self.bytes = bytes
        text = argument
    }

    var defaultValueDescription: String { text }
}

/// A comma-separated list option, e.g. `--tokens 128,512,2048`; spaces around items are ignored.
struct CommaSeparated<Element: ExpressibleByArgument>: ExpressibleByArgument, ExpressibleByArrayLiteral {
    let values: [Element]

    init(arrayLiteral elements: Element...) { values = elements }

    init?(argument: String) {
        var values: [Element] = []
        for item in argument.split(separator: ",", omittingEmptySubsequences: false) {
            guard let value = Element(argument: item.trimmingCharacters(in: .whitespaces)) else { return nil }
            values.append(value)
        }
        guard !values.isEmpty else { return nil }
        self.values = values
    }

    var defaultValueDescription: String { values.map(\.defaultValueDescription).joined(separator: ",") }

    static var allValueStrings: [String] { Element.allValueStrings }
}

extension CommaSeparated: Sendable where Element: Sendable {}

/// Options of every command that writes an output: replace it, and progress output.
struct OutputOptions: ParsableArguments {
    @Flag(help: "Replace existing outputs (an output directory, log or file written before).")
    var force = false

    @Flag(help: "No progress output.")
    var quiet = false

    var progress: ProgressReporter.Style { quiet ? .quiet : .automatic }
}

/// The storage options of the commands that write a checkpoint's weights.
struct WeightOutputOptions: ParsableArguments {
    @Option(help: "Storage dtype of floating-point tensors (keep: as stored; integer tensors always keep theirs).")
    var dtype: OutputDType = .keep

    @Option(name: .customLong("shard-size"), help: "Maximum shard size (5GB, 500MB, 2GiB, …).")
    var shardSize = ByteSizeArgument(argument: "5GB")!
}

/// The HDF5 log a command writes (`train`, `trace`; schema in docs/routing-log.md).
struct LogOptions: ParsableArguments {
    @Option(name: .customLong("log"), help: "The HDF5 log to write (routing and training statistics; docs/routing-log.md).")
    var path: String?
}
