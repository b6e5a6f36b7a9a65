#ifndef MOEKIT_MOE_KERNELS_H
#define MOEKIT_MOE_KERNELS_H

// Products with 16-bit weights read in place (see MatrixMultiply+Weight.swift and docs/bf16-kernels.md).
//
// Weights W are `[n, k]` row-major (PyTorch's `[out, in]`), rows `ldw` elements apart, little-endian
// bf16 or f16 at any byte address (a checkpoint's memory map need not align them). Every function
// computes C `[m, n]` = alpha · A `[m, k]` · Wᵀ + beta · C for a range of W's rows, so a caller can
// split the rows over threads. beta = 0 never reads C (it may hold NaN).
//
// Each function has three paths with the same arithmetic up to the order of the f32 additions:
// AVX-512 (F, BW, VL; BF16 for the dot products), AVX2 + FMA + F16C, and portable C. `isa` chooses
// one (a path the CPU lacks is never taken: the best one it has is used instead); tests run every
// path the machine has against a plain reference.

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Instruction-set levels, in increasing order.
#define MOEKIT_ISA_PORTABLE 0
#define MOEKIT_ISA_AVX2 1
#define MOEKIT_ISA_AVX512 2

// Weight element types.
#define MOEKIT_WEIGHT_BF16 0
#define MOEKIT_WEIGHT_F16 1

// The best level this CPU (and OS) runs: MOEKIT_ISA_AVX512 needs AVX-512 F, BW, VL;
// MOEKIT_ISA_AVX2 needs AVX2, FMA and F16C.
int moekit_kernels_isa(void);

// 1 when the CPU has AVX512-BF16 (vdpbf16ps) besides AVX-512 F, BW, VL.
int moekit_cpu_has_avx512_bf16(void);

// A spin-wait hint (x86 `pause`, arm64 `yield`): lets the core's sibling and the memory system
// breathe while a thread polls for work (WorkerPool.swift).
static inline void moekit_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

// f32 compute on 16-bit weights, for few rows of A (decode): rows [row_begin, row_end) of W give
// columns [row_begin, row_end) of C. A is f32 `[m, k]` (lda ≥ k), C `[m, ldc]`. Each weight
// element is widened to f32 exactly; products and sums are f32 (FMA).
void moekit_gemv_f32_half(int isa, long m, long row_begin, long row_end, long k, float alpha, const float *a, long lda,
                          const void *w, long ldw, int weight_type, float beta, float *c, long ldc);

// f32 compute on f32 weights, any number of rows of A (lda ≥ k, W rows ldw ≥ k floats apart): the
// same convention as moekit_gemv_f32_half. AVX-512 dot-product tiles (4 rows of A × 6 rows of W,
// read as stored, nothing packed), or the portable loop (also taken for MOEKIT_ISA_AVX2: where
// AVX-512 is missing, callers use sgemm instead). Single-threaded: callers split W's rows.
void moekit_gemm_f32(int isa, long m, long row_begin, long row_end, long k, float alpha, const float *a, long lda, const float *w,
                     long ldw, float beta, float *c, long ldc);

// Rounds `count` f32 values to bf16, round to nearest even (NaN stays a quiet NaN): AVX-512 (16
// at a time, the same rule) or the portable loop, by `isa` as for the GEMMs.
void moekit_round_to_bf16(int isa, const float *x, uint16_t *out, long count);

// bf16 compute with AVX512-BF16 (vdpbf16ps): A is bf16 `[m, k]` (lda ≥ k), W bf16. Products of
// bf16 pairs are exact and summed into f32 accumulators; vdpbf16ps treats subnormal inputs as zero
// and flushes subnormal results to zero. Precondition: moekit_cpu_has_avx512_bf16() == 1.
void moekit_gemm_bf16_dpbf16(long m, long row_begin, long row_end, long k, float alpha, const uint16_t *a, long lda,
                            const void *w, long ldw, float beta, float *c, long ldc);

// The same arithmetic for few rows of A (decode), W's rows read one at a time as one sequential
// stream (the GEMV's order). Precondition: moekit_cpu_has_avx512_bf16() == 1.
void moekit_gemv_bf16_dpbf16(long m, long row_begin, long row_end, long k, float alpha, const uint16_t *a, long lda,
                             const void *w, long ldw, float beta, float *c, long ldc);

#ifdef __cplusplus
}
#endif

#endif
