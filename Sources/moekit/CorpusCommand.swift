import ArgumentParser
import Foundation
import MoEKit

struct CorpusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "corpus",
        abstract: "Write the synthetic multi-domain training corpus (uint16 .bin + domain sidecars).",
        discussion: """
        Documents of five domains (arithmetic, brackets, copy, reverse, grammar) over a byte-level \
        vocabulary (0 <unk>, 1 <s>, 2 </s>, byte b = id b+3; 259 ids), each followed by </s>, \
        deterministic for a seed. Writes OUT.bin (uint16 ids), OUT.domains.bin (one uint8 domain \
        per token) and OUT.domains.json (domain names). See docs/training-data.md.
        """
    )

    @Argument(help: "Output token file (.bin).")
    var output: String

    @Option(help: "Number of tokens.")
    var tokens: Int

    @Option(help: "Random seed.")
    var seed: UInt64 = 0

    @Flag(help: "Replace existing output files.")
    var force = false

    func validate() throws {
        try OptionRanges.check("--tokens", tokens, OptionRanges.corpusTokens)
        guard URL(fileURLWithPath: output).pathExtension.lowercased() == "bin" else {
            throw ValidationError("the output must be a .bin file, got '\(output)'")
        }
    }

    func run() throws {
        try reportingErrors {
            let sidecars = DomainLabels.sidecarPaths(forDataAt: output)
            if !force, let existing = [output, sidecars.labels, sidecars.names].first(where: { FileManager.default.fileExists(atPath: $0) }) {
                throw TrainingError.invalidData(path: existing, reason: "exists; pass --force to replace it")
            }
            let corpus = SyntheticCorpus.generate(tokens: tokens, seed: seed)
            try corpus.write(to: output)
            print("wrote \(output): \(tokens.formatted()) tokens, uint16, ids < \(SyntheticCorpus.vocabularySize), seed \(seed)")
            let counts = corpus.domainTokenCounts
            let width = SyntheticCorpus.domainNames.map(\.count).max() ?? 0
            for (name, count) in zip(SyntheticCorpus.domainNames, counts) {
                let share = String(format: "%5.1f%%", 100 * Double(count) / Double(tokens))
                print("  \(name.padding(toLength: width, withPad: " ", startingAt: 0))  \(count.formatted()) tokens (\(share))")
            }
            print("  domain sidecars: \(sidecars.labels), \(sidecars.names)")
        }
    }
}
