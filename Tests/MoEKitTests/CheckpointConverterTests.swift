import Foundation
import Testing
@testable import MoEKit

/// `moekit convert`: a `.bin` model directory rewritten as safetensors holds the same tensors
/// (bytes when the dtype is kept), the same config and the other files, and appears atomically.
@Suite struct CheckpointConverterTests {
    private let tiny = Fixtures.path("minicpm-tiny-torch")

    private func binDirectory(_ temp: TemporaryDirectory) throws -> String {
        let path = temp.file("bin")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        for name in ["config.json", "pytorch_model.bin"] { try FileManager.default.copyItem(atPath: tiny + "/" + name, toPath: path + "/" + name) }
        try Data(#"{"model": {"type": "BPE"}}"#.utf8).write(to: URL(fileURLWithPath: path + "/tokenizer.json"))
        try Data(#"{"bos_token_id": 1}"#.utf8).write(to: URL(fileURLWithPath: path + "/generation_config.json"))
        return path
    }

    /// Kept dtypes: one `model.safetensors` whose tensors are byte-identical to the fixture's own
    /// safetensors, config.json byte-identical, tokenizer and generation config copied.
    @Test func convertedBinIsTheSameModel() throws {
        let temp = TemporaryDirectory()
        let source = try binDirectory(temp)
        let result = try CheckpointConverter.run(directory: source, outputDirectory: temp.file("out"), options: .init(progress: .quiet))
        #expect(result.sourceFormat == .pytorch && result.weightFiles == ["model.safetensors"] && result.tensorCount == 20)
        #expect(result.copiedFiles == ["config.json", "generation_config.json", "tokenizer.json"])
        let output = try ModelCheckpoint(directory: temp.file("out"))
        let reference = try ModelCheckpoint(directory: tiny)
        #expect(output.format == .safetensors && output.metadata == ["format": "pt"])
        #expect(output.names == reference.names)
        for name in reference.names {
            #expect(try output.info(name).dtype == reference.info(name).dtype)
            #expect(try output.withBytes(name) { Array($0) } == reference.withBytes(name) { Array($0) })
        }
        for name in ["config.json", "tokenizer.json", "generation_config.json"] {
            #expect(FileManager.default.contents(atPath: temp.file("out/" + name)) == FileManager.default.contents(atPath: source + "/" + name))
        }
        #expect(directoryEntries(temp.path).sorted() == ["bin", "out"])
    }

    /// `--dtype f32` converts every float tensor (torch_dtype updated), keeps integer and bool
    /// tensors as they are, and materialises views; small shards give an index.
    @Test func dtypeConversionAndShardsKeepValues() throws {
        let temp = TemporaryDirectory()
        let source = temp.file("layouts")
        try FileManager.default.createDirectory(atPath: source, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Fixtures.path("torch-variants/layouts.bin"), toPath: source + "/pytorch_model.bin")
        try Data(#"{"torch_dtype": "bfloat16", "custom": [1, 2]}"#.utf8).write(to: URL(fileURLWithPath: source + "/config.json"))
        let result = try CheckpointConverter.run(directory: source, outputDirectory: temp.file("out"),
                                                 options: .init(dtype: .float32, maximumShardBytes: 200, progress: .quiet))
        #expect(result.weightFiles.count > 2 && result.weightFiles.last == SafetensorsIndex.fileName)
        let output = try ModelCheckpoint(directory: temp.file("out"))
        let reference = try SafetensorsFile(path: Fixtures.path("torch-variants/layouts.safetensors"))
        #expect(output.names == reference.names.sorted())
        for name in reference.names {
            let original = try reference.info(name).dtype
            let converted = try output.info(name).dtype
            let isFloat = [SafetensorsDType.float32, .float16, .bfloat16, .float64].contains(original)
            #expect(converted == (isFloat ? .float32 : original), "\(name)")
            #expect(try output.floatTensor(name) == reference.floatTensor(name), "\(name)")
            if !isFloat { #expect(try output.withBytes(name) { Array($0) } == Array(try reference.bytes(name)), "\(name)") }
        }
        guard case .object(let config)? = JSONValue.parse(try Data(contentsOf: URL(fileURLWithPath: temp.file("out/config.json")))) else {
            Issue.record("config.json is not an object"); return
        }
        #expect(config["torch_dtype"] == .string("float32") && config["custom"] == .array([.integer(1), .integer(2)]))
    }

    /// An existing output is refused (and kept) unless replaceExisting; the source itself is never
    /// a valid output; a directory without config.json is refused before anything is written.
    @Test func refusesExistingOutputsAndItsOwnSource() throws {
        let temp = TemporaryDirectory()
        let source = try binDirectory(temp)
        try FileManager.default.createDirectory(atPath: temp.file("out"), withIntermediateDirectories: true)
        #expect(throws: CheckpointError.file(.alreadyExists(path: temp.file("out")))) {
            try CheckpointConverter.run(directory: source, outputDirectory: temp.file("out"), options: .init(progress: .quiet))
        }
        _ = try CheckpointConverter.run(directory: source, outputDirectory: temp.file("out"), options: .init(replaceExisting: true, progress: .quiet))
        #expect(FileManager.default.fileExists(atPath: temp.file("out/model.safetensors")))
        #expect(throws: CheckpointError.self) {
            try CheckpointConverter.run(directory: source, outputDirectory: source, options: .init(replaceExisting: true, progress: .quiet))
        }
        #expect(FileManager.default.fileExists(atPath: source + "/pytorch_model.bin"))
        try FileManager.default.removeItem(atPath: source + "/config.json")
        #expect(throws: CheckpointError.missingFile(path: source + "/config.json")) {
            try CheckpointConverter.run(directory: source, outputDirectory: temp.file("again"), options: .init(progress: .quiet))
        }
        #expect(!FileManager.default.fileExists(atPath: temp.file("again")))
    }
}
