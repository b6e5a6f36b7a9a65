/// The `[vocab, hidden]` gradient buffers a trainer keeps from one step to the next, so that
/// `MiniCPMModel.lossAndGradients(_:microBatch:workspace:)` writes a step's largest gradients
/// into last step's memory instead of fresh allocations (at MiniCPM-1.2B shapes the head
/// gradient alone is 451 MB: a fresh one is page-faulted and zero-filled by the kernel every
/// step, as glibc serves blocks above 32 MB by `mmap`).
///
/// - The head's gradient (tied: the embedding's) is dense: the buffer is overwritten (GEMM with
///   β = 0) or zeroed in place, then accumulated as before.
/// - An untied embedding's gradient has only the rows of the step's tokens: the buffer keeps
///   the rows last step wrote, and only those are zeroed before the scatter-add.
///
/// The buffers are the step result's gradient tensors themselves; a caller that still holds
/// last step's gradients when it runs the next step gets a copy on write, not a changed result
/// (values are values). The results equal those of fresh buffers bit for bit.
final class GradientWorkspace {
    /// Last step's head gradient `[vocab, hidden]` (tied: the embedding's gradient).
    var headGradient: Tensor?
    /// Last step's untied embedding gradient `[vocab, hidden]`: zero except on `embeddingRows`.
    var embeddingGradient: Tensor?
    /// The rows of `embeddingGradient` that may be non-zero (last step's tokens).
    var embeddingRows: [Int] = []

    init() {}

    /// The head gradient's buffer of `shape`, taken out of the workspace (uniquely referenced
    /// once the caller has let go of last step's result); contents arbitrary. Nil: allocate.
    func takeHeadGradient(shape: [Int]) -> Tensor? {
        defer { headGradient = nil }
        return headGradient?.shape == shape ? headGradient : nil
    }

    /// A zero `[vocab, hidden]` embedding gradient: last step's with its written rows zeroed, or a fresh one.
    func takeZeroEmbeddingGradient(shape: [Int]) -> Tensor {
        defer { embeddingGradient = nil; embeddingRows = [] }
        guard var gradient = embeddingGradient, gradient.shape == shape else { return Tensor(shape: shape) }
        embeddingGradient = nil
        let hidden = shape[1]
        gradient.values.withUnsafeMutableBufferPointer { table in
            for row in embeddingRows { (table.baseAddress! + row * hidden).update(repeating: 0, count: hidden) }
        }
        return gradient
    }
}
