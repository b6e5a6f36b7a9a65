import Foundation

/// The integer width of a raw `.bin` token file (little-endian, no header).
public enum TokenDataType: String, Sendable, CaseIterable {
    /// 2 bytes per id, ids < 65536 (what nanoGPT's `prepare.py` scripts write for GPT-2's vocabulary).
    case uint16
    /// 4 bytes per id (vocabularies past 65536, e.g. MiniCPM-2.4B's 122,753).
    case uint32

    public var byteCount: Int { self == .uint16 ? 2 : 4 }

    /// The documented default for a `.bin` file when nothing says otherwise: `uint16` when every id
    /// of the vocabulary fits (vocab ≤ 65536), else `uint32`.
    static func defaultFor(vocabularySize: Int) -> TokenDataType {
        vocabularySize <= 1 << 16 ? .uint16 : .uint32
    }
}

/// A token stream for training: every id of a data file in order, optionally with the domain of
/// every token, checked against the model's vocabulary.
///
/// Formats, by extension (details in docs/training-data.md):
///
/// - `.txt` — one document per line, ids separated by spaces or commas (read by `TokenFile`; blank
///   lines skipped). Documents are concatenated with `documentSeparator` (default 2, MiniCPM's
///   `</s>`) after each one, so the model sees where one ends.
/// - `.npy` — a 1-D (or [1, n]) int32/int64 array (read by `TokenFile`), used as stored.
/// - `.bin` — raw little-endian `uint16` or `uint32` ids with no header, used as stored (separators
///   are whatever the pre-tokenisation script wrote, e.g. nanoGPT's EOT between documents). The
///   width is `binaryDataType` if given, else the JSON sidecar's `token_dtype`, else
///   `TokenDataType.defaultFor(vocabularySize:)`; an explicit width that contradicts the sidecar
///   is an error. The file size must be a multiple of the width.
///
/// Domains come from the `DomainLabels` sidecars when the file has them. Every id must be
/// < `vocabularySize`; errors are `TrainingError.invalidData` naming the file and the index.
struct TokenDataset: Sendable, Equatable {
    /// Where the tokens came from (a path, or a description for in-memory data).
    let source: String
    /// The token stream.
    let tokens: [UInt32]
    /// One label per token (`DomainLabels.unlabelled` = none), when the data carries domains.
    let domains: [UInt8]?
    /// Domain names (label i is `domainNames[i]`); empty without domains.
    let domainNames: [String]
    /// Every id is below this.
    let vocabularySize: Int

    var count: Int { tokens.count }

    /// The default `.txt` document separator: 2, `</s>` in MiniCPM's (and LLaMA's) vocabulary.
    static let defaultDocumentSeparator = 2

    /// Tokens already in memory (e.g. `SyntheticCorpus`), checked like a file's.
    init(tokens: [UInt32], domains: DomainLabels? = nil, vocabularySize: Int, source: String = "<memory>") throws(TrainingError) {
        guard vocabularySize >= 1 else { throw .invalidOption(name: "vocab-size", reason: "must be ≥ 1, got \(vocabularySize)") }
        guard !tokens.isEmpty else { throw .invalidData(path: source, reason: "no tokens") }
        if let bad = tokens.firstIndex(where: { Int($0) >= vocabularySize }) {
            throw .invalidData(path: source, reason: "token id \(tokens[bad]) at index \(bad) is outside the vocabulary [0, \(vocabularySize))")
        }
        if let domains {
            guard domains.labels.count == tokens.count else {
                throw .invalidData(path: source, reason: "\(domains.labels.count) domain labels for \(tokens.count) tokens")
            }
            if let bad = domains.labels.firstIndex(where: { Int($0) >= domains.names.count && $0 != DomainLabels.unlabelled }) {
                throw .invalidData(path: source, reason: "domain label \(domains.labels[bad]) at index \(bad) names no domain")
            }
        }
        self.source = source
        self.tokens = tokens
        self.domains = domains?.labels
        self.domainNames = domains?.names ?? []
        self.vocabularySize = vocabularySize
    }

    /// Reads a `.txt`, `.npy` or `.bin` token file and its domain sidecars, if any.
    ///
    /// - Parameters:
    ///   - vocabularySize: the model's `vocab_size`; every id must be below it.
    ///   - binaryDataType: the width of a `.bin` file's ids (`--data-dtype`); `nil` applies the rule above.
    ///   - documentSeparator: the id appended after every `.txt` line.
    init(path: String, vocabularySize: Int, binaryDataType: TokenDataType? = nil,
                documentSeparator: Int = TokenDataset.defaultDocumentSeparator) throws(TrainingError) {
        guard FileManager.default.isReadableFile(atPath: path) else { throw .invalidData(path: path, reason: "no such file or not readable") }
        let extensionName = URL(fileURLWithPath: path).pathExtension.lowercased()
        var tokens: [UInt32]
        var sidecar: DomainLabels?
        switch extensionName {
        case "txt", "npy":
            guard binaryDataType == nil else {
                throw .invalidOption(name: "data-dtype", reason: "applies to raw .bin files; \(path) is .\(extensionName)")
            }
            let sequences: [[Int]]
            do { sequences = try TokenFile.read(path) } catch {
                throw .invalidData(path: path, reason: Self.reasonWithoutPath(error, path: path))
            }
            if extensionName == "txt" {
                guard documentSeparator >= 0, documentSeparator < vocabularySize else {
                    throw .invalidOption(name: "separator", reason: "document separator \(documentSeparator) is outside the vocabulary [0, \(vocabularySize))")
                }
            }
            tokens = []
            tokens.reserveCapacity(sequences.reduce(0) { $0 + $1.count + 1 })
            var index = 0
            for sequence in sequences {
                for id in sequence {
                    guard id >= 0, id < vocabularySize else {
                        throw .invalidData(path: path, reason: "token id \(id) at index \(index) is outside the vocabulary [0, \(vocabularySize))")
                    }
                    tokens.append(UInt32(id))
                    index += 1
                }
                if extensionName == "txt" {
                    tokens.append(UInt32(documentSeparator))
                    index += 1
                }
            }
            sidecar = try DomainLabels.read(forDataAt: path, tokenCount: tokens.count)
        case "bin":
            sidecar = try DomainLabels.read(forDataAt: path)
            let dataType: TokenDataType
            if let explicit = binaryDataType {
                if let recorded = sidecar?.tokenDataType, recorded != explicit {
                    throw .invalidOption(name: "data-dtype", reason: "\(explicit.rawValue) contradicts the sidecar of \(path), which records \(recorded.rawValue)")
                }
                dataType = explicit
            } else {
                dataType = sidecar?.tokenDataType ?? .defaultFor(vocabularySize: vocabularySize)
            }
            tokens = try Self.readBinary(path: path, dataType: dataType, vocabularySize: vocabularySize)
            if let labels = sidecar?.labels, labels.count != tokens.count {
                throw .invalidData(path: DomainLabels.sidecarPaths(forDataAt: path).labels,
                                   reason: "holds \(labels.count) domain labels for \(tokens.count) tokens of \(path) (one uint8 per token expected)")
            }
        default:
            throw .invalidData(path: path, reason: "unknown token file type '.\(extensionName)'; expected .txt, .npy or .bin")
        }
        try self.init(tokens: tokens, domains: sidecar, vocabularySize: vocabularySize, source: path)
    }

    /// Reads raw little-endian ids of `dataType`, checking the size and every id.
    static func readBinary(path: String, dataType: TokenDataType, vocabularySize: Int) throws(TrainingError) -> [UInt32] {
        guard let data = FileManager.default.contents(atPath: path) else { throw .invalidData(path: path, reason: "not readable") }
        let width = dataType.byteCount
        guard data.count % width == 0 else {
            throw .invalidData(path: path, reason: "\(data.count) bytes is not a whole number of \(dataType.rawValue) ids (\(width) bytes each; truncated, or the wrong --data-dtype?)")
        }
        let count = data.count / width
        guard count > 0 else { throw .invalidData(path: path, reason: "no tokens") }
        var tokens = [UInt32](repeating: 0, count: count)
        data.withUnsafeBytes { raw in
            tokens.withUnsafeMutableBufferPointer { out in
                if dataType == .uint16 {
                    for i in 0 ..< count { out[i] = UInt32(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
                } else {
                    for i in 0 ..< count { out[i] = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)) }
                }
            }
        }
        if let bad = tokens.firstIndex(where: { Int($0) >= vocabularySize }) {
            throw .invalidData(path: path, reason: "token id \(tokens[bad]) at index \(bad) is outside the vocabulary [0, \(vocabularySize))\(dataType == .uint16 ? "" : " (a uint16 file read as uint32? try --data-dtype uint16)")")
        }
        return tokens
    }

    /// Writes `tokens` as a raw little-endian `.bin` of `dataType`, atomically. Every id must fit.
    static func writeBinary(_ tokens: [UInt32], dataType: TokenDataType, to path: String) throws {
        if dataType == .uint16, let bad = tokens.firstIndex(where: { $0 > UInt32(UInt16.max) }) {
            throw TrainingError.invalidData(path: path, reason: "token id \(tokens[bad]) at index \(bad) does not fit in uint16")
        }
        let width = dataType.byteCount
        var bytes = [UInt8](repeating: 0, count: tokens.count * width)
        bytes.withUnsafeMutableBytes { raw in
            for (i, token) in tokens.enumerated() {
                if width == 2 { raw.storeBytes(of: UInt16(token).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
                else { raw.storeBytes(of: token.littleEndian, toByteOffset: 4 * i, as: UInt32.self) }
            }
        }
        let data = Data(bytes)
        try AtomicFileWriter.write(data, to: path)
    }

    /// Token counts per domain (index = label), with tokens of no domain left out.
    var domainTokenCounts: [Int] {
        var counts = [Int](repeating: 0, count: domainNames.count)
        for label in domains ?? [] where Int(label) < counts.count { counts[Int(label)] += 1 }
        return counts
    }

    private static func reasonWithoutPath(_ error: any Error, path: String) -> String {
        let message = (error as? LocalizedError)?.errorDescription ?? "\(error)"
        return message.hasPrefix(path + ": ") ? String(message.dropFirst(path.count + 2)) : message
    }
}
