import ArgumentParser
import Foundation
import MoEKit

struct TokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize",
        abstract: "Tokenise text with a model directory's tokenizer.json and print the token ids.",
        discussion: """
        Every non-empty line of the text file is a document; each document's ids are printed on one \
        line, separated by spaces, with what the tokenizer's post-processor adds (<s> for MiniCPM) \
        unless --add-bos or --no-bos says otherwise. Encoding matches Hugging Face `tokenizers` token \
        for token. With --tokens the token strings are printed instead; a backslash, space or control \
        character inside one is written as an escape (\\\\, \\x20, \\t, \\n, \\r, \\xNN).
        """
    )

    @Argument(help: "Model directory holding tokenizer.json.")
    var modelDirectory: String

    @Option(help: "Text file, one document per line.")
    var text: String

    @Flag(help: "Print the token strings instead of the ids.")
    var tokens = false

    @Flag var beginningOfSequence: TokenInputOptions.BeginningOfSequence?

    func run() throws {
        try reportingErrors {
            let documents = try TokenSource.documents(inTextFile: text)
            let tokenizer = try Tokenizer(modelDirectory: modelDirectory)
            let input = TokenInputOptions.policy(beginningOfSequence)
            var output: [UInt8] = []
            if tokens {
                for document in documents {
                    let encoding = try tokenizer.encodeWithTokens(document, specialTokens: input)
                    output.append(contentsOf: encoding.tokens.map(Self.escaped).joined(separator: " ").utf8)
                    output.append(UInt8(ascii: "\n"))
                    Self.flush(&output, atLeast: 1 << 16)
                }
            } else {
                for ids in try tokenizer.encode(documents, specialTokens: input) {
                    Self.appendLine(ids, to: &output)
                    Self.flush(&output, atLeast: 1 << 16)
                }
            }
            Self.flush(&output, atLeast: 0)
        }
    }

    /// The ids in decimal, separated by spaces, and a newline — written in place (ids are printed
    /// by the million; `String(id)` per id costs more than tokenising).
    private static func appendLine(_ ids: [Int], to output: inout [UInt8]) {
        let start = output.count
        output.append(contentsOf: repeatElement(0, count: ids.count * 21 + 1))  // 20 characters hold any Int
        let end = output.withUnsafeMutableBufferPointer { buffer -> Int in
            var cursor = start
            var digits = (UInt64(0), UInt64(0), UInt64(0))
            for (index, id) in ids.enumerated() {
                if index > 0 { buffer[cursor] = UInt8(ascii: " "); cursor += 1 }
                if id < 0 { buffer[cursor] = UInt8(ascii: "-"); cursor += 1 }
                var magnitude = id.magnitude
                let count = withUnsafeMutableBytes(of: &digits) { scratch -> Int in
                    var count = 0
                    repeat {
                        scratch[count] = UInt8(ascii: "0") + UInt8(magnitude % 10)
                        magnitude /= 10
                        count += 1
                    } while magnitude > 0
                    for offset in 0 ..< count { buffer[cursor + offset] = scratch[count - 1 - offset] }
                    return count
                }
                cursor += count
            }
            buffer[cursor] = UInt8(ascii: "\n")
            return cursor + 1
        }
        output.removeSubrange(end...)
    }

    private static func flush(_ output: inout [UInt8], atLeast size: Int) {
        guard output.count >= size, !output.isEmpty else { return }
        FileHandle.standardOutput.write(Data(output))
        output.removeAll(keepingCapacity: true)
    }

    /// A token with backslash, space and control characters escaped, so tokens stay space-separated
    /// on one line.
    static func escaped(_ token: String) -> String {
        var result = ""
        for scalar in token.unicodeScalars {
            switch scalar {
            case "\\": result += "\\\\"
            case " ": result += "\\x20"
            case "\t": result += "\\t"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                result += "\\x" + (scalar.value < 0x10 ? "0" : "") + String(scalar.value, radix: 16, uppercase: true)
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result
    }
}
