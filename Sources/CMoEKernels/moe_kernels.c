#include "moe_kernels.h"

#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

// MARK: CPU features

int moekit_cpu_has_avx512_bf16(void) {
    __builtin_cpu_init();
    return (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
            __builtin_cpu_supports("avx512bf16")) ? 1 : 0;
}

int moekit_kernels_isa(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        return MOEKIT_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return MOEKIT_ISA_AVX2;
    return MOEKIT_ISA_PORTABLE;
}

// MARK: Portable pieces

static inline uint16_t load_u16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static inline float bits_to_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float bf16_to_f32(uint16_t h) { return bits_to_float((uint32_t)h << 16); }

// IEEE binary16 → binary32, exact (subnormals, infinities and NaNs included).
static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    if (exponent == 0x1f) return bits_to_float(sign | 0x7f800000 | (mantissa << 13));
    if (exponent == 0) {
        float value = (float)mantissa * 0x1p-24f;
        return sign ? -value : value;
    }
    return bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

static inline float widen(const unsigned char *p, int type) {
    uint16_t h = load_u16(p);
    return type == MOEKIT_WEIGHT_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
}

static inline void store(float *c, float sum, float alpha, float beta) { *c = beta == 0 ? alpha * sum : alpha * sum + beta * *c; }

static inline uint16_t round_to_bf16(uint32_t u) {
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static void round_to_bf16_portable(const float *x, uint16_t *out, long count) {
    for (long i = 0; i < count; i++) {
        uint32_t u;
        memcpy(&u, x + i, 4);
        out[i] = round_to_bf16(u);
    }
}

// The portable rule on 16 values at a time: NaNs take the quieting OR, the rest the rounding add.
// vcvtneps2bf16 would be one instruction, but it needs AVX512-BF16 and treats subnormal inputs as
// zero: this rounding must equal HalfPrecision's on every AVX-512 CPU, whose f32 fallback computes
// on the rounded values.
static __attribute__((target("avx512f,avx512bw,avx512vl"))) void round_to_bf16_avx512(const float *x, uint16_t *out, long count) {
    const __m512i magnitude = _mm512_set1_epi32(0x7fffffff), infinity = _mm512_set1_epi32(0x7f800000);
    const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1), quiet = _mm512_set1_epi32(0x40);
    long i = 0;
    for (; i + 16 <= count; i += 16) {
        const __m512i u = _mm512_loadu_si512((const void *)(x + i));
        const __m512i high = _mm512_srli_epi32(u, 16);
        const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, magnitude), infinity);
        const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(bias, _mm512_and_si512(high, one))), 16);
        const __m512i result = _mm512_mask_or_epi32(rounded, nan, high, quiet);
        _mm256_storeu_si256((__m256i *)(out + i), _mm512_cvtepi32_epi16(result));
    }
    round_to_bf16_portable(x + i, out + i, count - i);
}

void moekit_round_to_bf16(int isa, const float *x, uint16_t *out, long count) {
    if (isa >= MOEKIT_ISA_AVX512 && moekit_kernels_isa() == MOEKIT_ISA_AVX512) round_to_bf16_avx512(x, out, count);
    else round_to_bf16_portable(x, out, count);
}

static void gemv_portable(long m, long row_begin, long row_end, long k, float alpha, const float *a, long lda, const unsigned char *w,
                          long ldw, int type, float beta, float *c, long ldc) {
    for (long j = row_begin; j < row_end; j++) {
        const unsigned char *row = w + 2 * j * ldw;
        for (long i = 0; i < m; i++) {
            const float *x = a + i * lda;
            float sum = 0;
            for (long p = 0; p < k; p++) sum = fmaf(widen(row + 2 * p, type), x[p], sum);
            store(c + i * ldc + j, sum, alpha, beta);
        }
    }
}

// MARK: AVX-512 f32 GEMV on 16-bit weights

#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma")))
#define INLINE static inline __attribute__((always_inline))
// How far ahead of its loads the GEMV asks for W into L2. One core's loads alone keep too few
// cache lines in flight to cover the memory latency when the machine is busy (12 GB/s on one Zen 4
// core against 22 GB/s with this prefetch, 566 MB bf16 LM head); consecutive rows are contiguous,
// so the prefetch runs on into the next row.
#define GEMV_PREFETCH_BYTES 1024

// One row of W against MR rows of A, read front to back, 64 columns of k per step into four
// accumulators per A row (independent FMA chains). Taking W one row at a time makes consecutive
// rows one sequential stream: several rows at once split it into short strided streams, which ran
// at half the memory bandwidth (docs/bf16-kernels.md).
// - bf16: 32 weights per 64-byte load, widened in-lane: each 32-bit lane holds an even element in
//   its low half (<< 16 makes it an f32) and an odd one in its high half (& 0xffff0000), against A
//   de-interleaved per 32-column block into [16 even, 16 odd] (`deinterleave_bf16_operand`) and
//   zero-padded to a multiple of 32 columns.
// - f16: 16 weights per 32-byte load through vcvtph2ps, against A as stored.
INLINE AVX512_TARGET void gemv_row_avx512(const int MR, const int TYPE, long k, float alpha, const float *a, long lda,
                                          const unsigned char *w, float beta, float *c, long ldc) {
    __m512 acc[4][4];
    for (int i = 0; i < MR; i++)
        for (int q = 0; q < 4; q++) acc[i][q] = _mm512_setzero_ps();
    long p = 0;
    if (TYPE == MOEKIT_WEIGHT_BF16) {
        const __m512i high = _mm512_set1_epi32((int)0xffff0000u);
        for (; p + 64 <= k; p += 64) {
            _mm_prefetch((const char *)(w + 2 * p) + GEMV_PREFETCH_BYTES, _MM_HINT_T1);
            _mm_prefetch((const char *)(w + 2 * p) + GEMV_PREFETCH_BYTES + 64, _MM_HINT_T1);
            const __m512i v0 = _mm512_loadu_si512((const void *)(w + 2 * p)), v1 = _mm512_loadu_si512((const void *)(w + 2 * p + 64));
            const __m512 w0 = _mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)), w1 = _mm512_castsi512_ps(_mm512_and_si512(v0, high));
            const __m512 w2 = _mm512_castsi512_ps(_mm512_slli_epi32(v1, 16)), w3 = _mm512_castsi512_ps(_mm512_and_si512(v1, high));
            for (int i = 0; i < MR; i++) {
                const float *x = a + i * lda + p;
                acc[i][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x), acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + 16), acc[i][1]);
                acc[i][2] = _mm512_fmadd_ps(w2, _mm512_loadu_ps(x + 32), acc[i][2]);
                acc[i][3] = _mm512_fmadd_ps(w3, _mm512_loadu_ps(x + 48), acc[i][3]);
            }
        }
        // The last blocks of 32 (the final one masked: A's padding is zero, W's masked lanes too).
        for (; p < k; p += 32) {
            const long left = k - p;
            const __mmask32 mask = left >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << left) - 1);
            const __m512i v = _mm512_maskz_loadu_epi16(mask, w + 2 * p);
            const __m512 w0 = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), w1 = _mm512_castsi512_ps(_mm512_and_si512(v, high));
            for (int i = 0; i < MR; i++) {
                const float *x = a + i * lda + p;
                acc[i][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x), acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + 16), acc[i][1]);
            }
        }
    } else {
        for (; p + 64 <= k; p += 64) {
            _mm_prefetch((const char *)(w + 2 * p) + GEMV_PREFETCH_BYTES, _MM_HINT_T1);
            _mm_prefetch((const char *)(w + 2 * p) + GEMV_PREFETCH_BYTES + 64, _MM_HINT_T1);
            __m512 wv[4];
            for (int q = 0; q < 4; q++) wv[q] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 2 * p + 32 * q)));
            for (int i = 0; i < MR; i++)
                for (int q = 0; q < 4; q++) acc[i][q] = _mm512_fmadd_ps(wv[q], _mm512_loadu_ps(a + i * lda + p + 16 * q), acc[i][q]);
        }
        for (; p < k; p += 16) {
            const long left = k - p;
            const __mmask16 mask = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
            const __m512 wv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w + 2 * p));
            for (int i = 0; i < MR; i++) acc[i][0] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mask, a + i * lda + p), acc[i][0]);
        }
    }
    for (int i = 0; i < MR; i++)
        store(c + i * ldc, _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[i][0], acc[i][1]), _mm512_add_ps(acc[i][2], acc[i][3]))), alpha, beta);
}

// A's m rows de-interleaved per 32-column block ([16 even, 16 odd] columns), zero-padded to
// `padded` columns: the operand layout of gemv_row_avx512's bf16 path.
static void deinterleave_bf16_operand(long m, long k, const float *a, long lda, float *out, long padded) {
    for (long i = 0; i < m; i++) {
        const float *x = a + i * lda;
        float *o = out + i * padded;
        for (long b = 0; b < padded; b += 32)
            for (long j = 0; j < 16; j++) {
                o[b + j] = b + 2 * j < k ? x[b + 2 * j] : 0;
                o[b + 16 + j] = b + 2 * j + 1 < k ? x[b + 2 * j + 1] : 0;
            }
    }
}

#define GEMV_ROW(MR, TYPE) gemv_row_avx512(MR, TYPE, k, alpha, x + i * ldx, ldx, w + j * ldw_bytes, beta, c + i * ldc + j, ldc)
#define GEMV_ROW_DISPATCH(TYPE)                    \
    do {                                           \
        switch (mr) {                              \
        case 4: GEMV_ROW(4, TYPE); break;          \
        case 3: GEMV_ROW(3, TYPE); break;          \
        case 2: GEMV_ROW(2, TYPE); break;          \
        default: GEMV_ROW(1, TYPE); break;         \
        }                                          \
    } while (0)

// Row by row of W, each against the activations in steps of up to 4 rows (from L1 after the first).
static AVX512_TARGET void gemv_avx512(long m, long row_begin, long row_end, long k, float alpha, const float *a, long lda,
                                      const unsigned char *w, long ldw, int type, float beta, float *c, long ldc) {
    const long ldw_bytes = 2 * ldw;
    const float *x = a;
    long ldx = lda;
    float *deinterleaved = NULL;
    if (type == MOEKIT_WEIGHT_BF16) {
        const long padded = (k + 31) / 32 * 32;
        deinterleaved = aligned_alloc(64, (size_t)(m * padded) * sizeof(float));
        if (!deinterleaved) {
            gemv_portable(m, row_begin, row_end, k, alpha, a, lda, w, ldw, type, beta, c, ldc);
            return;
        }
        deinterleave_bf16_operand(m, k, a, lda, deinterleaved, padded);
        x = deinterleaved;
        ldx = padded;
    }
    for (long j = row_begin; j < row_end; j++) {
        for (long i = 0; i < m; i += 4) {
            const int mr = m - i >= 4 ? 4 : (int)(m - i);
            if (type == MOEKIT_WEIGHT_BF16) GEMV_ROW_DISPATCH(MOEKIT_WEIGHT_BF16);
            else GEMV_ROW_DISPATCH(MOEKIT_WEIGHT_F16);
        }
    }
    free(deinterleaved);
}

// MARK: AVX2 f32 GEMV on 16-bit weights

#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

INLINE AVX2_TARGET __m256 widen16_avx2(const unsigned char *p, int type) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return type == MOEKIT_WEIGHT_BF16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)) : _mm256_cvtph_ps(h);
}

INLINE AVX2_TARGET float sum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE AVX2_TARGET void gemv_tile_avx2(const int MR, const int NR, const int TYPE, long k, float alpha, const float *a, long lda,
                                       const unsigned char *w, long ldw_bytes, float beta, float *c, long ldc) {
    __m256 acc[4][4];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = _mm256_setzero_ps();
    long p = 0;
    for (; p + 8 <= k; p += 8) {
        __m256 wv[4];
        for (int j = 0; j < NR; j++) wv[j] = widen16_avx2(w + j * ldw_bytes + 2 * p, TYPE);
        for (int i = 0; i < MR; i++) {
            __m256 xv = _mm256_loadu_ps(a + i * lda + p);
            for (int j = 0; j < NR; j++) acc[i][j] = _mm256_fmadd_ps(wv[j], xv, acc[i][j]);
        }
    }
    for (int i = 0; i < MR; i++) {
        for (int j = 0; j < NR; j++) {
            float sum = sum_avx2(acc[i][j]);
            for (long q = p; q < k; q++) sum = fmaf(widen(w + j * ldw_bytes + 2 * q, TYPE), a[i * lda + q], sum);
            store(c + i * ldc + j, sum, alpha, beta);
        }
    }
}

#define GEMV_TILE(MR, NR, TYPE) gemv_tile_avx2(MR, NR, TYPE, k, alpha, a + i * lda, lda, w + j * ldw_bytes, ldw_bytes, beta, c + i * ldc + j, ldc)

// Dispatches (mr ∈ 1…4, nr ∈ {4, 1}, type) to a constant instance.
#define GEMV_DISPATCH(TYPE)                                  \
    do {                                                     \
        if (nr == 4) {                                       \
            switch (mr) {                                    \
            case 4: GEMV_TILE(4, 4, TYPE); break;            \
            case 3: GEMV_TILE(3, 4, TYPE); break;            \
            case 2: GEMV_TILE(2, 4, TYPE); break;            \
            default: GEMV_TILE(1, 4, TYPE); break;           \
            }                                                \
        } else {                                             \
            switch (mr) {                                    \
            case 4: GEMV_TILE(4, 1, TYPE); break;            \
            case 3: GEMV_TILE(3, 1, TYPE); break;            \
            case 2: GEMV_TILE(2, 1, TYPE); break;            \
            default: GEMV_TILE(1, 1, TYPE); break;           \
            }                                                \
        }                                                    \
    } while (0)

// Rows of W in steps of 4 (1 at the tail), activations in steps of up to 4 rows.
static AVX2_TARGET void gemv_avx2(long m, long row_begin, long row_end, long k, float alpha, const float *a, long lda,
                                  const unsigned char *w, long ldw, int type, float beta, float *c, long ldc) {
    const long ldw_bytes = 2 * ldw;
    for (long j = row_begin; j < row_end;) {
        const int nr = row_end - j >= 4 ? 4 : 1;
        for (long i = 0; i < m; i += 4) {
            const int mr = m - i >= 4 ? 4 : (int)(m - i);
            if (type == MOEKIT_WEIGHT_BF16) GEMV_DISPATCH(MOEKIT_WEIGHT_BF16);
            else GEMV_DISPATCH(MOEKIT_WEIGHT_F16);
        }
        j += nr;
    }
}

void moekit_gemv_f32_half(int isa, long m, long row_begin, long row_end, long k, float alpha, const float *a, long lda,
                          const void *w, long ldw, int weight_type, float beta, float *c, long ldc) {
    if (m <= 0 || row_begin >= row_end) return;
    const int best = moekit_kernels_isa();
    if (isa > best) isa = best;
    if (isa == MOEKIT_ISA_AVX512) gemv_avx512(m, row_begin, row_end, k, alpha, a, lda, w, ldw, weight_type, beta, c, ldc);
    else if (isa == MOEKIT_ISA_AVX2) gemv_avx2(m, row_begin, row_end, k, alpha, a, lda, w, ldw, weight_type, beta, c, ldc);
    else gemv_portable(m, row_begin, row_end, k, alpha, a, lda, w, ldw, weight_type, beta, c, ldc);
}

// MARK: AVX-512 f32 GEMM on f32 weights

// An MR × NR tile of dot products over the whole k, 16 columns per step: the MR·NR accumulators
// each hold 16 partial sums, added up at the end. A and W are both read k-contiguous as stored,
// so nothing is packed: W's NR rows come from memory once and from L1/L2 for the next A rows.
// `next` (or NULL) is the next 6 rows of W, whose columns [next_begin, next_end) this tile
// prefetches into L2, so that memory streams them while this block computes. Without it, the
// first A rows against each block waited on 6 short strided streams: 76–80 against 88–95 GFLOP/s
// at 32 A rows (an MoE expert's block at T = 128).
INLINE AVX512_TARGET void sgemm_tile_avx512(const int MR, const int NR, long k, float alpha, const float *a, long lda, const float *w,
                                            long ldw, float beta, float *c, long ldc, const float *next, long next_begin, long next_end) {
    __m512 acc[4][6];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = _mm512_setzero_ps();
    long p = 0;
    for (; p + 16 <= k; p += 16) {
        __m512 wv[6];
        for (int j = 0; j < NR; j++) wv[j] = _mm512_loadu_ps(w + j * ldw + p);
        if (next && p >= next_begin && p < next_end)
            for (int j = 0; j < 6; j++) _mm_prefetch((const char *)(next + j * ldw + p), _MM_HINT_T1);
        for (int i = 0; i < MR; i++) {
            const __m512 xv = _mm512_loadu_ps(a + i * lda + p);
            for (int j = 0; j < NR; j++) acc[i][j] = _mm512_fmadd_ps(wv[j], xv, acc[i][j]);
        }
    }
    if (p < k) {
        const __mmask16 mask = (__mmask16)((1u << (k - p)) - 1);
        __m512 wv[6];
        for (int j = 0; j < NR; j++) wv[j] = _mm512_maskz_loadu_ps(mask, w + j * ldw + p);
        for (int i = 0; i < MR; i++) {
            const __m512 xv = _mm512_maskz_loadu_ps(mask, a + i * lda + p);
            for (int j = 0; j < NR; j++) acc[i][j] = _mm512_fmadd_ps(wv[j], xv, acc[i][j]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) store(c + i * ldc + j, _mm512_reduce_add_ps(acc[i][j]), alpha, beta);
}

#define SGEMM_TILE(MR, NR, NEXT) \
    sgemm_tile_avx512(MR, NR, k, alpha, a + i * lda, lda, w + j * ldw, ldw, beta, c + i * ldc + j, ldc, NEXT, next_begin, next_end)

// The schedule of both dot-product GEMMs: A in chunks of `SGEMM_CHUNK_ROWS` rows (kept in L2
// across W's rows); within a chunk, W in steps of 6 rows (1 at the tail), each against the chunk's
// rows in steps of 4 (1 at the tail). The chunk's tiles against one block of W prefetch the next
// block's columns in equal parts. TILE(MR, NR, NEXT) runs the tile at rows i of A and j of W;
// ROW(r) is the address of W's row r.
#define SGEMM_CHUNK_ROWS 64
#define DOT_TILE_SCHEDULE(TILE, ROW)                                                                         \
    for (long chunk = 0; chunk < m; chunk += SGEMM_CHUNK_ROWS) {                                            \
        const long chunk_end = chunk + SGEMM_CHUNK_ROWS < m ? chunk + SGEMM_CHUNK_ROWS : m;                 \
        for (long j = row_begin; j < row_end;) {                                                            \
            const int nr = row_end - j >= 6 ? 6 : 1;                                                        \
            const __typeof__(ROW(0)) next = nr == 6 && j + 12 <= row_end ? ROW(j + 6) : NULL;               \
            const long parts = (chunk_end - chunk + 3) / 4;                                                 \
            for (long i = chunk; i < chunk_end;) {                                                          \
                const int mr = chunk_end - i >= 4 ? 4 : 1;                                                  \
                const long part = (i - chunk) / 4;                                                          \
                const long next_begin = part * k / parts, next_end = part == parts - 1 ? k : (part + 1) * k / parts; \
                if (nr == 6) {                                                                              \
                    if (mr == 4) TILE(4, 6, next);                                                          \
                    else TILE(1, 6, next);                                                                  \
                } else {                                                                                    \
                    if (mr == 4) TILE(4, 1, NULL);                                                          \
                    else TILE(1, 1, NULL);                                                                  \
                }                                                                                           \
                i += mr;                                                                                    \
            }                                                                                               \
            j += nr;                                                                                        \
        }                                                                                                   \
    }

#define SGEMM_ROW(r) (w + (r) * ldw)
static AVX512_TARGET void sgemm_avx512(long m, long row_begin, long row_end, long k, float alpha, const float *a, long lda,
                                       const float *w, long ldw, float beta, float *c, long ldc) {
    DOT_TILE_SCHEDULE(SGEMM_TILE, SGEMM_ROW)
}

static void sgemm_portable(long m, long row_begin, long row_end, long k, float alpha, const float *a, long lda, const float *w, long ldw,
                           float beta, float *c, long ldc) {
    for (long j = row_begin; j < row_end; j++)
        for (long i = 0; i < m; i++) {
            float sum = 0;
            for (long p = 0; p < k; p++) sum = fmaf(w[j * ldw + p], a[i * lda + p], sum);
            store(c + i * ldc + j, sum, alpha, beta);
        }
}

void moekit_gemm_f32(int isa, long m, long row_begin, long row_end, long k, float alpha, const float *a, long lda, const float *w, long ldw,
                     float beta, float *c, long ldc) {
    if (m <= 0 || row_begin >= row_end) return;
    if (isa >= MOEKIT_ISA_AVX512 && moekit_kernels_isa() == MOEKIT_ISA_AVX512) sgemm_avx512(m, row_begin, row_end, k, alpha, a, lda, w, ldw, beta, c, ldc);
    else sgemm_portable(m, row_begin, row_end, k, alpha, a, lda, w, ldw, beta, c, ldc);
}

// MARK: AVX512-BF16 GEMM (vdpbf16ps)

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// An MR × NR tile of dot products over the whole k, 32 bf16 pairs' worth of k per step: each of
// the MR·NR accumulators holds 16 partial sums, added up at the end. Both operands are read
// k-contiguous as stored (no packing), the W rows from L1 across the A rows of a tile.
INLINE BF16_TARGET void dpbf16_tile(const int MR, const int NR, long k, float alpha, const uint16_t *a, long lda,
                                    const unsigned char *w, long ldw_bytes, float beta, float *c, long ldc, const unsigned char *next,
                                    long next_begin, long next_end) {
    __m512 acc[4][6];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = _mm512_setzero_ps();
    long p = 0;
    for (; p + 32 <= k; p += 32) {
        __m512bh wv[6];
        for (int j = 0; j < NR; j++) wv[j] = (__m512bh)_mm512_loadu_si512((const void *)(w + j * ldw_bytes + 2 * p));
        if (next && p >= next_begin && p < next_end)
            for (int j = 0; j < 6; j++) _mm_prefetch((const char *)(next + j * ldw_bytes + 2 * p), _MM_HINT_T1);
        for (int i = 0; i < MR; i++) {
            __m512bh av = (__m512bh)_mm512_loadu_si512((const void *)(a + i * lda + p));
            for (int j = 0; j < NR; j++) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], av, wv[j]);
        }
    }
    if (p < k) {
        __mmask32 mask = (__mmask32)((k - p) >= 32 ? 0xffffffffu : ((1u << (k - p)) - 1));
        __m512bh wv[6];
        for (int j = 0; j < NR; j++) wv[j] = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + j * ldw_bytes + 2 * p);
        for (int i = 0; i < MR; i++) {
            __m512bh av = (__m512bh)_mm512_maskz_loadu_epi16(mask, a + i * lda + p);
            for (int j = 0; j < NR; j++) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], av, wv[j]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) store(c + i * ldc + j, _mm512_reduce_add_ps(acc[i][j]), alpha, beta);
}

// bf16 compute for few rows of A (decode): W one row at a time, one sequential stream as in
// gemv_avx512, against up to 4 rows of A with vdpbf16ps, 64 columns per step in two accumulators
// per A row. Three instructions per 64 bytes of W against the f32 GEMV's six: with fewer
// instructions in flight per byte, the core's loads run further ahead, and the row streams at the
// memory's speed where the f32 GEMV falls 15-25% short (docs/bf16-kernels.md). llama.cpp's bf16
// ggml_vec_dot_bf16 is the same loop.
INLINE BF16_TARGET void dpbf16_row(const int MR, long k, float alpha, const uint16_t *a, long lda, const unsigned char *w, float beta,
                                   float *c, long ldc) {
    __m512 acc[4][2];
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    long p = 0;
    for (; p + 64 <= k; p += 64) {
        _mm_prefetch((const char *)(w + 2 * p) + GEMV_PREFETCH_BYTES, _MM_HINT_T1);
        _mm_prefetch((const char *)(w + 2 * p) + GEMV_PREFETCH_BYTES + 64, _MM_HINT_T1);
        const __m512bh w0 = (__m512bh)_mm512_loadu_si512((const void *)(w + 2 * p));
        const __m512bh w1 = (__m512bh)_mm512_loadu_si512((const void *)(w + 2 * p + 64));
        for (int i = 0; i < MR; i++) {
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], (__m512bh)_mm512_loadu_si512((const void *)(a + i * lda + p)), w0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], (__m512bh)_mm512_loadu_si512((const void *)(a + i * lda + p + 32)), w1);
        }
    }
    for (; p < k; p += 32) {
        const long left = k - p;
        const __mmask32 mask = left >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << left) - 1);
        const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + 2 * p);
        for (int i = 0; i < MR; i++) acc[i][0] = _mm512_dpbf16_ps(acc[i][0], (__m512bh)_mm512_maskz_loadu_epi16(mask, a + i * lda + p), wv);
    }
    for (int i = 0; i < MR; i++) store(c + i * ldc, _mm512_reduce_add_ps(_mm512_add_ps(acc[i][0], acc[i][1])), alpha, beta);
}

void BF16_TARGET moekit_gemv_bf16_dpbf16(long m, long row_begin, long row_end, long k, float alpha, const uint16_t *a, long lda,
                                         const void *w, long ldw, float beta, float *c, long ldc) {
    const unsigned char *wb = w;
    for (long j = row_begin; j < row_end; j++) {
        for (long i = 0; i < m; i += 4) {
            const uint16_t *x = a + i * lda;
            const unsigned char *row = wb + j * 2 * ldw;
            float *out = c + i * ldc + j;
            switch (m - i >= 4 ? 4 : (int)(m - i)) {
            case 4: dpbf16_row(4, k, alpha, x, lda, row, beta, out, ldc); break;
            case 3: dpbf16_row(3, k, alpha, x, lda, row, beta, out, ldc); break;
            case 2: dpbf16_row(2, k, alpha, x, lda, row, beta, out, ldc); break;
            default: dpbf16_row(1, k, alpha, x, lda, row, beta, out, ldc); break;
            }
        }
    }
}

#define DPBF16_TILE(MR, NR, NEXT)                                                                                            \
    dpbf16_tile(MR, NR, k, alpha, a + i * lda, lda, wb + j * ldw_bytes, ldw_bytes, beta, c + i * ldc + j, ldc, NEXT, next_begin, \
                next_end)

#define DPBF16_ROW(r) (wb + (r) * ldw_bytes)
// The schedule of sgemm_avx512 (DOT_TILE_SCHEDULE).
void BF16_TARGET moekit_gemm_bf16_dpbf16(long m, long row_begin, long row_end, long k, float alpha, const uint16_t *a, long lda,
                                         const void *w, long ldw, float beta, float *c, long ldc) {
    const unsigned char *wb = w;
    const long ldw_bytes = 2 * ldw;
    DOT_TILE_SCHEDULE(DPBF16_TILE, DPBF16_ROW)
}
