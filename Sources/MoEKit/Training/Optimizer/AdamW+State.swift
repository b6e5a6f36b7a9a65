import Foundation

/// Saving and loading `AdamW` state for an exact resume.
///
/// The file is a safetensors file (written atomically: temporary name, then rename) holding, for
/// every parameter name N, two F32 tensors of N's shape:
///
/// - `exp_avg.N`    — m, the first moment (PyTorch's name for it),
/// - `exp_avg_sq.N` — v, the second moment,
///
/// and `__metadata__` strings: `format` = `moekit-adamw`, `format_version` = `1`, `step` (updates
/// taken), `beta1`, `beta2`, `epsilon`, `weight_decay`, `max_gradient_norm` (`none` when off),
/// floats written so that they read back bit for bit. Loading checks the format, that β₁, β₂ and
/// ε equal the requested options (the moments mean nothing under other betas), and that every
/// parameter has both moments, F32, of its shape, finite, with v ≥ 0 — and that the file holds no
/// tensor for a parameter the model does not have. Weight decay and clipping may change on resume.
extension AdamW {
    static let stateFormat = "moekit-adamw"
    static let stateFormatVersion = 1

    /// The tensor name of parameter `name`'s first moment.
    static func firstMomentName(_ name: String) -> String { "exp_avg." + name }
    /// The tensor name of parameter `name`'s second moment.
    static func secondMomentName(_ name: String) -> String { "exp_avg_sq." + name }

    /// The metadata written beside the moments.
    var stateMetadata: [String: String] {
        [
            "format": Self.stateFormat,
            "format_version": String(Self.stateFormatVersion),
            "step": String(stepCount),
            "beta1": "\(options.beta1)",
            "beta2": "\(options.beta2)",
            "epsilon": "\(options.epsilon)",
            "weight_decay": "\(options.weightDecay)",
            "max_gradient_norm": options.maxGradientNorm.map { "\($0)" } ?? "none",
        ]
    }

    /// Writes the state to `path` atomically (see the extension's documentation for the layout).
    func save(to path: String) throws(SafetensorsError) {
        var entries: [(name: String, tensor: Tensor, dtype: SafetensorsDType)] = []
        entries.reserveCapacity(2 * names.count)
        for (index, name) in names.enumerated() {
            entries.append((Self.firstMomentName(name), firstMoments[index], .float32))
            entries.append((Self.secondMomentName(name), secondMoments[index], .float32))
        }
        try SafetensorsWriter.write(entries, to: path, metadata: stateMetadata)
    }

    /// An optimiser that continues exactly where the one that saved `path` stopped.
    ///
    /// `parameters`, `options`, `learningRateMultipliers` and `decayedParameters` mean what they
    /// mean in `init(parameters:options:learningRateMultipliers:decayedParameters:)`. Every
    /// problem with the file is a `TrainingError.invalidState` naming the file and, where there is
    /// one, the tensor or metadata field.
    init(resumingFrom path: String, parameters: MiniCPMWeights, config: MiniCPMConfig, options: AdamWOptions = AdamWOptions(),
                learningRateMultipliers: [String: Float] = [:], decayedParameters: Set<String>? = nil) throws(TrainingError) {
        try self.init(parameters: parameters, config: config, options: options, learningRateMultipliers: learningRateMultipliers,
                      decayedParameters: decayedParameters)
        func fail(_ reason: String) -> TrainingError { .invalidState(path: path, reason: reason) }

        let file: SafetensorsFile
        do {
            file = try SafetensorsFile(path: path)
        } catch {
            throw fail("not a readable optimiser state: \(Self.reasonWithoutPath(error, path: path))")
        }
        let metadata = file.metadata ?? [:]
        guard metadata["format"] == Self.stateFormat else {
            throw fail("metadata 'format' is \(metadata["format"].map { "'\($0)'" } ?? "missing"), expected '\(Self.stateFormat)' (not an AdamW state file)")
        }
        guard metadata["format_version"] == String(Self.stateFormatVersion) else {
            throw fail("metadata 'format_version' is \(metadata["format_version"].map { "'\($0)'" } ?? "missing"); this MoEKit reads version \(Self.stateFormatVersion)")
        }
        guard let stepText = metadata["step"], let step = Int(stepText), step >= 0 else {
            throw fail("metadata 'step' is \(metadata["step"].map { "'\($0)'" } ?? "missing"), expected a count ≥ 0")
        }
        for (field, requested) in [("beta1", options.beta1), ("beta2", options.beta2), ("epsilon", options.epsilon)] {
            guard let text = metadata[field], let saved = Float(text) else {
                throw fail("metadata '\(field)' is \(metadata[field].map { "'\($0)'" } ?? "missing"), expected a number")
            }
            guard saved == requested else {
                throw fail("\(field) is \(saved) in the state but \(requested) was requested; an exact resume needs the same value")
            }
        }

        var expected = Set<String>()
        for (index, name) in names.enumerated() {
            let shape = firstMoments[index].shape
            for (tensorName, isSecondMoment) in [(Self.firstMomentName(name), false), (Self.secondMomentName(name), true)] {
                expected.insert(tensorName)
                guard let info = try? file.info(tensorName) else { throw fail("missing tensor '\(tensorName)'") }
                guard info.dtype == .float32 else { throw fail("tensor '\(tensorName)' is \(info.dtype.rawValue), expected F32") }
                guard info.shape == shape else { throw fail("tensor '\(tensorName)' has shape \(info.shape), the parameter has \(shape)") }
                let tensor: Tensor
                do { tensor = try file.floatTensor(tensorName) } catch { throw fail("tensor '\(tensorName)': \(Self.reasonWithoutPath(error, path: path))") }
                if let bad = tensor.values.firstIndex(where: { !$0.isFinite || (isSecondMoment && $0 < 0) }) {
                    throw fail("tensor '\(tensorName)' element \(bad) is \(tensor.values[bad]) (damaged state: moments must be finite, second moments ≥ 0)")
                }
                if isSecondMoment { secondMoments[index] = tensor } else { firstMoments[index] = tensor }
            }
        }
        if let extra = file.names.sorted().first(where: { !expected.contains($0) }) {
            throw fail("tensor '\(extra)' belongs to no parameter of this model (state saved for another model?)")
        }
        stepCount = step
    }

    private static func reasonWithoutPath(_ error: any Error, path: String) -> String {
        let message = (error as? LocalizedError)?.errorDescription ?? "\(error)"
        return message.hasPrefix(path + ": ") ? String(message.dropFirst(path.count + 2)) : message
    }
}
