import COpenBLAS
import Foundation

/// Which OpenBLAS kernels this process runs, and whether a better set exists for this CPU.
///
/// OpenBLAS built with `DYNAMIC_ARCH` (Debian's is) picks its kernels ("core") once, when the
/// library is loaded, from the CPU it sees. A release older than the CPU does not know it and falls
/// through to generic SSE code (Debian 12's 0.3.21 on a recent Xeon picks Prescott: a fifth of the
/// machine's sgemm). The only way to change the choice is `OPENBLAS_CORETYPE`, read at load time, so
/// it must be in the environment *before* the process starts.
///
/// `moekit` re-executes itself with the better core when ``decide(cpu:chosenCore:environment:)``
/// says so. A program that links MoEKit can do the same as the first statement of its `main`
/// (``reexecuteIfNeeded(quiet:)``), or set `OPENBLAS_CORETYPE` in its environment itself; see
/// docs/blas-kernels.md.
///
/// The table (generic = an SSE-only or AVX-only core, or OpenBLAS's "Unknown"):
/// | CPU features | vendor | generic core chosen → re-execute with |
/// |---|---|---|
/// | AVX-512 F, BW, VL, DQ, CD and AVX512-BF16 | any | Cooperlake |
/// | AVX-512 F, BW, VL, DQ, CD | any | SkylakeX |
/// | AVX2 and FMA | AMD or Hygon | Zen |
/// | AVX2 and FMA | Intel, other | Haswell |
/// | less | any | nothing better: keep |
/// A non-generic core (Haswell, Zen, SkylakeX, ... or a name this table does not know) is kept.
/// A core the user set (`OPENBLAS_CORETYPE`) is always kept, silently; `MOEKIT_KEEP_BLAS_CORE=1` opts
/// out of the re-execution, silently; `MOEKIT_BLAS_REEXECUTED` (set on the re-executed process) stops
/// any second one, with a warning if the kernels are still generic.
public enum BLASKernelSelection {
    /// Environment variable OpenBLAS reads at load time to force a core.
    static let coreTypeVariable = "OPENBLAS_CORETYPE"
    /// Set to `1` to keep whatever core OpenBLAS chose.
    static let keepCoreVariable = "MOEKIT_KEEP_BLAS_CORE"
    /// Set on the re-executed process to the core it asked for; guards against a second re-execution.
    static let reexecutedVariable = "MOEKIT_BLAS_REEXECUTED"
    /// Test hook: the core to *pretend* OpenBLAS chose, so the re-execution path can be exercised
    /// end to end on a machine whose OpenBLAS already picks good kernels. Only the decision reads it;
    /// the core actually running is always reported as OpenBLAS says.
    static let pretendCoreVariable = "MOEKIT_TEST_PRETEND_BLAS_CORE"

    public enum Vendor: String, Sendable, Equatable {
        case intel, amd, hygon, other
    }

    /// The CPU as the kernel choice sees it: vendor and the `/proc/cpuinfo` flags (which Linux clears
    /// when the OS does not save the registers a feature needs, so they mean "usable").
    struct CPU: Sendable, Equatable {
        var vendor: Vendor
        var features: Set<String>

        init(vendor: Vendor, features: Set<String>) {
            self.vendor = vendor
            self.features = features
        }

        var hasAVX512: Bool { features.isSuperset(of: ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"]) }
        var hasAVX512BF16: Bool { hasAVX512 && features.contains("avx512_bf16") }
        var hasAVX2FMA: Bool { features.isSuperset(of: ["avx2", "fma"]) }

        /// Parses the first processor's `vendor_id` and `flags` lines of `/proc/cpuinfo` text.
        static func parse(cpuinfo: String) -> CPU {
            var vendor = Vendor.other
            var features: Set<String> = []
            var sawVendor = false, sawFlags = false
            for line in cpuinfo.split(separator: "\n") {
                let parts = line.split(separator: ":", maxSplits: 1)
                guard parts.count == 2 else { continue }
                let key = parts[0].trimmingCharacters(in: .whitespaces)
                let value = parts[1].trimmingCharacters(in: .whitespaces)
                if key == "vendor_id", !sawVendor {
                    sawVendor = true
                    switch value {
                    case "GenuineIntel": vendor = .intel
                    case "AuthenticAMD": vendor = .amd
                    case "HygonGenuine": vendor = .hygon
                    default: vendor = .other
                    }
                } else if key == "flags", !sawFlags {
                    sawFlags = true
                    features = Set(value.split(separator: " ").map(String.init))
                }
                if sawVendor, sawFlags { break }
            }
            return CPU(vendor: vendor, features: features)
        }

        /// This machine's CPU (empty features where `/proc/cpuinfo` cannot be read: nothing is upgraded).
        static var current: CPU {
            parse(cpuinfo: (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? "")
        }
    }

    /// What to do about the kernels at start-up.
    enum Decision: Sendable, Equatable {
        /// The chosen kernels are right for this CPU, or nothing better exists.
        case keep
        /// Start the process again with `OPENBLAS_CORETYPE` set to `coreType`.
        case reexecute(coreType: String)
        /// Generic kernels on a CPU that has better ones, kept because the user asked for them (their
        /// own `OPENBLAS_CORETYPE`, or `MOEKIT_KEEP_BLAS_CORE=1`): nothing is printed, the bench
        /// flags them. The text says why.
        case respect(String)
        /// Generic kernels although the process was re-executed with better ones (an OpenBLAS that
        /// does not know the core): printed once on stderr. The text says why.
        case warn(String)
    }

    /// OpenBLAS cores that use SSE or plain AVX only (names as `openblas_get_corename()` spells
    /// them, compared case-insensitively), and the placeholder names for "no idea".
    static let genericCores: Set<String> = [
        "unknown", "generic", "katmai", "coppermine", "northwood", "prescott", "banias", "atom", "core2", "penryn",
        "dunnington", "nehalem", "athlon", "opteron", "opteron_sse3", "barcelona", "bobcat", "nano", "sandybridge",
        "bulldozer", "piledriver", "steamroller",
    ]

    static func isGeneric(core: String) -> Bool { genericCores.contains(core.lowercased()) }

    /// The best OpenBLAS core for `cpu`, or nil when no non-generic core fits it.
    static func bestCore(for cpu: CPU) -> String? {
        if cpu.hasAVX512BF16 { return "Cooperlake" }
        if cpu.hasAVX512 { return "SkylakeX" }
        if cpu.hasAVX2FMA { return cpu.vendor == .amd || cpu.vendor == .hygon ? "Zen" : "Haswell" }
        return nil
    }

    /// The start-up decision, a pure function of the CPU, the core OpenBLAS chose and the environment.
    static func decide(cpu: CPU, chosenCore: String, environment: [String: String]) -> Decision {
        guard isGeneric(core: chosenCore), let better = bestCore(for: cpu) else { return .keep }
        let generic = "OpenBLAS runs its generic \(chosenCore) kernels on a CPU that has \(better)'s"
        if let asked = environment[reexecutedVariable] {
            return .warn("\(generic): OpenBLAS ignored \(coreTypeVariable)=\(asked) (does this OpenBLAS know that core?)")
        }
        if let user = environment[coreTypeVariable], !user.isEmpty {
            return .respect("\(generic), as \(coreTypeVariable)=\(user) asks; unset it to let moekit choose")
        }
        if environment[keepCoreVariable] == "1" {
            return .respect("\(generic); kept because \(keepCoreVariable)=1")
        }
        return .reexecute(coreType: better)
    }

    // MARK: This process

    /// The core OpenBLAS chose when it was loaded (`openblas_get_corename()`), e.g. "Cooperlake".
    static var chosenCore: String {
        guard let name = openblas_get_corename() else { return "unknown" }
        return String(cString: name)
    }

    /// OpenBLAS's version as its configuration string names it, e.g. "0.3.21".
    static var openBLASVersion: String {
        let words = BLAS.configuration.split(separator: " ")
        guard let index = words.firstIndex(of: "OpenBLAS"), index + 1 < words.count else { return "unknown" }
        return String(words[index + 1])
    }

    /// One line for reports and `--version`: "OpenBLAS 0.3.21, core Cooperlake [OpenBLAS 0.3.21 DYNAMIC_ARCH ...]",
    /// saying where a forced core came from ("OPENBLAS_CORETYPE=SkylakeX set by moekit" or "… set by the user").
    public static var summary: String {
        "OpenBLAS \(openBLASVersion), core \(chosenCore)\(isGeneric(core: chosenCore) ? " (generic)" : "")\(coreOrigin()) [\(BLAS.configuration)]"
    }

    /// " (OPENBLAS_CORETYPE=X set by moekit)", " (OPENBLAS_CORETYPE=X set by the user)" or "".
    static func coreOrigin(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        guard let core = environment[coreTypeVariable], !core.isEmpty else { return "" }
        return " (\(coreTypeVariable)=\(core) set by \(environment[reexecutedVariable] == core ? "moekit" : "the user"))"
    }

    /// The decision for this process now.
    /// ``pretendCoreVariable`` stands in for the core of the first start only: after a
    /// re-execution the core OpenBLAS really chose is judged.
    static func currentDecision(environment: [String: String] = ProcessInfo.processInfo.environment) -> Decision {
        decide(cpu: .current, chosenCore: startCore(environment), environment: environment)
    }

    /// Re-executes this process (`/proc/self/exe`, same arguments) with the better core when
    /// ``currentDecision(environment:)`` says so, saying so in one line on stderr unless `quiet`;
    /// prints the warning of a `.warn` decision unless `quiet` (a `.respect` decision is silent). Call it first thing in `main`, before
    /// any thread or file is opened. Returns only when the process goes on as it is (also when
    /// `execv` fails, which it reports).
    public static func reexecuteIfNeeded(arguments: [String] = CommandLine.arguments, quiet: Bool) {
        let environment = ProcessInfo.processInfo.environment
        switch currentDecision(environment: environment) {
        case .keep, .respect:
            return
        case .warn(let message):
            if !quiet { standardError("moekit: warning: \(message)") }
        case .reexecute(let core):
            if !quiet {
                standardError("moekit: OpenBLAS chose its generic \(startCore(environment)) kernels; restarting with \(coreTypeVariable)=\(core) (set \(keepCoreVariable)=1 to keep them)")
            }
            setenv(coreTypeVariable, core, 1)
            setenv(reexecutedVariable, core, 1)
            var cArguments: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) }
            cArguments.append(nil)
            execv("/proc/self/exe", &cArguments)
            let reason = String(cString: strerror(errno))
            unsetenv(coreTypeVariable)
            unsetenv(reexecutedVariable)
            for pointer in cArguments { free(pointer) }
            standardError("moekit: warning: could not restart with \(coreTypeVariable)=\(core) (\(reason)); going on with generic kernels")
        }
    }

    private static func startCore(_ environment: [String: String]) -> String {
        guard environment[reexecutedVariable] == nil, let pretended = environment[pretendCoreVariable], !pretended.isEmpty else { return chosenCore }
        return pretended
    }

    private static func standardError(_ line: String) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }
}
