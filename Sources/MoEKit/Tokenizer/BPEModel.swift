/// Byte-pair encoding of one pre-tokenised word, exactly as Hugging Face `tokenizers`' `BPE` model
/// does it (`models/bpe/model.rs` `merge_word`, `word.rs` `merge_all`):
///
/// 1. Every character (Unicode scalar) of the word becomes its vocabulary id. A character missing
///    from the vocabulary becomes its UTF-8 bytes as `<0xNN>` tokens when `byte_fallback` is on and
///    all of them exist; otherwise the `unk_token` (consecutive unknowns fused into one when
///    `fuse_unk`), or nothing when there is no `unk_token`.
/// 2. Merges are applied by rank over the whole word: repeatedly, the adjacent pair with the lowest
///    rank (the leftmost on ties) is replaced by its merged token, until no adjacent pair has a
///    merge. `mergeAll` does this with a priority queue of (rank, position) and lazy deletion;
///    `referenceMergeAll` is the plain quadratic loop it must agree with.
///
/// With `ignore_merges`, a word that is itself in the vocabulary is that one token.
struct BPEModel: Sendable {
    let path: String
    let tokenToId: [String: Int32]
    let idToToken: [Int32: String]
    let merges: MergeTable
    /// ids of one-character tokens (-1 when absent): the Basic Multilingual Plane by table, the
    /// rest by dictionary.
    private let basicPlaneIds: [Int32]
    private let astralIds: [UInt32: Int32]
    /// ids of `<0x00>`…`<0xFF>` (-1 when absent); all -1 without byte fallback.
    private let byteIds: [Int32]
    let unknownToken: String?
    let unknownId: Int32?
    let byteFallback: Bool
    let fuseUnknown: Bool
    let ignoreMerges: Bool

    /// Words shorter than this many bytes are cached (as `tokenizers` does, `MAX_LENGTH`).
    static let cachedWordLength = 256
    static let cacheCapacity = 10_000

    init(_ definition: BPEDefinition, path: String) throws(TokenizerError) {
        self.path = path
        var tokenToId: [String: Int32] = [:]
        var idToToken: [Int32: String] = [:]
        tokenToId.reserveCapacity(definition.vocabulary.count)
        idToToken.reserveCapacity(definition.vocabulary.count)
        var basicPlaneIds = [Int32](repeating: -1, count: 0x10000)
        var astralIds: [UInt32: Int32] = [:]
        for (token, id) in definition.vocabulary {
            let id32 = Int32(id)
            if let other = idToToken[id32] {
                let (first, second) = other < token ? (other, token) : (token, other)
                throw .invalidField(path: path, field: "model.vocab", reason: "gives id \(id) to both '\(first)' and '\(second)'")
            }
            tokenToId[token] = id32
            idToToken[id32] = token
            let scalars = token.unicodeScalars
            if scalars.count == 1, let scalar = scalars.first {
                if scalar.value < 0x10000 { basicPlaneIds[Int(scalar.value)] = id32 } else { astralIds[scalar.value] = id32 }
            }
        }
        var merges = MergeTable(minimumCapacity: definition.merges.count)
        for (rank, merge) in definition.merges.enumerated() {
            let field = "model.merges[\(rank)]"
            guard let left = tokenToId[merge.left] else { throw .invalidField(path: path, field: field, reason: "names '\(merge.left)', which is not in model.vocab") }
            guard let right = tokenToId[merge.right] else { throw .invalidField(path: path, field: field, reason: "names '\(merge.right)', which is not in model.vocab") }
            guard let merged = tokenToId[merge.left + merge.right] else {
                throw .invalidField(path: path, field: field, reason: "merges into '\(merge.left + merge.right)', which is not in model.vocab")
            }
            merges.insert(left: left, right: right, MergeTable.Merge(rank: UInt32(rank), newId: merged))
        }
        var byteIds = [Int32](repeating: -1, count: 256)
        if definition.byteFallback {
            for byte in 0 ..< 256 { byteIds[byte] = tokenToId[Self.byteToken(UInt8(byte))] ?? -1 }
        }
        self.tokenToId = tokenToId
        self.idToToken = idToToken
        self.merges = merges
        self.basicPlaneIds = basicPlaneIds
        self.astralIds = astralIds
        self.byteIds = byteIds
        unknownToken = definition.unknownToken
        unknownId = definition.unknownToken.flatMap { tokenToId[$0] }
        byteFallback = definition.byteFallback
        fuseUnknown = definition.fuseUnknown
        ignoreMerges = definition.ignoreMerges
    }

    /// `<0xNN>`, upper-case hex, as SentencePiece names its byte pieces.
    static func byteToken(_ byte: UInt8) -> String {
        let digits = Array("0123456789ABCDEF".utf8)
        return String(decoding: [UInt8(ascii: "<"), UInt8(ascii: "0"), UInt8(ascii: "x"), digits[Int(byte >> 4)], digits[Int(byte & 15)], UInt8(ascii: ">")], as: UTF8.self)
    }

    // MARK: Tokenising one word

    /// Appends the ids of `word` (valid UTF-8) to `ids`.
    func tokenize(_ word: [UInt8], into ids: inout [Int], workspace: inout BPEWorkspace) throws(TokenizerError) {
        guard !word.isEmpty else { return }
        if ignoreMerges, let id = tokenToId[String(decoding: word, as: UTF8.self)] {
            ids.append(Int(id))
            return
        }
        let cacheable = word.count < Self.cachedWordLength
        if cacheable, let cached = workspace.cache[word] {
            for id in cached { ids.append(Int(id)) }
            return
        }
        let complete = word.withUnsafeBufferPointer { initialSymbols($0, into: &workspace.symbols) }
        guard complete else { throw .unknownTokenNotInVocabulary(path: path, token: unknownToken ?? "") }
        mergeAll(&workspace.symbols, heap: &workspace.heap)
        let start = ids.count
        for symbol in workspace.symbols where symbol.length != 0 { ids.append(Int(symbol.id)) }
        if cacheable && workspace.cache.count < Self.cacheCapacity {
            workspace.cache[word] = ids[start...].map { Int32($0) }
        }
    }

    /// Step 1: one symbol per character, or per byte (fallback), or one per run of unknowns.
    /// `false` when an unknown character needs the `unk_token` and it is not in the vocabulary.
    func initialSymbols(_ word: UnsafeBufferPointer<UInt8>, into symbols: inout [BPESymbol]) -> Bool {
        symbols.removeAll(keepingCapacity: true)
        var pendingUnknown: (id: Int32, length: Int32)? = nil
        var index = 0
        let count = word.count
        while index < count {
            let lead = word[index]
            let length = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4
            let end = min(index + length, count)
            var id: Int32 = -1
            if lead < 0x80 {
                id = basicPlaneIds[Int(lead)]
            } else {
                var scalar = UInt32(lead) & (length == 2 ? 0x1F : length == 3 ? 0x0F : 0x07)
                for position in index + 1 ..< end { scalar = scalar << 6 | UInt32(word[position] & 0x3F) }
                id = scalar < 0x10000 ? basicPlaneIds[Int(scalar)] : astralIds[scalar] ?? -1
            }
            if id >= 0 {
                if let unknown = pendingUnknown {
                    Self.append(unknown.id, length: unknown.length, to: &symbols)
                    pendingUnknown = nil
                }
                Self.append(id, length: Int32(end - index), to: &symbols)
            } else {
                var coveredByBytes = byteFallback
                if byteFallback {
                    for position in index ..< end where byteIds[Int(word[position])] < 0 { coveredByBytes = false }
                }
                if coveredByBytes {
                    // NOTE: as in tokenizers, a pending unknown is not flushed before these bytes.
                    for position in index ..< end { Self.append(byteIds[Int(word[position])], length: 1, to: &symbols) }
                } else if unknownToken != nil {
                    guard let unknownId else { return false }
                    if let unknown = pendingUnknown, fuseUnknown {
                        pendingUnknown = (unknown.id, unknown.length + Int32(end - index))
                    } else {
                        if let unknown = pendingUnknown { Self.append(unknown.id, length: unknown.length, to: &symbols) }
                        pendingUnknown = (unknownId, Int32(end - index))
                    }
                }
            }
            index = end
        }
        if let unknown = pendingUnknown { Self.append(unknown.id, length: unknown.length, to: &symbols) }
        return true
    }

    @inline(__always) private static func append(_ id: Int32, length: Int32, to symbols: inout [BPESymbol]) {
        let position = Int32(symbols.count)
        if position > 0 { symbols[Int(position) - 1].next = position }
        symbols.append(BPESymbol(id: id, previous: position - 1, next: -1, length: length))
    }

    // MARK: Step 2, merging

    /// Applies merges lowest rank first (leftmost on ties) with a binary min-heap keyed by
    /// rank·2³² + position. Entries go stale when a neighbour merges; a popped entry is used only if
    /// its symbol is still alive, still has a right neighbour, and that pair still merges into the
    /// entry's id (the check `tokenizers` makes). Merged-away symbols keep `length == 0`.
    func mergeAll(_ symbols: inout [BPESymbol], heap: inout MergeHeap) {
        let count = symbols.count
        guard count > 1 else { return }
        heap.removeAll()
        symbols.withUnsafeMutableBufferPointer { symbols in
            for position in 0 ..< count - 1 {
                if let merge = merges.lookup(symbols[position].id, symbols[position + 1].id) {
                    heap.push(rank: merge.rank, position: Int32(position), newId: merge.newId)
                }
            }
            while let top = heap.pop() {
                let position = Int(top.position)
                let current = symbols[position]
                guard current.length != 0, current.next >= 0 else { continue }
                let nextPosition = Int(current.next)
                let right = symbols[nextPosition]
                guard let merge = merges.lookup(current.id, right.id), merge.newId == top.newId else { continue }
                symbols[position].id = top.newId
                symbols[position].length += right.length
                symbols[position].next = right.next
                symbols[nextPosition].length = 0
                if right.next >= 0 { symbols[Int(right.next)].previous = Int32(position) }
                let merged = symbols[position]
                if merged.previous >= 0, let merge = merges.lookup(symbols[Int(merged.previous)].id, merged.id) {
                    heap.push(rank: merge.rank, position: merged.previous, newId: merge.newId)
                }
                if merged.next >= 0, let merge = merges.lookup(merged.id, symbols[Int(merged.next)].id) {
                    heap.push(rank: merge.rank, position: Int32(position), newId: merge.newId)
                }
            }
        }
    }

    /// The plain loop `mergeAll` must agree with: find the adjacent pair of lowest rank (leftmost on
    /// ties), merge it, repeat — O(n²) per word. For tests.
    func referenceMergeAll(_ ids: [Int32]) -> [Int32] {
        var ids = ids
        while true {
            var best: (index: Int, merge: MergeTable.Merge)? = nil
            for index in 0 ..< max(ids.count - 1, 0) {
                if let merge = merges.lookup(ids[index], ids[index + 1]), best.map({ merge.rank < $0.merge.rank }) ?? true {
                    best = (index, merge)
                }
            }
            guard let (index, merge) = best else { return ids }
            ids.replaceSubrange(index ... index + 1, with: [merge.newId])
        }
    }
}

/// A symbol of a word being merged: a doubly linked list laid out in an array.
struct BPESymbol: Equatable, Sendable {
    var id: Int32
    var previous: Int32
    var next: Int32
    /// Bytes of the word it covers; 0 once merged into its left neighbour.
    var length: Int32
}

/// Scratch space reused across words (no allocation per word) and the word → ids cache.
struct BPEWorkspace {
    var symbols: [BPESymbol] = []
    var heap = MergeHeap()
    var cache: [[UInt8]: [Int32]] = [:]
}

/// A binary min-heap of pending merges ordered by (rank, position).
struct MergeHeap {
    struct Entry {
        var key: UInt64  // rank << 32 | position
        var newId: Int32
        var position: Int32 { Int32(truncatingIfNeeded: key & 0xFFFF_FFFF) }
    }
    private var entries: [Entry] = []

    mutating func removeAll() { entries.removeAll(keepingCapacity: true) }

    mutating func push(rank: UInt32, position: Int32, newId: Int32) {
        var child = entries.count
        let entry = Entry(key: UInt64(rank) << 32 | UInt64(UInt32(bitPattern: position)), newId: newId)
        entries.append(entry)
        entries.withUnsafeMutableBufferPointer { heap in
            while child > 0 {
                let parent = (child - 1) / 2
                guard heap[parent].key > entry.key else { break }
                heap[child] = heap[parent]
                child = parent
            }
            heap[child] = entry
        }
    }

    mutating func pop() -> Entry? {
        guard let last = entries.popLast() else { return nil }
        guard !entries.isEmpty else { return last }
        return entries.withUnsafeMutableBufferPointer { heap -> Entry in
            let top = heap[0]
            let count = heap.count
            var parent = 0
            while true {
                var child = 2 * parent + 1
                guard child < count else { break }
                if child + 1 < count && heap[child + 1].key < heap[child].key { child += 1 }
                guard heap[child].key < last.key else { break }
                heap[parent] = heap[child]
                parent = child
            }
            heap[parent] = last
            return top
        }
    }
}
