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
        let data: Data
        do { data = try InputFile.read(path, limit: InputFile.tokenFileLimit) } catch { throw .unreadableText(path: path, reason: error.reason) }
        var documents: [String] = []
        var invalidLine: Int? = nil
        data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            let bytes = raw.bindMemory(to: UInt8.self)
            var lineStart = 0
            var lineNumber = 0
            while lineStart < bytes.count && invalidLine == nil {
                var lineEnd = lineStart
                while lineEnd < bytes.count && bytes[lineEnd] != UInt8(ascii: "\n") { lineEnd += 1 }
                lineNumber += 1
                var contentEnd = lineEnd
                if contentEnd > lineStart && bytes[contentEnd - 1] == UInt8(ascii: "\r") { contentEnd -= 1 }
                if contentEnd > lineStart {
                    if let document = String(validating: UnsafeBufferPointer(rebasing: bytes[lineStart ..< contentEnd]), as: UTF8.self) {
                        documents.append(document)
                    } else {
                        invalidLine = lineNumber
                    }
                }
                lineStart = lineEnd + 1
            }
        }
        if let invalidLine { throw .unreadableText(path: path, reason: "line \(invalidLine) is not valid UTF-8") }
        guard !documents.isEmpty else { throw .unreadableText(path: path, reason: "no text (every line is empty)") }
        return documents
    }
}
