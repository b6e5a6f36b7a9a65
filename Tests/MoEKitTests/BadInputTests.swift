import Foundation
import Testing
@testable import MoEKit

/// Damaged and hostile inputs (issue 16): each test is one of the reproducers, checked at the
/// library level (the CLI-level ones are in Tests/Interop/test_bad_input.py).
@Suite struct BadInputTests {
    // MARK: Routing logs

    /// A finished log is opened without SWMR, so a damaged metadata block fails at once instead of
    /// being retried with sleeps: every damaged copy is read or refused within 5 s.
    @Test func damagedFinishedLogsAreReadOrRefusedWithinFiveSeconds() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("routing.h5")
        let header = RoutingLogFixtures.header(perToken: true)
        let writer = try RoutingLogWriter(path: path, header: header)
        for index in 0 ..< 4 { try writer.append(RoutingLogFixtures.step(index, tokens: 24, header: header)) }
        try writer.close()
        let original = try #require(FileManager.default.contents(atPath: path))
        var random = SeededRandom(seed: 16)
        var refused = 0
        for copy in 0 ..< 12 {
            var bytes = [UInt8](original)
            for _ in 0 ..< 20 { bytes[Int(random.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: random.next()) }
            let damaged = directory.file("damaged-\(copy).h5")
            try Data(bytes).write(to: URL(fileURLWithPath: damaged))
            let start = Date()
            do {
                _ = try RoutingLogInspection(path: damaged)
            } catch let error as RoutingLogError {
                refused += 1
                #expect(error.errorDescription?.contains(damaged) == true)
            }
            #expect(Date().timeIntervalSince(start) < 5, "copy \(copy)")
        }
        #expect(refused > 0, "20 flipped bytes in a small log damage its metadata in most copies")
    }

    /// A dataset extent claiming more elements than the file could hold is refused before the
    /// read buffer is allocated.
    @Test func readingMoreRowsThanTheFileCanHoldIsRefused() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("routing.h5")
        let header = RoutingLogFixtures.header()
        let writer = try RoutingLogWriter(path: path, header: header)
        try writer.append(RoutingLogFixtures.step(0, tokens: 8, header: header))
        try writer.close()
        let (file, _) = try HDF5File.openForReading(path: path)
        let dataset = try file.openDataset(RoutingLogSchema.coactivation)
        #expect(throws: RoutingLogError.self) { _ = try dataset.read(rows: 0 ..< (1 << 40), trailingShape: [3, 4, 4], as: Int64.self) }
        #expect(throws: RoutingLogError.self) { _ = try dataset.read(rows: 0 ..< 2, trailingShape: [Int.max / 2, 4], as: Int64.self) }
    }

    // MARK: Pickles

    /// `N` wrapped in 200,000 TUPLE1 levels (the reproducer, 50,000 crashed with SIGSEGV in
    /// the values' recursive release) is refused, and releasing the graph does not recurse.
    @Test func deeplyNestedTuplesAreReleasedWithoutRecursion() {
        let pickle: [UInt8] = [0x80, 0x02, UInt8(ascii: "N")] + [UInt8](repeating: 0x85, count: 200_000) + [UInt8(ascii: ".")]
        #expect(throws: PyTorchCheckpointError.notAStateDict(file: "deep", reason: "data.pkl holds a tuple, not a dict")) {
            try pickle.withUnsafeBytes { try RestrictedUnpickler.loadStateDict($0, file: "deep") }
        }
    }

    // MARK: Outputs

    /// `demo --out DIR`: a non-empty DIR needs `replaceExisting`, which removes only the demo's own
    /// files; an existing file is refused either way.
    @Test func demoOutputKeepsTheUsersFiles() throws {
        let directory = TemporaryDirectory()
        let out = directory.file("out")
        try FileManager.default.createDirectory(atPath: out + "/moe-trained", withIntermediateDirectories: true)
        try Data("mine".utf8).write(to: URL(fileURLWithPath: out + "/keep.txt"))
        try Data("old".utf8).write(to: URL(fileURLWithPath: out + "/corpus.bin"))
        var options = DemoPipeline.Options()
        options.outputDirectory = out
        #expect(throws: FileError.self) { try DemoPipeline(options: options).prepareOutputDirectory() }
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: out)) == ["keep.txt", "corpus.bin", "moe-trained"])
        options.replaceExisting = true
        try DemoPipeline(options: options).prepareOutputDirectory()
        #expect(try FileManager.default.contentsOfDirectory(atPath: out) == ["keep.txt"])
        #expect(FileManager.default.contents(atPath: out + "/keep.txt") == Data("mine".utf8))

        options.outputDirectory = out + "/keep.txt"
        #expect(throws: FileError.self) { try DemoPipeline(options: options).prepareOutputDirectory() }
        #expect(FileManager.default.contents(atPath: out + "/keep.txt") == Data("mine".utf8))
    }

    /// `demo --out .` (here spelled `DIR/.` and `DIR/sub/..`, the working directory's forms) is a
    /// non-empty directory like any other: refused without `--force`; with it, only the demo's
    /// `outputNames` go, and the user's files and directories (and what they hold) stay.
    @Test func demoOutputInTheWorkingDirectoryKeepsEverythingElse() throws {
        let directory = TemporaryDirectory()
        let work = directory.file("work")
        let manager = FileManager.default
        try manager.createDirectory(atPath: work + "/data/moe-trained", withIntermediateDirectories: true)
        try Data("notes".utf8).write(to: URL(fileURLWithPath: work + "/notes.txt"))
        try Data("data".utf8).write(to: URL(fileURLWithPath: work + "/data/corpus.bin"))
        try Data("old log".utf8).write(to: URL(fileURLWithPath: work + "/moe-train.h5"))
        try manager.createDirectory(atPath: work + "/dense-trained", withIntermediateDirectories: true)
        for spelling in [work + "/.", work + "/data/.."] {
            var options = DemoPipeline.Options()
            options.outputDirectory = spelling
            #expect(throws: FileError.directoryNotEmpty(path: spelling, advice: "pass --force to replace the demo's files in it (other files are kept)")) {
                try DemoPipeline(options: options).prepareOutputDirectory()
            }
            #expect(Set(try manager.contentsOfDirectory(atPath: work)) == ["data", "notes.txt", "moe-train.h5", "dense-trained"])
        }
        var options = DemoPipeline.Options()
        options.outputDirectory = work + "/."
        options.replaceExisting = true
        try DemoPipeline(options: options).prepareOutputDirectory()
        #expect(Set(try manager.contentsOfDirectory(atPath: work)) == ["data", "notes.txt"])
        #expect(manager.contents(atPath: work + "/notes.txt") == Data("notes".utf8))
        #expect(manager.contents(atPath: work + "/data/corpus.bin") == Data("data".utf8))
        #expect(try manager.contentsOfDirectory(atPath: work + "/data").sorted() == ["corpus.bin", "moe-trained"])
    }

    /// An output that is the input, reaches it through a symbolic link or `..`, or holds it, is
    /// refused; a sibling or a directory inside the input is not.
    @Test func outputsOverlappingTheInputAreRefused() throws {
        let directory = TemporaryDirectory()
        let input = directory.file("model")
        try FileManager.default.createDirectory(atPath: input, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: directory.file("link"), withDestinationPath: input)
        for output in [input, directory.file("link"), input + "/../model", input + "/", directory.path] {
            #expect(throws: FileError.self, "\(output)") { try OutputPaths.refuseOverlap(input: input, output: output) }
        }
        try OutputPaths.refuseOverlap(input: input, output: directory.file("moe"))
        try OutputPaths.refuseOverlap(input: input, output: input + "/moe")
        try OutputPaths.refuseOverlap(input: input, output: directory.file("model-moe"))
    }

    /// `--force` replaces an earlier output directory, never a file (it used to be deleted and
    /// replaced by a directory).
    @Test func forceNeverReplacesAFileWithADirectory() throws {
        let directory = TemporaryDirectory()
        let file = directory.file("notes.txt")
        try Data("mine".utf8).write(to: URL(fileURLWithPath: file))
        #expect(throws: FileError.self) { _ = try AtomicDirectory(destination: file, replaceExisting: true) }
        #expect(FileManager.default.contents(atPath: file) == Data("mine".utf8))
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["notes.txt"])
    }

    // MARK: Config and input files

    /// Sizes far beyond any published model are refused while the config is read, naming the field.
    @Test(arguments: [("num_hidden_layers", 2_147_483_646), ("vocab_size", 2_147_483_646), ("max_position_embeddings", 100_000_000),
                      ("hidden_size", 1 << 30), ("intermediate_size", 2_147_483_646), ("num_experts", 2_147_483_646), ("num_experts", 20_000)])
    func absurdConfigSizesAreRefused(field: String, value: Int) throws {
        var object: [String: JSONValue] = ["hidden_size": .integer(64), "intermediate_size": .integer(160), "num_hidden_layers": .integer(2),
                                           "num_attention_heads": .integer(4), "vocab_size": .integer(300)]
        object[field] = .integer(Int64(value))
        if field == "num_experts" { object["num_experts_per_tok"] = .integer(2) }
        if field == "hidden_size" { object["num_attention_heads"] = .integer(1 << 10) }
        #expect {
            _ = try MiniCPMConfig(json: .object(object), path: "c.json")
        } throws: { error in
            guard case let CheckpointError.invalidField(path, reported, _) = error else { return false }
            return path == "c.json" && reported == field
        }
    }

    /// The published presets are within the limits.
    @Test func presetsAreWithinTheLimits() throws {
        for preset in MiniCPMPreset.allCases { try preset.config.checkLimits(path: preset.rawValue) }
    }

    /// A directory, FIFO or device is named for what it is, and a FIFO is not opened (which would block).
    @Test func inputFilesThatAreNotRegularFilesAreNamed() throws {
        let directory = TemporaryDirectory()
        let fifo = directory.file("fifo")
        #expect(mkfifo(fifo, 0o600) == 0)
        #expect(throws: InputFileError.notARegularFile(path: fifo, kind: "a FIFO")) { _ = try InputFile.read(fifo, limit: 100) }
        #expect(throws: InputFileError.notARegularFile(path: directory.path, kind: "a directory")) { _ = try InputFile.read(directory.path, limit: 100) }
        #expect(throws: InputFileError.notARegularFile(path: "/dev/zero", kind: "a character device")) { _ = try InputFile.read("/dev/zero", limit: 100) }
        #expect(throws: InputFileError.missing(path: directory.file("none"))) { _ = try InputFile.read(directory.file("none"), limit: 100) }
        let big = directory.file("big")
        try Data(count: 101).write(to: URL(fileURLWithPath: big))
        #expect(throws: InputFileError.tooLarge(path: big, bytes: 101, limit: 100)) { _ = try InputFile.read(big, limit: 100) }
        #expect(try InputFile.read(big, limit: 101).count == 101)

        try FileManager.default.createDirectory(atPath: directory.file("model/config.json"), withIntermediateDirectories: true)
        #expect(throws: CheckpointError.inputFile(.notARegularFile(path: directory.file("model/config.json"), kind: "a directory"))) {
            _ = try MiniCPMConfig(path: directory.file("model/config.json"))
        }
    }

    /// A .npy shape whose byte count overflows says so (it printed "shape [4611686018427387913] needs 36").
    @Test func npyShapeOverflowIsReportedAsSuch() throws {
        var header = "{'descr': '<i8', 'fortran_order': False, 'shape': (4611686018427387913,), }"
        header += String(repeating: " ", count: (64 - (10 + header.utf8.count + 1) % 64) % 64) + "\n"
        var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count & 0xFF), UInt8(header.utf8.count >> 8)]
        bytes += Array(header.utf8) + [UInt8](repeating: 0, count: 36)
        #expect {
            _ = try TokenFile.readNumPy(Data(bytes), path: "t.npy")
        } throws: { error in
            guard case let ModelError.unreadableTokenFile(path, reason) = error else { return false }
            return path == "t.npy" && reason.contains("overflows") && !reason.contains("needs")
        }
    }

    // MARK: Tokenizer

    /// A Replace chain that doubles the text 40 times is stopped at 64× the input, with an error
    /// naming the normalizer; the decoder chain is refused when the tokenizer is loaded.
    @Test func normalizerGrowthIsBounded() throws {
        let doubling = NormalizerDefinition.sequence(Array(repeating: .replace(pattern: "a", content: "aa"), count: 40))
        #expect(doubling.normalize(Array("a banana".utf8)) == nil)
        let fiveDoublings = NormalizerDefinition.sequence(Array(repeating: .replace(pattern: "a", content: "aa"), count: 5))
        #expect(fiveDoublings.normalize(Array("a".utf8)) == Array(String(repeating: "a", count: 32).utf8))
        let spaces = NormalizerDefinition.sequence([.prepend("▁"), .replace(pattern: " ", content: "▁")])
        #expect(spaces.normalize(Array("a b".utf8)) == Array("▁a▁b".utf8))

        let decoder = DecoderDefinition.sequence(Array(repeating: .replace(pattern: "a", content: "aa"), count: 40))
        #expect(decoder.worstCaseGrowth > 1e12)
        #expect(DecoderDefinition.sequence([.replace(pattern: "▁", content: " "), .byteFallback, .fuse]).worstCaseGrowth == 1)
    }

    // MARK: Options and sizes

    /// C = ceil(T·k/E·cf) is capped at T·k, so cf = 1e308 means "no limit" instead of trapping.
    @Test func capacityOfAHugeFactorIsAllAssignments() {
        #expect(RoutingFunctions.capacity(tokens: 10, topK: 2, experts: 4, capacityFactor: 1e308) == 20)
        #expect(RoutingFunctions.capacity(tokens: 10, topK: 2, experts: 4, capacityFactor: 1.25) == 7)
    }

    /// Memory estimates saturate instead of overflowing, and a run beyond the machine is refused.
    @Test func memoryEstimatesSaturateAndRefuse() throws {
        #expect(MemoryEstimate.product(Int.max, 2) == Int.max)
        #expect(MemoryEstimate.product(3, -1) == Int.max)
        #expect(MemoryEstimate.sum(Int.max, 1) == Int.max)
        #expect(throws: MemoryEstimate.TooLarge.self) { try MemoryEstimate.check(Int.max, for: "x") }
        var config = MiniCPMPreset.minicpm2_4b.config
        #expect(throws: MemoryEstimate.TooLarge.self) {
            try MemoryEstimate.check(MemoryEstimate.forwardBytes(config, tokens: 1_000_000, sequence: 1_000_000), for: "x")
        }
        config.numHiddenLayers = 2
        try MemoryEstimate.check(MemoryEstimate.forwardBytes(config, tokens: 2048, sequence: 2048), for: "the default bench")
    }

    /// Training sizes beyond the bounds are refused by the options themselves.
    @Test func trainingOptionsBoundTheirSizes() {
        for (batch, seq) in [(Int.max, 8), (1, Int.max), (1 << 16, 1 << 16)] {
            #expect(throws: TrainingError.self) { try TrainingOptions(steps: 1, batchSize: batch, sequenceLength: seq, learningRate: 0.01).validate() }
        }
    }

    /// Upcycle options beyond the bounds are refused before a plan is made.
    @Test func upcycleOptionsBoundTheirSizes() {
        #expect(throws: UpcycleError.self) { try UpcycleOptions(experts: Int.max, topK: 2).validate() }
        var options = UpcycleOptions(experts: 4, topK: 2)
        options.verifyTokens = Int.max
        #expect(throws: UpcycleError.self) { try options.validate() }
    }
}
