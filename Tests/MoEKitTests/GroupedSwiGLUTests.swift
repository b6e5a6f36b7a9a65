import Foundation
import Testing
@testable import MoEKit

/// The experts as one pool of tiles (`GroupedSwiGLU`) against the same experts run one after
/// another through `SwiGLULayer`'s block kernels (and so against its plain-loop reference, which
/// `SwiGLULayerTests` pins): uneven blocks, empty experts, an expert with every row, tiles that do
/// not divide I or H, one worker and several.
@Suite struct GroupedSwiGLUTests {
    static let hidden = 20, intermediate = 36

    static func experts(_ count: Int, seed: UInt64) -> [SwiGLUWeights] {
        (0 ..< count).map { SwiGLULayerTests.weights(hidden: hidden, intermediate: intermediate, seed: seed &+ UInt64(10 * $0)) }
    }

    /// Per-expert row blocks of a gathered input (the dispatch plan's ranges): a variable number of
    /// rows per expert, none for some, all for one.
    static let layouts: [[Range<Int>]] = [[0 ..< 5, 5 ..< 5, 5 ..< 6, 6 ..< 13], [0 ..< 0, 0 ..< 9, 9 ..< 9], [0 ..< 1]]

    struct Pass { var gateUp: [Float]; var activated: [Float]; var output: [Float] }

    static func forward(_ blocks: [Range<Int>], _ experts: [SwiGLUWeights], input: [Float], tiled: Bool, keep: Bool = true,
                        tileColumns: Int = 16, workers: Int = 2) -> Pass {
        let rows = blocks.last!.upperBound
        var pass = Pass(gateUp: [Float](repeating: .nan, count: rows * 2 * intermediate), activated: [Float](repeating: .nan, count: rows * intermediate),
                        output: [Float](repeating: .nan, count: rows * hidden))
        input.withUnsafeBufferPointer { x in
            pass.gateUp.withUnsafeMutableBufferPointer { f in
                pass.activated.withUnsafeMutableBufferPointer { a in
                    pass.output.withUnsafeMutableBufferPointer { y in
                        if tiled {
                            GroupedSwiGLU.forward(blocks: blocks, input: x.baseAddress!, experts: experts, gateUp: keep ? f.baseAddress! : nil,
                                                  activated: a.baseAddress!, output: y.baseAddress!, tileColumns: tileColumns, workers: workers)
                        } else {
                            GroupedSwiGLU.referenceForward(blocks: blocks, input: x.baseAddress!, experts: experts, gateUp: f.baseAddress!,
                                                           activated: a.baseAddress!, output: y.baseAddress!)
                        }
                    }
                }
            }
        }
        return pass
    }

    @Test func tiledForwardEqualsExpertsOneAfterAnother() {
        for (index, blocks) in Self.layouts.enumerated() {
            let experts = Self.experts(blocks.count, seed: 7 + UInt64(index))
            let rows = blocks.last!.upperBound
            let input = randomTensor([rows, Self.hidden], seed: 40 + UInt64(index)).values
            let reference = Self.forward(blocks, experts, input: input, tiled: false)
            for workers in [1, 2, 3] {
                let tiled = Self.forward(blocks, experts, input: input, tiled: true, workers: workers)
                #expect(isClose(tiled.output, reference.output, relativeTolerance: 1e-5), "layout \(index), \(workers) workers")
                #expect(isClose(tiled.gateUp, reference.gateUp, relativeTolerance: 1e-5))
                #expect(isClose(tiled.activated, reference.activated, relativeTolerance: 1e-5))
                // Inference keeps no [g | u]: the same output from per-worker scratch.
                let inference = Self.forward(blocks, experts, input: input, tiled: true, keep: false, workers: workers)
                #expect(isClose(inference.output, reference.output, relativeTolerance: 1e-5))
                #expect(inference.gateUp.allSatisfy { $0.isNaN })
            }
            // A tile wider than I and H: one tile per expert and phase.
            #expect(isClose(Self.forward(blocks, experts, input: input, tiled: true, tileColumns: 1000).output, reference.output, relativeTolerance: 1e-5))
        }
    }

    /// Experts mapped in bf16 (gate and up stacked from two mappings) give the output of their
    /// decoded f32 values: tiles of mapped rows go through the stored-dtype product.
    @Test func tiledForwardOfMappedBF16ExpertsEqualsTheirF32Values() {
        let blocks = Self.layouts[0]
        let owned = Self.experts(blocks.count, seed: 21)
        let mapped = owned.map { SwiGLUWeights(gate: WeightBytes.weight($0.gate, as: .bfloat16), up: WeightBytes.weight($0.up, as: .bfloat16, offset: 1),
                                               down: WeightBytes.weight($0.downTensor, as: .bfloat16)) }
        let decoded = mapped.map { SwiGLUWeights(gate: $0.gate, up: $0.up, down: $0.downTensor) }
        let input = randomTensor([blocks.last!.upperBound, Self.hidden], seed: 22).values
        let reference = Self.forward(blocks, decoded, input: input, tiled: false)
        let tiled = Self.forward(blocks, mapped, input: input, tiled: true, keep: false)
        #expect(isClose(tiled.output, reference.output, relativeTolerance: 1e-5))
    }

    /// bf16 compute: the tiles share activations rounded once per phase, the reference rounds
    /// them in every expert's product; the results are the same bits (each output is one dot
    /// product over the whole k either way). Blocks of more rows than the GEMV takes reach
    /// `vdpbf16ps` where the CPU has it; the 1-row block takes the GEMV on rounded values.
    @Test func tiledForwardInBFloat16ComputeEqualsExpertsOneAfterAnother() {
        let blocks = [0 ..< 21, 21 ..< 21, 21 ..< 22, 22 ..< 52]
        let experts = Self.experts(blocks.count, seed: 31).map { $0.forCompute(.bfloat16) }
        let input = randomTensor([blocks.last!.upperBound, Self.hidden], seed: 32).values
        let reference = Self.forward(blocks, experts, input: input, tiled: false)
        for workers in [1, 2] {
            let tiled = Self.forward(blocks, experts, input: input, tiled: true, keep: false, workers: workers)
            #expect(tiled.output.map(\.bitPattern) == reference.output.map(\.bitPattern), "\(workers) workers")
            #expect(tiled.activated.map(\.bitPattern) == reference.activated.map(\.bitPattern))
        }
        let f32 = Self.forward(blocks, Self.experts(blocks.count, seed: 31), input: input, tiled: true)
        #expect(!isClose(f32.output, reference.output, relativeTolerance: 1e-5), "bf16 compute changed the arithmetic")
        #expect(isClose(f32.output, reference.output, relativeTolerance: 3e-2))
    }

    @Test func tiledBackwardEqualsExpertsOneAfterAnother() {
        for (index, blocks) in Self.layouts.enumerated() {
            let experts = Self.experts(blocks.count, seed: 31 + UInt64(index))
            let rows = blocks.last!.upperBound
            let input = randomTensor([rows, Self.hidden], seed: 50 + UInt64(index)).values
            let dy = randomTensor([rows, Self.hidden], seed: 60 + UInt64(index)).values
            let pass = Self.forward(blocks, experts, input: input, tiled: false)
            var referenceDx = [Float](repeating: 0, count: rows * Self.hidden)
            let reference = input.withUnsafeBufferPointer { x in
                dy.withUnsafeBufferPointer { g in
                    pass.gateUp.withUnsafeBufferPointer { f in
                        pass.activated.withUnsafeBufferPointer { a in
                            referenceDx.withUnsafeMutableBufferPointer { dx in
                                GroupedSwiGLU.referenceBackward(blocks: blocks, outputGradient: g.baseAddress!, input: x.baseAddress!, gateUp: f.baseAddress!,
                                                                activated: a.baseAddress!, experts: experts, inputGradient: dx.baseAddress!)
                            }
                        }
                    }
                }
            }
            for workers in [1, 2] {
                var dxTiled = [Float](repeating: .nan, count: rows * Self.hidden)
                var scratch = [Float](repeating: .nan, count: rows * 2 * Self.intermediate)
                let tiled = input.withUnsafeBufferPointer { x in
                    dy.withUnsafeBufferPointer { g in
                        pass.gateUp.withUnsafeBufferPointer { f in
                            pass.activated.withUnsafeBufferPointer { a in
                                dxTiled.withUnsafeMutableBufferPointer { dx in
                                    scratch.withUnsafeMutableBufferPointer { s in
                                        GroupedSwiGLU.backward(blocks: blocks, outputGradient: g.baseAddress!, input: x.baseAddress!, gateUp: f.baseAddress!,
                                                               activated: a.baseAddress!, experts: experts, inputGradient: dx.baseAddress!,
                                                               gateUpGradient: s.baseAddress!, tileColumns: 16, workers: workers)
                                    }
                                }
                            }
                        }
                    }
                }
                #expect(isClose(dxTiled, referenceDx, relativeTolerance: 1e-5), "layout \(index), \(workers) workers")
                for e in experts.indices {
                    #expect(isClose(tiled[e].gate, reference[e].gate, relativeTolerance: 1e-5))
                    #expect(isClose(tiled[e].up, reference[e].up, relativeTolerance: 1e-5))
                    #expect(isClose(tiled[e].downTensor, reference[e].downTensor, relativeTolerance: 1e-5))
                    #expect(tiled[e].gateUp.segments.count == experts[e].gateUp.segments.count)
                }
            }
        }
    }

    /// Tiles cover each expert with rows exactly once, in expert order; experts without rows get none.
    @Test func tilesCoverEveryColumnOfEveryExpertWithRows() {
        let tiles = GroupedSwiGLU.tiles(blocks: [0 ..< 3, 3 ..< 3, 3 ..< 4], width: 40, tileColumns: 16)
        #expect(tiles == [.init(expert: 0, columns: 0 ..< 16), .init(expert: 0, columns: 16 ..< 32), .init(expert: 0, columns: 32 ..< 40),
                          .init(expert: 2, columns: 0 ..< 16), .init(expert: 2, columns: 16 ..< 32), .init(expert: 2, columns: 32 ..< 40)])
    }
}

/// The pool runs every tile exactly once, whatever the number of workers.
@Suite struct ParallelTilesTests {
    @Test func everyTileRunsOnce() {
        for workers in [1, 2, 5] {
            let counts = UnsafeMutableBufferPointer<Int>.allocate(capacity: 37)
            defer { counts.deallocate() }
            counts.initialize(repeating: 0)
            let shared = UncheckedSendable(counts)
            ParallelTiles.run(tiles: 37, workers: workers) { tile, worker in
                #expect(worker >= 0 && worker < workers)
                shared.value[tile] += 1
            }
            #expect(counts.allSatisfy { $0 == 1 })
        }
    }
}
