import Foundation

/// The domain of every token of a token stream, stored beside a data file as two sidecars.
///
/// For a data file `DIR/NAME.EXT` (`corpus.bin`, `web.npy`, `docs.txt`):
///
/// - `DIR/NAME.domains.bin` — one `uint8` per token of the stream, the index of its domain in the
///   name list, or 255 (`unlabelled`) for a token of no domain;
/// - `DIR/NAME.domains.json` — `{"format": "moekit-domains", "version": 1,
///   "domains": ["arithmetic", …], "token_dtype": "uint16"}`; `domains` (1 to 255 distinct,
///   non-empty names) is required, `token_dtype` (`uint16`/`uint32`, the width of a `.bin` stream's
///   ids) is optional and lets a reader pick the width without being told.
///
/// "The stream" is the token sequence `TokenDataset` reads: a `.bin`/`.npy` file's ids as stored;
/// for `.txt`, every line's ids followed by the separator token. Both sidecars exist or neither.
public struct DomainLabels: Sendable, Equatable {
    /// The label of a token that belongs to no domain.
    static let unlabelled: UInt8 = 255
    public static let format = "moekit-domains"
    public static let version = 1

    /// Domain names; label i means `names[i]`.
    public var names: [String]
    /// One label per token.
    public var labels: [UInt8]
    /// The token width recorded in the JSON sidecar, when there is one.
    var tokenDataType: TokenDataType?

    public init(names: [String], labels: [UInt8], tokenDataType: TokenDataType? = nil) {
        self.names = names
        self.labels = labels
        self.tokenDataType = tokenDataType
    }

    /// The two sidecar paths of a data file: `NAME.domains.bin` and `NAME.domains.json` beside it.
    public static func sidecarPaths(forDataAt path: String) -> (labels: String, names: String) {
        let base = (path as NSString).deletingPathExtension + ".domains"
        return (base + ".bin", base + ".json")
    }

    /// The sidecars of the data file at `path`, or `nil` when it has none. Checks both files
    /// exist, the JSON, and (when `tokenCount` is given) one label per token, each < the number of
    /// names or 255. Errors are `TrainingError.invalidData` naming the sidecar file.
    public static func read(forDataAt path: String, tokenCount: Int? = nil) throws(TrainingError) -> DomainLabels? {
        let (labelsPath, namesPath) = sidecarPaths(forDataAt: path)
        let fileManager = FileManager.default
        let hasLabels = fileManager.fileExists(atPath: labelsPath), hasNames = fileManager.fileExists(atPath: namesPath)
        guard hasLabels || hasNames else { return nil }
        guard hasLabels else { throw .invalidData(path: labelsPath, reason: "missing, but \(namesPath) exists (domain sidecars come in pairs)") }
        guard hasNames else { throw .invalidData(path: namesPath, reason: "missing, but \(labelsPath) exists (domain sidecars come in pairs)") }

        guard let jsonData = fileManager.contents(atPath: namesPath) else { throw .invalidData(path: namesPath, reason: "not readable") }
        guard let json = JSONValue.parse(jsonData), case .object = json else { throw .invalidData(path: namesPath, reason: "not a JSON object") }
        let namesFile: NamesFile
        do { namesFile = try JSONValueDecoder.decode(NamesFile.self, from: json) } catch DecodingError.dataCorrupted(let context) {
            throw .invalidData(path: namesPath, reason: context.debugDescription)
        } catch {
            throw .invalidData(path: namesPath, reason: "\(error)")
        }
        let names = namesFile.domains

        guard let labelData = fileManager.contents(atPath: labelsPath) else { throw .invalidData(path: labelsPath, reason: "not readable") }
        let labels = [UInt8](labelData)
        if let tokenCount, labels.count != tokenCount {
            throw .invalidData(path: labelsPath, reason: "holds \(labels.count) domain labels for \(tokenCount) tokens of \(path) (one uint8 per token expected)")
        }
        if let bad = labels.firstIndex(where: { Int($0) >= names.count && $0 != unlabelled }) {
            throw .invalidData(path: labelsPath, reason: "label \(labels[bad]) at index \(bad) names no domain (\(names.count) listed in \(namesPath); 255 means none)")
        }
        return DomainLabels(names: names, labels: labels, tokenDataType: namesFile.tokenDataType)
    }

    /// Writes both sidecars of the data file at `path`, each atomically (labels first, then the
    /// JSON, so a reader that sees the JSON finds its labels).
    public func write(forDataAt path: String) throws {
        let (labelsPath, namesPath) = Self.sidecarPaths(forDataAt: path)
        try AtomicFileWriter.write(Data(labels), to: labelsPath)
        var json = try JSONValueEncoder.encode(NamesFile(domains: names, tokenDataType: tokenDataType)).serialized(pretty: true)
        json.append(UInt8(ascii: "\n"))
        try AtomicFileWriter.write(json, to: namesPath)
    }
}

extension DomainLabels {
    /// `NAME.domains.json`: `format` and `version` are optional but checked when present, `domains`
    /// is required, `token_dtype` optional.
    struct NamesFile: Codable {
        var domains: [String]
        var tokenDataType: TokenDataType?

        enum CodingKeys: String, CodingKey {
            case format, version, domains
            case tokenDataType = "token_dtype"
        }

        init(domains: [String], tokenDataType: TokenDataType?) {
            self.domains = domains
            self.tokenDataType = tokenDataType
        }

        /// A bad field is a `DecodingError.dataCorrupted` whose description is the whole reason.
        init(from decoder: Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            func bad(_ reason: String) -> DecodingError { .dataCorrupted(.init(codingPath: [], debugDescription: reason)) }
            if container.contains(.format) {
                guard (try? container.decode(String.self, forKey: .format)) == DomainLabels.format else { throw bad("'format' must be \"\(DomainLabels.format)\"") }
            }
            if container.contains(.version) {
                guard (try? container.decode(Double.self, forKey: .version)) == Double(DomainLabels.version) else {  // 1.0 has always been read as 1
                    throw bad("'version' must be \(DomainLabels.version) (this MoEKit reads version \(DomainLabels.version))")
                }
            }
            guard var list = try? container.nestedUnkeyedContainer(forKey: .domains) else { throw bad("'domains' must be an array of domain names") }
            var names: [String] = []
            while !list.isAtEnd {
                let index = list.currentIndex
                guard let name = try? list.decode(String.self), !name.isEmpty else { throw bad("'domains'[\(index)] must be a non-empty string") }
                guard !names.contains(name) else { throw bad("domain '\(name)' is listed twice") }
                names.append(name)
            }
            guard !names.isEmpty, names.count < Int(DomainLabels.unlabelled) else {
                throw bad("'domains' must name 1 to \(DomainLabels.unlabelled - 1) domains, got \(names.count)")
            }
            domains = names
            if container.contains(.tokenDataType) {
                guard let text = try? container.decode(String.self, forKey: .tokenDataType), let parsed = TokenDataType(rawValue: text) else {
                    throw bad("'token_dtype' must be \"uint16\" or \"uint32\"")
                }
                tokenDataType = parsed
            }
        }

        func encode(to encoder: Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(DomainLabels.format, forKey: .format)
            try container.encode(DomainLabels.version, forKey: .version)
            try container.encode(domains, forKey: .domains)
            try container.encodeIfPresent(tokenDataType?.rawValue, forKey: .tokenDataType)
        }
    }
}
