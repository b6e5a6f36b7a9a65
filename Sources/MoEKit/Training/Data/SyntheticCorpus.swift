import Foundation

/// A synthetic multi-domain corpus over a byte-level vocabulary, with the domain of every token:
/// data on which expert specialisation by domain can be measured.
///
/// **Vocabulary** (259 ids, so MoEKit's tiny preset with vocab 1024 takes it): SentencePiece's
/// byte-fallback layout — 0 `<unk>`, 1 `<s>`, 2 `</s>` (MiniCPM's bos/eos ids), and byte b as id
/// b + 3. Documents are ASCII text; each is followed by `</s>`, which carries the domain of the
/// document it ends.
///
/// **Domains** (each document picks one uniformly; examples are the text before the `</s>`):
///
/// | label | name         | documents                                                                 |
/// |-------|--------------|---------------------------------------------------------------------------|
/// | 0     | `arithmetic` | 1–4 equations on numbers 0–99 (× by 0–9), results correct: `12+35=47 81-9=72 6*7=42` |
/// | 1     | `brackets`   | one balanced Dyck word of 6–18 pairs over `()[]{}<>`: `([]{<>})[]()`        |
/// | 2     | `copy`       | 4–16 random capitals, `:`, the same again: `KQXB:KQXB`                       |
/// | 3     | `reverse`    | 4–16 random lower-case letters, `|`, reversed: `abcd|dcba`                    |
/// | 4     | `grammar`    | one sentence of a small English grammar: `the big dog sees a cat .`          |
///
/// The ranges make the mean document 20–25 tokens in every domain, so each domain holds about a
/// fifth of the tokens (`moekit corpus` prints the shares).
///
/// The character sets barely overlap (digits and `+-*=`; brackets; capitals and `:`; letters and
/// `|`; words and spaces), so each domain is clearly different at the token level, while the
/// second half of a copy/reverse document and every equation's result are predictable only by
/// learning the task. Generation is deterministic for a seed (`SeededRandom`, the same on every
/// platform); `generate(tokens:seed:)` stops at exactly the requested count, cutting the last
/// document.
public struct SyntheticCorpus: Sendable, Equatable {
    public enum Domain: Int, CaseIterable, Sendable {
        case arithmetic, brackets, copy, reverse, grammar
        public var name: String { String(describing: self) }
    }

    static let unknownToken: UInt32 = 0
    static let beginToken: UInt32 = 1
    static let endToken: UInt32 = 2
    /// Byte b is token b + `byteOffset`.
    static let byteOffset: UInt32 = 3
    /// Ids in use: 3 specials + 256 bytes.
    public static let vocabularySize = 259
    /// `.bin` files of the corpus are uint16 (every id < 259).
    static let tokenDataType = TokenDataType.uint16
    public static var domainNames: [String] { Domain.allCases.map(\.name) }

    /// The token stream.
    public var tokens: [UInt32]
    /// The domain (`Domain.rawValue`) of every token.
    var domains: [UInt8]

    public init(tokens: [UInt32], domains: [UInt8]) {
        precondition(tokens.count == domains.count, "one domain per token")
        self.tokens = tokens
        self.domains = domains
    }

    /// Exactly `count` tokens (≥ 1) of documents drawn for `seed`.
    public static func generate(tokens count: Int, seed: UInt64) -> SyntheticCorpus {
        precondition(count >= 1, "a corpus needs at least one token")
        var random = SeededRandom(seed: seed, stream: "synthetic-corpus")
        var tokens: [UInt32] = []
        var domains: [UInt8] = []
        tokens.reserveCapacity(count + 128)
        domains.reserveCapacity(count + 128)
        while tokens.count < count {
            let domain = Domain.allCases[random.uniformIndex(below: Domain.allCases.count)]
            let text = document(domain, random: &random)
            for byte in text.utf8 { tokens.append(UInt32(byte) + byteOffset) }
            tokens.append(endToken)
            domains.append(contentsOf: repeatElement(UInt8(domain.rawValue), count: text.utf8.count + 1))
        }
        tokens.removeLast(tokens.count - count)
        domains.removeLast(domains.count - count)
        return SyntheticCorpus(tokens: tokens, domains: domains)
    }

    /// One document of `domain` as text (without the `</s>`).
    public static func document(_ domain: Domain, random: inout SeededRandom) -> String {
        func pick<T>(_ options: [T]) -> T { options[random.uniformIndex(below: options.count)] }
        func integer(_ range: ClosedRange<Int>) -> Int { range.lowerBound + random.uniformIndex(below: range.count) }
        switch domain {
        case .arithmetic:
            return (0 ..< integer(1 ... 4)).map { _ in
                var a = integer(0 ... 99), b = integer(0 ... 99)
                switch integer(0 ... 2) {
                case 0: return "\(a)+\(b)=\(a + b)"
                case 1:
                    if a < b { swap(&a, &b) }
                    return "\(a)-\(b)=\(a - b)"
                default:
                    b = integer(0 ... 9)
                    return "\(a)*\(b)=\(a * b)"
                }
            }.joined(separator: " ")
        case .brackets:
            let pairs: [(Character, Character)] = [("(", ")"), ("[", "]"), ("{", "}"), ("<", ">")]
            let total = integer(6 ... 18)
            var opened = 0
            var stack: [Character] = []
            var text = ""
            while opened < total || !stack.isEmpty {
                if stack.isEmpty || (opened < total && integer(0 ... 1) == 0) {
                    let pair = pick(pairs)
                    text.append(pair.0)
                    stack.append(pair.1)
                    opened += 1
                } else {
                    text.append(stack.removeLast())
                }
            }
            return text
        case .copy:
            let word = String((0 ..< integer(4 ... 16)).map { _ in Character(UnicodeScalar(UInt8(65 + integer(0 ... 25)))) })
            return word + ":" + word
        case .reverse:
            let word = String((0 ..< integer(4 ... 16)).map { _ in Character(UnicodeScalar(UInt8(97 + integer(0 ... 25)))) })
            return word + "|" + String(word.reversed())
        case .grammar:
            let determiners = ["the", "a", "every", "some"]
            let adjectives = ["big", "small", "red", "old", "happy", "quiet"]
            let nouns = ["cat", "dog", "bird", "child", "farmer", "river", "teacher"]
            let intransitive = ["runs", "sleeps", "sings", "waits", "falls"]
            let transitive = ["sees", "likes", "chases", "finds", "follows"]
            func nounPhrase() -> String {
                let adjective = integer(0 ... 2) == 0 ? pick(adjectives) + " " : ""
                return pick(determiners) + " " + adjective + pick(nouns)
            }
            return integer(0 ... 1) == 0
                ? "\(nounPhrase()) \(pick(intransitive)) ."
                : "\(nounPhrase()) \(pick(transitive)) \(nounPhrase()) ."
        }
    }

    /// Token counts per domain, indexed by `Domain.rawValue`.
    public var domainTokenCounts: [Int] {
        var counts = [Int](repeating: 0, count: Domain.allCases.count)
        for label in domains { counts[Int(label)] += 1 }
        return counts
    }

    /// The text of `tokens`: bytes as characters, `</s>` as a newline, other specials as `<unk>`/`<s>`.
    public static func text(of tokens: some Sequence<UInt32>) -> String {
        var bytes: [UInt8] = []
        for token in tokens {
            switch token {
            case endToken: bytes.append(UInt8(ascii: "\n"))
            case unknownToken: bytes.append(contentsOf: Array("<unk>".utf8))
            case beginToken: bytes.append(contentsOf: Array("<s>".utf8))
            default: bytes.append(UInt8(truncatingIfNeeded: token - byteOffset))
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The domain labels of the corpus (for `TokenDataset` or the sidecars).
    var domainLabels: DomainLabels {
        DomainLabels(names: Self.domainNames, labels: domains, tokenDataType: Self.tokenDataType)
    }

    /// The corpus as a training stream for a model with `vocabularySize` ids (≥ 259).
    func dataset(vocabularySize: Int, source: String = "<synthetic corpus>") throws(TrainingError) -> TokenDataset {
        try TokenDataset(tokens: tokens, domains: domainLabels, vocabularySize: vocabularySize, source: source)
    }

    /// Writes `path` (uint16 `.bin`) and its domain sidecars `NAME.domains.bin` / `.json`, each
    /// atomically; the sidecars first, so a `.bin` that exists has its labels.
    public func write(to path: String) throws {
        guard URL(fileURLWithPath: path).pathExtension.lowercased() == "bin" else {
            throw TrainingError.invalidData(path: path, reason: "a synthetic corpus is written as a .bin file")
        }
        try domainLabels.write(forDataAt: path)
        try TokenDataset.writeBinary(tokens, dataType: Self.tokenDataType, to: path)
    }
}
