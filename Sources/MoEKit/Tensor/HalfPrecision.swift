/// bf16 and f16 ⇄ f32 conversion on bit patterns.
///
/// f32 → half rounds to nearest, ties to even; ±Inf stays ±Inf; NaN stays NaN (made quiet, the sign
/// and the top payload bits kept); values beyond the half format's range become ±Inf; f16
/// subnormals are produced and read exactly. Half → f32 is exact.
enum HalfPrecision {
    // MARK: bfloat16 (1 sign, 8 exponent, 7 mantissa bits: the top half of an f32)

    @inlinable
    static func bfloat16Bits(from value: Float) -> UInt16 {
        let bits = value.bitPattern
        if value.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
        let roundingBias: UInt32 = 0x7FFF + ((bits >> 16) & 1)
        return UInt16(truncatingIfNeeded: (bits &+ roundingBias) >> 16)
    }

    @inlinable
    static func float(fromBFloat16 bits: UInt16) -> Float {
        Float(bitPattern: UInt32(bits) << 16)
    }

    // MARK: IEEE binary16 (1 sign, 5 exponent, 10 mantissa bits)

    @inlinable
    static func float16Bits(from value: Float) -> UInt16 {
        let bits = value.bitPattern
        let sign = UInt16(truncatingIfNeeded: (bits >> 16) & 0x8000)
        let exponent = Int((bits >> 23) & 0xFF)
        let mantissa = bits & 0x7F_FFFF
        if exponent == 0xFF {  // Inf or NaN
            if mantissa == 0 { return sign | 0x7C00 }
            return sign | 0x7E00 | UInt16(truncatingIfNeeded: mantissa >> 13)
        }
        let halfExponent = exponent - 127 + 15
        if halfExponent >= 31 { return sign | 0x7C00 }  // overflow
        if halfExponent <= 0 {  // f16 subnormal or zero: value = m · 2^-24
            let shift = 14 - halfExponent
            if shift > 24 { return sign }
            let significand = mantissa | 0x80_0000
            var result = significand >> UInt32(shift)
            let remainder = significand & ((1 << UInt32(shift)) - 1)
            let halfway: UInt32 = 1 << UInt32(shift - 1)
            if remainder > halfway || (remainder == halfway && result & 1 == 1) { result += 1 }
            return sign | UInt16(truncatingIfNeeded: result)  // may carry into the smallest normal: correct
        }
        var result = UInt32(halfExponent) << 10 | (mantissa >> 13)
        let remainder = mantissa & 0x1FFF
        if remainder > 0x1000 || (remainder == 0x1000 && result & 1 == 1) { result += 1 }  // may carry to Inf: correct
        return sign | UInt16(truncatingIfNeeded: result)
    }

    @inlinable
    static func float(fromFloat16 bits: UInt16) -> Float {
        let sign: UInt32 = UInt32(bits & 0x8000) << 16
        let exponent = UInt32((bits >> 10) & 0x1F)
        let mantissa = UInt32(bits & 0x3FF)
        if exponent == 0 {
            let magnitude = Float(mantissa) * 0x1p-24  // exact: subnormal or zero
            return Float(bitPattern: magnitude.bitPattern | sign)
        }
        if exponent == 31 { return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13)) }
        return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
    }

    // MARK: Buffers

    /// Converts `count` little-endian half values at `source` to f32.
    static func decode(_ format: HalfFormat, from source: UnsafeRawPointer, count: Int, into destination: UnsafeMutablePointer<Float>) {
        switch format {
        case .bfloat16:
            for i in 0 ..< count { destination[i] = float(fromBFloat16: UInt16(littleEndian: source.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
        case .float16:
            for i in 0 ..< count { destination[i] = float(fromFloat16: UInt16(littleEndian: source.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
        }
    }

    /// Converts `count` f32 values to little-endian half values at `destination`.
    static func encode(_ format: HalfFormat, from source: UnsafePointer<Float>, count: Int, into destination: UnsafeMutableRawPointer) {
        switch format {
        case .bfloat16:
            for i in 0 ..< count { destination.storeBytes(of: bfloat16Bits(from: source[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
        case .float16:
            for i in 0 ..< count { destination.storeBytes(of: float16Bits(from: source[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
        }
    }
}

/// The two 16-bit float storage formats MoEKit reads and writes.
enum HalfFormat: Sendable {
    case bfloat16
    case float16
}
