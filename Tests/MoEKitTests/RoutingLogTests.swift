import CHDF5
import Foundation
import Testing
@testable import MoEKit

/// The routing log writer and reader: schema version 1 round trips, the invariant is enforced,
/// existing files are protected, and foreign or damaged files give typed errors.
@Suite struct RoutingLogTests {
    /// Every dataset and root attribute written comes back identical, per-token trace included,
    /// and the step axis grows by one row per `append`.
    @Test func writeThenReadRoundTripsEveryDatasetAndAttribute() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("routing.h5")
        let header = RoutingLogFixtures.header(perToken: true)
        let steps = (0 ..< 3).map { RoutingLogFixtures.step($0 * 10, tokens: 20 + $0, header: header, training: true) }
        #expect(steps.allSatisfy { $0.tokenTrace != nil })
        #expect(steps.contains { $0.layers.contains { $0.dropped > 0 } })

        let writer = try RoutingLogWriter(path: path, header: header)
        for (index, step) in steps.enumerated() {
            try writer.append(step)
            #expect(writer.stepCount == index + 1)
        }
        try writer.close()

        let reader = try RoutingLogReader(path: path)
        #expect(!reader.isSWMR, "a finished log opens without SWMR, so a damaged block fails at once")
        #expect(reader.header == header)
        #expect(reader.stepCount == 3)
        #expect(reader.tokenRowCount == steps.reduce(0) { $0 + $1.tokens })
        #expect(try reader.stepIndices() == [0, 10, 20])
        for (row, step) in steps.enumerated() { #expect(try reader.step(at: row) == step) }
        var withoutTrace = steps
        for index in withoutTrace.indices { withoutTrace[index].tokenTrace = nil }
        #expect(try reader.steps(0 ..< 3) == withoutTrace)
    }

    /// NaN loss and learning rate (not training) are stored as NaN, not dropped or zeroed.
    @Test func notTrainingStoresNaNLossAndLearningRate() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("routing.h5")
        let header = RoutingLogFixtures.header()
        let writer = try RoutingLogWriter(path: path, header: header)
        try writer.append(RoutingLogFixtures.step(0, tokens: 8, header: header))
        try writer.close()
        let step = try RoutingLogReader(path: path).step(at: 0)
        #expect(step.loss.isNaN && step.learningRate.isNaN)
    }

    /// The writer refuses a step whose counts do not sum to tokens · k − dropped, naming step and layer,
    /// and writes nothing for it.
    @Test func invariantViolationIsRefusedWithStepAndLayer() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("routing.h5")
        let header = RoutingLogFixtures.header()
        let writer = try RoutingLogWriter(path: path, header: header)
        var step = RoutingLogFixtures.step(5, tokens: 10, header: header)
        step.layers[1].expertCounts[0] += 1
        let expected = step.layers[1].expertCounts.reduce(0, +) - 1
        #expect(throws: RoutingLogError.invariantViolated(file: path, step: 5, layer: 1, countSum: expected + 1, expected: expected)) {
            try writer.append(step)
        }
        #expect(writer.stepCount == 0)
        // Dropped assignments count against the total: one assignment fewer plus one drop is consistent.
        step.layers[1].expertCounts[0] -= 1
        let busiest = try #require(step.layers[1].expertCounts.indices.max { step.layers[1].expertCounts[$0] < step.layers[1].expertCounts[$1] })
        step.layers[1].expertCounts[busiest] -= 1
        step.layers[1].dropped += 1
        try writer.append(step)
        #expect(writer.stepCount == 1)
        try writer.close()
        #expect(try RoutingLogReader(path: path).stepCount == 1)
    }

    /// Malformed steps (wrong layer count, wrong expert count, out-of-order step index, asymmetric
    /// coactivation) are typed errors.
    @Test func malformedStepsAreRefused() throws {
        let directory = TemporaryDirectory()
        let header = RoutingLogFixtures.header()
        let writer = try RoutingLogWriter(path: directory.file("routing.h5"), header: header)
        let good = RoutingLogFixtures.step(3, tokens: 6, header: header)
        var fewerLayers = good
        fewerLayers.layers.removeLast()
        #expect(throws: RoutingLogError.self) { try writer.append(fewerLayers) }
        var asymmetric = good
        asymmetric.layers[0].coactivation[1] += 1
        #expect(throws: RoutingLogError.self) { try writer.append(asymmetric) }
        var traced = good
        traced.tokenTrace = RoutingLogTokenTrace(ids: [], sequence: [], position: [], experts: [], weights: [])
        #expect(throws: RoutingLogError.self) { try writer.append(traced) }
        try writer.append(good)
        #expect(throws: RoutingLogError.stepOutOfOrder(file: directory.file("routing.h5"), step: 3, previous: 3)) { try writer.append(good) }
    }

    /// `create` refuses an existing path and leaves it untouched; `replace` replaces it.
    @Test func existingPathIsRefusedWithoutReplace() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("routing.h5")
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: path))
        let header = RoutingLogFixtures.header()
        #expect(throws: RoutingLogError.alreadyExists(file: path)) { try RoutingLogWriter(path: path, header: header) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data("keep me".utf8))
        let writer = try RoutingLogWriter(path: path, header: header, mode: .replace)
        try writer.append(RoutingLogFixtures.step(0, tokens: 4, header: header))
        try writer.close()
        #expect(try RoutingLogReader(path: path).stepCount == 1)
        // No temporary files are left beside the log.
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["routing.h5"])
    }

    /// `append` continues the step axis (and the token axis) of an existing log.
    @Test func appendContinuesTheStepAxis() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("routing.h5")
        let header = RoutingLogFixtures.header(perToken: true)
        let first = try RoutingLogWriter(path: path, header: header)
        try first.append(RoutingLogFixtures.step(0, tokens: 5, header: header, training: true))
        try first.append(RoutingLogFixtures.step(1, tokens: 7, header: header, training: true))
        try first.close()

        let second = try RoutingLogWriter(path: path, header: header, mode: .append)
        #expect(second.stepCount == 2 && second.lastStep == 1 && second.tokenRowCount == 12)
        #expect(throws: RoutingLogError.self) { try second.append(RoutingLogFixtures.step(1, tokens: 3, header: header)) }
        let third = RoutingLogFixtures.step(2, tokens: 3, header: header, training: true)
        try second.append(third)
        try second.close()

        let reader = try RoutingLogReader(path: path)
        #expect(try reader.stepIndices() == [0, 1, 2])
        #expect(reader.tokenRowCount == 15)
        #expect(try reader.step(at: 2) == third)
    }

    /// `append` refuses a log whose layers, experts, k or per-token trace differ from the run's.
    @Test func appendRefusesMismatchedShapes() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("routing.h5")
        let header = RoutingLogFixtures.header(layers: 3, experts: 4, topK: 2)
        try RoutingLogWriter(path: path, header: header).close()
        let mismatches: [(String, RoutingLogHeader)] = [
            ("num_layers", RoutingLogFixtures.header(layers: 2, experts: 4, topK: 2)),
            ("num_experts", RoutingLogFixtures.header(layers: 3, experts: 8, topK: 2)),
            ("top_k", RoutingLogFixtures.header(layers: 3, experts: 4, topK: 1)),
            ("per-token trace", RoutingLogFixtures.header(layers: 3, experts: 4, topK: 2, perToken: true)),
        ]
        for (field, other) in mismatches {
            #expect {
                try RoutingLogWriter(path: path, header: other, mode: .append)
            } throws: { error in
                guard case let .incompatibleAppend(file, found, _, _) = error as? RoutingLogError else { return false }
                return file == path && found == field
            }
        }
        #expect(throws: RoutingLogError.self) { try RoutingLogWriter(path: directory.file("missing.h5"), header: header, mode: .append) }
    }

    /// A non-HDF5 file and a missing file are clear errors, not crashes.
    @Test func garbageFileIsNotHDF5() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("garbage.h5")
        try Data((0 ..< 4096).map { UInt8(truncatingIfNeeded: $0 &* 37) }).write(to: URL(fileURLWithPath: path))
        #expect(throws: RoutingLogError.notHDF5(file: path)) { try RoutingLogReader(path: path) }
        #expect(throws: RoutingLogError.self) { try RoutingLogReader(path: directory.file("missing.h5")) }
    }

    /// A log cut short (the tail of the file lost) is an error, not a crash.
    @Test func truncatedLogIsAnError() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("routing.h5")
        let header = RoutingLogFixtures.header()
        let writer = try RoutingLogWriter(path: path, header: header)
        for index in 0 ..< 4 { try writer.append(RoutingLogFixtures.step(index, tokens: 32, header: header)) }
        try writer.close()
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: path))
        #expect(throws: RoutingLogError.self) {
            let reader = try RoutingLogReader(path: path)
            _ = try reader.steps(0 ..< reader.stepCount)
        }
    }

    /// An HDF5 file that is not a routing log (no `format` attribute, or another format) is named as such.
    @Test func foreignHDF5FileIsRefused() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("foreign.h5")
        HDF5.prepare()
        let id = H5Fcreate(path, moekit_H5F_ACC_TRUNC(), moekit_H5P_DEFAULT(), moekit_H5P_DEFAULT())
        #expect(id >= 0)
        _ = H5Fclose(id)
        #expect {
            try RoutingLogReader(path: path)
        } throws: { error in
            guard case let .notARoutingLog(file, _) = error as? RoutingLogError else { return false }
            return file == path
        }
        // Another tool's format attribute.
        let file = try HDF5File.create(actualPath: directory.file("other.h5"), displayPath: directory.file("other.h5"))
        try file.writeAttribute("format", "someone-else")
        try file.flush()
        #expect {
            try RoutingLogReader(path: directory.file("other.h5"))
        } throws: { error in
            guard case let .notARoutingLog(_, reason) = error as? RoutingLogError else { return false }
            return reason.contains("someone-else")
        }
    }

    /// A log claiming a newer schema version is refused with the version named.
    @Test func newerVersionIsRefused() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("future.h5")
        let file = try HDF5File.create(actualPath: path, displayPath: path)
        try file.writeAttribute("format", "moekit-routing")
        try file.writeAttribute("version", Int64(4))
        try file.flush()
        #expect(throws: RoutingLogError.newerVersion(file: path, found: 4, supported: 3)) { try RoutingLogReader(path: path) }
    }

    /// A routing log with a dataset of the wrong shape names the dataset.
    @Test func wrongDatasetShapeNamesTheDataset() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("routing.h5")
        try RoutingLogWriter(path: path, header: RoutingLogFixtures.header()).close()
        HDF5.prepare()
        let id = H5Fopen(path, moekit_H5F_ACC_RDWR(), moekit_H5P_DEFAULT())
        #expect(id >= 0)
        #expect(H5Ldelete(id, "/routing/entropy", moekit_H5P_DEFAULT()) >= 0)
        _ = H5Fclose(id)
        #expect(throws: RoutingLogError.missingDataset(file: path, dataset: "/routing/entropy")) { try RoutingLogReader(path: path) }
    }

    /// A reader opened before steps are written sees them after `refresh()` (SWMR within one process).
    @Test func readerSeesNewStepsAfterRefresh() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("routing.h5")
        let header = RoutingLogFixtures.header()
        let writer = try RoutingLogWriter(path: path, header: header)
        try writer.append(RoutingLogFixtures.step(0, tokens: 4, header: header))
        let reader = try RoutingLogReader(path: path)
        #expect(reader.stepCount == 1)
        try writer.append(RoutingLogFixtures.step(1, tokens: 4, header: header))
        try reader.refresh()
        #expect(reader.stepCount == 2)
        #expect(try reader.stepIndices() == [0, 1])
        try writer.close()
    }

    /// The per-token trace from routing records interleaves layers: experts[n, layer, k].
    @Test func tokenTraceInterleavesLayers() throws {
        func record(_ selected: [Int32], _ weights: [Float]) -> RoutingRecord {
            RoutingRecord(tokens: 2, experts: 4, topK: 2, expertCounts: [1, 1, 1, 1], probabilityMean: [0.25, 0.25, 0.25, 0.25], droppedAssignments: 0,
                          loadBalancingLoss: 1, zLoss: 0, entropy: 0, coactivation: [Int](repeating: 0, count: 16),
                          selectedExperts: selected, combineWeights: weights)
        }
        let trace = try #require(RoutingLogTokenTrace(ids: [7, 8], sequence: [0, 0], position: [0, 1],
                                                      records: [record([0, 1, 2, 3], [0.6, 0.4, 0.7, 0.3]), record([3, -1, 1, 0], [1, 0, 0.5, 0.5])]))
        #expect(trace.experts == [0, 1, 3, -1, 2, 3, 1, 0])
        #expect(trace.weights == [0.6, 0.4, 1, 0, 0.7, 0.3, 0.5, 0.5])
    }
}
