import Foundation
import Testing
@testable import MoEKit

// MARK: Helpers

private let tinyDirectory = Fixtures.path("minicpm-tiny-torch")
private let tinyBin = tinyDirectory + "/pytorch_model.bin"
private func variant(_ name: String) -> String { Fixtures.path("torch-variants/" + name) }

/// A model directory holding only the tiny fixture's config.json and pytorch_model.bin (plus `extra` files).
private func binDirectory(in temp: TemporaryDirectory, name: String = "bin", extra: [String: String] = [:]) throws -> String {
    let path = temp.file(name)
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    try FileManager.default.copyItem(atPath: tinyDirectory + "/config.json", toPath: path + "/config.json")
    try FileManager.default.copyItem(atPath: tinyBin, toPath: path + "/pytorch_model.bin")
    for (file, text) in extra { try Data(text.utf8).write(to: URL(fileURLWithPath: path + "/" + file)) }
    return path
}

private func readBytes(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }

private func littleEndian(_ bytes: [UInt8], _ offset: Int, _ count: Int) -> Int {
    (0 ..< count).reduce(0) { $0 | Int(bytes[offset + $1]) << (8 * $1) }
}

private func store(_ value: Int, into bytes: inout [UInt8], at offset: Int, count: Int) {
    for i in 0 ..< count { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
}

/// Byte edits of a zip: finds a record's central-directory entry and its data.
private struct ZipEditor {
    var bytes: [UInt8]

    /// Offset of the central-directory entry named `name`.
    func centralEntry(_ name: String) -> Int? {
        let target = Array(name.utf8)
        var i = 0
        while i + 46 <= bytes.count {
            if bytes[i] == 0x50, bytes[i + 1] == 0x4B, bytes[i + 2] == 1, bytes[i + 3] == 2,
               littleEndian(bytes, i + 28, 2) == target.count, Array(bytes[i + 46 ..< min(bytes.count, i + 46 + target.count)]) == target {
                return i
            }
            i += 1
        }
        return nil
    }

    func dataStart(_ name: String) -> Int? {
        guard let entry = centralEntry(name) else { return nil }
        let local = littleEndian(bytes, entry + 42, 4)
        return local + 30 + littleEndian(bytes, local + 26, 2) + littleEndian(bytes, local + 28, 2)
    }

    /// Replaces a record's contents (same length) and fixes its CRC so only the content is wrong.
    mutating func replaceRecord(_ name: String, with contents: [UInt8]) {
        guard let entry = centralEntry(name), let start = dataStart(name) else { return }
        bytes.replaceSubrange(start ..< start + contents.count, with: contents)
        let crc = contents.withUnsafeBytes { CRC32.checksum($0) }
        store(Int(crc), into: &bytes, at: entry + 16, count: 4)
    }
}

private func expectPyTorchError(_ path: String, sourceLocation: SourceLocation = #_sourceLocation,
                                _ matches: (PyTorchCheckpointError) -> Bool) {
    do {
        _ = try PyTorchCheckpointFile(path: path)
        Issue.record("\(path) loaded but should have been refused", sourceLocation: sourceLocation)
    } catch {
        #expect(matches(error), "\(error)", sourceLocation: sourceLocation)
        #expect((error.errorDescription ?? "").contains(path), sourceLocation: sourceLocation)
    }
}

// MARK: Reading what torch.save wrote

/// The fixture `pytorch_model.bin` (torch.save) holds exactly the tensors of the fixture's
/// `model.safetensors` (safetensors.torch.save_file of the same state dict): same names, dtypes,
/// shapes and bytes.
@Suite struct PyTorchCheckpointTests {
    @Test func fixtureBinEqualsItsSafetensorsBitwise() throws {
        let bin = try PyTorchCheckpointFile(path: tinyBin)
        let reference = try SafetensorsFile(path: tinyDirectory + "/model.safetensors")
        #expect(bin.archiveName == "pytorch_model")
        #expect(bin.formatVersion == "3")
        #expect(Set(bin.names) == Set(reference.names) && bin.names.count == 20)
        for name in reference.names {
            let info = try bin.info(name)
            let expectedShape = try reference.info(name).shape
            #expect(info.dtype == .bfloat16 && info.shape == expectedShape && info.isContiguous)
            let expected = Array(try reference.bytes(name))
            #expect(try bin.withBytes(name) { Array($0) } == expected, "\(name)")
            #expect(try bin.floatTensor(name) == reference.floatTensor(name))
        }
    }

    /// A directory with only `pytorch_model.bin` opens as a PyTorch checkpoint with the same tensors.
    @Test func binOnlyDirectoryOpensThroughModelCheckpoint() throws {
        let temp = TemporaryDirectory()
        let directory = try binDirectory(in: temp)
        let checkpoint = try ModelCheckpoint(directory: directory)
        let reference = try ModelCheckpoint(directory: tinyDirectory)
        #expect(checkpoint.format == .pytorch && reference.format == .safetensors)
        #expect(checkpoint.files == [directory + "/pytorch_model.bin"])
        #expect(checkpoint.names == reference.names)
        #expect(checkpoint.dominantDType == .bfloat16 && checkpoint.metadata == nil)
        for name in reference.names {
            #expect(try checkpoint.info(name).shape == reference.info(name).shape)
            #expect(try checkpoint.withBytes(name) { Array($0) } == reference.withBytes(name) { Array($0) })
        }
        #expect(try MiniCPMLayout(config: MiniCPMConfig(path: directory + "/config.json")).check(checkpoint) == [])
    }

    /// Every storage type and every view torch keeps as a view (transpose, offset slice, step
    /// slice, stride-0 expand, 3-D permute, bf16 transpose, scalar, empty, Parameter) reads as
    /// torch's `.contiguous()` copy, byte for byte; the ZIP64 re-zip of the same records too.
    @Test(arguments: ["layouts.bin", "zip64.bin"])
    func viewsAndDTypesMatchTorchContiguousCopies(file: String) throws {
        let bin = try PyTorchCheckpointFile(path: variant(file))
        let reference = try SafetensorsFile(path: variant("layouts.safetensors"))
        #expect(bin.names.first == "f32" && bin.names.count == 19 && Set(bin.names) == Set(reference.names))
        for name in reference.names {
            let info = try bin.info(name)
            let expected = try reference.info(name)
            #expect(info.dtype == expected.dtype && info.shape == expected.shape, "\(name)")
            #expect(try bin.withBytes(name) { Array($0) } == Array(try reference.bytes(name)), "\(name)")
            #expect(try bin.floatTensor(name) == reference.floatTensor(name), "\(name)")
        }
        let views = ["f32.transposed", "f32.slice", "f32.step", "f32.expanded", "f32.permuted", "bf16.transposed"]
        for name in bin.names { #expect(try bin.info(name).isContiguous == !views.contains(name), "\(name)") }
        #expect(try bin.info("f32.slice").storageOffset == 8)
        #expect(try bin.info("f32.expanded").strides == [0, 1])
        #expect(try bin.floatTensor("i64").values == [-1_099_511_627_776, -1, 0, 7, 1_099_511_627_776])
        #expect(try bin.floatTensor("f32.transposed").values == [0, 6, 12, 18, 1, 7, 13, 19, 2, 8, 14, 20, 3, 9, 15, 21, 4, 10, 16, 22, 5, 11, 17, 23])
    }

    /// `pytorch_model.bin.index.json` with two shards (as transformers writes them) reads as the
    /// unsharded model; an index that omits a tensor or names the wrong shard is an error.
    @Test func shardedBinWithIndexLoads() throws {
        let directory = variant("sharded")
        let checkpoint = try ModelCheckpoint(directory: directory)
        let reference = try ModelCheckpoint(directory: tinyDirectory)
        #expect(checkpoint.format == .pytorch && checkpoint.files.count == 2)
        #expect(checkpoint.names == reference.names)
        for name in reference.names { #expect(try checkpoint.floatTensor(name) == reference.floatTensor(name)) }
        let model = try MiniCPMModel(directory: directory)
        let logits = try model.logits(for: TokenFile.read(tinyDirectory + "/tokens.txt"))
        #expect(logits.maxRelativeDifference(to: try SafetensorsFile(path: tinyDirectory + "/expected_logits.safetensors").floatTensor("logits")) <= 1e-4)

        let temp = TemporaryDirectory()
        let broken = temp.file("broken")
        try FileManager.default.copyItem(atPath: directory, toPath: broken)
        let indexPath = broken + "/" + ModelCheckpoint.pytorchIndexFileName
        let index = try SafetensorsIndex(path: indexPath)
        var missing = index.weightMap
        let dropped = MiniCPMTensorNames.embedTokens
        let removed = missing.removeValue(forKey: dropped)
        let shard = try #require(removed)
        try SafetensorsIndex(totalSize: index.totalSize, weightMap: missing).serialized().write(to: URL(fileURLWithPath: indexPath))
        #expect(throws: CheckpointError.invalidField(path: indexPath, field: "weight_map", reason: "does not list tensor '\(dropped)' of \(broken)/\(shard)")) {
            try ModelCheckpoint(directory: broken)
        }
        var wrong = index.weightMap
        let other = Set(index.weightMap.values).subtracting([shard]).first ?? shard
        wrong[dropped] = other
        try SafetensorsIndex(totalSize: index.totalSize, weightMap: wrong).serialized().write(to: URL(fileURLWithPath: indexPath))
        #expect(throws: CheckpointError.shardMissingTensor(path: broken + "/" + other, tensor: dropped)) { try ModelCheckpoint(directory: broken) }
    }

    /// forward, trace, train (all via MiniCPMModel) and show load a `.bin` directory as they load
    /// safetensors: the same weights, the published logits.
    @Test func everyDirectoryLoaderAcceptsBinDirectories() throws {
        let temp = TemporaryDirectory()
        let directory = try binDirectory(in: temp)
        let sequences = try TokenFile.read(tinyDirectory + "/tokens.txt")
        let expected = try SafetensorsFile(path: tinyDirectory + "/expected_logits.safetensors").floatTensor("logits")
        let logits = try MiniCPMModel(directory: directory).logits(for: sequences)
        #expect(logits.maxRelativeDifference(to: expected) <= 1e-4 && logits.maxAbsoluteDifference(to: expected) <= 1e-4)
        #expect(logits == (try MiniCPMModel(directory: tinyDirectory).logits(for: sequences)))
        #expect(try MiniCPMModel(directory: directory, ownedFloat32Weights: true).weights.parameterTensors
                == MiniCPMModel(directory: tinyDirectory, ownedFloat32Weights: true).weights.parameterTensors)

        let inspection = try CheckpointInspection(path: directory, includeValues: true)
        let reference = try CheckpointInspection(path: tinyDirectory, includeValues: true)
        #expect(inspection.format == .pytorch && inspection.unexpected.isEmpty && inspection.tensors.count == 20)
        #expect(inspection.tensors.map(\.name) == reference.tensors.map(\.name))
        #expect(inspection.tensors.map(\.values) == reference.tensors.map(\.values))
        #expect(inspection.tensors.allSatisfy { $0.file == "pytorch_model.bin" && $0.dtype == "BF16" })
        let file = try CheckpointInspection(path: tinyBin)
        #expect(file.format == .pytorch && file.config == nil && file.tensors.count == 20)
    }

    /// `upcycle` reads a `.bin` dense model: copy-upcycled experts are the dense MLP's bytes and
    /// the MoE reproduces the dense logits.
    @Test func upcycleReadsBinDirectories() throws {
        let temp = TemporaryDirectory()
        let directory = try binDirectory(in: temp, extra: ["tokenizer.json": "{}"])
        var options = UpcycleOptions(experts: 4, topK: 2)
        options.verifyTokens = 8
        options.progress = .quiet
        let result = try Upcycler.run(try UpcyclePlan(denseDirectory: directory, options: options), outputDirectory: temp.file("moe"),
                                      verifier: MiniCPMForwardLogits())
        #expect(result.verification?.passed == true)
        let dense = try ModelCheckpoint(directory: directory)
        let moe = try ModelCheckpoint(directory: temp.file("moe"))
        #expect(moe.format == .safetensors)
        for layer in 0 ..< 2 {
            for expert in 0 ..< 4 {
                #expect(try moe.withBytes(MiniCPMTensorNames.expertGate(layer, expert)) { Array($0) }
                        == dense.withBytes(MiniCPMTensorNames.gateProjection(layer)) { Array($0) })
            }
        }
        #expect(FileManager.default.fileExists(atPath: temp.file("moe/tokenizer.json")))
        #expect(!FileManager.default.fileExists(atPath: temp.file("moe/pytorch_model.bin")))
    }
}

// MARK: Refusing what must not be read

@Suite struct PyTorchCheckpointRefusalTests {
    /// The malicious fixture (its pickle calls `posix.system("touch /tmp/moekit-pwned")`) is refused
    /// by every entry point with an error naming `posix.system`, and nothing runs.
    @Test func maliciousPickleIsRefusedNamingTheGlobal() throws {
        let directory = Fixtures.path("refuse-me")
        let file = directory + "/pytorch_model.bin"
        let expected = CheckpointError.pytorch(.forbiddenGlobal(file: file, offset: 2, name: "posix.system"))
        #expect(throws: expected) { try ModelCheckpoint(directory: directory) }
        #expect(throws: expected) { try CheckpointInspection(path: directory) }
        #expect(throws: expected) { try CheckpointInspection(path: file) }
        #expect(throws: expected) { try MiniCPMModel(directory: directory) }
        #expect(throws: expected) { try MiniCPMModel(directory: directory, ownedFloat32Weights: true) }
        #expect(throws: UpcycleError.checkpoint(expected)) { try UpcyclePlan(denseDirectory: directory, options: UpcycleOptions(experts: 2, topK: 1)) }
        let temp = TemporaryDirectory()
        #expect(throws: expected) { try CheckpointConverter.run(directory: directory, outputDirectory: temp.file("out")) }
        #expect(!FileManager.default.fileExists(atPath: temp.file("out")))
        #expect(expected.errorDescription?.contains("posix.system") == true)
        #expect(!FileManager.default.fileExists(atPath: "/tmp/moekit-pwned"))
    }

    /// Hand-built pickles and archives (Tests/Fixtures/torch-variants/generate.py), each refused
    /// with its own error naming the file and the global, opcode, record or tensor.
    @Test func craftedCheckpointsAreRefusedWithTheirOwnError() {
        func refused(_ name: String, _ matches: (PyTorchCheckpointError, String) -> Bool) {
            let path = variant(name)
            expectPyTorchError(path) { matches($0, path) }
        }
        refused("forbidden-stack-global.bin") { $0 == .forbiddenGlobal(file: $1, offset: 18, name: "builtins.eval") }
        refused("forbidden-inst.bin") { $0 == .forbiddenGlobal(file: $1, offset: 31, name: "os.system") }
        refused("call-storage.bin") { $0 == .forbiddenCall(file: $1, offset: 23, name: "torch.FloatStorage") }
        refused("newobj.bin") { $0 == .unsupportedOpcode(file: $1, offset: 28, opcode: "NEWOBJ (0x81)") }
        refused("unknown-opcode.bin") { $0 == .unsupportedOpcode(file: $1, offset: 3, opcode: "0xFF") }
        refused("truncated-pickle.bin") { error, _ in if case .invalidPickle = error { true } else { false } }
        refused("build-on-tensor.bin") { error, _ in if case .invalidPickle(_, _, let reason) = error { reason.contains("BUILD") } else { false } }
        refused("not-a-dict.bin") { $0 == .notAStateDict(file: $1, reason: "data.pkl holds a list, not a dict") }
        refused("non-tensor-value.bin") { $0 == .notAStateDict(file: $1, reason: "'w' is an int, not a tensor") }
        refused("storage-too-small.bin") { $0 == .storageTooSmall(file: $1, tensor: "w", neededElements: 15, storageElements: 12) }
        refused("offset-past-end.bin") { $0 == .storageTooSmall(file: $1, tensor: "w", neededElements: 13, storageElements: 12) }
        refused("storage-size-mismatch.bin") { $0 == .storageSizeMismatch(file: $1, record: "storage-size-mismatch/data/0", expectedBytes: 64, actualBytes: 48) }
        refused("missing-storage.bin") { $0 == .missingRecord(file: $1, record: "missing-storage/data/7") }
        refused("negative-stride.bin") { error, _ in if case .invalidTensor(_, "w", _) = error { true } else { false } }
        refused("complex-storage.bin") { $0 == .unsupportedStorage(file: $1, tensor: "w", storageType: "torch.ComplexFloatStorage") }
        refused("deflated.bin") { $0 == .compressedRecord(file: $1, record: "layouts/byteorder", method: 8) }
        refused("bigendian.bin") { $0 == .unsupportedByteOrder(file: $1, byteOrder: "big") }
        refused("legacy.bin") { $0 == .legacyFormat(file: $1) }
    }

    /// The fixture cut at any length is an error (no end record, or a record running past the
    /// data), never a crash.
    @Test func truncatedArchivesAreErrors() throws {
        let bytes = try readBytes(tinyBin)
        let temp = TemporaryDirectory()
        let path = temp.file("cut.bin")
        var lengths = Array(0 ..< 64) + Array(stride(from: 64, to: bytes.count, by: 4099)) + Array(bytes.count - 200 ..< bytes.count)
        lengths.append(contentsOf: [2000, 2100, 2454, 40_976])
        for length in lengths {
            writeBytes(Array(bytes[..<length]), to: path)
            expectPyTorchError(path) { error in
                switch error {
                case .notZipArchive, .invalidZip, .legacyFormat: return true
                default: return false
                }
            }
        }
    }

    /// Central-directory offsets and sizes pointing elsewhere, a compressed or encrypted method,
    /// and a content byte changed behind the CRC are each a clear error.
    @Test func corruptDirectoryEntriesAreErrors() throws {
        let original = ZipEditor(bytes: try readBytes(tinyBin))
        let temp = TemporaryDirectory()
        let path = temp.file("bad.bin")
        let record = "pytorch_model/data/0"
        let entry = try #require(original.centralEntry(record))
        func check(_ edit: (inout ZipEditor) -> Void, _ matches: (PyTorchCheckpointError) -> Bool, sourceLocation: SourceLocation = #_sourceLocation) {
            var editor = original
            edit(&editor)
            writeBytes(editor.bytes, to: path)
            expectPyTorchError(path, sourceLocation: sourceLocation, matches)
        }
        // Local header offset moved by one byte: no local header there.
        check({ store(littleEndian($0.bytes, entry + 42, 4) + 1, into: &$0.bytes, at: entry + 42, count: 4) }) {
            if case .invalidZip(_, let reason) = $0 { reason.contains(record) } else { false }
        }
        // Local header offset beyond the data area.
        check({ store(0x7FFF_FFF0, into: &$0.bytes, at: entry + 42, count: 4) }) { if case .invalidZip = $0 { true } else { false } }
        // A size running past the data area.
        check({ store(0x7FFF_0000, into: &$0.bytes, at: entry + 20, count: 4); store(0x7FFF_0000, into: &$0.bytes, at: entry + 24, count: 4) }) {
            if case .invalidZip(_, let reason) = $0 { reason.contains("run past") } else { false }
        }
        // A storage record two bytes short of its storage.
        check({ store(38_398, into: &$0.bytes, at: entry + 20, count: 4); store(38_398, into: &$0.bytes, at: entry + 24, count: 4) }) {
            $0 == .storageSizeMismatch(file: path, record: record, expectedBytes: 38_400, actualBytes: 38_398)
        }
        // Compressed and encrypted methods.
        check({ $0.bytes[entry + 10] = 8 }) { $0 == .compressedRecord(file: path, record: record, method: 8) }
        check({ $0.bytes[entry + 8] |= 1 }) { $0 == .encryptedRecord(file: path, record: record) }
        // The central directory offset (in the ZIP64 end record torch writes) moved.
        check({ editor in
            let end = editor.bytes.count - 22
            let zip64End = littleEndian(editor.bytes, end - 20 + 8, 8)
            store(littleEndian(editor.bytes, zip64End + 48, 8) + 3, into: &editor.bytes, at: zip64End + 48, count: 8)
        }) { if case .invalidZip = $0 { true } else { false } }
        // A pickle byte changed without fixing the CRC.
        check({ editor in
            let start = editor.dataStart("pytorch_model/data.pkl") ?? 0
            editor.bytes[start + 10] ^= 0x20
        }) { $0 == .checksumMismatch(file: path, record: "pytorch_model/data.pkl") }
        // byteorder "big" with a valid CRC.
        check({ $0.replaceRecord("pytorch_model/byteorder", with: Array("big   ".utf8)) }) { $0 == .unsupportedByteOrder(file: path, byteOrder: "big") }
        // The tensor's size tuple grown past its storage (CRC fixed): embed_tokens [300, 64] → [301, 64].
        check({ editor in
            guard let start = editor.dataStart("pytorch_model/data.pkl") else { return }
            let length = littleEndian(editor.bytes, original.centralEntry("pytorch_model/data.pkl").map { $0 + 24 } ?? 0, 4)
            var pickle = Array(editor.bytes[start ..< start + length])
            // BININT2 300 is `M 0x2C 0x01`, first after the storage tuple.
            if let at = (0 ..< pickle.count - 2).first(where: { pickle[$0] == 0x4D && pickle[$0 + 1] == 0x2C && pickle[$0 + 2] == 0x01 }) {
                pickle[at + 1] = 0x2D
            }
            editor.replaceRecord("pytorch_model/data.pkl", with: pickle)
        }) { $0 == .storageTooSmall(file: path, tensor: MiniCPMTensorNames.embedTokens, neededElements: 301 * 64, storageElements: 300 * 64) }
    }

    /// Every one-byte change of the fixture's pickle, and every prefix of it, is either read or
    /// refused with a `PyTorchCheckpointError`; a random sample of such files (CRC fixed) goes
    /// through tensor validation too. Never a crash.
    @Test func mutatedPicklesNeverCrash() throws {
        let bytes = try readBytes(tinyBin)
        let editor = ZipEditor(bytes: bytes)
        let entry = try #require(editor.centralEntry("pytorch_model/data.pkl"))
        let start = try #require(editor.dataStart("pytorch_model/data.pkl"))
        let pickle = Array(bytes[start ..< start + littleEndian(bytes, entry + 24, 4)])
        var refused = 0, read = 0
        func attempt(_ candidate: [UInt8]) {
            candidate.withUnsafeBytes { raw in
                do { _ = try RestrictedUnpickler.loadStateDict(raw, file: "mutated"); read += 1 } catch { refused += 1 }
            }
        }
        for position in pickle.indices {
            for replacement: UInt8 in [0x00, 0xFF, pickle[position] ^ 0x01, pickle[position] &+ 1] {
                var candidate = pickle
                candidate[position] = replacement
                attempt(candidate)
            }
        }
        for length in 0 ..< pickle.count { attempt(Array(pickle[..<length])) }
        #expect(refused > pickle.count)  // every prefix at least, and most opcode changes
        #expect(read > 0)  // changed digits of sizes still read
        var random = SeededRandom(seed: 9)
        let temp = TemporaryDirectory()
        let path = temp.file("mutated.bin")
        for _ in 0 ..< 120 {
            var candidate = pickle
            candidate[Int(random.next() % UInt64(pickle.count))] = UInt8(truncatingIfNeeded: random.next())
            var mutated = bytes
            mutated.replaceSubrange(start ..< start + pickle.count, with: candidate)
            store(Int(candidate.withUnsafeBytes { CRC32.checksum($0) }), into: &mutated, at: entry + 16, count: 4)
            writeBytes(mutated, to: path)
            do {
                let file = try PyTorchCheckpointFile(path: path)
                for name in file.names { _ = try? file.floatTensor(name) }
            } catch {}
        }
    }
}

// MARK: Pieces

@Suite struct PyTorchCheckpointPieceTests {
    /// The gather of a strided view, against hand-computed views and a naive per-element loop.
    @Test func gatherMatchesHandComputedViews() {
        let storage = (0 ..< 24).map(Float.init)
        func gather(shape: [Int], strides: [Int], offset: Int) -> [Float] {
            var output = [Float](repeating: -1, count: shape.reduce(1, *))
            storage.withUnsafeBytes { source in
                output.withUnsafeMutableBytes { destination in
                    PyTorchCheckpointFile.gather(source, elementSize: 4, shape: shape, strides: strides, offset: offset, into: destination)
                }
            }
            return output
        }
        #expect(gather(shape: [3, 2], strides: [1, 3], offset: 1) == [1, 4, 2, 5, 3, 6])  // a transpose
        #expect(gather(shape: [2, 3], strides: [0, 1], offset: 2) == [2, 3, 4, 2, 3, 4])  // expand
        #expect(gather(shape: [], strides: [], offset: 5) == [5])  // scalar
        #expect(gather(shape: [2, 2], strides: [6, 2], offset: 1) == [1, 3, 7, 9])  // step slice
        #expect(gather(shape: [0, 3], strides: [3, 1], offset: 0) == [])
        // 3-D permute of a [2, 3, 4] tensor to [4, 2, 3]: naive index arithmetic.
        let shape = [4, 2, 3], strides = [1, 12, 4]
        var naive: [Float] = []
        for i in 0 ..< 4 { for j in 0 ..< 2 { for k in 0 ..< 3 { naive.append(storage[i * strides[0] + j * strides[1] + k * strides[2]]) } } }
        #expect(gather(shape: shape, strides: strides, offset: 0) == naive)
    }

    /// CRC-32 check value of the standard ("123456789" → 0xCBF43926) and of the empty input.
    @Test func crc32MatchesTheStandardCheckValue() {
        #expect(Array("123456789".utf8).withUnsafeBytes { CRC32.checksum($0) } == 0xCBF4_3926)
        #expect([UInt8]().withUnsafeBytes { CRC32.checksum($0) } == 0)
    }

    /// Containers nested 100 000 deep through the memo (a few bytes per level) are refused
    /// without overflowing the stack when the graph is released.
    @Test func deeplyNestedPicklesDoNotOverflowTheStack() {
        var pickle: [UInt8] = [0x80, 0x02, UInt8(ascii: "]"), UInt8(ascii: "q"), 0]
        // new list, fetch the previous one, append it, memoize the new one, pop it
        let level: [UInt8] = [UInt8(ascii: "]"), UInt8(ascii: "h"), 0, UInt8(ascii: "a"), UInt8(ascii: "q"), 0, UInt8(ascii: "0")]
        for _ in 0 ..< 100_000 { pickle += level }
        pickle += [UInt8(ascii: "0"), UInt8(ascii: "h"), 0, UInt8(ascii: ".")]
        #expect(throws: PyTorchCheckpointError.notAStateDict(file: "deep", reason: "data.pkl holds a list, not a dict")) {
            try pickle.withUnsafeBytes { try RestrictedUnpickler.loadStateDict($0, file: "deep") }
        }
        #expect(throws: PyTorchCheckpointError.self) {
            try Array(pickle.dropLast(4) + [UInt8(ascii: ".")]).withUnsafeBytes { try RestrictedUnpickler.loadStateDict($0, file: "deep") }
        }
    }

    /// A tuple DAG whose paths double at every level (t₁ = (t₀, t₀), t₂ = (t₁, t₁), … 64 levels,
    /// 2⁶⁴ paths) is dismantled in time linear in the pickle, not in the paths.
    @Test func sharedTuplesAreDismantledOnce() {
        var pickle: [UInt8] = [0x80, 0x02, UInt8(ascii: ")"), UInt8(ascii: "q"), 0]
        let level: [UInt8] = [UInt8(ascii: "h"), 0, UInt8(ascii: "h"), 0, 0x86, UInt8(ascii: "q"), 0, UInt8(ascii: "0")]
        for _ in 0 ..< 64 { pickle += level }
        pickle += [UInt8(ascii: "0"), UInt8(ascii: "h"), 0, UInt8(ascii: ".")]
        #expect(throws: PyTorchCheckpointError.notAStateDict(file: "dag", reason: "data.pkl holds a tuple, not a dict")) {
            try pickle.withUnsafeBytes { try RestrictedUnpickler.loadStateDict($0, file: "dag") }
        }
    }

    /// LONG1 integers (sizes beyond 2³¹), BINFLOAT, short strings, memo and DICT/LIST opcodes.
    @Test func unpicklerReadsPlainValues() throws {
        // {'a': ((2**40, -2, 1.5, [True, None]),), 'b': b'xy'} with a memo round trip, protocol 2/4 opcodes.
        var pickle: [UInt8] = [0x80, 0x02, UInt8(ascii: "(")]
        pickle += [0x8C, 1, UInt8(ascii: "a"), UInt8(ascii: "q"), 0, UInt8(ascii: "(")]
        pickle += [0x8A, 6, 0, 0, 0, 0, 0, 1]  // LONG1 2**40
        pickle += [UInt8(ascii: "J"), 0xFE, 0xFF, 0xFF, 0xFF]  // BININT -2
        pickle += [UInt8(ascii: "G"), 0x3F, 0xF8, 0, 0, 0, 0, 0, 0]  // BINFLOAT 1.5
        pickle += [UInt8(ascii: "]"), 0x88, UInt8(ascii: "a"), UInt8(ascii: "N"), UInt8(ascii: "a"), UInt8(ascii: "t")]
        pickle += [0x85, UInt8(ascii: "h"), 0, UInt8(ascii: "0")]  // wrap in a 1-tuple, fetch 'a' from memo, drop it
        pickle += [0x8C, 1, UInt8(ascii: "b"), UInt8(ascii: "C"), 2, UInt8(ascii: "x"), UInt8(ascii: "y"), UInt8(ascii: "d"), UInt8(ascii: ".")]
        let value = try pickle.withUnsafeBytes { try RestrictedUnpickler.load($0, file: "plain") }
        guard case .dict(let dict) = value else { Issue.record("not a dict: \(value.kind)"); return }
        #expect(dict.items.count == 2)
        guard case .string("a") = dict.items[0].key, case .tuple(let outerTuple) = dict.items[0].value, case .tuple(let innerTuple) = outerTuple.items.first else {
            Issue.record("unexpected structure"); return
        }
        let items = innerTuple.items
        guard items.count == 4, case .int(1 << 40) = items[0], case .int(-2) = items[1], case .float(1.5) = items[2],
              case .list(let list) = items[3], list.items.count == 2, case .bool(true) = list.items[0], case .none = list.items[1] else {
            Issue.record("unexpected items"); return
        }
        guard case .bytes([UInt8(ascii: "x"), UInt8(ascii: "y")]) = dict.items[1].value else { Issue.record("bytes"); return }
        RestrictedUnpickler.dismantle([value])
    }
}
