/// A dense, row-major Float32 tensor: a shape and a flat array of values.
///
/// MoEKit computes in f32 and stores checkpoints in bf16/f16/f32; `Tensor` is the compute type.
/// The last dimension is contiguous, so a `[rows, columns]` tensor is a row-major matrix whose
/// element `(i, j)` lives at `i * columns + j`.
public struct Tensor: Sendable, Equatable {
    public private(set) var shape: [Int]
    public var values: [Float]

    /// A tensor of the given shape filled with `value`.
    public init(shape: [Int], repeating value: Float = 0) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.shape = shape
        self.values = [Float](repeating: value, count: shape.reduce(1, *))
    }

    /// A tensor of the given shape over `values` (row-major; `values.count` must equal the product of `shape`).
    public init(shape: [Int], values: [Float]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        precondition(shape.reduce(1, *) == values.count, "shape \(shape) does not hold \(values.count) values")
        self.shape = shape
        self.values = values
    }

    /// A tensor whose values are left uninitialised, for outputs that a kernel overwrites entirely
    /// (skips zero-filling large GEMM outputs on hot paths).
    public init(uninitializedShape shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.shape = shape
        self.values = .uninitialized(count: shape.reduce(1, *))
    }

    /// The number of elements, the product of `shape`.
    public var count: Int { values.count }
    /// The number of dimensions.
    var rank: Int { shape.count }
    /// For a matrix, the first dimension; for higher ranks, the product of all but the last dimension.
    public var rows: Int { shape.count <= 1 ? 1 : shape.dropLast().reduce(1, *) }
    /// The last dimension (the contiguous one).
    var columns: Int { shape.last ?? 1 }

    /// The element at `(row, column)` of a tensor viewed as `[rows, columns]`.
    subscript(row: Int, column: Int) -> Float {
        get { values[row * columns + column] }
        set { values[row * columns + column] = newValue }
    }

    /// The same values under another shape with the same number of elements.
    func reshaped(_ newShape: [Int]) -> Tensor {
        Tensor(shape: newShape, values: values)
    }

    /// Row `index` of the tensor viewed as `[rows, columns]`.
    public func row(_ index: Int) -> [Float] {
        Array(values[index * columns ..< (index + 1) * columns])
    }

    /// Rows `range` of the tensor viewed as `[rows, columns]`, as a `[range.count, columns]` tensor.
    public func rows(_ range: Range<Int>) -> Tensor {
        Tensor(shape: [range.count, columns], values: Array(values[range.lowerBound * columns ..< range.upperBound * columns]))
    }

    /// The largest absolute difference to `other` (same shape required).
    func maxAbsoluteDifference(to other: Tensor) -> Float {
        precondition(shape == other.shape, "shapes differ: \(shape) vs \(other.shape)")
        var result: Float = 0
        for i in 0 ..< count { result = max(result, abs(values[i] - other.values[i])) }
        return result
    }

    /// max|a − b| / max|b|: the relative difference MoEKit reports when it compares logits.
    public func maxRelativeDifference(to reference: Tensor) -> Float {
        let scale = reference.values.reduce(Float(0)) { max($0, abs($1)) }
        return maxAbsoluteDifference(to: reference) / max(scale, .leastNormalMagnitude)
    }
}

extension Array where Element == Float {
    /// An array of `count` floats whose contents are unspecified: only for buffers that are
    /// written in full before they are read.
    @inlinable
    static func uninitialized(count: Int) -> [Float] {
        [Float](unsafeUninitializedCapacity: count) { _, initializedCount in initializedCount = count }
    }
}
