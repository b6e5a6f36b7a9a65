import Foundation

/// Drop-Upcycling (Nakamura et al., ICLR 2025, arXiv 2502.19261): every expert starts as a copy of
/// the dense SwiGLU FFN, then in each expert a random subset `S_e` of `⌊r·I⌋` intermediate neurons
/// is re-initialised: rows `S_e` of `W1` and `W3` and columns `S_e` of `W2`. Each redrawn block is
/// drawn from `N(μ, σ²)` with `μ`, `σ` the mean and standard deviation of the weights it replaces
/// (per expert and matrix). Every expert gets its own seeded subset, so the experts start diverse
/// while keeping `1 − r` of the dense knowledge. Derivation and source: docs/upcycling.md.
public enum DropUpcycling {
    /// The paper's default re-initialisation ratio r.
    public static let defaultRatio = 0.5
    /// The router the reference code initialises (`torch_rand_002`): zero-mean uniform, std 0.02.
    public static let routerStandardDeviation = 0.02

    /// `⌊r·I⌋`, the neurons redrawn in every expert.
    public static func redrawnCount(intermediateSize: Int, ratio: Double) -> Int {
        Int((ratio * Double(intermediateSize)).rounded(.down))
    }

    /// The random stream expert `expert` of `layer` draws its subset from.
    static func streamName(layer: Int, expert: Int) -> String {
        MiniCPMTensorNames.layer(layer) + ".mlp.experts.\(expert).drop"
    }

    /// `S_e`: the first `⌊r·I⌋` entries of a seeded Fisher–Yates permutation of `0..<I` drawn from
    /// the stream `seed × streamName(layer, expert)`, ascending. The same subset serves W1, W3, W2.
    static func redrawnNeurons(intermediateSize: Int, ratio: Double, seed: UInt64, layer: Int, expert: Int) -> [Int] {
        var random = SeededRandom(seed: seed, stream: streamName(layer: layer, expert: expert))
        var permutation = Array(0 ..< intermediateSize)
        NeuronPartition.shuffle(&permutation, random: &random)
        return Array(permutation.prefix(redrawnCount(intermediateSize: intermediateSize, ratio: ratio))).sorted()
    }

    /// Mean and standard deviation of the weights a redraw replaces.
    public struct Statistics: Sendable, Equatable {
        var mean: Double
        /// Bessel-corrected (÷ (n − 1)), as `torch.Tensor.std` in the reference code; 0 for n < 2.
        public var standardDeviation: Double
    }

    /// The statistics of rows `neurons` (gate, up: `dense` is `[I, H]`) or columns `neurons`
    /// (down: `dense` is `[H, I]`) of `dense`, accumulated in Double.
    static func statistics(of projection: ExpertProjection, dense: Tensor, neurons: [Int]) -> Statistics {
        var sum = 0.0, sumOfSquares = 0.0, count = 0
        forEachIndex(projection, dense: dense, neurons: neurons) { index in
            let value = Double(dense.values[index])
            sum += value
            sumOfSquares += value * value
            count += 1
        }
        guard count > 0 else { return Statistics(mean: 0, standardDeviation: 0) }
        let mean = sum / Double(count)
        let variance = count > 1 ? max(0, (sumOfSquares - Double(count) * mean * mean) / Double(count - 1)) : 0
        return Statistics(mean: mean, standardDeviation: variance.squareRoot())
    }

    /// Replaces rows (gate, up) or columns (down) `neurons` of `weight` — an expert matrix of the
    /// dense shape, still holding the dense values there — by draws from `N(μ, σ²)` with the
    /// statistics of the values replaced, in row-major order of the replaced elements. Returns
    /// the statistics used.
    @discardableResult
    static func redraw(_ projection: ExpertProjection, weight: inout Tensor, neurons: [Int], random: inout SeededRandom) -> Statistics {
        let stats = statistics(of: projection, dense: weight, neurons: neurons)
        let mean = stats.mean, sigma = stats.standardDeviation
        var indices: [Int] = []
        forEachIndex(projection, dense: weight, neurons: neurons) { indices.append($0) }
        for index in indices { weight.values[index] = Float(mean + sigma * random.nextNormal()) }
        return stats
    }

    /// Visits the flat indices of rows `neurons` of an `[I, H]` matrix (gate, up) or of columns
    /// `neurons` of an `[H, I]` matrix (down), row-major.
    private static func forEachIndex(_ projection: ExpertProjection, dense: Tensor, neurons: [Int], _ body: (Int) -> Void) {
        let columns = dense.columns
        switch projection {
        case .gate, .up:
            for neuron in neurons { for column in 0 ..< columns { body(neuron * columns + column) } }
        case .down:
            for row in 0 ..< dense.rows { for neuron in neurons { body(row * columns + neuron) } }
        }
    }

    /// What a `drop` run redrew, for `upcycle-report.json`: per layer and expert the neurons
    /// `S_e` and, per matrix, the mean and std the redraw used.
    struct Record: Sendable, Equatable {
        struct Expert: Sendable, Equatable {
            var layer: Int
            var expert: Int
            var neurons: [Int]
            var statistics: [ExpertProjection: Statistics] = [:]
        }
        private(set) var experts: [Expert] = []

        init() {}

        mutating func add(layer: Int, expert: Int, neurons: [Int], projection: ExpertProjection, statistics: Statistics) {
            if let index = experts.firstIndex(where: { $0.layer == layer && $0.expert == expert }) {
                experts[index].statistics[projection] = statistics
            } else {
                experts.append(Expert(layer: layer, expert: expert, neurons: neurons, statistics: [projection: statistics]))
            }
        }

        /// `[{"layer", "expert", "neurons": [...], "statistics": {"w1": {"mean", "std"}, …}}, …]`
        /// ordered by layer, then expert.
        var jsonValue: JSONValue {
            let sorted = experts.sorted { ($0.layer, $0.expert) < ($1.layer, $1.expert) }
            return .array(sorted.map { entry in
                var statistics: [String: JSONValue] = [:]
                for (projection, value) in entry.statistics {
                    statistics[projection.rawValue] = .object(["mean": .number(value.mean), "std": .number(value.standardDeviation)])
                }
                return .object([
                    "layer": .integer(Int64(entry.layer)), "expert": .integer(Int64(entry.expert)),
                    "neurons": .array(entry.neurons.map { .integer(Int64($0)) }),
                    "statistics": .object(statistics),
                ])
            })
        }
    }

    /// The random stream one expert matrix's redraw uses (`seed × tensor name`).
    static func valueStream(seed: UInt64, tensorName: String) -> SeededRandom {
        SeededRandom(seed: seed, stream: tensorName + ".drop")
    }
}
