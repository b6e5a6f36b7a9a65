/// Decoders turn token strings back into text, each acting on the whole list of tokens in turn
/// (`tokenizers`' `decode_chain`); the final list is concatenated.
extension DecoderDefinition {
    /// How many times longer the chain can make a token at worst: a Replace multiplies it by at
    /// most content/pattern bytes, Metaspace by 1 ("▁" is 3 bytes, " " 1), the others keep or
    /// shrink it. Checked when the tokenizer is loaded, so a chain that doubles text 40 times is
    /// refused instead of exhausting memory on decode.
    var worstCaseGrowth: Double {
        switch self {
        case .sequence(let decoders): return decoders.reduce(1) { $0 * $1.worstCaseGrowth }
        case .replace(let pattern, let content): return max(1, Double(content.utf8.count) / Double(max(1, pattern.utf8.count)))
        case .byteFallback, .fuse, .strip, .metaspace: return 1
        }
    }

    func decodeChain(_ tokens: [String]) -> [String] {
        switch self {
        case .sequence(let decoders):
            var tokens = tokens
            for decoder in decoders { tokens = decoder.decodeChain(tokens) }
            return tokens
        case .replace(let pattern, let content):
            let (pattern, content) = (Array(pattern.utf8), Array(content.utf8))
            return tokens.map { token in
                let bytes = Array(token.utf8)
                return String(decoding: UTF8Bytes.replacing(pattern, with: content, in: bytes) ?? bytes, as: UTF8.self)
            }
        case .byteFallback:
            return Self.byteFallback(tokens)
        case .fuse:
            return [tokens.joined()]
        case .strip(let content, let start, let stop):
            return tokens.map { token in
                let scalars = Array(token.unicodeScalars)
                var startCut = 0
                for index in 0 ..< min(start, scalars.count) {
                    guard scalars[index] == content else { break }
                    startCut = index + 1
                }
                var stopCut = scalars.count
                for offset in 0 ..< min(stop, scalars.count - startCut) {
                    let index = scalars.count - offset - 1
                    guard scalars[index] == content else { break }
                    stopCut = index
                }
                var result = String.UnicodeScalarView()
                result.append(contentsOf: scalars[startCut ..< stopCut])
                return String(result)
            }
        case .metaspace(let replacement, let scheme):
            return tokens.enumerated().map { index, token in
                var result = String.UnicodeScalarView()
                for scalar in token.unicodeScalars {
                    if scalar != replacement { result.append(scalar) }
                    else if !(index == 0 && scheme != .never) { result.append(" ") }
                }
                return String(result)
            }
        }
    }

    /// Runs of `<0xNN>` tokens become the string their bytes spell, or one U+FFFD per byte when
    /// the run is not valid UTF-8 (the whole run, as tokenizers does); other tokens pass through.
    static func byteFallback(_ tokens: [String]) -> [String] {
        var result: [String] = []
        var pendingBytes: [UInt8] = []
        func flush() {
            guard !pendingBytes.isEmpty else { return }
            if let text = String(validating: pendingBytes, as: UTF8.self) {
                result.append(text)
            } else {
                result.append(contentsOf: repeatElement("\u{FFFD}", count: pendingBytes.count))
            }
            pendingBytes.removeAll()
        }
        for token in tokens {
            if let byte = byteValue(token) {
                pendingBytes.append(byte)
            } else {
                flush()
                result.append(token)
            }
        }
        flush()
        return result
    }

    /// The byte of a `<0xNN>` token: six bytes, `<0x` + two characters Rust's
    /// `u8::from_str_radix(_, 16)` accepts (hex digits either case, or `+` and one digit) + `>`.
    static func byteValue(_ token: String) -> UInt8? {
        let bytes = Array(token.utf8)
        guard bytes.count == 6, bytes[0] == UInt8(ascii: "<"), bytes[1] == UInt8(ascii: "0"), bytes[2] == UInt8(ascii: "x"),
              bytes[5] == UInt8(ascii: ">") else { return nil }
        func digit(_ byte: UInt8) -> UInt8? {
            switch byte {
            case UInt8(ascii: "0") ... UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
            case UInt8(ascii: "a") ... UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A") ... UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        if bytes[3] == UInt8(ascii: "+") { return digit(bytes[4]) }
        guard let high = digit(bytes[3]), let low = digit(bytes[4]) else { return nil }
        return high << 4 | low
    }
}
