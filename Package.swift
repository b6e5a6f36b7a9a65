// swift-tools-version:6.1
import PackageDescription

// Builds on Linux only (Debian/Ubuntu, x86-64 and arm64): the sources use Glibc, and OpenBLAS and HDF5
// come from the system through pkg-config. SwiftPM's `platforms` names Apple platforms only, so the
// package declares none rather than claim a macOS it does not build on.
let package = Package(
    name: "MoEKit",
    products: [
        .library(name: "MoEKit", targets: ["MoEKit"]),
        .executable(name: "moekit", targets: ["moekit"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // OpenBLAS through its CBLAS interface (Debian: libopenblas-dev).
        .systemLibrary(
            name: "COpenBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]
        ),
        // The HDF5 C library (Debian: libhdf5-dev) plus static inline accessors for its macros.
        .systemLibrary(
            name: "CHDF5",
            pkgConfig: "hdf5",
            providers: [.apt(["libhdf5-dev"])]
        ),
        // FMA-throughput loops (AVX-512F, AVX2+FMA) that measure the CPU's peak f32 FLOP/s for `moekit bench`.
        .target(name: "CMachinePeak"),
        // Products with bf16/f16 weights read in place (decode GEMV) and AVX512-BF16 dot products
        // (`--compute bf16`), with AVX-512, AVX2 and portable paths chosen at run time.
        .target(name: "CMoEKernels"),
        .target(
            name: "MoEKit",
            dependencies: ["COpenBLAS", "CHDF5", "CMachinePeak", "CMoEKernels"]
        ),
        .executableTarget(
            name: "moekit",
            dependencies: [
                "MoEKit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(
            name: "MoEKitTests",
            dependencies: ["MoEKit", "COpenBLAS", "CHDF5", "CMoEKernels"],
            exclude: []
        ),
    ]
)
