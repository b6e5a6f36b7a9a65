import Foundation

// libFuzzer targets for every parser of outside input. This file is compiled together with
// Sources/MoEKit (one module, so internal entry points are reachable) by Fuzz/fuzz.sh with
// `-sanitize=fuzzer,address`. One binary holds every target; MOEKIT_FUZZ_TARGET picks one.
// A target returns normally for any input: a thrown error is the expected answer to bad input;
// a crash, an address-sanitizer report, a timeout or a memory blow-up is a finding.

enum FuzzTarget: String, CaseIterable {
    /// `SafetensorsFile(path:)`: the 8-byte length, the JSON header, offsets, dtypes, shapes.
    case safetensors
    /// `PyTorchCheckpointFile(path:)`: the zip reader (local and central headers, ZIP64) and the
    /// restricted unpickler over the archive's `data.pkl`, storages checked against tensors.
    case torchZip = "torch-zip"
    /// `RestrictedUnpickler.loadStateDict` on raw pickle bytes.
    case pickle
    /// `tokenizer.json` parsing and validation, then encoding and decoding a fixed text with it.
    case tokenizerJSON = "tokenizer-json"
    /// The shipped test tokenizer encoding the input as text (special tokens, normaliser, BPE,
    /// byte fallback), decoding the ids again, and the text-file document splitter.
    case tokenizerText = "tokenizer-text"
    /// `config.json`: JSON parsing, `MiniCPMConfig`, limits, the tensor layout's parameter counts.
    case config
    /// Token ids as text (`.txt`) for `forward`/`trace` and `train`.
    case tokensText = "tokens-txt"
    /// Token ids as a NumPy `.npy`.
    case tokensNpy = "tokens-npy"
    /// Raw `uint16`/`uint32` `.bin` token data (the first input byte picks the width).
    case tokensRaw = "tokens-raw"
    /// A routing log (HDF5): `RoutingLogReader` and the `inspect` summary.
    case routingLog = "routing-log"
}

nonisolated(unsafe) private var target: FuzzTarget = .safetensors
nonisolated(unsafe) private var scratchDirectory = ""
nonisolated(unsafe) private var fixedTokenizer: Tokenizer?

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> Int32 {
    let environment = ProcessInfo.processInfo.environment
    guard let name = environment["MOEKIT_FUZZ_TARGET"], let chosen = FuzzTarget(rawValue: name) else {
        FileHandle.standardError.write(Data("set MOEKIT_FUZZ_TARGET to one of: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", "))\n".utf8))
        exit(2)
    }
    target = chosen
    scratchDirectory = (FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()) + "/moekit-fuzz-\(getpid())"
    try? FileManager.default.createDirectory(atPath: scratchDirectory, withIntermediateDirectories: true)
    if chosen == .tokenizerText || chosen == .tokenizerJSON {
        let path = environment["MOEKIT_FUZZ_TOKENIZER"] ?? "Tests/Fixtures/tokenizer-bpe-bytefallback/tokenizer.json"
        fixedTokenizer = try? Tokenizer(contentsOf: path)
        if chosen == .tokenizerText && fixedTokenizer == nil {
            FileHandle.standardError.write(Data("cannot load the tokenizer \(path) (MOEKIT_FUZZ_TOKENIZER)\n".utf8))
            exit(2)
        }
    }
    return 0
}

/// Writes the input to a file of the scratch directory named `name` and returns its path.
private func scratchFile(_ name: String, _ bytes: UnsafeRawBufferPointer) -> String {
    let path = scratchDirectory + "/" + name
    _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
    return path
}

private let fixedText = "Hello world, héllo wörld! 123 <s> ▁▁ \t\n 日本語 🙂"

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    switch target {
    case .safetensors:
        let path = scratchFile("model.safetensors", bytes)
        if let file = try? SafetensorsFile(path: path) {
            for name in file.names.prefix(8) { _ = try? file.floatTensor(name) }
        }
    case .torchZip:
        let path = scratchFile("pytorch_model.bin", bytes)
        if let file = try? PyTorchCheckpointFile(path: path) {
            for name in file.names.prefix(8) { _ = try? file.withBytes(name) { $0.reduce(UInt8(0), &+) } }
        }
    case .pickle:
        _ = try? RestrictedUnpickler.loadStateDict(bytes, file: "data.pkl")
    case .tokenizerJSON:
        if let definition = try? TokenizerDefinition.parse(Data(bytes), path: "tokenizer.json"),
           let tokenizer = try? Tokenizer(definition, path: "tokenizer.json") {
            if let ids = try? tokenizer.encode(fixedText) { _ = tokenizer.decode(ids, skipSpecialTokens: false) }
            _ = try? tokenizer.encodeWithTokens(fixedText, specialTokens: .none)
        }
    case .tokenizerText:
        guard let tokenizer = fixedTokenizer else { return 0 }
        let text = String(decoding: bytes, as: UTF8.self)
        if let ids = try? tokenizer.encode(text) { _ = tokenizer.decode(ids, skipSpecialTokens: false) }
        _ = try? tokenizer.encodeWithTokens(text, specialTokens: .none)
        _ = tokenizer.decode(bytes.prefix(64).map { Int($0) * 131 - 100 })
        let path = scratchFile("text.txt", bytes)
        _ = try? TokenSource.documents(inTextFile: path)
    case .config:
        if let json = JSONValue.parse(Data(bytes)), let config = try? MiniCPMConfig(json: json, path: "config.json") {
            _ = MiniCPMLayout(config: config).parameterCounts
            _ = MemoryEstimate.trainingBytes(config, batch: 8, seq: 128)
            _ = config.serialized()
        }
    case .tokensText:
        let path = scratchFile("tokens.txt", bytes)
        _ = try? TokenFile.read(path)
        _ = try? TokenDataset(path: path, vocabularySize: 50_000)
    case .tokensNpy:
        let path = scratchFile("tokens.npy", bytes)
        _ = try? TokenFile.read(path)
        _ = try? TokenDataset(path: path, vocabularySize: 50_000)
    case .tokensRaw:
        guard let first = bytes.first else { return 0 }
        let path = scratchFile("tokens.bin", UnsafeRawBufferPointer(rebasing: bytes.dropFirst()))
        _ = try? TokenDataset(path: path, vocabularySize: first & 1 == 0 ? 50_000 : 200_000, binaryDataType: first & 2 == 0 ? nil : .uint32)
    case .routingLog:
        let path = scratchFile("routing.h5", bytes)
        if let reader = try? RoutingLogReader(path: path) {
            _ = try? RoutingLogInspection(reader: reader)
            if reader.stepCount > 0 { _ = try? reader.step(at: reader.stepCount - 1) }
        }
    }
    return 0
}
