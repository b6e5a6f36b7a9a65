import Foundation

/// The rounding a fold costs in the output dtype, over the tensors of one `ExportPlan.Fold`.
///
/// For every element, x = w · s is the exact product (w the stored source value, s the factor, in
/// double precision) and x̂ the value written. `maxRelative` is max |x̂ − x| / |x| over x ≠ 0
/// (at most 2⁻²⁴ in f32, 2⁻⁸ in bf16: bf16 cannot hold w · 12 or w / 9 exactly); `normRelative`
/// is ‖x̂ − x‖₂ / ‖x‖₂ over the group.
public struct ExportFoldError: Sendable, Equatable {
    public var fold: ExportPlan.Fold
    public var factor: Double
    public var tensors: Int
    public var elements: Int
    public var maxRelative: Double
    public var normRelative: Double
}

/// Executes an `ExportPlan`: streams the source checkpoint tensor by tensor into a directory built
/// under a temporary name beside the destination, renamed into place only when complete. Copied
/// tensors of a kept dtype go through as raw bytes; folded ones are decoded, multiplied and
/// encoded 1 M elements at a time, so memory stays a few MB whatever the model's size.
public enum Exporter {
    public struct Result: Sendable {
        public var outputDirectory: String
        public var weightFiles: [String]
        public var bytesWritten: Int
        public var foldErrors: [ExportFoldError]
        public var report: JSONValue
    }

    @discardableResult
    public static func run(_ plan: ExportPlan, outputDirectory: String) throws(ExportError) -> Result {
        let directory: AtomicDirectory
        do { directory = try AtomicDirectory(destination: outputDirectory, replaceExisting: plan.options.replaceExisting) } catch { throw .file(error) }
        var weightFiles: [String]
        var accumulators: [ExportPlan.Fold: FoldAccumulator] = [:]
        do {
            let specs = plan.tensors.map { TensorSpec(name: $0.outputName, dtype: $0.dtype, shape: $0.shape) }
            let byName = Dictionary(plan.tensors.map { ($0.outputName, $0) }, uniquingKeysWith: { a, _ in a })
            let writer = try ShardedSafetensorsWriter(directory: directory.temporaryPath, tensors: specs,
                                                      maximumShardBytes: plan.options.maximumShardBytes, alwaysIndex: false)
            let reporter = ProgressReporter(label: "export", totalBytes: plan.totalBytes, style: plan.options.progress)
            while let spec = writer.nextTensor {
                guard let tensor = byName[spec.name] else { throw ExportError.write(directory: outputDirectory, reason: "unplanned tensor '\(spec.name)'") }
                if tensor.isZero {
                    let zeros = [Float](repeating: 0, count: spec.elementCount)
                    try zeros.withUnsafeBufferPointer { (values) in try writer.append(floats: values) }
                } else if tensor.isCopy {
                    try writer.appendTensor(tensor.sourceName, from: plan.checkpoint, as: tensor.dtype, reporter: reporter)
                } else {
                    let fold = tensor.fold ?? .embedding
                    var accumulator = accumulators[fold] ?? FoldAccumulator(factor: tensor.scale)
                    try appendFolded(tensor, from: plan.checkpoint, to: writer, accumulator: &accumulator, reporter: reporter)
                    accumulators[fold] = accumulator
                }
                reporter.update(bytesDone: writer.tensorBytesWritten)
            }
            try writer.finish()
            reporter.finish(bytesDone: writer.tensorBytesWritten)
            weightFiles = writer.shardFiles
            if writer.shardFiles.count > 1 { weightFiles.append(SafetensorsIndex.fileName) }
        } catch let error as ExportError {
            throw error
        } catch let error as CheckpointError {
            throw .checkpoint(error)
        } catch let error as SafetensorsError {
            throw .safetensors(error)
        } catch {
            throw .write(directory: outputDirectory, reason: "\(error)")
        }

        let foldErrors = ExportPlan.Fold.allCases.compactMap { fold in accumulators[fold].map { $0.result(fold) } }
        let report = self.report(plan, weightFiles: weightFiles, foldErrors: foldErrors)
        do { try AtomicFileWriter.write(plan.outputConfig.serialized(), to: directory.path("config.json")) } catch { throw .file(error) }
        for name in plan.otherFiles {
            do {
                try FileManager.default.copyItem(atPath: plan.sourceDirectory + "/" + name, toPath: directory.path(name))
            } catch {
                throw .file(.cannotCopy(path: plan.sourceDirectory + "/" + name, destination: outputDirectory, reason: error.localizedDescription))
            }
        }
        do {
            try AtomicFileWriter.write(report.serialized(), to: directory.path(ExportPlan.reportFileName))
            try directory.commit()
        } catch {
            throw .file(error)
        }
        return Result(outputDirectory: directory.destination, weightFiles: weightFiles, bytesWritten: plan.totalBytes,
                      foldErrors: foldErrors, report: report)
    }

    /// Writes `tensor.sourceName · tensor.scale`, each element rounded once from the exact product.
    static func appendFolded(_ tensor: ExportPlan.PlannedTensor, from checkpoint: ModelCheckpoint, to writer: ShardedSafetensorsWriter,
                             accumulator: inout FoldAccumulator, reporter: ProgressReporter) throws {
        accumulator.tensors += 1
        try writer.appendTensor(tensor.sourceName, from: checkpoint, reporter: reporter) { values in
            for i in values.indices {
                let exact = Double(values[i]) * tensor.scale
                values[i] = Float(exact)
                accumulator.add(exact: exact, stored: storedValue(values[i], as: tensor.dtype))
            }
        }
    }

    /// The value an f32 becomes when stored as `dtype` (round to nearest even, as the writer does).
    static func storedValue(_ value: Float, as dtype: SafetensorsDType) -> Double {
        switch dtype {
        case .bfloat16: return Double(HalfPrecision.float(fromBFloat16: HalfPrecision.bfloat16Bits(from: value)))
        case .float16: return Double(HalfPrecision.float(fromFloat16: HalfPrecision.float16Bits(from: value)))
        default: return Double(value)
        }
    }

    static func report(_ plan: ExportPlan, weightFiles: [String], foldErrors: [ExportFoldError]) -> JSONValue {
        .object([
            "source": .string(plan.sourceDirectory),
            "format": .string(plan.options.format.rawValue),
            "architecture": .string(plan.options.format.architecture.causalLMClassName),
            "weights": .array(weightFiles.map { .string($0) }),
            "bytes": .integer(Int64(plan.totalBytes)),
            "untied_embeddings": .bool(plan.untied),
            "source_scalars": .object([
                "scale_emb": .number(plan.sourceConfig.scaleEmb),
                "scale_depth": .number(plan.sourceConfig.scaleDepth),
                "dim_model_base": .number(plan.sourceConfig.dimModelBase),
                "num_hidden_layers": .integer(Int64(plan.sourceConfig.numHiddenLayers)),
            ]),
            "fold_rounding": .array(foldErrors.map { error in
                .object([
                    "fold": .string(error.fold.rawValue), "factor": .number(error.factor), "tensors": .integer(Int64(error.tensors)),
                    "elements": .integer(Int64(error.elements)), "max_relative_error": .number(error.maxRelative),
                    "norm_relative_error": .number(error.normRelative),
                ])
            }),
            "notes": .array(plan.notes.map { .string($0) }),
        ])
    }
}

/// Running sums of one fold's rounding error.
struct FoldAccumulator {
    var factor: Double
    var tensors = 0
    var elements = 0
    var maxRelative = 0.0
    var squaredError = 0.0
    var squaredExact = 0.0

    init(factor: Double) { self.factor = factor }

    mutating func add(exact: Double, stored: Double) {
        let error = stored - exact
        elements += 1
        squaredError += error * error
        squaredExact += exact * exact
        if exact != 0 { maxRelative = max(maxRelative, abs(error) / abs(exact)) }
    }

    func result(_ fold: ExportPlan.Fold) -> ExportFoldError {
        ExportFoldError(fold: fold, factor: factor, tensors: tensors, elements: elements, maxRelative: maxRelative,
                        normRelative: squaredExact > 0 ? (squaredError / squaredExact).squareRoot() : 0)
    }
}
