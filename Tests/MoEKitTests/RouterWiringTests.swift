import Foundation
import Testing
@testable import MoEKit

@Suite struct RouterWiringTests {
    /// A MiniCPM-MoE checkpoint runs with MiniCPM-MoE's routing by default; a `moekit_router`
    /// object in config.json, which MoEKit writes and reads, selects another router.
    @Test func configJSONSelectsTheRouter() throws {
        let directory = TemporaryDirectory()
        var config = try RoutingTracerTests.writeMoECheckpoint(to: directory.path)
        let defaultModel = try MiniCPMModel(directory: directory.path)
        #expect((defaultModel.router as? ConfigurableRouter)?.configuration == RouterConfiguration())

        let switchRouting = try RouterConfiguration(text: "switch:cf=1.5")
        switchRouting.store(in: &config)
        try config.write(to: directory.path + "/config.json")
        let model = try MiniCPMModel(directory: directory.path)
        #expect((model.router as? ConfigurableRouter)?.configuration == switchRouting)
        // Switch weights are not renormalised: the per-token weights no longer sum to 1.
        let record = try model.forward([[1, 2, 3, 4]], detail: .perToken).routing[0]
        let sums = (0 ..< 4).map { t in (0 ..< 2).reduce(Float(0)) { $0 + record.combineWeights![t * 2 + $1] } }
        #expect(sums.allSatisfy { $0 < 0.999 })
    }

    /// `useRouter` (the CLI's `--router`) replaces the routing and keeps a loaded balancing bias;
    /// the bias saved as `model.layers.N.mlp.gate.moekit_bias` is loaded with the model.
    @Test func savedBalancingBiasIsLoaded() throws {
        let directory = TemporaryDirectory()
        let config = SmallModels.config(experts: 4, topK: 2, layers: 2)
        var weights = SmallModels.weights(for: config, seed: 31)
        weights[MiniCPMTensorNames.routerBias(1)] = Tensor(shape: [4], values: [0.5, -0.25, 0, 1])
        try SafetensorsWriter.write(weights.map { ($0.key, $0.value, SafetensorsDType.float32) }, to: directory.path + "/model.safetensors")
        try config.write(to: directory.path + "/config.json")
        let model = try MiniCPMModel(directory: directory.path)
        #expect((model.router as? ConfigurableRouter)?.balancingBias[1] == [0.5, -0.25, 0, 1])
        #expect((model.router as? ConfigurableRouter)?.balancingBias[0] == [0, 0, 0, 0])
        try model.useRouter(RouterConfiguration(text: "aux-free"))
        #expect((model.router as? ConfigurableRouter)?.balancingBias[1] == [0.5, -0.25, 0, 1])
        #expect((model.router as? ConfigurableRouter)?.configuration.auxiliaryLossFreeBalancing == true)
    }

    /// A bad `moekit_router` in config.json is an error naming the file and field, found when the
    /// config is read (the router is a typed field of `MiniCPMConfig`).
    @Test func badRouterConfigurationIsAnError() throws {
        let directory = TemporaryDirectory()
        var config = try RoutingTracerTests.writeMoECheckpoint(to: directory.path)
        config.otherKeys["moekit_router"] = .object(["capacity_factor": .string("big")])
        try config.write(to: directory.path + "/config.json")
        do {
            _ = try MiniCPMModel(directory: directory.path)
            Issue.record("a model with a bad moekit_router loaded")
        } catch let error as CheckpointError {
            guard case .router(.invalidField(let source, let field, _)) = error else { Issue.record("unexpected error \(error)"); return }
            #expect(source == directory.path + "/config.json")
            #expect(field == "moekit_router.capacity_factor")
        }
    }

    /// `moekit_router` is read into `MiniCPMConfig.router` (not kept as an untyped key) and
    /// written back in full; `null` or absence is MiniCPM-MoE's routing.
    @Test func routerIsATypedFieldOfTheConfig() throws {
        let directory = TemporaryDirectory()
        var config = SmallModels.config(experts: 4)
        config.otherKeys["moekit_router"] = .object(["weighting": .string("unnormalized"), "top_k": .integer(1)])
        let path = directory.file("config.json")
        try config.write(to: path)
        let read = try MiniCPMConfig(path: path)
        var expected = RouterConfiguration()
        expected.weighting = .unnormalized
        expected.topK = 1
        #expect(read.router == expected)
        #expect(read.otherKeys["moekit_router"] == nil)
        #expect(read.jsonObject()["moekit_router"] == expected.jsonValue)
        try read.write(to: path)
        #expect(try MiniCPMConfig(path: path).router == expected)
        config.otherKeys["moekit_router"] = .null
        try config.write(to: path)
        #expect(try MiniCPMConfig(path: path).router == nil)
        #expect(RouterConfiguration(modelConfig: try MiniCPMConfig(path: path)) == RouterConfiguration())
    }
}
