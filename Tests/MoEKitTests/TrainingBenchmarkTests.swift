import Testing
@testable import MoEKit

/// The training benchmark's FLOP count (hand-checked) and one tiny run producing every case.
@Suite struct TrainingBenchmarkTests {
    /// hidden 32, kv width 2·8 = 16, 2 layers, intermediate 48, vocab 50, T = 10:
    /// attention weights 2·32·32 + 2·32·16 = 3072; dense MLP 3·32·48 = 4608;
    /// forward = 2·(2·(3072 + 4608) + 50·32) + 2·4·10·32 = 2·(15360 + 1600) + 2560 = 36480.
    /// MoE, 4 experts top-2: MLP 2·4608 + 4·32 = 9344 → 2·(2·12416 + 1600) + 2560 = 55424.
    @Test func forwardFLOPsPerTokenByHand() {
        let config = SmallModels.config()
        #expect(TrainingBenchmark.forwardFLOPsPerToken(config: config, sequenceLength: 10, activeExperts: 0, experts: 0) == 36480)
        #expect(TrainingBenchmark.forwardFLOPsPerToken(config: config, sequenceLength: 10, activeExperts: 2, experts: 4) == 55424)
    }

    @Test func tinyRunReportsDenseMoEAndSgemm() throws {
        var options = TrainingBenchmark.Options(config: SmallModels.config())
        options.experts = 4
        options.batchSize = 2
        options.sequenceLength = 8
        options.repeats = 1
        let results = try TrainingBenchmark(options: options).run()
        #expect(results.map(\.kind) == ["dense", "moe", "sgemm"])
        #expect(results.allSatisfy { $0.tokensPerSecond.median > 0 && ($0.gflops?.median ?? 0) > 0 })
    }
}
