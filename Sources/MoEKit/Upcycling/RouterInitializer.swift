import Foundation

/// Initial router weights `mlp.gate.weight` `[E, hidden]`.
enum RouterInitializer {
    /// The router of one layer, drawn from the stream `seed` × `streamName` (the tensor name).
    ///
    /// `normal`: N(0, σ²); `uniform`: U(−1/√hidden, 1/√hidden); `uniform-std`: U(−√3σ, √3σ)
    /// (mean 0, std σ); `zero`: zeros. With
    /// `granularity` G > 1 (the `granular` method) only `E/G` rows are drawn and each is repeated
    /// for the G consecutive experts of its group: expert `e` gets row `e / G`, as Megatron-Core's
    /// upcycling repeats router rows, so the G slices of one dense FFN are always chosen together.
    static func weights(experts: Int, hidden: Int, initialization: RouterInitialization, standardDeviation: Double,
                               granularity: Int = 1, seed: UInt64, streamName: String) -> Tensor {
        let distinctRows = experts / max(1, granularity)
        var random = SeededRandom(seed: seed, stream: streamName)
        var base = [Float](repeating: 0, count: distinctRows * hidden)
        switch initialization {
        case .normal:
            base.withUnsafeMutableBufferPointer { random.fillNormal($0, standardDeviation: Float(standardDeviation)) }
        case .uniform:
            let bound = 1 / Double(hidden).squareRoot()
            for i in base.indices { base[i] = Float((2 * random.nextUniform() - 1) * bound) }
        case .uniformStd:
            let bound = 3.0.squareRoot() * standardDeviation
            for i in base.indices { base[i] = Float((2 * random.nextUniform() - 1) * bound) }
        case .zero:
            break
        }
        var values = [Float](repeating: 0, count: experts * hidden)
        for expert in 0 ..< experts {
            let source = expert / max(1, granularity)
            for column in 0 ..< hidden { values[expert * hidden + column] = base[source * hidden + column] }
        }
        return Tensor(shape: [experts, hidden], values: values)
    }
}
