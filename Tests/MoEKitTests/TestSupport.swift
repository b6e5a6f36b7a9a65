import Foundation
@testable import MoEKit

/// `true` when every element of `a` is within `relativeTolerance · max|b|` (plus `absoluteTolerance`) of `b`.
func isClose(_ a: [Float], _ b: [Float], relativeTolerance: Float = 1e-5, absoluteTolerance: Float = 0) -> Bool {
    guard a.count == b.count else { return false }
    let scale = b.reduce(Float(0)) { max($0, abs($1)) }
    for (x, y) in zip(a, b) where !(abs(x - y) <= relativeTolerance * scale + absoluteTolerance) { return false }
    return true
}

func isClose(_ a: Tensor, _ b: Tensor, relativeTolerance: Float = 1e-5, absoluteTolerance: Float = 0) -> Bool {
    a.shape == b.shape && isClose(a.values, b.values, relativeTolerance: relativeTolerance, absoluteTolerance: absoluteTolerance)
}

/// Files copied from ../shared/fixtures (the project never reads ../shared at run time).
enum Fixtures {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures").path
    static func path(_ relative: String) -> String { directory + "/" + relative }
}

/// A fresh temporary directory, removed when the value is dropped.
final class TemporaryDirectory {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "moekit-test-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func file(_ name: String) -> String { path + "/" + name }
}

/// A random tensor with values from N(0, std²), reproducible from the seed.
func randomTensor(_ shape: [Int], seed: UInt64, standardDeviation: Float = 1) -> Tensor {
    var random = SeededRandom(seed: seed)
    var values = [Float](repeating: 0, count: shape.reduce(1, *))
    values.withUnsafeMutableBufferPointer { random.fillNormal($0, standardDeviation: standardDeviation) }
    return Tensor(shape: shape, values: values)
}

/// Central finite differences of a scalar function: (f(x + h·e_i) − f(x − h·e_i)) / 2h for every i,
/// evaluated in f32 as the function itself computes.
func finiteDifferenceGradient(at point: [Float], step: Float, _ function: ([Float]) -> Float) -> [Float] {
    var gradient = [Float](repeating: 0, count: point.count)
    var shifted = point
    for i in point.indices {
        shifted[i] = point[i] + step
        let above = function(shifted)
        shifted[i] = point[i] - step
        let below = function(shifted)
        shifted[i] = point[i]
        gradient[i] = (above - below) / (2 * step)
    }
    return gradient
}
