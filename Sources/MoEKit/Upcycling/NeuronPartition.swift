/// Splits a dense FFN's intermediate neurons into equal disjoint groups, one per expert (the
/// `partition` method, after LLaMA-MoE's neuron-independent and clustering splits).
enum NeuronPartition {
    /// A seeded random permutation of `0..<neurons` cut into `groups` consecutive blocks of
    /// `neurons / groups` (each block returned ascending). `neurons` must be divisible by `groups`.
    static func random(neurons: Int, groups: Int, random: inout SeededRandom) -> [[Int]] {
        var permutation = Array(0 ..< neurons)
        shuffle(&permutation, random: &random)
        let size = neurons / groups
        return (0 ..< groups).map { Array(permutation[$0 * size ..< ($0 + 1) * size]).sorted() }
    }

    /// Fisher–Yates with our own generator, so the permutation is the same on every platform.
    static func shuffle(_ values: inout [Int], random: inout SeededRandom) {
        guard values.count > 1 else { return }
        for i in stride(from: values.count - 1, to: 0, by: -1) {
            let j = Int(random.next() % UInt64(i + 1))
            values.swapAt(i, j)
        }
    }

    /// Balanced k-means: groups of exactly `neurons / groups` neurons whose feature rows
    /// (`features` `[neurons, D]`, for MoEKit a neuron's `gate_proj` row followed by its `up_proj`
    /// row) lie close together.
    ///
    /// Centroids start at `groups` distinct neurons drawn with the seed. Each iteration computes
    /// all squared distances `‖x_i − c_j‖²`, sorts the (neuron, centroid) pairs by distance (ties by
    /// neuron, then centroid) and assigns greedily: a pair is taken when its neuron is still free
    /// and its centroid has room, so every group ends with exactly its capacity. Centroids then move
    /// to their group's mean. Stops when the assignment repeats or after `iterations`. Returns the
    /// groups, each ascending, in centroid order.
    static func balancedKMeans(features: Tensor, groups: Int, iterations: Int = 10, random: inout SeededRandom) -> [[Int]] {
        let neurons = features.rows, dimension = features.columns
        let capacity = neurons / groups
        var starts = Array(0 ..< neurons)
        shuffle(&starts, random: &random)
        var centroids = Tensor(shape: [groups, dimension])
        for group in 0 ..< groups {
            for d in 0 ..< dimension { centroids[group, d] = features[starts[group], d] }
        }
        var featureNorms = [Float](repeating: 0, count: neurons)
        for i in 0 ..< neurons {
            var sum: Float = 0
            for d in 0 ..< dimension { sum += features[i, d] * features[i, d] }
            featureNorms[i] = sum
        }
        var assignment = [Int](repeating: -1, count: neurons)
        for _ in 0 ..< max(1, iterations) {
            // ‖x − c‖² = ‖x‖² − 2 x·c + ‖c‖²; dots is (neurons, groups)
            let dots = MatrixMultiply.product(features, centroids, transposeB: true)
            var centroidNorms = [Float](repeating: 0, count: groups)
            for group in 0 ..< groups {
                var sum: Float = 0
                for d in 0 ..< dimension { sum += centroids[group, d] * centroids[group, d] }
                centroidNorms[group] = sum
            }
            var pairs: [(distance: Float, neuron: Int, group: Int)] = []
            pairs.reserveCapacity(neurons * groups)
            for i in 0 ..< neurons {
                for group in 0 ..< groups {
                    pairs.append((featureNorms[i] - 2 * dots[i, group] + centroidNorms[group], i, group))
                }
            }
            pairs.sort { ($0.distance, $0.neuron, $0.group) < ($1.distance, $1.neuron, $1.group) }
            var next = [Int](repeating: -1, count: neurons)
            var room = [Int](repeating: capacity, count: groups)
            for pair in pairs where next[pair.neuron] < 0 && room[pair.group] > 0 {
                next[pair.neuron] = pair.group
                room[pair.group] -= 1
            }
            if next == assignment { break }
            assignment = next
            var sums = Tensor(shape: [groups, dimension])
            for i in 0 ..< neurons where assignment[i] >= 0 {
                for d in 0 ..< dimension { sums[assignment[i], d] += features[i, d] }
            }
            for group in 0 ..< groups {
                for d in 0 ..< dimension { centroids[group, d] = sums[group, d] / Float(capacity) }
            }
        }
        return (0 ..< groups).map { group in (0 ..< neurons).filter { assignment[$0] == group } }
    }
}
