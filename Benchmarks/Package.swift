// swift-tools-version:6.1
// package-benchmark suites for MoEKit, kept in their own package so that building MoEKit itself
// (and CI) never compiles package-benchmark and its dependencies. Run from this directory:
//   swift package benchmark                      (all suites)
//   swift package --allow-writing-to-package-directory benchmark baseline update NAME
//   swift package benchmark baseline check NAME   (fails on a regression beyond the thresholds)
import PackageDescription

let package = Package(
    name: "MoEKitBenchmarks",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(name: "MoEKit", path: ".."),
        // The malloc interposer gives the malloc counters on Swift 6.3+; naming the trait keeps it on.
        .package(url: "https://github.com/ordo-one/benchmark", exact: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        // Dense versus MoE throughput at small shapes: the cases of `moekit bench`.
        .executableTarget(
            name: "MoEThroughput",
            dependencies: [
                .product(name: "MoEKit", package: "MoEKit"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/MoEThroughput",
            plugins: [
                .plugin(name: "BenchmarkPlugin", package: "benchmark"),
            ]
        ),
    ]
)
