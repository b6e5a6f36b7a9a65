import ArgumentParser
import MoEKit

/// `--tokens-file F` or `--text F` (exactly one), shared by the commands that run a model on tokens.
struct TokenInputOptions: ParsableArguments {
    enum BeginningOfSequence: String, EnumerableFlag {
        case addBos, noBos

        static func help(for value: Self) -> ArgumentHelp? {
            switch value {
            case .addBos: return "Text documents get only the BOS the post-processor puts first (<s>)."
            case .noBos: return "Text documents get no special tokens."
            }
        }
    }

    @Option(help: "Token ids: text (one sequence per line) or .npy.")
    var tokensFile: String?

    @Option(help: ArgumentHelp("Text, one document per line, tokenised with MODEL_DIR/tokenizer.json.",
                               discussion: "Each document gets what tokenizer.json's post-processor adds (<s> for MiniCPM) unless --add-bos or --no-bos says otherwise."))
    var text: String?

    @Flag var beginningOfSequence: BeginningOfSequence?

    func validate() throws {
        switch (tokensFile, text) {
        case (nil, nil): throw ValidationError("give the input with --tokens-file F (token ids) or --text F (text)")
        case (.some, .some): throw ValidationError("--tokens-file and --text exclude each other")
        default: break
        }
        if beginningOfSequence != nil && text == nil { throw ValidationError("--add-bos and --no-bos apply to --text only") }
    }

    var specialTokens: SpecialTokensPolicy { Self.policy(beginningOfSequence) }

    static func policy(_ choice: BeginningOfSequence?) -> SpecialTokensPolicy {
        switch choice {
        case nil: return .postProcessor
        case .addBos: return .beginningOfSequence
        case .noBos: return .none
        }
    }

    var source: TokenSource {
        if let text { return .textFile(text, specialTokens: specialTokens) }
        return .tokenFile(tokensFile ?? "")
    }
}
