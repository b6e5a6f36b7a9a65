import Foundation
import Testing
@testable import MoEKit

private func writeFile(_ bytes: [UInt8], to path: String) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// Expects `body` to throw `TrainingError.invalidData` for `path` with a reason containing `mentions`.
private func expectInvalidData(path: String, mentions: String, _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("no error for \(path)")
    } catch let TrainingError.invalidData(errorPath, reason) {
        #expect(errorPath == path)
        #expect(reason.contains(mentions), "\(reason)")
    } catch {
        Issue.record("unexpected error \(error)")
    }
}

@Suite struct TokenDatasetTests {
    /// `.txt`: one document per line, joined with the separator after each; the sidecar labels that stream.
    @Test func readsTextDocumentsWithSeparators() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("docs.txt")
        try "5 6 7\n\n8,9\n".write(toFile: path, atomically: true, encoding: .utf8)
        let plain = try TokenDataset(path: path, vocabularySize: 10)
        #expect(plain.tokens == [5, 6, 7, 2, 8, 9, 2])
        #expect(plain.domains == nil && plain.domainNames.isEmpty)
        #expect(try TokenDataset(path: path, vocabularySize: 10, documentSeparator: 0).tokens == [5, 6, 7, 0, 8, 9, 0])

        try DomainLabels(names: ["a", "b"], labels: [0, 0, 0, 0, 1, 1, 255]).write(forDataAt: path)
        let labelled = try TokenDataset(path: path, vocabularySize: 10)
        #expect(labelled.domains == [0, 0, 0, 0, 1, 1, 255])
        #expect(labelled.domainNames == ["a", "b"])
        #expect(labelled.domainTokenCounts == [4, 2])

        expectInvalidData(path: path, mentions: "token id 9 at index 5 is outside the vocabulary [0, 9)") {
            _ = try TokenDataset(path: path, vocabularySize: 9)
        }
    }

    /// `.npy` (via TokenFile) is used as stored, without separators.
    @Test func readsNumPy() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("ids.npy")
        var header = "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }"
        while (10 + header.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.count), 0] + Array(header.utf8)
        for value in [Int32(4), 0, 300] { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
        try writeFile(bytes, to: path)
        #expect(try TokenDataset(path: path, vocabularySize: 301).tokens == [4, 0, 300])
        expectInvalidData(path: path, mentions: "token id 300 at index 2") { _ = try TokenDataset(path: path, vocabularySize: 300) }
    }

    /// Raw `.bin` in both widths; the width comes from the option, else the sidecar, else the vocabulary rule.
    @Test func readsBinaryInBothWidths() throws {
        let directory = TemporaryDirectory()
        let ids: [UInt32] = [1, 70000, 3, 65535]
        let wide = directory.file("wide.bin")
        try TokenDataset.writeBinary(ids, dataType: .uint32, to: wide)
        #expect(try TokenDataset(path: wide, vocabularySize: 80000).tokens == ids)  // vocab > 65536 → uint32
        #expect(try TokenDataset(path: wide, vocabularySize: 80000, binaryDataType: .uint32).tokens == ids)

        let narrow = directory.file("narrow.bin")
        try TokenDataset.writeBinary([1, 20, 65535, 7], dataType: .uint16, to: narrow)
        #expect(try TokenDataset(path: narrow, vocabularySize: 65536).tokens == [1, 20, 65535, 7])  // vocab ≤ 65536 → uint16
        #expect(try TokenDataset(path: narrow, vocabularySize: 1 << 20, binaryDataType: .uint16).tokens == [1, 20, 65535, 7])
        #expect(throws: TrainingError.self) { try TokenDataset.writeBinary([70000], dataType: .uint16, to: directory.file("x.bin")) }

        // Read with the wrong width: the 8 bytes are 2 uint32 ids, the first 1 + 20·65536, past the vocabulary.
        expectInvalidData(path: narrow, mentions: "at index 0 is outside the vocabulary") {
            _ = try TokenDataset(path: narrow, vocabularySize: 1 << 20, binaryDataType: .uint32)
        }
    }

    /// Truncated files, ids past the vocabulary and empty files name the file and the index.
    @Test func rejectsBadBinaryFiles() throws {
        let directory = TemporaryDirectory()
        let truncated = directory.file("truncated.bin")
        try writeFile([1, 0, 2, 0, 3], to: truncated)
        expectInvalidData(path: truncated, mentions: "5 bytes is not a whole number of uint16 ids") {
            _ = try TokenDataset(path: truncated, vocabularySize: 10)
        }
        let tooLarge = directory.file("large.bin")
        try TokenDataset.writeBinary([1, 2, 1024, 3], dataType: .uint16, to: tooLarge)
        expectInvalidData(path: tooLarge, mentions: "token id 1024 at index 2 is outside the vocabulary [0, 1024)") {
            _ = try TokenDataset(path: tooLarge, vocabularySize: 1024)
        }
        let empty = directory.file("empty.bin")
        try writeFile([], to: empty)
        expectInvalidData(path: empty, mentions: "no tokens") { _ = try TokenDataset(path: empty, vocabularySize: 10) }
        let missing = directory.file("missing.bin")
        expectInvalidData(path: missing, mentions: "no such file") { _ = try TokenDataset(path: missing, vocabularySize: 10) }
        let other = directory.file("ids.csv")
        try writeFile([49], to: other)
        expectInvalidData(path: other, mentions: "expected .txt, .npy or .bin") { _ = try TokenDataset(path: other, vocabularySize: 10) }
    }

    /// Sidecars of the wrong length, half a pair, bad labels and a contradicting width are errors
    /// naming the sidecar (or the option).
    @Test func rejectsBadSidecars() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("data.bin")
        try TokenDataset.writeBinary([1, 2, 3, 4], dataType: .uint16, to: path)
        let (labelsPath, namesPath) = DomainLabels.sidecarPaths(forDataAt: path)
        #expect(labelsPath == directory.file("data.domains.bin") && namesPath == directory.file("data.domains.json"))
        #expect(DomainLabels.sidecarPaths(forDataAt: "runs/c.v2.bin") == ("runs/c.v2.domains.bin", "runs/c.v2.domains.json"))

        try DomainLabels(names: ["x"], labels: [0, 0, 0], tokenDataType: .uint16).write(forDataAt: path)
        expectInvalidData(path: labelsPath, mentions: "holds 3 domain labels for 4 tokens") { _ = try TokenDataset(path: path, vocabularySize: 10) }

        try DomainLabels(names: ["x"], labels: [0, 0, 1, 0]).write(forDataAt: path)
        expectInvalidData(path: labelsPath, mentions: "label 1 at index 2 names no domain") { _ = try TokenDataset(path: path, vocabularySize: 10) }

        try DomainLabels(names: ["x"], labels: [0, 0, 0, 0], tokenDataType: .uint32).write(forDataAt: path)
        #expect(throws: TrainingError.invalidOption(name: "data-dtype", reason: "uint16 contradicts the sidecar of \(path), which records uint32")) {
            _ = try TokenDataset(path: path, vocabularySize: 10, binaryDataType: .uint16)
        }

        try "{\"domains\": []}".write(toFile: namesPath, atomically: true, encoding: .utf8)
        expectInvalidData(path: namesPath, mentions: "must name 1 to 254 domains") { _ = try TokenDataset(path: path, vocabularySize: 10) }
        try "[1, 2]".write(toFile: namesPath, atomically: true, encoding: .utf8)
        expectInvalidData(path: namesPath, mentions: "not a JSON object") { _ = try TokenDataset(path: path, vocabularySize: 10) }

        try FileManager.default.removeItem(atPath: namesPath)
        expectInvalidData(path: namesPath, mentions: "missing, but") { _ = try TokenDataset(path: path, vocabularySize: 10) }
    }
}

@Suite struct BatchSamplerTests {
    /// 0, 1, 2, … as a stream with domain = id mod 3, so every window shows where it came from.
    private func countingDataset(_ count: Int) throws -> TokenDataset {
        try TokenDataset(tokens: (0 ..< UInt32(count)).map { $0 }, domains: DomainLabels(names: ["a", "b", "c"], labels: (0 ..< count).map { UInt8($0 % 3) }),
                         vocabularySize: count)
    }

    /// `batch(at:)` is a pure function of (seed, step): equal across samplers and call orders,
    /// different for another step or seed; targets are the inputs shifted by one, domains aligned.
    @Test func batchesArePureFunctionsOfSeedAndStep() throws {
        let dataset = try countingDataset(1000)
        let sampler = try BatchSampler(dataset: dataset, batchSize: 4, sequenceLength: 16, seed: 7, validationFraction: 0.1)
        let again = try BatchSampler(dataset: dataset, batchSize: 4, sequenceLength: 16, seed: 7, validationFraction: 0.1)
        let late = sampler.batch(at: 42)
        _ = again.batch(at: 0)
        #expect(again.batch(at: 42) == late)
        #expect(sampler.batch(at: 43) != late)
        #expect(try BatchSampler(dataset: dataset, batchSize: 4, sequenceLength: 16, seed: 8, validationFraction: 0.1).batch(at: 42) != late)

        #expect(sampler.trainingRange == 0 ..< 900 && sampler.validationRange == 900 ..< 1000)
        for step in 0 ..< 50 {
            let batch = sampler.batch(at: step)
            #expect(batch.sequenceCount == 4 && batch.inputs.allSatisfy { $0.count == 16 })
            for (b, inputs) in batch.inputs.enumerated() {
                let start = inputs[0]
                #expect(inputs == Array(start ..< start + 16))
                #expect(batch.targets[b] == Array(start + 1 ... start + 16))
                #expect(batch.targets[b].last! < 900)  // never reads held-out tokens
                #expect(batch.domains?[b] == inputs.map { $0 % 3 })
            }
        }
    }

    /// Seeded starts cover the whole training range (first and last window included) over many steps.
    @Test func startsCoverTheTrainingRange() throws {
        let sampler = try BatchSampler(dataset: try countingDataset(40), batchSize: 8, sequenceLength: 8, seed: 1)
        let starts = Set((0 ..< 200).flatMap { sampler.windowStarts(at: $0) })
        #expect(starts == Set(0 ... 31))
    }

    /// Validation: consecutive windows of stride T over the held-out tail, B per batch, the last
    /// batch smaller; every held-out token but the first is a target exactly once.
    @Test func validationBatchesTileTheHeldOutTokens() throws {
        let sampler = try BatchSampler(dataset: try countingDataset(1000), batchSize: 4, sequenceLength: 10, seed: 3, validationFraction: 0.1)
        #expect(sampler.validationWindowCount == 9 && sampler.validationBatchCount == 3)
        let batches = sampler.validationBatches()
        #expect(batches == sampler.validationBatches())
        #expect(batches.map(\.sequenceCount) == [4, 4, 1])
        #expect(batches[0].inputs[0] == Array(900 ..< 910) && batches[2].inputs[0] == Array(980 ..< 990))
        #expect(batches.flatMap { $0.targets.flatMap { $0 } } == Array(901 ... 990))
        #expect(sampler.validationBatches(maximumBatches: 1).count == 1)
        #expect(try BatchSampler(dataset: try countingDataset(100), batchSize: 2, sequenceLength: 4, seed: 0).validationBatches().isEmpty)
    }

    @Test func rejectsTooLittleData() throws {
        let dataset = try countingDataset(20)
        #expect(throws: TrainingError.invalidData(path: "<memory>", reason: "20 training tokens; a window of --seq 20 needs 21")) {
            _ = try BatchSampler(dataset: dataset, batchSize: 1, sequenceLength: 20, seed: 0)
        }
        #expect(throws: TrainingError.self) { _ = try BatchSampler(dataset: dataset, batchSize: 1, sequenceLength: 4, seed: 0, validationFraction: 0.1) }
        #expect(throws: TrainingError.self) { _ = try BatchSampler(dataset: dataset, batchSize: 0, sequenceLength: 4, seed: 0) }
    }
}

@Suite struct SyntheticCorpusTests {
    /// Same seed, same corpus; another seed, another; exactly the requested length.
    @Test func isDeterministic() {
        let a = SyntheticCorpus.generate(tokens: 5000, seed: 11)
        #expect(a == SyntheticCorpus.generate(tokens: 5000, seed: 11))
        #expect(a != SyntheticCorpus.generate(tokens: 5000, seed: 12))
        #expect(a.tokens.count == 5000 && a.domains.count == 5000)
        #expect(SyntheticCorpus.generate(tokens: 1, seed: 0).tokens.count == 1)
        // A prefix of a longer corpus with the same seed is the shorter corpus.
        #expect(Array(SyntheticCorpus.generate(tokens: 9000, seed: 11).tokens.prefix(5000)) == a.tokens)
    }

    /// Every domain is present, every id is a byte token or </s> below 259, and every document
    /// (the text between </s>) carries one label, that of its </s>, and follows its domain's rules.
    @Test func labelsAlignWithDocuments() throws {
        let corpus = SyntheticCorpus.generate(tokens: 20000, seed: 5)
        #expect(corpus.domainTokenCounts.allSatisfy { $0 > 2000 })
        #expect(corpus.tokens.allSatisfy { $0 == SyntheticCorpus.endToken || ($0 >= 3 + 32 && $0 < 3 + 127) })
        #expect(corpus.tokens.allSatisfy { Int($0) < SyntheticCorpus.vocabularySize })

        var start = 0
        var checked = 0
        for end in corpus.tokens.indices where corpus.tokens[end] == SyntheticCorpus.endToken {
            let labels = Set(corpus.domains[start ... end])
            #expect(labels.count == 1)
            let domain = try #require(SyntheticCorpus.Domain(rawValue: Int(corpus.domains[end])))
            let text = SyntheticCorpus.text(of: corpus.tokens[start ..< end])
            #expect(Self.isValid(text, domain: domain), "\(domain): \(text)")
            checked += 1
            start = end + 1
        }
        #expect(checked > 500)
    }

    /// The rules each domain's documents obey.
    static func isValid(_ text: String, domain: SyntheticCorpus.Domain) -> Bool {
        switch domain {
        case .arithmetic:
            return text.split(separator: " ").allSatisfy { equation in
                let sides = equation.split(separator: "=")
                guard sides.count == 2, let result = Int(sides[1]) else { return false }
                for op in ["+", "-", "*"] {
                    let operands = sides[0].components(separatedBy: op)
                    if operands.count == 2, let a = Int(operands[0]), let b = Int(operands[1]) {
                        return result == (op == "+" ? a + b : op == "-" ? a - b : a * b)
                    }
                }
                return false
            }
        case .brackets:
            let closing: [Character: Character] = [")": "(", "]": "[", "}": "{", ">": "<"]
            var stack: [Character] = []
            for character in text {
                if let open = closing[character] {
                    guard stack.popLast() == open else { return false }
                } else if "([{<".contains(character) {
                    stack.append(character)
                } else {
                    return false
                }
            }
            return stack.isEmpty && !text.isEmpty
        case .copy:
            let parts = text.split(separator: ":", omittingEmptySubsequences: false)
            return parts.count == 2 && parts[0] == parts[1] && parts[0].allSatisfy { $0.isUppercase }
        case .reverse:
            let parts = text.split(separator: "|", omittingEmptySubsequences: false)
            return parts.count == 2 && String(parts[0].reversed()) == parts[1] && parts[0].allSatisfy { $0.isLowercase }
        case .grammar:
            return text.hasSuffix(" .") && text.allSatisfy { $0.isLowercase || $0 == " " || $0 == "." }
        }
    }

    /// `write(to:)` then `TokenDataset(path:)` gives back the tokens and labels (width from the sidecar).
    @Test func sidecarRoundTrip() throws {
        let directory = TemporaryDirectory()
        let corpus = SyntheticCorpus.generate(tokens: 3000, seed: 2)
        let path = directory.file("corpus.bin")
        try corpus.write(to: path)
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)).count == 6000)
        let dataset = try TokenDataset(path: path, vocabularySize: 1024)
        #expect(dataset.tokens == corpus.tokens)
        #expect(dataset.domains == corpus.domains)
        #expect(dataset.domainNames == ["arithmetic", "brackets", "copy", "reverse", "grammar"])
        #expect(dataset == (try corpus.dataset(vocabularySize: 1024, source: path)))

        // A sidecar one label short is rejected, as is a vocabulary too small for the bytes.
        let (labelsPath, _) = DomainLabels.sidecarPaths(forDataAt: path)
        try writeFile(Array(corpus.domains.dropLast()), to: labelsPath)
        expectInvalidData(path: labelsPath, mentions: "holds 2999 domain labels for 3000 tokens") { _ = try TokenDataset(path: path, vocabularySize: 1024) }
        try writeFile(corpus.domains, to: labelsPath)
        expectInvalidData(path: path, mentions: "is outside the vocabulary [0, 100)") { _ = try TokenDataset(path: path, vocabularySize: 100) }
        try writeFile(Array(try Data(contentsOf: URL(fileURLWithPath: path)).dropLast()), to: path)
        expectInvalidData(path: path, mentions: "5999 bytes is not a whole number of uint16 ids") { _ = try TokenDataset(path: path, vocabularySize: 1024) }
    }
}
