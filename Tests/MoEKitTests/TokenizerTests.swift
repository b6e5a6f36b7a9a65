import Foundation
import Testing
@testable import MoEKit

extension JSONValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .integer(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
}

/// Small tokenizers written out by hand, as `tokenizer.json` values.
enum HandTokenizer {
    static let path = "hand/tokenizer.json"
    static let byteTokens = (0 ..< 256).map { BPEModel.byteToken(UInt8($0)) }
    /// Prepend "▁" then Replace " " → "▁": the SentencePiece-converted (Llama/MiniCPM) normaliser.
    static let sentencePieceNormalizer: JSONValue = .object(["type": "Sequence", "normalizers": .array([
        .object(["type": "Prepend", "prepend": "▁"]),
        .object(["type": "Replace", "pattern": .object(["String": " "]), "content": "▁"]),
    ])])
    static let bosTemplate: JSONValue = .object([
        "type": "TemplateProcessing",
        "single": .array([.object(["SpecialToken": .object(["id": "<s>", "type_id": 0])]), .object(["Sequence": .object(["id": "A", "type_id": 0])])]),
        "special_tokens": .object(["<s>": .object(["id": "<s>", "ids": .array([.integer(1)]), "tokens": .array(["<s>"])])]),
    ])

    /// A BPE `tokenizer.json`; token ids are positions in `vocabulary`.
    static func json(vocabulary: [String], merges: [String], unknown: String? = "<unk>", byteFallback: Bool = false, fuseUnknown: Bool = false,
                     normalizer: JSONValue = .null, preTokenizer: JSONValue = .null, postProcessor: JSONValue = .null,
                     decoder: JSONValue = .null, addedTokens: [JSONValue] = []) -> JSONValue {
        var vocab: [String: JSONValue] = [:]
        for (id, token) in vocabulary.enumerated() { vocab[token] = .integer(Int64(id)) }
        return .object([
            "version": "1.0", "truncation": .null, "padding": .null, "added_tokens": .array(addedTokens),
            "normalizer": normalizer, "pre_tokenizer": preTokenizer, "post_processor": postProcessor, "decoder": decoder,
            "model": .object(["type": "BPE", "dropout": .null, "unk_token": unknown.map(JSONValue.string) ?? .null,
                              "fuse_unk": .bool(fuseUnknown), "byte_fallback": .bool(byteFallback),
                              "vocab": .object(vocab), "merges": .array(merges.map(JSONValue.string))]),
        ])
    }

    static func addedToken(_ id: Int, _ content: String, special: Bool = true, normalized: Bool = false) -> JSONValue {
        .object(["id": .integer(Int64(id)), "content": .string(content), "single_word": false, "lstrip": false, "rstrip": false,
                 "normalized": .bool(normalized), "special": .bool(special)])
    }

    static func tokenizer(_ json: JSONValue) throws -> Tokenizer {
        try Tokenizer(TokenizerDefinition.parse(json.serialized(), path: path), path: path)
    }

    static func tokens(_ tokenizer: Tokenizer, _ text: String, _ policy: SpecialTokensPolicy = .postProcessor) throws -> [String] {
        try tokenizer.encodeWithTokens(text, specialTokens: policy).tokens
    }
}

/// The fixture's `tokenizer.json` (a SentencePiece-style BPE with byte fallback) and the ids,
/// tokens and decoded text Hugging Face `tokenizers` gives for each case of `expected.json`.
enum TokenizerFixture {
    static let directory = Fixtures.path("tokenizer-bpe-bytefallback")
    static func tokenizer() throws -> Tokenizer { try Tokenizer(modelDirectory: directory) }

    struct Case {
        var text: String
        var ids: [Int]
        var tokens: [String]
        var decoded: String
    }

    static func cases() throws -> [Case] {
        let data = try Data(contentsOf: URL(fileURLWithPath: directory + "/expected.json"))
        guard let entries = JSONValue.parse(data)?.arrayValue else { throw CocoaError(.fileReadCorruptFile) }
        return entries.compactMap { entry -> Case? in
            guard let object = entry.objectValue, let text = object["text"]?.stringValue, let decoded = object["decoded"]?.stringValue,
                  let ids = object["ids"]?.arrayValue?.compactMap({ $0.integerValue.map(Int.init) }),
                  let tokens = object["tokens"]?.arrayValue?.compactMap(\.stringValue) else { return nil }
            return Case(text: text, ids: ids, tokens: tokens, decoded: decoded)
        }
    }
}

@Suite struct TokenizerTests {
    // MARK: The fixture, against Hugging Face tokenizers' answers

    /// Every case of expected.json encodes to HF's ids and tokens and decodes to HF's text.
    @Test func fixtureCasesMatchHuggingFace() throws {
        let tokenizer = try TokenizerFixture.tokenizer()
        let cases = try TokenizerFixture.cases()
        #expect(cases.count == 10)
        for testCase in cases {
            let encoding = try tokenizer.encodeWithTokens(testCase.text)
            #expect(encoding.ids == testCase.ids, "\(testCase.text)")
            #expect(encoding.tokens == testCase.tokens, "\(testCase.text)")
            #expect(tokenizer.decode(testCase.ids) == testCase.decoded, "\(testCase.text)")
        }
        // The batch form (shared word cache) gives the same ids.
        #expect(try tokenizer.encode(cases.map(\.text)) == cases.map(\.ids))
    }

    /// Checked against HF: an added token splits the text and each side is normalised on its own
    /// ("▁" prepended to both); decoding keeps special tokens when asked.
    @Test func addedTokenInTheMiddleSplitsTheText() throws {
        let tokenizer = try TokenizerFixture.tokenizer()
        #expect(try HandTokenizer.tokens(tokenizer, "a<s>b") == ["<s>", "▁a", "<s>", "▁", "b"])
        #expect(try HandTokenizer.tokens(tokenizer, " <s> ") == ["<s>", "▁▁", "<s>", "▁▁"])
        #expect(try HandTokenizer.tokens(tokenizer, "</s></s>") == ["<s>", "</s>", "</s>"])
        #expect(try HandTokenizer.tokens(tokenizer, "\r\n") == ["<s>", "▁", "<0x0D>", "\n"])
        #expect(tokenizer.decode(try tokenizer.encode("a<s>b"), skipSpecialTokens: false) == "<s> a<s> b")
    }

    // MARK: Hand-checked tokenizers

    /// Merges apply by rank over the whole word, not left to right: with "b c" ranked before
    /// "a b", "abc" is a + bc; swapped, it is ab + c. Equal ranks go leftmost first.
    @Test func mergesApplyByRankThenLeftmost() throws {
        let vocabulary = ["<unk>", "a", "b", "c", "ab", "bc", "aa"]
        let rankFirst = try HandTokenizer.tokenizer(HandTokenizer.json(vocabulary: vocabulary, merges: ["b c", "a b"]))
        #expect(try rankFirst.encode("abc") == [1, 5])
        #expect(try rankFirst.encode("abcab") == [1, 5, 4])
        let swapped = try HandTokenizer.tokenizer(HandTokenizer.json(vocabulary: vocabulary, merges: ["a b", "b c"]))
        #expect(try swapped.encode("abc") == [4, 3])
        let repeated = try HandTokenizer.tokenizer(HandTokenizer.json(vocabulary: vocabulary, merges: ["a a"]))
        #expect(try repeated.encode("aaa") == [6, 1])
        #expect(try repeated.encode("aaaaa") == [6, 6, 1])
    }

    /// A merge's result can merge again, and the newer [left, right] merge form reads like "left right".
    @Test func mergeResultsMergeFurtherAndBothMergeFormsAgree() throws {
        let vocabulary = ["<unk>", "a", "b", "c", "ab", "abc"]
        let strings = HandTokenizer.json(vocabulary: vocabulary, merges: ["a b", "ab c"])
        guard case .object(var root) = strings, case .object(var model) = root["model"] else { Issue.record("shape"); return }
        model["merges"] = .array([.array(["a", "b"]), .array(["ab", "c"])])
        root["model"] = .object(model)
        let arrays = JSONValue.object(root)
        let fromStrings = try TokenizerDefinition.parse(strings.serialized(), path: HandTokenizer.path)
        let fromArrays = try TokenizerDefinition.parse(arrays.serialized(), path: HandTokenizer.path)
        #expect(fromStrings == fromArrays)
        #expect(try HandTokenizer.tokenizer(arrays).encode("abcab") == [5, 4])
    }

    /// A character missing from the vocabulary becomes its UTF-8 bytes (<0xNN>); characters in the
    /// vocabulary, even multi-byte ones, stay whole; with a byte token missing it is <unk>.
    @Test func byteFallbackCoversMissingCharactersOnly() throws {
        let vocabulary = ["<unk>", "a", "é"] + HandTokenizer.byteTokens
        let tokenizer = try HandTokenizer.tokenizer(HandTokenizer.json(vocabulary: vocabulary, merges: [], byteFallback: true))
        #expect(try HandTokenizer.tokens(tokenizer, "aé") == ["a", "é"])
        #expect(try HandTokenizer.tokens(tokenizer, "ñ🤖b") == ["<0xC3>", "<0xB1>", "<0xF0>", "<0x9F>", "<0xA4>", "<0x96>", "<0x62>"])
        #expect(try tokenizer.encode("ñ") == [3 + 0xC3, 3 + 0xB1])
        let partial = try HandTokenizer.tokenizer(HandTokenizer.json(vocabulary: ["<unk>", "a", "<0xC3>"], merges: [], byteFallback: true))
        #expect(try HandTokenizer.tokens(partial, "aéa") == ["a", "<unk>", "a"])
    }

    /// Unknown characters become <unk>, one per character, or one per run with fuse_unk (HF's own
    /// cases); without an unk_token they vanish; an unk_token missing from the vocabulary is an error.
    @Test func unknownCharactersAndFuseUnk() throws {
        let vocabulary = ["<unk>", "a", "b"]
        let separate = try HandTokenizer.tokenizer(HandTokenizer.json(vocabulary: vocabulary, merges: []))
        #expect(try separate.encode("accb") == [1, 0, 0, 2])
        let fused = try HandTokenizer.tokenizer(HandTokenizer.json(vocabulary: vocabulary, merges: [], fuseUnknown: true))
        #expect(try fused.encode("accb") == [1, 0, 2])
        #expect(try fused.encode("cc") == [0])
        let none = try HandTokenizer.tokenizer(HandTokenizer.json(vocabulary: vocabulary, merges: [], unknown: nil))
        #expect(try none.encode("accb") == [1, 2])
        let missing = try HandTokenizer.tokenizer(HandTokenizer.json(vocabulary: ["a"], merges: [], unknown: "<unk>"))
        #expect(try missing.encode("a") == [0])
        #expect(throws: TokenizerError.unknownTokenNotInVocabulary(path: HandTokenizer.path, token: "<unk>")) { try missing.encode("ac") }
    }

    /// The SentencePiece pipeline by hand: "▁" prepended, spaces replaced, <s> added by the
    /// template and matched in the text before normalisation; empty text is just <s>.
    @Test func sentencePiecePipelineByHand() throws {
        let vocabulary = ["<unk>", "<s>", "a", "b", "▁", "▁a"]
        let tokenizer = try HandTokenizer.tokenizer(HandTokenizer.json(
            vocabulary: vocabulary, merges: ["▁ a"], normalizer: HandTokenizer.sentencePieceNormalizer,
            postProcessor: HandTokenizer.bosTemplate, addedTokens: [HandTokenizer.addedToken(1, "<s>")]))
        #expect(try tokenizer.encode("a<s>b") == [1, 5, 1, 4, 3])
        #expect(try tokenizer.encode("a b") == [1, 5, 4, 3])
        #expect(try tokenizer.encode("") == [1])
        #expect(try tokenizer.encode("", specialTokens: .none) == [])
        #expect(try tokenizer.encode("  ") == [1, 4, 4, 4])
        #expect(try tokenizer.encode("a", specialTokens: .beginningOfSequence) == [1, 5])
        #expect(tokenizer.beginningOfSequenceIds == [1])
        let bare = try HandTokenizer.tokenizer(HandTokenizer.json(vocabulary: vocabulary, merges: []))
        #expect(throws: TokenizerError.self) { try bare.encode("a", specialTokens: .beginningOfSequence) }
        #expect(try bare.encode("a") == [2])
    }

    /// Metaspace: spaces become "▁", prepended per scheme ("first": only at the start of the
    /// input), and with `split` every "▁" opens a new word.
    @Test func metaspacePreTokenizerSplitsBeforeEveryMarker() {
        func words(_ scheme: PrependScheme, split: Bool, _ text: String, atStart: Bool = true) -> [String] {
            PreTokenizerDefinition.metaspace(replacement: "▁", prependScheme: scheme, split: split)
                .split(Array(text.utf8), atStart: atStart).map { String(decoding: $0, as: UTF8.self) }
        }
        #expect(words(.always, split: true, "Hey  friend!") == ["▁Hey", "▁", "▁friend!"])
        #expect(words(.first, split: true, "Hey friend", atStart: false) == ["Hey", "▁friend"])
        #expect(words(.always, split: true, "Hey", atStart: false) == ["▁Hey"])
        #expect(words(.never, split: true, " x") == ["▁x"])
        #expect(words(.first, split: false, "a b ") == ["▁a▁b▁"])
        #expect(words(.always, split: true, "") == [])
    }

    // MARK: Decoding

    /// Byte pieces decode to their UTF-8 text; a run that is not valid UTF-8 gives one U+FFFD per
    /// byte (HF's ByteFallback), even for its valid bytes.
    @Test func byteFallbackDecodingReplacesInvalidRunsByteForByte() throws {
        let tokenizer = try TokenizerFixture.tokenizer()
        func byte(_ value: Int) -> Int { 3 + value }  // <0x00> is id 3
        #expect(tokenizer.decode([byte(0xE5), byte(0x8F), byte(0xAB)]) == "叫")
        #expect(tokenizer.decode([byte(0xE5), byte(0x8F)]) == "\u{FFFD}\u{FFFD}")
        #expect(tokenizer.decode([byte(0x61), byte(0xE5)]) == "\u{FFFD}\u{FFFD}")
        #expect(tokenizer.decode([byte(0xE5), byte(0x8F), 340, byte(0x61)]) == "\u{FFFD}\u{FFFD} a")
        #expect(tokenizer.decode([1, 234, 340, 234, 157]) == "\u{FFFD} \u{FFFD}\u{FFFD}")  // as HF decodes it
        #expect(tokenizer.decode([99_999, 340, 340, 300]) == " P")  // unknown ids are skipped, as HF does
        #expect(DecoderDefinition.byteValue("<0x+F>") == 15 && DecoderDefinition.byteValue("<0xg1>") == nil)
    }

    /// Strip takes up to `start` leading and `stop` trailing characters from every token; the
    /// Metaspace decoder drops "▁" in the first token and turns the others into spaces.
    @Test func stripAndMetaspaceDecoders() {
        #expect(DecoderDefinition.strip(content: "H", start: 1, stop: 0).decodeChain(["Hey", " friend!", "HHH"]) == ["ey", " friend!", "HH"])
        #expect(DecoderDefinition.strip(content: "y", start: 0, stop: 1).decodeChain(["Hey", " friend!"]) == ["He", " friend!"])
        #expect(DecoderDefinition.strip(content: " ", start: 2, stop: 2).decodeChain(["   ", ""]) == ["", ""])
        #expect(DecoderDefinition.metaspace(replacement: "▁", prependScheme: .always).decodeChain(["▁Hey", "▁friend!"]) == ["Hey", " friend!"])
        #expect(DecoderDefinition.metaspace(replacement: "▁", prependScheme: .never).decodeChain(["▁Hey", "▁friend!"]) == [" Hey", " friend!"])
    }

    // MARK: The priority queue against the plain loop

    /// `mergeAll` (heap) gives what `referenceMergeAll` (rescan for the lowest rank) gives, on
    /// random words over the fixture's alphabet, including long ones.
    @Test func heapMergeMatchesReferenceLoop() throws {
        let model = try TokenizerFixture.tokenizer().model
        let alphabet = Array("▁▁▁▁eeettaaoinshrdlucmfwypvbgkjqxz,.混合专家模型的路由器 ")
        var random = SeededRandom(seed: 7)
        var workspace = BPEWorkspace()
        for trial in 0 ..< 300 {
            let length = trial < 290 ? 1 + Int(random.next() % 24) : 2000
            let word = String((0 ..< length).map { _ in alphabet[Int(random.next() % UInt64(alphabet.count))] })
            let bytes = Array(word.utf8)
            _ = bytes.withUnsafeBufferPointer { model.initialSymbols($0, into: &workspace.symbols) }
            let initial = workspace.symbols.map(\.id)
            model.mergeAll(&workspace.symbols, heap: &workspace.heap)
            let merged = workspace.symbols.filter { $0.length != 0 }.map(\.id)
            #expect(merged == model.referenceMergeAll(initial), "\(word)")
            #expect(workspace.symbols.filter { $0.length != 0 }.reduce(0) { $0 + Int($1.length) } == bytes.count)
        }
    }

    // MARK: Errors

    static func error(_ text: String) -> TokenizerError? {
        do {
            _ = try Tokenizer(TokenizerDefinition.parse(Data(text.utf8), path: HandTokenizer.path), path: HandTokenizer.path)
            return nil
        } catch {
            return error
        }
    }

    /// Malformed files name the file and the field; unsupported components name their type.
    @Test func malformedAndUnsupportedFilesAreRefusedByField() throws {
        let path = HandTokenizer.path
        let model = #""model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}"#
        #expect(Self.error(#"{"model": "#) == .invalidJSON(path: path, reason: "not a valid JSON document"))
        #expect(Self.error("{}") == .missingField(path: path, field: "model"))
        #expect(Self.error(#"{"model": {"type": "WordPiece", "vocab": {}}}"#) == .unsupported(path: path, field: "model", what: "model type 'WordPiece' (only BPE is implemented)"))
        #expect(Self.error(#"{"model": {"type": "Unigram", "vocab": []}}"#) == .unsupported(path: path, field: "model", what: "model type 'Unigram' (only BPE is implemented)"))
        #expect(Self.error(#"{"model": {"type": "BPE", "vocab": {"a": -1}}}"#) == .invalidField(path: path, field: "model.vocab.a", reason: "must be an integer in [0, 2147483647]"))
        #expect(Self.error(#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [3]}}"#) == .invalidField(path: path, field: "model.merges[0]", reason: "must be \"left right\" or [left, right]"))
        #expect(Self.error(#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a  b"]}}"#) == .invalidField(path: path, field: "model.merges[0]", reason: "must be \"left right\" with one space"))
        #expect(Self.error(#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}}"#) == .invalidField(path: path, field: "model.merges[0]", reason: "merges into 'ab', which is not in model.vocab"))
        #expect(Self.error(#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 0}}}"#) == .invalidField(path: path, field: "model.vocab", reason: "gives id 0 to both 'a' and 'b'"))
        #expect(Self.error(#"{"model": {"type": "BPE", "dropout": 0.1, "vocab": {}}}"#) == .unsupported(path: path, field: "model.dropout", what: "BPE dropout (it must be null)"))
        #expect(Self.error(#"{"pre_tokenizer": {"type": "ByteLevel"}, \#(model)}"#) == .unsupported(path: path, field: "pre_tokenizer", what: "pre-tokenizer type 'ByteLevel'"))
        #expect(Self.error(#"{"normalizer": {"type": "Sequence", "normalizers": [{"type": "Lowercase"}]}, \#(model)}"#) == .unsupported(path: path, field: "normalizer.normalizers[0]", what: "normalizer type 'Lowercase'"))
        #expect(Self.error(#"{"decoder": {"type": "Replace", "pattern": {"Regex": " +"}, "content": " "}, \#(model)}"#) == .unsupported(path: path, field: "decoder.pattern", what: "a Regex pattern"))
        #expect(Self.error(#"{"post_processor": {"type": "TemplateProcessing", "single": "<s> $A", "special_tokens": {}}, \#(model)}"#) == .invalidField(path: path, field: "post_processor.single", reason: "uses special token '<s>', missing from post_processor.special_tokens"))
        #expect(Self.error(#"{"added_tokens": [{"id": 0, "content": "b", "special": true}], \#(model)}"#) == .invalidField(path: path, field: "added_tokens[0]", reason: "gives 'b' id 0, but model.vocab has it as 1"))
        #expect(Self.error(#"{"truncation": {"max_length": 8}, \#(model)}"#) == .unsupported(path: path, field: "truncation", what: "truncation (it must be null)"))
        #expect(Self.error(#"{\#(model)}"#) == nil)
        #expect(TokenizerError.unsupported(path: path, field: "model", what: "model type 'WordPiece'").errorDescription?.contains(path) == true)
        #expect(throws: TokenizerError.missingFile(path: "/nonexistent/tokenizer.json")) { try Tokenizer(modelDirectory: "/nonexistent") }
    }

    // MARK: Text files

    /// Documents are the non-empty lines (CRLF tolerated); bad UTF-8 names the line; --text reads
    /// MODEL_DIR/tokenizer.json, whose absence is an error naming it.
    @Test func textDocumentsAndTokenSource() throws {
        let directory = TemporaryDirectory()
        let text = directory.file("docs.txt")
        try Data("Hello world\r\n\n数字 2404.06395\n".utf8).write(to: URL(fileURLWithPath: text))
        #expect(try TokenSource.documents(inTextFile: text) == ["Hello world", "数字 2404.06395"])
        let cases = try TokenizerFixture.cases()
        let source = TokenSource.textFile(text, specialTokens: .postProcessor)
        #expect(try source.read(modelDirectory: TokenizerFixture.directory) == [cases[0].ids, cases[7].ids])
        #expect(try TokenSource.textFile(text, specialTokens: .none).read(modelDirectory: TokenizerFixture.directory)
            == [Array(cases[0].ids.dropFirst()), Array(cases[7].ids.dropFirst())])
        #expect(throws: TokenizerError.missingFile(path: directory.path + "/tokenizer.json")) { try source.read(modelDirectory: directory.path) }
        try Data([0x61, 0x0A, 0xFF, 0x0A]).write(to: URL(fileURLWithPath: text))
        #expect(throws: TokenizerError.unreadableText(path: text, reason: "line 2 is not valid UTF-8")) { try TokenSource.documents(inTextFile: text) }
        try Data("\n\r\n".utf8).write(to: URL(fileURLWithPath: text))
        #expect(throws: TokenizerError.unreadableText(path: text, reason: "no text (every line is empty)")) { try TokenSource.documents(inTextFile: text) }
    }
}

/// Decoding against Hugging Face `tokenizers` on 200 random id sequences (many byte tokens, so many
/// invalid UTF-8 runs; special and unknown tokens), with the fixture's decoder and a Metaspace
/// decoder: decode-cases.json, written by make-decode-cases.py beside it.
@Suite struct TokenizerDecodeCaseTests {
    @Test func decodingMatchesHuggingFaceOnRandomIds() throws {
        let directory = TokenizerFixture.directory
        let cases = try #require(JSONValue.parse(try Data(contentsOf: URL(fileURLWithPath: directory + "/decode-cases.json")))?.objectValue)
        let fixture = try #require(JSONValue.parse(try Data(contentsOf: URL(fileURLWithPath: directory + "/tokenizer.json")))?.objectValue)
        #expect(Set(cases.keys) == ["fixture", "metaspace-first", "metaspace-never"])
        for (name, entry) in cases {
            var document = fixture
            document["decoder"] = entry.objectValue?["decoder"]
            let tokenizer = try HandTokenizer.tokenizer(.object(document))
            let list = try #require(entry.objectValue?["cases"]?.arrayValue)
            #expect(list.count == 200)
            for item in list {
                let object = try #require(item.objectValue)
                let ids = try #require(object["ids"]?.arrayValue).compactMap { $0.integerValue.map(Int.init) }
                #expect(tokenizer.decode(ids) == object["skip_special"]?.stringValue, "\(name) \(ids)")
                #expect(tokenizer.decode(ids, skipSpecialTokens: false) == object["keep_special"]?.stringValue, "\(name) \(ids)")
            }
        }
    }
}
