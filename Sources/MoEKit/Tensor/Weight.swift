import CMoEKernels

/// A model weight as the model holds it: a `[rows, columns]` matrix (PyTorch's `[out, in]`) or a
/// `[n]` vector, stored as one or more blocks of whole rows ("segments"). Each segment is either
///
/// - f32 values the model owns (`owned`): trained parameters (training's f32 master copies),
///   gradients, and weights built in memory; or
/// - bf16, f16 or f32 elements read in place (`mapped`) from a checkpoint's read-only memory map
///   (or from the bf16 copy `forCompute(.bfloat16)` rounds once from f32):
///   inference keeps every weight in its stored dtype, so a 27 GB bf16 model needs no 54 GB f32
///   copy. The mapping stays alive as long as the weight does.
///
/// Compute is f32 by default: products with a weight (`MatrixMultiply.gemm(…, timesTransposeOf:)`
/// and `gemm(…, times:)`) read bf16/f16 rows in place for a few rows of activations (decode), and
/// otherwise convert one block of rows at a time into f32 scratch just before its GEMM, or use f32
/// rows in place. `forCompute(.bfloat16)` opts a weight into bf16 arithmetic (see
/// `ComputePrecision`). Several segments make one weight without copying: gate and up
/// projections are stacked once, at load, into the fused `[2I, H]` weight of a SwiGLU layer.
public struct Weight: @unchecked Sendable {
    /// The element types a mapped segment can hold.
    public enum ElementType: Sendable, Equatable {
        case float32, bfloat16, float16

        var byteSize: Int { self == .float32 ? 4 : 2 }

        /// The element type for a safetensors dtype, when it is a float type a weight can map.
        public init?(_ dtype: SafetensorsDType) {
            switch dtype {
            case .float32: self = .float32
            case .bfloat16: self = .bfloat16
            case .float16: self = .float16
            default: return nil
            }
        }
    }

    /// One block of whole rows.
    enum Segment: @unchecked Sendable {
        /// f32 values owned by the weight, `[rows · columns]` row-major.
        case owned(Tensor)
        /// `rows · columns` little-endian elements at `base` inside a memory map.
        case mapped(base: UnsafeRawPointer, rows: Int, elementType: ElementType)

        var rows: Int {
            switch self {
            case .owned(let tensor): return tensor.rank <= 1 ? 1 : tensor.shape[0]
            case .mapped(_, let rows, _): return rows
            }
        }

        var elementType: ElementType {
            switch self {
            case .owned: return .float32
            case .mapped(_, _, let type): return type
            }
        }

        /// Whether the rows can go to sgemm in place (owned, or mapped aligned f32).
        var isInPlaceFloat: Bool {
            switch self {
            case .owned: return true
            case .mapped(let base, _, let type): return type == .float32 && Int(bitPattern: base) % MemoryLayout<Float>.alignment == 0
            }
        }
    }

    /// `[rows, columns]` or `[columns]`.
    public let shape: [Int]
    private(set) var segments: [Segment]
    /// What keeps mapped segments' memory alive (their checkpoints, or a rounded bf16 copy).
    private let owners: [AnyObject]
    /// The arithmetic of products with this weight (`forCompute(_:)`); owned f32 weights are f32.
    public private(set) var computePrecision = ComputePrecision.float32

    public var rows: Int { shape.count <= 1 ? 1 : shape[0] }
    var columns: Int { shape.last ?? 1 }
    public var elementCount: Int { shape.reduce(1, *) }

    /// A weight owning `tensor`'s f32 values.
    public init(_ tensor: Tensor) {
        precondition(tensor.rank == 1 || tensor.rank == 2, "a weight is a matrix or a vector, got \(tensor.shape)")
        shape = tensor.shape
        segments = [.owned(tensor)]
        owners = []
    }

    /// A weight read in place: `shape`'s elements of `elementType` at `base`, valid while `owner` lives.
    public init(mapping base: UnsafeRawPointer, shape: [Int], elementType: ElementType, owner: AnyObject) {
        precondition(shape.count == 1 || shape.count == 2, "a weight is a matrix or a vector, got \(shape)")
        self.shape = shape
        segments = [.mapped(base: base, rows: shape.count == 1 ? 1 : shape[0], elementType: elementType)]
        owners = [owner]
    }

    /// `parts` stacked by rows (`[Σ rows, columns]`), without copying: the fused weight of
    /// several projections of the same input.
    public init(stacking parts: [Weight]) {
        precondition(!parts.isEmpty && parts.allSatisfy { $0.shape.count == 2 && $0.columns == parts[0].columns },
                     "stacked weights must be matrices with equal columns")
        precondition(parts.allSatisfy { $0.computePrecision == parts[0].computePrecision }, "stacked weights must compute alike")
        shape = [parts.reduce(0) { $0 + $1.rows }, parts[0].columns]
        segments = parts.flatMap(\.segments)
        owners = parts.flatMap(\.owners)
        computePrecision = parts[0].computePrecision
    }

    /// Bytes of memory `forCompute(precision)` allocates: bf16 copies of the segments not stored
    /// as bf16 (for `.bfloat16`; nothing for `.float32` or a vector).
    public func bytesAllocated(forCompute precision: ComputePrecision) -> Int {
        guard precision == .bfloat16, shape.count == 2 else { return 0 }
        return segments.reduce(0) { total, segment in
            if case .mapped(_, _, .bfloat16) = segment { return total }
            return MemoryEstimate.sum(total, MemoryEstimate.product(2, segment.rows, columns))
        }
    }

    /// This weight for `precision`'s arithmetic. For `.bfloat16`, bf16 segments stay where they are
    /// (a checkpoint's memory map) and other segments are rounded once (nearest, ties to even) into
    /// a bf16 copy the weight keeps; `.float32` only changes the arithmetic (values already rounded
    /// stay rounded). Vectors are returned unchanged.
    public func forCompute(_ precision: ComputePrecision) -> Weight {
        guard shape.count == 2 else { return self }
        guard precision == .bfloat16 else {
            var copy = self
            copy.computePrecision = precision
            return copy
        }
        var newOwners = owners
        let newSegments: [Segment] = segments.map { segment in
            if case .mapped(_, _, .bfloat16) = segment { return segment }
            let storage = BFloat16Storage(count: segment.rows * columns)
            var floats = [Float].uninitialized(count: max(1, min(segment.rows * columns, 1 << 20)))
            let rowsPerBlock = max(1, floats.count / max(columns, 1))
            floats.withUnsafeMutableBufferPointer { scratch in
                for first in stride(from: 0, to: segment.rows, by: rowsPerBlock) {
                    let rows = first ..< min(segment.rows, first + rowsPerBlock)
                    Self.decode(segment, rows: rows, columns: columns, into: scratch.baseAddress!)
                    moekit_round_to_bf16(MatrixMultiply.kernelLevel, scratch.baseAddress!, storage.bits + first * columns, rows.count * columns)
                }
            }
            newOwners.append(storage)
            return .mapped(base: UnsafeRawPointer(storage.bits), rows: segment.rows, elementType: .bfloat16)
        }
        var result = Weight(stackingSegments: newSegments, shape: shape, owners: newOwners)
        result.computePrecision = .bfloat16
        return result
    }

    /// bf16 elements `forCompute(.bfloat16)` rounded from f32, freed with the last weight using them.
    private final class BFloat16Storage {
        let bits: UnsafeMutablePointer<UInt16>

        init(count: Int) { bits = .allocate(capacity: max(count, 1)) }
        deinit { bits.deallocate() }
    }

    /// Whether every segment is owned f32 (a trained parameter or a gradient).
    var isOwned: Bool {
        segments.allSatisfy { if case .owned = $0 { return true } else { return false } }
    }

    /// The element type of the first segment (for display).
    var storageType: ElementType { segments.first?.elementType ?? .float32 }

    /// Bytes of weight data held in anonymous memory (owned segments); mapped segments use the
    /// file's pages.
    var ownedByteCount: Int {
        segments.reduce(0) { if case .owned(let t) = $1 { return $0 + 4 * t.count } else { return $0 } }
    }

    /// The owned f32 tensor of segment `index` (a trained parameter's master copy or a gradient).
    func ownedTensor(_ index: Int = 0) -> Tensor {
        guard case .owned(let tensor) = segments[index] else { preconditionFailure("segment \(index) of a \(shape) weight is mapped, not owned") }
        return tensor
    }

    /// Calls `body` on the owned tensor of every segment in order (an optimiser step, a gradient
    /// accumulation). Mapped segments are a programming error here: training owns what it trains.
    mutating func updateOwnedSegments(_ body: (inout Tensor) -> Void) {
        for index in segments.indices {
            guard case .owned(var tensor) = segments[index] else { preconditionFailure("a mapped \(shape) weight cannot be updated") }
            segments[index] = .owned(Tensor(shape: [0]))  // keep the buffer uniquely referenced while body mutates it
            body(&tensor)
            segments[index] = .owned(tensor)
        }
    }

    /// An owned f32 copy of the segments in order (shapes kept): training's master copy of a
    /// weight loaded in its stored dtype.
    func owned() -> Weight {
        Weight(stackingSegments: segments.map { segment in
            switch segment {
            case .owned: return segment
            case .mapped(_, let rows, _):
                var tensor = Tensor(uninitializedShape: shape.count == 1 ? [columns] : [rows, columns])
                tensor.values.withUnsafeMutableBufferPointer { Self.decode(segment, rows: 0 ..< rows, columns: columns, into: $0.baseAddress!) }
                return .owned(tensor)
            }
        }, shape: shape)
    }

    private init(stackingSegments segments: [Segment], shape: [Int], owners: [AnyObject] = []) {
        self.shape = shape
        self.segments = segments
        self.owners = owners
    }

    /// Rows `rows` of a mapped segment as a weight of their own, sharing the mapping (no copy; the
    /// same owners keep it alive): a tile of a stored-dtype matrix for `MatrixMultiply`'s products.
    /// The rows must lie inside one mapped segment.
    func mappedRows(_ rows: Range<Int>) -> Weight {
        let (segment, local) = locate(rows.lowerBound)
        guard case .mapped(let base, let segmentRows, let type) = segment, local + rows.count <= segmentRows else {
            preconditionFailure("rows \(rows) of a \(shape) weight are not inside one mapped segment")
        }
        let start = base + local * columns * type.byteSize
        var tile = Weight(stackingSegments: [.mapped(base: start, rows: rows.count, elementType: type)], shape: [rows.count, columns], owners: owners)
        tile.computePrecision = computePrecision
        return tile
    }

    /// The whole weight as one f32 tensor of `shape` (a copy; for tests, I/O and small weights).
    func floatTensor() -> Tensor {
        var tensor = Tensor(uninitializedShape: shape)
        tensor.values.withUnsafeMutableBufferPointer { out in
            var row = 0
            for segment in segments {
                Self.decode(segment, rows: 0 ..< segment.rows, columns: columns, into: out.baseAddress! + row * columns)
                row += segment.rows
            }
        }
        return tensor
    }

    /// Zeros of the same shape and segmentation, owned (a gradient accumulator).
    func zeros() -> Weight {
        Weight(stackingSegments: segments.map { .owned(Tensor(shape: shape.count == 1 ? [columns] : [$0.rows, columns])) }, shape: shape)
    }

    /// Writes row `row` times `scale` as f32 into `destination` (`columns` values): an embedding lookup.
    func copyRow(_ row: Int, scaledBy scale: Float, into destination: UnsafeMutablePointer<Float>) {
        let (segment, local) = locate(row)
        Self.decode(segment, rows: local ..< local + 1, columns: columns, into: destination)
        if scale != 1 { for j in 0 ..< columns { destination[j] *= scale } }
    }

    /// The segment holding global row `row`, and the row's index inside it.
    func locate(_ row: Int) -> (Segment, Int) {
        precondition(row >= 0 && row < rows, "row \(row) outside a \(shape) weight")
        var start = 0
        for segment in segments {
            if row < start + segment.rows { return (segment, row - start) }
            start += segment.rows
        }
        preconditionFailure("unreachable")
    }

    /// Blocks of at most `maximumRows` whole rows, each inside one segment: `(segment, rows in the
    /// segment, first global row)`. In-place f32 segments are one block each, and so are bf16/f16
    /// segments with `wholeHalfSegments` (read in place by the GEMV kernel).
    func rowBlocks(maximumRows: Int, wholeHalfSegments: Bool = false) -> [(segment: Segment, rows: Range<Int>, globalStart: Int)] {
        var blocks: [(Segment, Range<Int>, Int)] = []
        var start = 0
        for segment in segments {
            let whole = segment.isInPlaceFloat || (wholeHalfSegments && segment.elementType != .float32)
            let size = whole ? max(segment.rows, 1) : max(1, maximumRows)
            for first in stride(from: 0, to: segment.rows, by: size) {
                let range = first ..< min(segment.rows, first + size)
                blocks.append((segment, range, start + first))
            }
            start += segment.rows
        }
        return blocks
    }

    /// Calls `body` with rows `rows` of `segment` as f32: in place for f32 segments, else
    /// converted into `scratch` (which holds at least `rows.count · columns` floats).
    static func withFloatRows<Result>(_ segment: Segment, rows: Range<Int>, columns: Int, scratch: UnsafeMutablePointer<Float>,
                                      _ body: (UnsafePointer<Float>) -> Result) -> Result {
        switch segment {
        case .owned(let tensor):
            return tensor.values.withUnsafeBufferPointer { body($0.baseAddress! + rows.lowerBound * columns) }
        case .mapped(let base, _, .float32) where segment.isInPlaceFloat:
            return body(base.assumingMemoryBound(to: Float.self) + rows.lowerBound * columns)
        case .mapped:
            decode(segment, rows: rows, columns: columns, into: scratch)
            return body(UnsafePointer(scratch))
        }
    }

    /// Converts rows `rows` of a segment to f32 at `destination`.
    static func decode(_ segment: Segment, rows: Range<Int>, columns: Int, into destination: UnsafeMutablePointer<Float>) {
        let count = rows.count * columns
        switch segment {
        case .owned(let tensor):
            tensor.values.withUnsafeBufferPointer { destination.update(from: $0.baseAddress! + rows.lowerBound * columns, count: count) }
        case .mapped(let base, _, let type):
            let start = base + rows.lowerBound * columns * type.byteSize
            switch type {
            case .float32:
                for i in 0 ..< count { destination[i] = Float(bitPattern: UInt32(littleEndian: start.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
            case .bfloat16:
                if Int(bitPattern: start) % 2 == 0 {
                    let halves = start.assumingMemoryBound(to: UInt16.self)
                    for i in 0 ..< count { destination[i] = Float(bitPattern: UInt32(UInt16(littleEndian: halves[i])) << 16) }
                } else {
                    HalfPrecision.decode(.bfloat16, from: start, count: count, into: destination)
                }
            case .float16:
                HalfPrecision.decode(.float16, from: start, count: count, into: destination)
            }
        }
    }
}
