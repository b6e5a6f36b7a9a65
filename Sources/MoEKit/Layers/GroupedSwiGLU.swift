import Foundation

/// The SwiGLU experts of an MoE layer on their gathered blocks, scheduled as one pool of tiles over
/// all experts (`ParallelTiles`; llama.cpp's `mul_mat_id`), not one small GEMM after another.
/// Expert e's rows are `blocks[e]` of the gathered input: the dispatch plan's per-expert token
/// lists, of any length (none, or every token), so top-k, expert choice and variable-k routing
/// are all the same to it. Formulas as in `SwiGLULayer`; x `[A, H]` gathered, W_g, W_u `[I, H]`, W_d `[H, I]`.
///
/// Forward, two phases (the down projection needs whole rows of a):
///
///     1. tile (e, columns c ⊂ I):  g = x_e·W_g[c]ᵀ, u = x_e·W_u[c]ᵀ, a_e[:, c] = silu(g) ⊙ u
///     2. tile (e, columns c ⊂ H):  y_e[:, c] = a_e·W_d[c]ᵀ
///
/// Backward, two phases:
///
///     1. tile (e, columns c ⊂ I):  da = dy_e·W_d[:, c] → [dg | du][:, c];  dW_d[:, c] = dy_eᵀ·a_e[:, c];
///                                  dW_g[c] = dgᵀ·x_e,  dW_u[c] = duᵀ·x_e
///     2. tile (e, columns c ⊂ H):  dx_e[:, c] = dg_e·W_g[:, c] + du_e·W_u[:, c]
///
/// Every tile writes its own columns once, with single-threaded GEMMs: the schedule changes no
/// result beyond sgemm's summation order for the tile's shape. A tile reads a `tileColumns`-row
/// slice of one weight (stored dtype kept: mapped bf16 rows go through `MatrixMultiply`'s
/// product with a `Weight`). The plain twin is `SwiGLULayer.forwardBlock`/`backwardBlock` run
/// expert after expert (`referenceForward`, `referenceBackward`); tests compare the two.
enum GroupedSwiGLU {
    /// Output columns per tile: wide enough that sgemm's packing of x_e is a small share of the
    /// tile's work, narrow enough that E·I/128 tiles balance two to a few dozen workers.
    static let tileColumns = 128

    struct Tile: Equatable {
        let expert: Int
        let columns: Range<Int>
    }

    /// (expert, column range) for every expert with rows, columns `0 ..< width` cut every `tileColumns`.
    static func tiles(blocks: [Range<Int>], width: Int, tileColumns: Int) -> [Tile] {
        var result: [Tile] = []
        for (expert, block) in blocks.enumerated() where !block.isEmpty {
            for start in stride(from: 0, to: width, by: tileColumns) {
                result.append(Tile(expert: expert, columns: start ..< min(width, start + tileColumns)))
            }
        }
        return result
    }

    // MARK: Forward

    /// x `[A, H]` gathered → y `[A, H]` (each expert's rows through that expert). With `gateUp`
    /// (`[A, 2I]`, training), each row's [g | u] is kept there; without, g and u live in per-worker
    /// scratch. `activated` `[A, I]` receives a = silu(g) ⊙ u.
    static func forward(blocks: [Range<Int>], input: UnsafePointer<Float>, experts: [SwiGLUWeights],
                        gateUp: UnsafeMutablePointer<Float>?, activated: UnsafeMutablePointer<Float>, output: UnsafeMutablePointer<Float>,
                        tileColumns: Int = tileColumns, workers: Int = ParallelTiles.workerCount) {
        guard let firstExpert = experts.first else { return }
        let hidden = firstExpert.hiddenSize, intermediate = firstExpert.intermediateSize
        precondition(blocks.count == experts.count, "grouped SwiGLU: \(blocks.count) blocks for \(experts.count) experts")
        let largestBlock = blocks.map(\.count).max() ?? 0
        guard largestBlock > 0 else { return }
        let scratchWidth = 2 * min(tileColumns, intermediate)
        let scratchPerWorker = gateUp == nil ? largestBlock * scratchWidth : 0
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: max(1, workers * scratchPerWorker))
        defer { scratch.deallocate() }

        // bf16 compute rounds each operand once here, not once per tile (45 tiles per expert at
        // MiniCPM-2.4B's widths).
        let gatheredRows = blocks.map(\.upperBound).max() ?? 0
        let roundedInput = firstExpert.gateUp.computePrecision == .bfloat16
            ? MatrixMultiply.roundedToBFloat16(m: gatheredRows, a: input, lda: hidden, columns: hidden) : []

        let first = tiles(blocks: blocks, width: intermediate, tileColumns: tileColumns)
        ParallelTiles.run(tiles: first.count, workers: workers) { index, worker in
            let tile = first[index], block = blocks[tile.expert], rows = block.count, c = tile.columns
            let x = input + block.lowerBound * hidden
            let (gate, up, stride): (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>, Int)
            if let gateUp {
                gate = gateUp + block.lowerBound * 2 * intermediate + c.lowerBound
                up = gate + intermediate
                stride = 2 * intermediate
            } else {
                gate = scratch + worker * scratchPerWorker
                up = gate + c.count
                stride = scratchWidth
            }
            let w = experts[tile.expert].gateUp
            roundedInput.withUnsafeBufferPointer { roundedX in
                let xBF16 = roundedX.isEmpty ? nil : roundedX.baseAddress! + block.lowerBound * hidden
                gemm(m: rows, a: x, bfloat16A: xBF16, lda: hidden, timesTransposeOfRows: c, of: w, c: gate, ldc: stride)
                gemm(m: rows, a: x, bfloat16A: xBF16, lda: hidden, timesTransposeOfRows: (intermediate + c.lowerBound) ..< (intermediate + c.upperBound),
                     of: w, c: up, ldc: stride)
            }
            for r in 0 ..< rows {
                let g = gate + r * stride, u = up + r * stride
                let a = activated + (block.lowerBound + r) * intermediate + c.lowerBound
                for j in 0 ..< c.count { let v = g[j]; a[j] = v / (1 + expf(-v)) * u[j] }
            }
        }
        let roundedActivated = firstExpert.down.computePrecision == .bfloat16
            ? MatrixMultiply.roundedToBFloat16(m: gatheredRows, a: activated, lda: intermediate, columns: intermediate) : []
        let second = tiles(blocks: blocks, width: hidden, tileColumns: tileColumns)
        ParallelTiles.run(tiles: second.count, workers: workers) { index, _ in
            let tile = second[index], block = blocks[tile.expert]
            roundedActivated.withUnsafeBufferPointer { roundedA in
                gemm(m: block.count, a: activated + block.lowerBound * intermediate,
                     bfloat16A: roundedA.isEmpty ? nil : roundedA.baseAddress! + block.lowerBound * intermediate, lda: intermediate,
                     timesTransposeOfRows: tile.columns, of: experts[tile.expert].down,
                     c: output + block.lowerBound * hidden + tile.columns.lowerBound, ldc: hidden)
            }
        }
    }

    /// C `[m, rows.count]` = A `[m, W.columns]` · W[rows]ᵀ: one tile of a linear layer. f32 rows
    /// (owned, or mapped and aligned) go to `MatrixMultiply.linear` in place (in this worker); other stored dtypes through
    /// `MatrixMultiply.gemm(…, timesTransposeOf:)` on a view of the mapped rows.
    static func gemm(m: Int, a: UnsafePointer<Float>, bfloat16A: UnsafePointer<UInt16>? = nil, lda: Int, timesTransposeOfRows rows: Range<Int>,
                     of w: Weight, c: UnsafeMutablePointer<Float>, ldc: Int) {
        let columns = w.columns
        var segmentStart = 0
        for segment in w.segments {
            let segmentRows = segmentStart ..< segmentStart + segment.rows
            segmentStart += segment.rows
            let overlap = rows.clamped(to: segmentRows)
            guard !overlap.isEmpty else { continue }
            let local = overlap.lowerBound - segmentRows.lowerBound
            let out = c + (overlap.lowerBound - rows.lowerBound)
            switch segment {
            case .owned(let tensor):
                tensor.values.withUnsafeBufferPointer { b in
                    MatrixMultiply.linear(m: m, n: overlap.count, k: columns, a: a, lda: lda, w: b.baseAddress! + local * columns, ldw: columns,
                                          c: out, ldc: ldc)
                }
            case .mapped(let base, _, .float32) where segment.isInPlaceFloat:
                MatrixMultiply.linear(m: m, n: overlap.count, k: columns, a: a, lda: lda, w: base.assumingMemoryBound(to: Float.self) + local * columns,
                                      ldw: columns, c: out, ldc: ldc)
            case .mapped:
                if let bfloat16A, w.computePrecision == .bfloat16 {
                    MatrixMultiply.gemm(m: m, bfloat16A: bfloat16A, lda: lda, timesTransposeOf: w.mappedRows(overlap), c: out, ldc: ldc)
                } else {
                    MatrixMultiply.gemm(m: m, a: a, lda: lda, timesTransposeOf: w.mappedRows(overlap), c: out, ldc: ldc)
                }
            }
        }
    }

    // MARK: Backward

    /// dy `[A, H]` (each row already weighted by its combine weight) → dx `[A, H]` (written) and
    /// each expert's weight gradients (experts without rows: zeros). `gateUpGradient` is `[A, 2I]`
    /// scratch that ends holding [dg | du]. Training only: the weights must be owned f32.
    static func backward(blocks: [Range<Int>], outputGradient dy: UnsafePointer<Float>, input x: UnsafePointer<Float>,
                         gateUp: UnsafePointer<Float>, activated: UnsafePointer<Float>, experts: [SwiGLUWeights],
                         inputGradient dx: UnsafeMutablePointer<Float>, gateUpGradient d: UnsafeMutablePointer<Float>,
                         tileColumns: Int = tileColumns, workers: Int = ParallelTiles.workerCount) -> [SwiGLUWeights] {
        guard let firstExpert = experts.first else { return [] }
        let hidden = firstExpert.hiddenSize, intermediate = firstExpert.intermediateSize, width = 2 * intermediate
        precondition(blocks.count == experts.count && experts.allSatisfy { $0.gateUp.isOwned && $0.down.isOwned },
                     "grouped SwiGLU backward: owned weights, one block per expert")
        // Read-only weights: [W_g; W_u] by segment and W_d, as flat arrays.
        let gateUpSegments = experts.map { expert in expert.gateUp.segments.indices.map { expert.gateUp.ownedTensor($0).values } }
        let segmentRows = experts.map { expert in expert.gateUp.segments.map(\.rows) }
        let downs = experts.map { $0.down.ownedTensor().values }
        // Gradients of experts with rows, written once per tile (no zero fill needed).
        let active = blocks.indices.filter { !blocks[$0].isEmpty }
        var gradientStorage: [[Float]] = active.flatMap { _ in
            [[Float].uninitialized(count: intermediate * hidden), [Float].uninitialized(count: intermediate * hidden),
             [Float].uninitialized(count: hidden * intermediate)]
        }
        var slot = [Int](repeating: -1, count: experts.count)
        for (i, e) in active.enumerated() { slot[e] = i }

        withBaseAddresses(gateUpSegments.flatMap { $0 } + downs) { weightBases in
            var segmentBase: [[UnsafePointer<Float>]] = []
            var cursor = 0
            for e in experts.indices {
                segmentBase.append(Array(weightBases[cursor ..< cursor + gateUpSegments[e].count]))
                cursor += gateUpSegments[e].count
            }
            let downBase = Array(weightBases[cursor...])
            withMutableBaseAddresses(&gradientStorage) { gradientBases in
                let first = tiles(blocks: blocks, width: intermediate, tileColumns: tileColumns)
                ParallelTiles.run(tiles: first.count, workers: workers) { index, _ in
                    let tile = first[index], block = blocks[tile.expert], rows = block.count, c = tile.columns
                    let dyBlock = dy + block.lowerBound * hidden, xBlock = x + block.lowerBound * hidden
                    let dBlock = d + block.lowerBound * width
                    let gates = gradientBases[3 * slot[tile.expert]], ups = gradientBases[3 * slot[tile.expert] + 1]
                    let downGradient = gradientBases[3 * slot[tile.expert] + 2]
                    // da [R, c] = dy [R, H] · W_d[:, c]
                    MatrixMultiply.gemm(m: rows, n: c.count, k: hidden, a: dyBlock, lda: hidden, b: downBase[tile.expert] + c.lowerBound,
                                        ldb: intermediate, c: dBlock + c.lowerBound, ldc: width)
                    for r in 0 ..< rows {
                        let g = gateUp + (block.lowerBound + r) * width + c.lowerBound, u = g + intermediate
                        let dg = dBlock + r * width + c.lowerBound, du = dg + intermediate
                        for j in 0 ..< c.count {
                            let gate = g[j], sigmoid = 1 / (1 + expf(-gate)), da = dg[j]
                            du[j] = da * gate * sigmoid
                            dg[j] = da * u[j] * sigmoid * (1 + gate * (1 - sigmoid))
                        }
                    }
                    // dW_d[:, c] [H, c] = dyᵀ [H, R] · a[:, c] [R, c]
                    MatrixMultiply.gemm(m: hidden, n: c.count, k: rows, a: dyBlock, lda: hidden, transposeA: true,
                                        b: activated + block.lowerBound * intermediate + c.lowerBound, ldb: intermediate,
                                        c: downGradient + c.lowerBound, ldc: intermediate)
                    // dW_g[c] [c, H] = dg[:, c]ᵀ · x,  dW_u[c] = du[:, c]ᵀ · x
                    MatrixMultiply.gemm(m: c.count, n: hidden, k: rows, a: dBlock + c.lowerBound, lda: width, transposeA: true,
                                        b: xBlock, ldb: hidden, c: gates + c.lowerBound * hidden, ldc: hidden)
                    MatrixMultiply.gemm(m: c.count, n: hidden, k: rows, a: dBlock + intermediate + c.lowerBound, lda: width, transposeA: true,
                                        b: xBlock, ldb: hidden, c: ups + c.lowerBound * hidden, ldc: hidden)
                }
                let second = tiles(blocks: blocks, width: hidden, tileColumns: tileColumns)
                ParallelTiles.run(tiles: second.count, workers: workers) { index, _ in
                    // dx[:, c] [R, c] = [dg | du] [R, 2I] · [W_g; W_u][:, c], segment by segment along 2I.
                    let tile = second[index], block = blocks[tile.expert], c = tile.columns
                    var row = 0
                    for (s, base) in segmentBase[tile.expert].enumerated() {
                        let count = segmentRows[tile.expert][s]
                        MatrixMultiply.gemm(m: block.count, n: c.count, k: count, a: d + block.lowerBound * width + row, lda: width,
                                            b: base + c.lowerBound, ldb: hidden, beta: row == 0 ? 0 : 1,
                                            c: dx + block.lowerBound * hidden + c.lowerBound, ldc: hidden)
                        row += count
                    }
                }
            }
        }
        return experts.indices.map { e in
            guard slot[e] >= 0 else { return experts[e].zeros() }
            let i = 3 * slot[e]
            return SwiGLUWeights(gate: Tensor(shape: [intermediate, hidden], values: gradientStorage[i]),
                                 up: Tensor(shape: [intermediate, hidden], values: gradientStorage[i + 1]),
                                 down: Tensor(shape: [hidden, intermediate], values: gradientStorage[i + 2]))
        }
    }

    // MARK: Reference

    /// The forward expert after expert through `SwiGLULayer.forwardBlock` (multi-threaded BLAS per GEMM).
    static func referenceForward(blocks: [Range<Int>], input: UnsafePointer<Float>, experts: [SwiGLUWeights],
                                 gateUp: UnsafeMutablePointer<Float>, activated: UnsafeMutablePointer<Float>, output: UnsafeMutablePointer<Float>) {
        for (e, expert) in experts.enumerated() where !blocks[e].isEmpty {
            let start = blocks[e].lowerBound, hidden = expert.hiddenSize, intermediate = expert.intermediateSize
            SwiGLULayer.forwardBlock(rows: blocks[e].count, input: input + start * hidden, weights: expert, gateUp: gateUp + start * 2 * intermediate,
                                     activated: activated + start * intermediate, output: output + start * hidden)
        }
    }

    /// The backward expert after expert through `SwiGLULayer.backwardBlock`; dx accumulated (+=).
    static func referenceBackward(blocks: [Range<Int>], outputGradient dy: UnsafePointer<Float>, input x: UnsafePointer<Float>,
                                  gateUp: UnsafePointer<Float>, activated: UnsafePointer<Float>, experts: [SwiGLUWeights],
                                  inputGradient dx: UnsafeMutablePointer<Float>) -> [SwiGLUWeights] {
        var gradients = experts.map { $0.zeros() }
        for (e, expert) in experts.enumerated() where !blocks[e].isEmpty {
            let start = blocks[e].lowerBound, hidden = expert.hiddenSize, intermediate = expert.intermediateSize
            var scratch = [Float].uninitialized(count: blocks[e].count * 2 * intermediate)
            scratch.withUnsafeMutableBufferPointer { s in
                SwiGLULayer.backwardBlock(rows: blocks[e].count, outputGradient: dy + start * hidden, input: x + start * hidden,
                                          gateUp: gateUp + start * 2 * intermediate, activated: activated + start * intermediate, weights: expert,
                                          inputGradient: dx + start * hidden, weightGradients: &gradients[e], gateUpGradient: s.baseAddress!)
            }
        }
        return gradients
    }
}

/// Calls `body` with the base address of every array's storage at once.
func withBaseAddresses<Result>(_ arrays: [[Float]], _ body: ([UnsafePointer<Float>]) -> Result) -> Result {
    var addresses: [UnsafePointer<Float>] = []
    addresses.reserveCapacity(arrays.count)
    func nest(_ index: Int) -> Result {
        guard index < arrays.count else { return body(addresses) }
        return arrays[index].withUnsafeBufferPointer { buffer in
            addresses.append(buffer.baseAddress!)
            return nest(index + 1)
        }
    }
    return nest(0)
}

/// Calls `body` with the mutable base address of every array's storage at once (each array is
/// moved out while `body` runs, so its buffer is uniquely referenced and nothing copies it).
func withMutableBaseAddresses<Result>(_ arrays: inout [[Float]], _ body: ([UnsafeMutablePointer<Float>]) -> Result) -> Result {
    var addresses: [UnsafeMutablePointer<Float>] = []
    addresses.reserveCapacity(arrays.count)
    func nest(_ index: Int) -> Result {
        guard index < arrays.count else { return body(addresses) }
        var array = arrays[index]
        arrays[index] = []
        defer { arrays[index] = array }
        return array.withUnsafeMutableBufferPointer { buffer in
            addresses.append(buffer.baseAddress!)
            return nest(index + 1)
        }
    }
    return nest(0)
}
