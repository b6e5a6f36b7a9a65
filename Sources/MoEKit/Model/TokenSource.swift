import Foundation

/// Where a command's token sequences come from: a file of token ids (`--tokens-file`), or a text
/// file (`--text`, one document per line) tokenised with the model directory's `tokenizer.json`.
/// `forward`, `trace` (and later `train`) read their input through `read(modelDirectory:)`.
public enum TokenSource: Equatable, Sendable {
    case tokenFile(String)
    case textFile(String, specialTokens: SpecialTokensPolicy)

    /// The file named on the command line (for error messages).
    public var path: String {
        switch self {
        case .tokenFile(let path), .textFile(let path, _): return path
        }
    }

    /// The token sequences: the ids of a token file (`TokenFile.read`), or one sequence per document
    /// of a text file, encoded by `MODEL_DIR/tokenizer.json` (its absence is an error naming it).
    public func read(modelDirectory: String) throws -> [[Int]] {
        switch self {
        case .tokenFile(let path):
            return try TokenFile.read(path)
        case .textFile(let path, let specialTokens):
            let documents = try Self.documents(inTextFile: path)
            let tokenizer = try Tokenizer(modelDirectory: modelDirectory)
            return try tokenizer.encode(documents, specialTokens: specialTokens)
        }
    }

    /// The documents of a UTF-8 text file: one per line (lines end at "\n"; a "\r" before it is
    /// dropped, for CRLF files), empty lines skipped. No document at all is an error.
    public static func documents(inTextFile path: String) throws(TokenizerError) -> [String] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .unreadableText(path: path, reason: "no such file or not readable")
        }
        var documents: [String] = []
        var lineNumber = 0
        for line in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNumber += 1
            var line = line
            if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
            guard !line.isEmpty else { continue }
            guard let document = String(validating: line, as: UTF8.self) else {
                throw .unreadableText(path: path, reason: "line \(lineNumber) is not valid UTF-8")
            }
            documents.append(document)
        }
        guard !documents.isEmpty else { throw .unreadableText(path: path, reason: "no text (every line is empty)") }
        return documents
    }
}
