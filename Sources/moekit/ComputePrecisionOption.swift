import ArgumentParser
import MoEKit

extension ComputePrecision: ExpressibleByArgument {
    /// `--compute`'s help, shared by the commands that run a model.
    static let help = ArgumentHelp(
        "Arithmetic of the products with weights: f32 (default) or bf16.",
        discussion: "bf16 rounds activations to bf16 and multiplies them with bf16 weights (rounded once when stored as f32) with f32 sums: AVX512-BF16's vdpbf16ps, opt-in, refused on a CPU without it. Its error against f32 is in docs/bf16-kernels.md.")

    /// Refuses bf16 on a CPU without AVX512-BF16: the portable path would be slower than f32, and
    /// bf16 is only worth its error when it is faster.
    func validateForThisCPU() throws {
        if self == .bfloat16 && !ComputePrecision.cpuHasBFloat16DotProduct {
            throw ValidationError("--compute bf16 needs AVX512-BF16 (vdpbf16ps), which this CPU lacks; use --compute f32")
        }
    }
}
