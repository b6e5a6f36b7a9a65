import Foundation
import Testing
@testable import MoEKit

/// bf16 and f16 ⇄ f32: round to nearest with ties to even, ±0/±Inf kept, NaN stays NaN with its
/// sign, overflow to Inf, f16 subnormals exact; checked on edge values, against Swift's own
/// `Float16` (an independent oracle) and, for bf16, against a reference written from the definition.
@Suite struct HalfPrecisionTests {
    static func f16(_ value: Float) -> UInt16 { HalfPrecision.float16Bits(from: value) }
    static func bf16(_ value: Float) -> UInt16 { HalfPrecision.bfloat16Bits(from: value) }

    // MARK: bfloat16

    /// Zeros, infinities, the largest finite value and overflow by rounding.
    @Test func bfloat16EdgeValues() {
        #expect(Self.bf16(0) == 0x0000)
        #expect(Self.bf16(-0.0) == 0x8000)
        #expect(Self.bf16(.infinity) == 0x7F80)
        #expect(Self.bf16(-.infinity) == 0xFF80)
        #expect(Self.bf16(1) == 0x3F80)
        #expect(Self.bf16(-2) == 0xC000)
        // Largest finite bf16 = (2 − 2⁻⁷)·2¹²⁷ = 0x7F7F.
        #expect(HalfPrecision.float(fromBFloat16: 0x7F7F) == Float(bitPattern: 0x7F7F_0000))
        #expect(Self.bf16(Float(bitPattern: 0x7F7F_0000)) == 0x7F7F)
        #expect(Self.bf16(Float(bitPattern: 0x7F7F_7FFF)) == 0x7F7F)  // just below the halfway point
        #expect(Self.bf16(Float(bitPattern: 0x7F7F_8000)) == 0x7F80)  // halfway, odd below: to Inf
        #expect(Self.bf16(.greatestFiniteMagnitude) == 0x7F80)
        #expect(Self.bf16(-.greatestFiniteMagnitude) == 0xFF80)
        // f32 subnormals round like any other value.
        #expect(Self.bf16(Float(bitPattern: 0x0000_0001)) == 0x0000)
        #expect(Self.bf16(Float(bitPattern: 0x0000_8000)) == 0x0000)  // tie, even below
        #expect(Self.bf16(Float(bitPattern: 0x0001_8000)) == 0x0002)  // tie, odd below: up
        #expect(HalfPrecision.float(fromBFloat16: 0x0001) == Float(bitPattern: 0x0001_0000))
        #expect(HalfPrecision.float(fromBFloat16: 0x8000).sign == .minus)
    }

    /// Halfway cases round to the even neighbour, in both directions.
    @Test func bfloat16TiesRoundToEven() {
        #expect(Self.bf16(Float(bitPattern: 0x3F80_8000)) == 0x3F80)  // 1 + 2⁻⁸: between 0x3F80 (even) and 0x3F81
        #expect(Self.bf16(Float(bitPattern: 0x3F81_8000)) == 0x3F82)  // between 0x3F81 and 0x3F82 (even)
        #expect(Self.bf16(Float(bitPattern: 0x3F80_8001)) == 0x3F81)  // just above halfway
        #expect(Self.bf16(Float(bitPattern: 0x3F81_7FFF)) == 0x3F81)  // just below halfway
        #expect(Self.bf16(Float(bitPattern: 0xBF81_8000)) == 0xBF82)  // negative mirror
    }

    /// NaN stays NaN, keeps its sign, and a payload only in the low 16 bits does not become Inf.
    @Test func bfloat16NaNStaysNaNWithItsSign() {
        for pattern: UInt32 in [0x7FC0_0000, 0x7F80_0001, 0x7F80_FFFF, 0x7FFF_FFFF, 0xFFC0_0000, 0xFF80_0001] {
            let bits = Self.bf16(Float(bitPattern: pattern))
            let back = HalfPrecision.float(fromBFloat16: bits)
            #expect(back.isNaN, "pattern \(String(pattern, radix: 16))")
            #expect((bits & 0x8000 != 0) == (pattern & 0x8000_0000 != 0))
        }
    }

    /// The nearest bf16 by the definition: the two candidates around x (truncation and the next
    /// value up in magnitude, 2¹²⁸ standing for Inf), compared by exact distance in Double.
    static func referenceBFloat16(_ x: Float) -> UInt16 {
        let truncated = UInt16(x.bitPattern >> 16)
        let magnitude = truncated & 0x7FFF
        if magnitude >= 0x7F80 { return truncated }  // Inf (NaN is not swept)
        func value(_ m: UInt16) -> Double { m == 0x7F80 ? 0x1p128 : Double(Float(bitPattern: UInt32(m) << 16)) }
        let below = value(magnitude), above = value(magnitude + 1)
        let target = Double(abs(x))
        let chosen: UInt16
        if target - below < above - target { chosen = magnitude }
        else if target - below > above - target { chosen = magnitude + 1 }
        else { chosen = magnitude & 1 == 0 ? magnitude : magnitude + 1 }
        return chosen | (truncated & 0x8000)
    }

    /// 200 000 random f32 bit patterns (every exponent) and values in the usual weight range agree with the reference.
    @Test func bfloat16MatchesTheReferenceOnRandomValues() {
        var random = SeededRandom(seed: 42)
        var mismatches: [UInt32] = []
        for i in 0 ..< 200_000 {
            let pattern = i % 2 == 0 ? UInt32(truncatingIfNeeded: random.next()) : Float(random.nextNormal() * 0.05).bitPattern
            let x = Float(bitPattern: pattern)
            if x.isNaN { continue }
            if Self.bf16(x) != Self.referenceBFloat16(x) { mismatches.append(pattern) }
        }
        #expect(mismatches.isEmpty, "first mismatches: \(mismatches.prefix(5).map { String($0, radix: 16) })")
    }

    /// Every bf16 bit pattern survives bf16 → f32 → bf16 (NaNs as NaN with their sign).
    @Test func bfloat16AllBitPatternsRoundTrip() {
        var failures = 0
        for pattern in 0 ... UInt16.max {
            let value = HalfPrecision.float(fromBFloat16: pattern)
            #expect(value.bitPattern == UInt32(pattern) << 16)
            let back = Self.bf16(value)
            if value.isNaN {
                if !HalfPrecision.float(fromBFloat16: back).isNaN || back & 0x8000 != pattern & 0x8000 { failures += 1 }
            } else if back != pattern {
                failures += 1
            }
        }
        #expect(failures == 0)
    }

    // MARK: IEEE binary16

    /// Zeros, infinities, the largest finite value and overflow.
    @Test func float16EdgeValues() {
        #expect(Self.f16(0) == 0x0000)
        #expect(Self.f16(-0.0) == 0x8000)
        #expect(Self.f16(.infinity) == 0x7C00)
        #expect(Self.f16(-.infinity) == 0xFC00)
        #expect(Self.f16(1) == 0x3C00)
        #expect(Self.f16(-2) == 0xC000)
        #expect(Self.f16(65504) == 0x7BFF)  // largest finite
        #expect(HalfPrecision.float(fromFloat16: 0x7BFF) == 65504)
        #expect(Self.f16(65519.996) == 0x7BFF)  // below the halfway point 65520
        #expect(Self.f16(65520) == 0x7C00)  // halfway, odd below: to Inf
        #expect(Self.f16(1e5) == 0x7C00)
        #expect(Self.f16(-1e5) == 0xFC00)
        #expect(Self.f16(.greatestFiniteMagnitude) == 0x7C00)
        #expect(HalfPrecision.float(fromFloat16: 0x7C00) == .infinity)
        #expect(HalfPrecision.float(fromFloat16: 0xFC00) == -.infinity)
        #expect(HalfPrecision.float(fromFloat16: 0x8000).sign == .minus)
    }

    /// Subnormals: 2⁻²⁴ is the smallest, 1023·2⁻²⁴ the largest; below half the smallest is 0; ties to even.
    @Test func float16Subnormals() {
        #expect(Self.f16(0x1p-24) == 0x0001)
        #expect(HalfPrecision.float(fromFloat16: 0x0001) == 0x1p-24)
        #expect(Self.f16(-0x1p-24) == 0x8001)
        #expect(Self.f16(1023 * 0x1p-24) == 0x03FF)
        #expect(HalfPrecision.float(fromFloat16: 0x03FF) == 1023 * 0x1p-24)
        #expect(Self.f16(0x1p-14) == 0x0400)  // smallest normal
        #expect(Self.f16(1023.5 * 0x1p-24) == 0x0400)  // tie, odd below: carries into the smallest normal
        #expect(Self.f16(0x1p-25) == 0x0000)  // exactly half the smallest: tie, even (0)
        #expect(Self.f16(-0x1p-25) == 0x8000)
        #expect(Self.f16(Float(bitPattern: Float(0x1p-25).bitPattern + 1)) == 0x0001)  // just above half
        #expect(Self.f16(0x1p-26) == 0x0000)
        #expect(Self.f16(0x1.fffffep-26) == 0x0000)
        #expect(Self.f16(Float(bitPattern: 1)) == 0x0000)  // smallest f32 subnormal
        #expect(Self.f16(1.5 * 0x1p-24) == 0x0002)  // tie between 1 and 2: to 2
        #expect(Self.f16(2.5 * 0x1p-24) == 0x0002)  // tie between 2 and 3: to 2
        #expect(Self.f16(2.5000002 * 0x1p-24) == 0x0003)
    }

    /// Halfway cases between normal f16 values round to even, in both directions.
    @Test func float16TiesRoundToEven() {
        #expect(Self.f16(1 + 0x1p-11) == 0x3C00)  // between 0x3C00 (even) and 0x3C01
        #expect(Self.f16(1 + 3 * 0x1p-11) == 0x3C02)  // between 0x3C01 and 0x3C02 (even)
        #expect(Self.f16(1 + 0x1p-11 + 0x1p-20) == 0x3C01)
        #expect(Self.f16(-(1 + 3 * 0x1p-11)) == 0xBC02)
        #expect(Self.f16(1 - 0x1p-12) == 0x3C00)  // tie between 0x3BFF (odd) and 0x3C00: carries into the exponent
        #expect(Self.f16(1 - 0x1p-11) == 0x3BFF)  // exactly representable
    }

    /// NaN stays NaN with its sign, including NaNs whose payload lies below f16's mantissa bits.
    @Test func float16NaNStaysNaNWithItsSign() {
        for pattern: UInt32 in [0x7FC0_0000, 0x7F80_0001, 0x7F80_1FFF, 0x7FFF_FFFF, 0xFFC0_0000, 0xFF80_0001] {
            let bits = Self.f16(Float(bitPattern: pattern))
            #expect(HalfPrecision.float(fromFloat16: bits).isNaN, "pattern \(String(pattern, radix: 16))")
            #expect((bits & 0x8000 != 0) == (pattern & 0x8000_0000 != 0))
        }
    }

    /// 300 000 random values agree bit for bit with Swift's `Float16(x)`: random f32 bit patterns,
    /// values spread over f16's exponent range (subnormals included) and weight-sized values.
    @Test func float16MatchesSwiftFloat16OnRandomValues() {
        var random = SeededRandom(seed: 7)
        var mismatches: [UInt32] = []
        for i in 0 ..< 300_000 {
            let x: Float
            switch i % 3 {
            case 0: x = Float(bitPattern: UInt32(truncatingIfNeeded: random.next()))
            case 1:
                let exponent = Int(random.next() % 48) - 30  // 2⁻³⁰ … 2¹⁷
                x = Float(sign: random.next() & 1 == 0 ? .plus : .minus, exponent: exponent, significand: 1 + Float(random.nextUniform()))
            default: x = Float(random.nextNormal() * 0.05)
            }
            let ours = Self.f16(x)
            let swift = Float16(x)
            if x.isNaN {
                if !HalfPrecision.float(fromFloat16: ours).isNaN { mismatches.append(x.bitPattern) }
            } else if ours != swift.bitPattern {
                mismatches.append(x.bitPattern)
            }
        }
        #expect(mismatches.isEmpty, "first mismatches: \(mismatches.prefix(5).map { String($0, radix: 16) })")
    }

    /// Every f16 bit pattern decodes as Swift's `Float16` does and survives f16 → f32 → f16.
    @Test func float16AllBitPatternsRoundTrip() {
        var decodeFailures = 0, roundTripFailures = 0
        for pattern in 0 ... UInt16.max {
            let value = HalfPrecision.float(fromFloat16: pattern)
            let oracle = Float(Float16(bitPattern: pattern))
            if value.isNaN != oracle.isNaN || (!value.isNaN && value.bitPattern != oracle.bitPattern) { decodeFailures += 1 }
            let back = Self.f16(value)
            if value.isNaN {
                if !HalfPrecision.float(fromFloat16: back).isNaN || back & 0x8000 != pattern & 0x8000 { roundTripFailures += 1 }
            } else if back != pattern {
                roundTripFailures += 1
            }
        }
        #expect(decodeFailures == 0)
        #expect(roundTripFailures == 0)
    }

    /// The buffer converters write little-endian half values and read them back.
    @Test func bufferEncodeAndDecodeAgreeWithScalarConversions() {
        let values: [Float] = [0, -1.5, 65504, 1e-7, .infinity, 3.14159]
        for format in [HalfFormat.float16, .bfloat16] {
            var raw = [UInt8](repeating: 0, count: 2 * values.count)
            raw.withUnsafeMutableBytes { out in
                values.withUnsafeBufferPointer { HalfPrecision.encode(format, from: $0.baseAddress!, count: values.count, into: out.baseAddress!) }
            }
            let scalar = values.map { format == .float16 ? Self.f16($0) : Self.bf16($0) }
            #expect(raw == littleEndianBytes(scalar))
            var decoded = [Float](repeating: 0, count: values.count)
            raw.withUnsafeBytes { source in
                decoded.withUnsafeMutableBufferPointer { HalfPrecision.decode(format, from: source.baseAddress!, count: values.count, into: $0.baseAddress!) }
            }
            #expect(decoded == scalar.map { format == .float16 ? HalfPrecision.float(fromFloat16: $0) : HalfPrecision.float(fromBFloat16: $0) })
        }
    }
}
