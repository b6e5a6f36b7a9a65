/// Top-k selection over a row of scores, ties to the lower index.
public enum TopKSelection {
    /// Writes the indices of the `k` largest of `scores[0 ..< count]` into `indices`, largest first;
    /// among equal scores the lower index wins, so the result is deterministic. NaN never wins.
    @inlinable
    public static func select(_ scores: UnsafePointer<Float>, count: Int, k: Int, into indices: UnsafeMutablePointer<Int32>) {
        for slot in 0 ..< k {
            var best = -1
            var bestScore = -Float.infinity
            for candidate in 0 ..< count {
                var taken = false
                for previous in 0 ..< slot where indices[previous] == Int32(candidate) { taken = true; break }
                if taken { continue }
                let score = scores[candidate]
                if best < 0 || score > bestScore { best = candidate; bestScore = score.isNaN ? -.infinity : score }
            }
            indices[slot] = Int32(best)
        }
    }
}
