import Foundation

/// A small, fast, seedable generator (xoshiro256**, seeded through SplitMix64) whose streams are
/// the same on every platform, so `--seed` reproduces checkpoints and noisy routing bit for bit.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: (UInt64, UInt64, UInt64, UInt64)
    private var spareNormal: Double?

    public init(seed: UInt64) {
        var splitMix = seed
        func next() -> UInt64 {
            splitMix &+= 0x9E37_79B9_7F4A_7C15
            var z = splitMix
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        state = (next(), next(), next(), next())
    }

    /// A generator for one named stream of a seed (e.g. one tensor), independent of the others and
    /// of the order in which streams are drawn.
    public init(seed: UInt64, stream: String) {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325  // FNV-1a
        for byte in stream.utf8 { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        self.init(seed: seed ^ hash)
    }

    public mutating func next() -> UInt64 {
        let result = ((state.1 &* 5) << 7 | (state.1 &* 5) >> 57) &* 9
        let t = state.1 << 17
        state.2 ^= state.0
        state.3 ^= state.1
        state.1 ^= state.2
        state.0 ^= state.3
        state.2 ^= t
        state.3 = state.3 << 45 | state.3 >> 19
        return result
    }

    /// Uniform in [0, 1) with 53 random bits.
    mutating func nextUniform() -> Double {
        Double(next() >> 11) * 0x1p-53
    }

    /// Standard normal N(0, 1) by the Box–Muller transform.
    mutating func nextNormal() -> Double {
        if let spare = spareNormal {
            spareNormal = nil
            return spare
        }
        var u1 = nextUniform()
        while u1 <= 0 { u1 = nextUniform() }
        let u2 = nextUniform()
        let radius = (-2 * _log(u1)).squareRoot()
        spareNormal = radius * _sin(2 * Double.pi * u2)
        return radius * _cos(2 * Double.pi * u2)
    }

    /// Fills `buffer` with N(0, std²) samples.
    mutating func fillNormal(_ buffer: UnsafeMutableBufferPointer<Float>, standardDeviation: Float) {
        for i in buffer.indices { buffer[i] = Float(nextNormal()) * standardDeviation }
    }
}

@inline(__always) private func _log(_ x: Double) -> Double { Foundation.log(x) }
@inline(__always) private func _sin(_ x: Double) -> Double { Foundation.sin(x) }
@inline(__always) private func _cos(_ x: Double) -> Double { Foundation.cos(x) }
