import Testing
@testable import MoEKit

/// The variable's name, spelled once: these tests only read what the pure decision says about it
/// and never set it in any process's environment.
private let coreVariable = "OPENBLAS_CORETYPE"

/// The start-up kernel decision (``BLASKernelSelection/decide(cpu:chosenCore:environment:)``):
/// a generic core on a CPU with better ones is replaced by re-executing with OPENBLAS_CORETYPE set,
/// unless the user set a core (always respected), opted out, or the re-execution already happened.
@Suite struct BLASKernelSelectionTests {
    static let avx512: Set<String> = ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"]
    static let zen4 = BLASKernelSelection.CPU(vendor: .amd, features: avx512.union(["avx512_bf16"]))
    static let skylakeX = BLASKernelSelection.CPU(vendor: .intel, features: avx512)
    static let haswell = BLASKernelSelection.CPU(vendor: .intel, features: ["sse4_2", "avx", "avx2", "fma"])
    static let zen2 = BLASKernelSelection.CPU(vendor: .amd, features: ["sse4_2", "avx", "avx2", "fma"])
    static let hygon = BLASKernelSelection.CPU(vendor: .hygon, features: ["sse4_2", "avx", "avx2", "fma"])
    static let sandyBridge = BLASKernelSelection.CPU(vendor: .intel, features: ["sse4_2", "avx"])
    static let avx512WithoutBW = BLASKernelSelection.CPU(vendor: .intel, features: ["avx2", "fma", "avx512f", "avx512cd"])

    /// The table of the type's doc comment, row by row.
    @Test func bestCoreFollowsTheFeatureTable() {
        #expect(BLASKernelSelection.bestCore(for: Self.zen4) == "Cooperlake")
        #expect(BLASKernelSelection.bestCore(for: Self.skylakeX) == "SkylakeX")
        #expect(BLASKernelSelection.bestCore(for: Self.haswell) == "Haswell")
        #expect(BLASKernelSelection.bestCore(for: Self.zen2) == "Zen")
        #expect(BLASKernelSelection.bestCore(for: Self.hygon) == "Zen")
        #expect(BLASKernelSelection.bestCore(for: Self.avx512WithoutBW) == "Haswell")
        #expect(BLASKernelSelection.bestCore(for: Self.sandyBridge) == nil)
        // avx512_bf16 without the AVX-512 base set does not make a Cooperlake.
        #expect(BLASKernelSelection.bestCore(for: .init(vendor: .intel, features: ["avx2", "fma", "avx512_bf16"])) == "Haswell")
    }

    @Test func genericCoresOnCapableCPUsAreReplaced() {
        let decide = BLASKernelSelection.decide
        #expect(decide(Self.skylakeX, "Prescott", [:]) == .reexecute(coreType: "SkylakeX"))
        #expect(decide(Self.zen4, "Prescott", [:]) == .reexecute(coreType: "Cooperlake"))
        #expect(decide(Self.zen2, "Core2", [:]) == .reexecute(coreType: "Zen"))
        #expect(decide(Self.haswell, "Nehalem", [:]) == .reexecute(coreType: "Haswell"))
        #expect(decide(Self.haswell, "Sandybridge", [:]) == .reexecute(coreType: "Haswell"))
        #expect(decide(Self.skylakeX, "Katmai", [:]) == .reexecute(coreType: "SkylakeX"))
        #expect(decide(Self.skylakeX, "Atom", [:]) == .reexecute(coreType: "SkylakeX"))
        #expect(decide(Self.skylakeX, "Unknown", [:]) == .reexecute(coreType: "SkylakeX"))
        // Case as OpenBLAS's lower-case spellings would have it.
        #expect(decide(Self.skylakeX, "prescott", [:]) == .reexecute(coreType: "SkylakeX"))
    }

    @Test func goodOrUnknownCoresAndOldCPUsAreKept() {
        let decide = BLASKernelSelection.decide
        for core in ["Haswell", "Zen", "SkylakeX", "Cooperlake", "sapphirerapids", "SomeFutureCore"] {
            #expect(decide(Self.zen4, core, [:]) == .keep)
        }
        #expect(decide(Self.sandyBridge, "Sandybridge", [:]) == .keep)
        #expect(decide(Self.sandyBridge, "Prescott", [:]) == .keep)
        #expect(decide(.init(vendor: .other, features: []), "Prescott", [:]) == .keep)
    }

    /// A user-set core wins and the opt-out keeps OpenBLAS's choice, both silently (`respect`); the
    /// loop guard stops a second re-execution and warns that the first did not take.
    @Test func environmentCanOnlyPreventTheReexecution() {
        let decide = BLASKernelSelection.decide
        guard case .respect(let user) = decide(Self.skylakeX, "Prescott", ["OPENBLAS_CORETYPE": "Prescott"]) else {
            Issue.record("a user-set core must be respected"); return
        }
        #expect(user.contains(coreVariable + "=Prescott"))
        guard case .respect(let kept) = decide(Self.skylakeX, "Prescott", ["MOEKIT_KEEP_BLAS_CORE": "1"]) else {
            Issue.record("MOEKIT_KEEP_BLAS_CORE=1 must opt out"); return
        }
        #expect(kept.contains("MOEKIT_KEEP_BLAS_CORE=1"))
        guard case .warn(let ignored) = decide(Self.skylakeX, "Prescott", ["MOEKIT_BLAS_REEXECUTED": "SkylakeX", "OPENBLAS_CORETYPE": "SkylakeX"]) else {
            Issue.record("a re-executed process must never re-execute again"); return
        }
        #expect(ignored.contains("ignored " + coreVariable + "=SkylakeX"))
        // Only "1" opts out; an empty OPENBLAS_CORETYPE counts as unset.
        #expect(decide(Self.skylakeX, "Prescott", ["MOEKIT_KEEP_BLAS_CORE": "0"]) == .reexecute(coreType: "SkylakeX"))
        #expect(decide(Self.skylakeX, "Prescott", ["OPENBLAS_CORETYPE": ""]) == .reexecute(coreType: "SkylakeX"))
        // Nothing to say when the kernels are good, whatever the environment.
        #expect(decide(Self.skylakeX, "SkylakeX", ["OPENBLAS_CORETYPE": "SkylakeX"]) == .keep)
    }

    /// The first processor's vendor_id and flags lines, as in /proc/cpuinfo.
    @Test func cpuinfoIsParsed() {
        let text = """
        processor\t: 0
        vendor_id\t: AuthenticAMD
        cpu family\t: 25
        flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512dq avx512cd avx512_bf16
        processor\t: 1
        vendor_id\t: GenuineIntel
        flags\t\t: fpu
        """
        let cpu = BLASKernelSelection.CPU.parse(cpuinfo: text)
        #expect(cpu.vendor == .amd)
        #expect(cpu.hasAVX512BF16 && cpu.hasAVX2FMA)
        #expect(BLASKernelSelection.CPU.parse(cpuinfo: "vendor_id : GenuineIntel\nflags : sse2").vendor == .intel)
        #expect(BLASKernelSelection.CPU.parse(cpuinfo: "").features.isEmpty)
    }

    /// Reports say whether a forced core came from moekit's restart or from the user.
    @Test func forcedCoresNameTheirOrigin() {
        #expect(BLASKernelSelection.coreOrigin(environment: [:]) == "")
        #expect(BLASKernelSelection.coreOrigin(environment: ["OPENBLAS_CORETYPE": "Haswell"]) == " (" + coreVariable + "=Haswell set by the user)")
        #expect(BLASKernelSelection.coreOrigin(environment: ["OPENBLAS_CORETYPE": "Zen", "MOEKIT_BLAS_REEXECUTED": "Zen"])
            == " (" + coreVariable + "=Zen set by moekit)")
    }

    /// The running library names its version and core (what --version and every report print).
    @Test func thisProcessNamesVersionAndCore() {
        #expect(BLASKernelSelection.openBLASVersion.first?.isNumber == true)
        #expect(BLASKernelSelection.chosenCore != "unknown")
        #expect(BLASKernelSelection.summary.contains(BLASKernelSelection.chosenCore))
    }
}
