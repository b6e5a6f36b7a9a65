#include "machine_peak.h"

#include <immintrin.h>

int moekit_cpu_has_avx512f(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 1 : 0;
}

int moekit_cpu_has_avx2_fma(void) {
    __builtin_cpu_init();
    return (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 1 : 0;
}

// 16 chains of 16 lanes: FMA latency 4 × up to 2 pipes needs ≥ 8 in flight; 16 leave room.
__attribute__((target("avx512f")))
void moekit_fma_chains_avx512(long iterations, float a, float b, float *state) {
    const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b);
    __m512 s0 = _mm512_loadu_ps(state + 0 * 16), s1 = _mm512_loadu_ps(state + 1 * 16);
    __m512 s2 = _mm512_loadu_ps(state + 2 * 16), s3 = _mm512_loadu_ps(state + 3 * 16);
    __m512 s4 = _mm512_loadu_ps(state + 4 * 16), s5 = _mm512_loadu_ps(state + 5 * 16);
    __m512 s6 = _mm512_loadu_ps(state + 6 * 16), s7 = _mm512_loadu_ps(state + 7 * 16);
    __m512 s8 = _mm512_loadu_ps(state + 8 * 16), s9 = _mm512_loadu_ps(state + 9 * 16);
    __m512 s10 = _mm512_loadu_ps(state + 10 * 16), s11 = _mm512_loadu_ps(state + 11 * 16);
    __m512 s12 = _mm512_loadu_ps(state + 12 * 16), s13 = _mm512_loadu_ps(state + 13 * 16);
    __m512 s14 = _mm512_loadu_ps(state + 14 * 16), s15 = _mm512_loadu_ps(state + 15 * 16);
    for (long i = 0; i < iterations; i++) {
        s0 = _mm512_fmadd_ps(s0, va, vb); s1 = _mm512_fmadd_ps(s1, va, vb);
        s2 = _mm512_fmadd_ps(s2, va, vb); s3 = _mm512_fmadd_ps(s3, va, vb);
        s4 = _mm512_fmadd_ps(s4, va, vb); s5 = _mm512_fmadd_ps(s5, va, vb);
        s6 = _mm512_fmadd_ps(s6, va, vb); s7 = _mm512_fmadd_ps(s7, va, vb);
        s8 = _mm512_fmadd_ps(s8, va, vb); s9 = _mm512_fmadd_ps(s9, va, vb);
        s10 = _mm512_fmadd_ps(s10, va, vb); s11 = _mm512_fmadd_ps(s11, va, vb);
        s12 = _mm512_fmadd_ps(s12, va, vb); s13 = _mm512_fmadd_ps(s13, va, vb);
        s14 = _mm512_fmadd_ps(s14, va, vb); s15 = _mm512_fmadd_ps(s15, va, vb);
    }
    _mm512_storeu_ps(state + 0 * 16, s0); _mm512_storeu_ps(state + 1 * 16, s1);
    _mm512_storeu_ps(state + 2 * 16, s2); _mm512_storeu_ps(state + 3 * 16, s3);
    _mm512_storeu_ps(state + 4 * 16, s4); _mm512_storeu_ps(state + 5 * 16, s5);
    _mm512_storeu_ps(state + 6 * 16, s6); _mm512_storeu_ps(state + 7 * 16, s7);
    _mm512_storeu_ps(state + 8 * 16, s8); _mm512_storeu_ps(state + 9 * 16, s9);
    _mm512_storeu_ps(state + 10 * 16, s10); _mm512_storeu_ps(state + 11 * 16, s11);
    _mm512_storeu_ps(state + 12 * 16, s12); _mm512_storeu_ps(state + 13 * 16, s13);
    _mm512_storeu_ps(state + 14 * 16, s14); _mm512_storeu_ps(state + 15 * 16, s15);
}

// 12 chains of 8 lanes (16 ymm registers, two hold a and b).
__attribute__((target("avx2,fma")))
void moekit_fma_chains_avx2(long iterations, float a, float b, float *state) {
    const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
    __m256 s0 = _mm256_loadu_ps(state + 0 * 8), s1 = _mm256_loadu_ps(state + 1 * 8);
    __m256 s2 = _mm256_loadu_ps(state + 2 * 8), s3 = _mm256_loadu_ps(state + 3 * 8);
    __m256 s4 = _mm256_loadu_ps(state + 4 * 8), s5 = _mm256_loadu_ps(state + 5 * 8);
    __m256 s6 = _mm256_loadu_ps(state + 6 * 8), s7 = _mm256_loadu_ps(state + 7 * 8);
    __m256 s8 = _mm256_loadu_ps(state + 8 * 8), s9 = _mm256_loadu_ps(state + 9 * 8);
    __m256 s10 = _mm256_loadu_ps(state + 10 * 8), s11 = _mm256_loadu_ps(state + 11 * 8);
    for (long i = 0; i < iterations; i++) {
        s0 = _mm256_fmadd_ps(s0, va, vb); s1 = _mm256_fmadd_ps(s1, va, vb);
        s2 = _mm256_fmadd_ps(s2, va, vb); s3 = _mm256_fmadd_ps(s3, va, vb);
        s4 = _mm256_fmadd_ps(s4, va, vb); s5 = _mm256_fmadd_ps(s5, va, vb);
        s6 = _mm256_fmadd_ps(s6, va, vb); s7 = _mm256_fmadd_ps(s7, va, vb);
        s8 = _mm256_fmadd_ps(s8, va, vb); s9 = _mm256_fmadd_ps(s9, va, vb);
        s10 = _mm256_fmadd_ps(s10, va, vb); s11 = _mm256_fmadd_ps(s11, va, vb);
    }
    _mm256_storeu_ps(state + 0 * 8, s0); _mm256_storeu_ps(state + 1 * 8, s1);
    _mm256_storeu_ps(state + 2 * 8, s2); _mm256_storeu_ps(state + 3 * 8, s3);
    _mm256_storeu_ps(state + 4 * 8, s4); _mm256_storeu_ps(state + 5 * 8, s5);
    _mm256_storeu_ps(state + 6 * 8, s6); _mm256_storeu_ps(state + 7 * 8, s7);
    _mm256_storeu_ps(state + 8 * 8, s8); _mm256_storeu_ps(state + 9 * 8, s9);
    _mm256_storeu_ps(state + 10 * 8, s10); _mm256_storeu_ps(state + 11 * 8, s11);
}
