import Foundation
import Testing
@testable import MoEKit

/// `moekit init`: MiniCPM's initialisation (matrices N(0, (0.1/sqrt(hidden/dim_model_base))²),
/// norms 1), deterministic for a seed, a checkpoint that passes its own layout check, the published
/// parameter counts, and no half-written output.
@Suite struct ModelInitializerTests {
    /// The tiny preset cut to one layer: small enough for debug builds.
    static var smallConfig: MiniCPMConfig {
        var config = MiniCPMPreset.tiny.config
        config.numHiddenLayers = 1
        return config
    }

    static func contents(of directory: String) throws -> [String: Data] {
        var result: [String: Data] = [:]
        for name in directoryEntries(directory) {
            let data = try #require(FileManager.default.contents(atPath: directory + "/" + name))
            result[name] = data
        }
        return result
    }

    /// The same seed writes the same bytes; another seed writes other weights.
    @Test func sameSeedSameBytesOtherSeedOtherBytes() throws {
        let directory = TemporaryDirectory()
        for (name, seed) in [("a", UInt64(3)), ("b", 3), ("c", 4)] {
            _ = try ModelInitializer.write(config: Self.smallConfig, to: directory.file(name), dtype: .bfloat16, seed: seed, progress: .quiet)
        }
        let a = try Self.contents(of: directory.file("a")), b = try Self.contents(of: directory.file("b")), c = try Self.contents(of: directory.file("c"))
        #expect(a.keys.sorted() == ["config.json", "model.safetensors"])
        #expect(a == b)
        #expect(a["config.json"] == c["config.json"])
        #expect(a["model.safetensors"] != c["model.safetensors"])
        let first = try ModelCheckpoint(directory: directory.file("a")).floatTensor(MiniCPMTensorNames.queryProjection(0))
        let other = try ModelCheckpoint(directory: directory.file("c")).floatTensor(MiniCPMTensorNames.queryProjection(0))
        #expect(zip(first.values, other.values).filter { $0 == $1 }.count < first.count / 100)
    }

    /// Matrices have mean ≈ 0 and std ≈ 0.1/sqrt(hidden/dim_model_base) (tiny: 0.1/sqrt(128/32) = 0.05);
    /// every norm weight is exactly 1; the written checkpoint passes `MiniCPMLayout.check` with nothing unexpected.
    @Test func initialisationFollowsMiniCPMAndPassesTheLayoutCheck() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("model")
        let summary = try ModelInitializer.write(config: Self.smallConfig, to: path, dtype: .float32, seed: 0, progress: .quiet)
        #expect(ModelInitializer.standardDeviation(for: Self.smallConfig) == 0.05)
        let checkpoint = try ModelCheckpoint(directory: path)
        let config = try MiniCPMConfig(path: path + "/config.json")
        #expect(config.torchDtype == "float32")
        #expect(try MiniCPMLayout(config: config).check(checkpoint) == [])
        #expect(summary.parameters == MiniCPMLayout(config: config).parameterCounts)
        #expect(summary.files == ["model.safetensors"])

        for name in [MiniCPMTensorNames.embedTokens, MiniCPMTensorNames.queryProjection(0), MiniCPMTensorNames.downProjection(0)] {
            let values = try checkpoint.floatTensor(name).values.map(Double.init)
            let mean = values.reduce(0, +) / Double(values.count)
            let std = (values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count)).squareRoot()
            // ≥ 16 384 samples: the std estimate's own std is < 0.05/sqrt(2·16384) ≈ 0.0003.
            #expect(abs(std - 0.05) < 0.05 * 0.02, "\(name): std \(std)")
            #expect(abs(mean) < 0.002, "\(name): mean \(mean)")
        }
        for name in [MiniCPMTensorNames.inputLayerNorm(0), MiniCPMTensorNames.postAttentionLayerNorm(0), MiniCPMTensorNames.finalNorm] {
            #expect(try checkpoint.floatTensor(name).values.allSatisfy { $0 == 1 })
        }
    }

    /// Non-embedding parameters of the full presets equal the published counts:
    /// 2.4B: 40·(4·2304² + 3·2304·5760 + 2·2304) + 2304 = 2 442 057 984;
    /// 1.2B: 52·(2·1536² + 2·1536·512 + 3·1536·3840 + 2·1536) + 1536 = 1 247 442 432.
    @Test func presetParameterCountsMatchThePublishedOnes() {
        let large = MiniCPMLayout(config: MiniCPMPreset.minicpm2_4b.config).parameterCounts
        #expect(large.nonEmbedding == 2_442_057_984)
        #expect(large.total == 2_442_057_984 + 122_753 * 2304)
        #expect(large.activePerToken == large.total)
        let small = MiniCPMLayout(config: MiniCPMPreset.minicpm1_2b.config).parameterCounts
        #expect(small.nonEmbedding == 1_247_442_432)
        #expect(small.total == 1_247_442_432 + 73_440 * 1536)
        let c = MiniCPMPreset.minicpm2_4b.config
        #expect(c.hiddenSize == 2304 && c.intermediateSize == 5760 && c.numHiddenLayers == 40 && c.numAttentionHeads == 36
            && c.numKeyValueHeads == 36 && c.vocabSize == 122_753 && c.scaleEmb == 12 && c.dimModelBase == 256 && c.scaleDepth == 1.4 && c.tieWordEmbeddings)
        let d = MiniCPMPreset.minicpm1_2b.config
        #expect(d.hiddenSize == 1536 && d.intermediateSize == 3840 && d.numHiddenLayers == 52 && d.numAttentionHeads == 24
            && d.numKeyValueHeads == 8 && d.vocabSize == 73440 && d.scaleEmb == 12 && d.dimModelBase == 256 && d.scaleDepth == 1.4 && d.tieWordEmbeddings)
    }

    /// An 8-expert top-2 MoE on the 2.4B shapes: per layer attention 4·2304² + norms 2·2304 +
    /// router 8·2304 + 8 experts · 3·2304·5760, so 13 590 466 560 + 2304 non-embedding in all
    /// (≈ 13.6B) and 6 idle experts fewer, 4 035 317 760 + 2304 (≈ 4.0B), active per token.
    @Test func moeOnThe2_4BShapesHasTheExpectedTotalAndActiveCounts() {
        var config = MiniCPMPreset.minicpm2_4b.config
        config.numExperts = 8
        config.topK = 2
        let counts = MiniCPMLayout(config: config).parameterCounts
        let expert = 3 * 2304 * 5760
        let perLayer = 4 * 2304 * 2304 + 2 * 2304 + 8 * 2304 + 8 * expert
        #expect(counts.nonEmbedding == 40 * perLayer + 2304)
        #expect(counts.nonEmbedding == 13_590_468_864)
        #expect(counts.activeNonEmbedding == counts.nonEmbedding - 40 * 6 * expert)
        #expect(counts.activeNonEmbedding == 4_035_320_064)
        #expect(abs(Double(counts.nonEmbedding) / 1e9 - 13.6) < 0.05)
        #expect(abs(Double(counts.activeNonEmbedding) / 1e9 - 4.0) < 0.05)
        #expect(counts.activePerToken == counts.activeNonEmbedding + 122_753 * 2304)
    }

    /// An existing output directory is refused (left as it was, nothing else created) unless
    /// `replaceExisting`, which swaps in the new checkpoint whole.
    @Test func existingOutputIsRefusedWithoutReplaceExisting() throws {
        let directory = TemporaryDirectory()
        let output = directory.file("model")
        try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: false)
        writeBytes([42], to: output + "/keep.txt")
        #expect(throws: CheckpointError.file(.alreadyExists(path: output))) {
            try ModelInitializer.write(config: Self.smallConfig, to: output, dtype: .bfloat16, seed: 0, progress: .quiet)
        }
        #expect(directoryEntries(directory.path) == ["model"])
        #expect(directoryEntries(output) == ["keep.txt"])

        _ = try ModelInitializer.write(config: Self.smallConfig, to: output, dtype: .bfloat16, seed: 0, replaceExisting: true, progress: .quiet)
        #expect(directoryEntries(directory.path) == ["model"])
        #expect(directoryEntries(output) == ["config.json", "model.safetensors"])
    }

    /// A write that fails part-way (a dtype the writer cannot encode) or before starting (a bad
    /// config, a missing parent) leaves no output and no temporary directory.
    @Test func failedWritesLeaveNothingBehind() throws {
        let directory = TemporaryDirectory()
        let output = directory.file("model")
        let error = #expect(throws: CheckpointError.self) {
            try ModelInitializer.write(config: Self.smallConfig, to: output, dtype: .int32, seed: 0, progress: .quiet)
        }
        guard case .safetensors(.invalidWrite(_, let reason))? = error else {
            Issue.record("expected an invalidWrite, got \(String(describing: error))")
            return
        }
        #expect(reason.contains("I32"))
        #expect(directoryEntries(directory.path).isEmpty)
        var bad = Self.smallConfig
        bad.numAttentionHeads = 3
        #expect(throws: CheckpointError.self) { try ModelInitializer.write(config: bad, to: output, dtype: .float32, seed: 0, progress: .quiet) }
        #expect(directoryEntries(directory.path).isEmpty)
        #expect(throws: CheckpointError.file(.missingDirectory(path: directory.file("absent")))) {
            try ModelInitializer.write(config: Self.smallConfig, to: directory.file("absent/model"), dtype: .float32, seed: 0, progress: .quiet)
        }
        #expect(directoryEntries(directory.path).isEmpty)
    }
}
