/// BPE merge ranks keyed by the packed pair (left id, right id): an open-addressing hash table of
/// `UInt64` keys, probed linearly. It answers the hot question of `BPEModel.mergeAll` — "do these
/// two neighbours merge, at which rank, into which id?" — without hashing strings or SipHash.
struct MergeTable: Sendable {
    struct Merge: Equatable, Sendable {
        var rank: UInt32
        var newId: Int32
    }

    private static let empty = UInt64.max
    private var keys: [UInt64]
    private var values: [Merge]
    private var mask: Int
    private var shift: UInt64
    private(set) var count = 0

    init(minimumCapacity: Int) {
        var capacity = 16
        while capacity < 2 * minimumCapacity { capacity *= 2 }
        keys = [UInt64](repeating: Self.empty, count: capacity)
        values = [Merge](repeating: Merge(rank: 0, newId: 0), count: capacity)
        mask = capacity - 1
        shift = UInt64(64 - capacity.trailingZeroBitCount)
    }

    @inline(__always) static func key(_ left: Int32, _ right: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
    }

    @inline(__always) private func slot(_ key: UInt64) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> shift)  // Fibonacci hashing
    }

    /// Sets the merge of (left, right), replacing an earlier one (a later duplicate line in
    /// `merges` wins, as in `tokenizers`' map).
    mutating func insert(left: Int32, right: Int32, _ merge: Merge) {
        let key = Self.key(left, right)
        var index = slot(key)
        while keys[index] != Self.empty && keys[index] != key { index = (index + 1) & mask }
        if keys[index] == Self.empty { count += 1 }
        keys[index] = key
        values[index] = merge
    }

    @inline(__always) func lookup(_ left: Int32, _ right: Int32) -> Merge? {
        let key = Self.key(left, right)
        return keys.withUnsafeBufferPointer { keys -> Merge? in
            var index = slot(key)
            while true {
                let stored = keys[index]
                if stored == key { return values[index] }
                if stored == Self.empty { return nil }
                index = (index + 1) & mask
            }
        }
    }
}
