import Foundation

/// Rewrites a model directory's weights (safetensors or PyTorch `.bin`) as safetensors, the way
/// Hugging Face writes them: `model.safetensors`, or `model-0000i-of-0000n.safetensors` shards
/// plus `model.safetensors.index.json` when the weights exceed the shard size. Tensors are written
/// in name order, streamed from the memory map: kept dtypes byte for byte (PyTorch views are
/// gathered into row-major order), converted ones in chunks. `config.json` is copied unchanged,
/// or with `torch_dtype` updated when `dtype` converts the weights; every other file of the
/// directory (tokenizer, generation config, code, …) is copied. The output directory is built
/// under a temporary name and appears only when complete.
public enum CheckpointConverter {
    public struct Options: Sendable {
        /// Storage type for the floating-point tensors (`nil` keeps every tensor's type).
        /// Integer and boolean tensors always keep theirs.
        public var dtype: SafetensorsDType?
        public var maximumShardBytes: Int
        public var replaceExisting: Bool
        public var progress: ProgressReporter.Style

        public init(dtype: SafetensorsDType? = nil, maximumShardBytes: Int = ShardedSafetensorsWriter.defaultShardSize,
                    replaceExisting: Bool = false, progress: ProgressReporter.Style = .automatic) {
            self.dtype = dtype
            self.maximumShardBytes = maximumShardBytes
            self.replaceExisting = replaceExisting
            self.progress = progress
        }
    }

    public struct Result: Sendable {
        public var outputDirectory: String
        public var sourceFormat: ModelCheckpoint.Format
        /// Weight files written (shards, then the index when there is one).
        public var weightFiles: [String]
        /// Other files copied from the source directory (config.json first).
        public var copiedFiles: [String]
        public var tensorCount: Int
        public var bytesWritten: Int
    }

    /// The storage type a tensor of `dtype` gets.
    static func outputDType(for dtype: SafetensorsDType, requested: SafetensorsDType?) -> SafetensorsDType {
        guard let requested else { return dtype }
        switch dtype {
        case .float32, .float16, .bfloat16, .float64: return requested
        default: return dtype
        }
    }

    public static func run(directory: String, outputDirectory: String, options: Options = Options()) throws(CheckpointError) -> Result {
        // The names stored in the files: the copied config.json keeps describing them.
        let checkpoint = try ModelCheckpoint(directory: directory, translatingNames: false)
        let configPath = directory + "/config.json"
        guard let configData = FileManager.default.contents(atPath: configPath) else { throw .missingFile(path: configPath) }
        guard case .object(var config)? = JSONValue.parse(configData) else { throw .invalidJSON(path: configPath, reason: "not a JSON object") }
        do { try OutputPaths.refuseOverlap(input: directory, output: outputDirectory) } catch { throw .file(error) }

        let specs = checkpoint.tensors.map { info in
            TensorSpec(name: info.name, dtype: outputDType(for: info.dtype, requested: options.dtype), shape: info.shape)
        }
        let output: AtomicDirectory
        do { output = try AtomicDirectory(destination: outputDirectory, replaceExisting: options.replaceExisting) } catch { throw .file(error) }
        var weightFiles: [String]
        do {
            let writer = try ShardedSafetensorsWriter(directory: output.temporaryPath, tensors: specs,
                                                      maximumShardBytes: options.maximumShardBytes, alwaysIndex: false)
            let total = specs.reduce(0) { $0 + $1.byteCount }
            let reporter = ProgressReporter(label: "convert", totalBytes: total, style: options.progress)
            while let spec = writer.nextTensor {
                try writer.appendTensor(spec.name, from: checkpoint, as: spec.dtype, reporter: reporter)
            }
            try writer.finish()
            reporter.finish(bytesDone: writer.tensorBytesWritten)
            weightFiles = writer.shardFiles
            if writer.shardFiles.count > 1 { weightFiles.append(SafetensorsIndex.fileName) }
        } catch let error as CheckpointError {
            throw error
        } catch let error as SafetensorsError {
            throw .safetensors(error)
        } catch {
            throw .file(.writeFailed(path: outputDirectory, reason: error.localizedDescription))
        }

        var copied = ["config.json"]
        do {
            if let dtype = options.dtype, let name = dtype.torchName {
                config["torch_dtype"] = .string(name)
                if config["dtype"] != nil { config["dtype"] = .string(name) }  // transformers 5 writes `dtype`
                try AtomicFileWriter.write(JSONValue.object(config).serialized(), to: output.path("config.json"))
            } else {
                try FileManager.default.copyItem(atPath: configPath, toPath: output.path("config.json"))
            }
            let others = try FileManager.default.contentsOfDirectory(atPath: directory)
                .filter { $0 != "config.json" && !$0.hasPrefix(".") && !ModelCheckpoint.isWeightFile($0) }.sorted()
            for name in others {
                try FileManager.default.copyItem(atPath: directory + "/" + name, toPath: output.path(name))
                copied.append(name)
            }
        } catch let error as FileError {
            throw .file(error)
        } catch {
            throw .file(.cannotCopy(path: directory, destination: outputDirectory, reason: error.localizedDescription))
        }
        do { try output.commit() } catch { throw .file(error) }
        return Result(outputDirectory: output.destination, sourceFormat: checkpoint.format, weightFiles: weightFiles,
                      copiedFiles: copied, tensorCount: specs.count, bytesWritten: specs.reduce(0) { $0 + $1.byteCount })
    }
}
