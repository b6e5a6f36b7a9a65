import Foundation

/// Writes a freshly initialised dense MiniCPM checkpoint, tensor by tensor.
///
/// Initialisation follows MiniCPM's μP recipe: every matrix (embeddings included) is drawn from
/// N(0, σ²) with σ = 0.1 / sqrt(hidden_size / dim_model_base); norm weights are 1. Each tensor
/// has its own random stream derived from the seed and its name, so the result is the same for a
/// seed whatever the write order, and large tensors are generated in chunks: peak memory is a
/// few MB above the mapped files, far below the checkpoint size.
public enum ModelInitializer {
    public struct Summary: Sendable {
        public var config: MiniCPMConfig
        public var parameters: MiniCPMLayout.ParameterCounts
        public var bytesWritten: Int
        public var files: [String]
    }

    /// The initialisation standard deviation of matrices, `0.1 / sqrt(hidden / dim_model_base)`.
    public static func standardDeviation(for config: MiniCPMConfig) -> Float {
        Float(0.1 / (Double(config.hiddenSize) / config.dimModelBase).squareRoot())
    }

    public static func write(config inputConfig: MiniCPMConfig, to outputDirectory: String, dtype: SafetensorsDType, seed: UInt64,
                             replaceExisting: Bool = false, progress: ProgressReporter.Style = .automatic) throws(CheckpointError) -> Summary {
        var config = inputConfig
        config.torchDtype = dtype.torchName
        try config.validate()
        let layout = MiniCPMLayout(config: config)
        let specs = layout.entries.map { TensorSpec(name: $0.name, dtype: dtype, shape: $0.shape) }
        let totalBytes = specs.reduce(0) { $0 + $1.byteCount }
        let directory: AtomicDirectory
        do { directory = try AtomicDirectory(destination: outputDirectory, replaceExisting: replaceExisting) } catch { throw .file(error) }
        let reporter = ProgressReporter(label: "init", totalBytes: totalBytes, style: progress)
        let standardDeviation = standardDeviation(for: config)
        let files: [String]
        do {
            let writer = try ShardedSafetensorsWriter(directory: directory.temporaryPath, tensors: specs, alwaysIndex: false)
            files = writer.shardFiles
            let chunk = 1 << 20
            var buffer = [Float](repeating: 0, count: chunk)
            while let spec = writer.nextTensor {
                let isNorm = spec.shape.count == 1
                var random = SeededRandom(seed: seed, stream: spec.name)
                var remaining = spec.elementCount
                while remaining > 0 {
                    let n = min(chunk, remaining)
                    try buffer.withUnsafeMutableBufferPointer { (values) in
                        let slice = UnsafeMutableBufferPointer(rebasing: values[..<n])
                        if isNorm { slice.initialize(repeating: 1) } else { random.fillNormal(slice, standardDeviation: standardDeviation) }
                        try writer.append(floats: UnsafeBufferPointer(slice))
                    }
                    remaining -= n
                    reporter.update(bytesDone: writer.tensorBytesWritten)
                }
            }
            try writer.finish()
            reporter.finish(bytesDone: writer.tensorBytesWritten)
        } catch let error as SafetensorsError {
            throw .safetensors(error)
        } catch {
            throw .file(.writeFailed(path: outputDirectory, reason: "\(error)"))
        }
        try config.write(to: directory.path("config.json"))
        do { try directory.commit() } catch { throw .file(error) }
        return Summary(config: config, parameters: layout.parameterCounts, bytesWritten: totalBytes, files: files)
    }
}
