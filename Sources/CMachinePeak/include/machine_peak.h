#ifndef MOEKIT_MACHINE_PEAK_H
#define MOEKIT_MACHINE_PEAK_H

// FMA-throughput loops that measure the CPU's peak f32 FLOP/s (see MachineCeilings.swift).
//
// Each function runs `iterations` rounds of independent chains s = s * a + b (one fused multiply-add
// per element per round, so 2 FLOPs), on `moekit_fma_chain_floats_*` floats of `state` (read and
// written back), enough independent chains to hide the FMA latency on every x86 core we know.
// The result is exactly that of a scalar fmaf loop per element: tests compare the two.

#ifdef __cplusplus
extern "C" {
#endif

// Floats of state each function reads and writes.
#define MOEKIT_FMA_CHAIN_FLOATS_AVX512 (16 * 16)
#define MOEKIT_FMA_CHAIN_FLOATS_AVX2 (12 * 8)

// 1 when this CPU (and OS) can run the AVX-512F / AVX2+FMA loop.
int moekit_cpu_has_avx512f(void);
int moekit_cpu_has_avx2_fma(void);

// Precondition: the matching moekit_cpu_has_* returned 1.
void moekit_fma_chains_avx512(long iterations, float a, float b, float *state);
void moekit_fma_chains_avx2(long iterations, float a, float b, float *state);

#ifdef __cplusplus
}
#endif

#endif
