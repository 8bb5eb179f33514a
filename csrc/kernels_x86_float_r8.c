/*
 * kernels_x86_float_r8.c: products of the repacked float weights (F32_R8, F16_R8, BF16_R8: kernels.h) with
 * f32 tokens, for one x86 level (kernels_x86.h).
 *
 * A vector of 8 consecutive values of a repacked group is value k of its 8 rows, so a product keeps each
 * row's sum in a lane of its own: one fused multiply-add per value k, with token value k broadcast to all
 * lanes. That makes a batch an outer product: a tile of 16 rows (two groups) x 6 tokens holds its 12
 * accumulators in registers with no sum across lanes at the end, and each k costs 2 weight loads and 6
 * broadcasts for 12 multiply-adds. The file-layout kernels (kernels_x86_float.c) multiply along the rows
 * instead: their lanes hold parts of one sum, which a tile must add up across lanes and which a row's tail
 * breaks up. Measured on AMD Zen 3 (AVX2, FMA peak 100 GFLOP/s a core), one thread, llm_matmul of 768 x 768 to
 * 2048 x 768 and 768 x 2048 with 126 and 510 tokens: F32 78-91 GFLOP/s, F16 85-95 here; 67-79 in
 * kernels_x86_float.c's 4 x 3 tiles of the file's layout.
 *
 * Every row's sum is the same chain in increasing k (fmaf's rounding, as the scalar reference), whatever
 * the tile, the batch or the panel it is computed in: a token's result is bit for bit the same alone and in
 * any batch, on every level. The vectors are 256-bit on every x86 level (this layout is repacked for AVX2
 * machines; AVX-512 ones keep the file's layout unless asked: llmrun/model.py).
 */
#include "kernels_x86.h"

/* The 8 rows' value k of the group at g, as f32. */
INLINE __m256 column(const void *g, int64_t k, float_kind kind) { return load8(g, k * LLM_R8, kind); }

INLINE size_t group_bytes(int64_t cols, float_kind kind) { return (size_t)cols * LLM_R8 * element_bytes(kind); }

/* ---------------------------------------------------------------------------------------------------- */
/* one token: four groups at a time (four independent chains hide the multiply-add's latency) */

INLINE void matvec(float *out, const void *w, const float *x, int64_t row_begin, int64_t row_end, int64_t cols,
                   float_kind kind) {
    size_t gb = group_bytes(cols, kind);
    int64_t g = row_begin / LLM_R8, g_end = row_end / LLM_R8;
    for (; g + 4 <= g_end; g += 4) {
        const char *g0 = (const char *)w + (size_t)g * gb;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t k = 0; k < cols; k++) {
            __m256 xk = _mm256_broadcast_ss(x + k);
            a0 = _mm256_fmadd_ps(column(g0, k, kind), xk, a0);
            a1 = _mm256_fmadd_ps(column(g0 + gb, k, kind), xk, a1);
            a2 = _mm256_fmadd_ps(column(g0 + 2 * gb, k, kind), xk, a2);
            a3 = _mm256_fmadd_ps(column(g0 + 3 * gb, k, kind), xk, a3);
        }
        float *o = out + (g * LLM_R8 - row_begin);
        _mm256_storeu_ps(o, a0);
        _mm256_storeu_ps(o + 8, a1);
        _mm256_storeu_ps(o + 16, a2);
        _mm256_storeu_ps(o + 24, a3);
    }
    for (; g < g_end; g++) {
        const char *g0 = (const char *)w + (size_t)g * gb;
        __m256 a = _mm256_setzero_ps();
        for (int64_t k = 0; k < cols; k++) a = _mm256_fmadd_ps(column(g0, k, kind), _mm256_broadcast_ss(x + k), a);
        _mm256_storeu_ps(out + (g * LLM_R8 - row_begin), a);
    }
}

void X86(matvec_f32_r8)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end, int64_t cols) {
    matvec(out, w, x, row_begin, row_end, cols, KIND_F32);
}

void X86(matvec_f16_r8)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end, int64_t cols) {
    matvec(out, w, x, row_begin, row_end, cols, KIND_F16);
}

void X86(matvec_bf16_r8)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end,
                         int64_t cols) {
    matvec(out, w, x, row_begin, row_end, cols, KIND_BF16);
}

/* ---------------------------------------------------------------------------------------------------- */
/* a batch: tiles of 16 rows x 6 tokens
 *
 * The tokens are copied, a block of TB tokens and a panel of KC values at a time, into the order a tile
 * reads them: for each tile of 6 tokens, value k of the 6 side by side (so that its broadcasts come from one
 * stream, not six: reading six token rows directly ran at half the speed). The copy is made once per block
 * and panel and read by every row tile of the call; the panel of a row tile (16 x KC values: 16 KiB in f32)
 * stays in the L1 cache while the block's token tiles go past it, the block's copy (96 KiB) in L2. Between
 * panels each tile's sums wait in out, as f32: storing and reloading them changes no bit of the chain. */

enum { NT = 6, KC = 256, TB = 16 * NT };

/* Tokens [0, rn) (rows of x, ldx bytes apart) values [k0, k0 + kc) into dst: value k of token j at
   dst[(k - k0) * NT + j]. Full tiles transpose 8 values of their 6 tokens at a time in registers. */
INLINE void copy_tile(float *dst, const char *x, size_t ldx, int64_t rn, int64_t k0, int64_t kc) {
    int64_t k = 0;
    if (rn == NT) {
        const float *r[NT];
        for (int j = 0; j < NT; j++) r[j] = (const float *)(x + (size_t)j * ldx) + k0;
        for (; k + 8 <= kc; k += 8) {
            __m256 zero = _mm256_setzero_ps();
            __m256 r0 = _mm256_loadu_ps(r[0] + k), r1 = _mm256_loadu_ps(r[1] + k), r2 = _mm256_loadu_ps(r[2] + k);
            __m256 r3 = _mm256_loadu_ps(r[3] + k), r4 = _mm256_loadu_ps(r[4] + k), r5 = _mm256_loadu_ps(r[5] + k);
            /* a0 = r0[0] r1[0] r0[1] r1[1] | r0[4] r1[4] r0[5] r1[5], and so on */
            __m256 a0 = _mm256_unpacklo_ps(r0, r1), a1 = _mm256_unpackhi_ps(r0, r1);
            __m256 a2 = _mm256_unpacklo_ps(r2, r3), a3 = _mm256_unpackhi_ps(r2, r3);
            __m256 a4 = _mm256_unpacklo_ps(r4, r5), a5 = _mm256_unpackhi_ps(r4, r5);
            /* b0 = r0[0] r1[0] r2[0] r3[0] | r0[4] r1[4] r2[4] r3[4]; c0 = r4[0] r5[0] 0 0 | r4[4] r5[4] 0 0 */
            __m256 b0 = _mm256_shuffle_ps(a0, a2, 0x44), b1 = _mm256_shuffle_ps(a0, a2, 0xEE);
            __m256 b2 = _mm256_shuffle_ps(a1, a3, 0x44), b3 = _mm256_shuffle_ps(a1, a3, 0xEE);
            __m256 c0 = _mm256_shuffle_ps(a4, zero, 0x44), c1 = _mm256_shuffle_ps(a4, zero, 0xEE);
            __m256 c2 = _mm256_shuffle_ps(a5, zero, 0x44), c3 = _mm256_shuffle_ps(a5, zero, 0xEE);
            /* value k + i of the 6 tokens (and two zeros that the next store overwrites) at o + 6 i */
            float *o = dst + k * NT;
            _mm256_storeu_ps(o + 0 * NT, _mm256_permute2f128_ps(b0, c0, 0x20));
            _mm256_storeu_ps(o + 1 * NT, _mm256_permute2f128_ps(b1, c1, 0x20));
            _mm256_storeu_ps(o + 2 * NT, _mm256_permute2f128_ps(b2, c2, 0x20));
            _mm256_storeu_ps(o + 3 * NT, _mm256_permute2f128_ps(b3, c3, 0x20));
            _mm256_storeu_ps(o + 4 * NT, _mm256_permute2f128_ps(b0, c0, 0x31));
            _mm256_storeu_ps(o + 5 * NT, _mm256_permute2f128_ps(b1, c1, 0x31));
            _mm256_storeu_ps(o + 6 * NT, _mm256_permute2f128_ps(b2, c2, 0x31));
            _mm256_storeu_ps(o + 7 * NT, _mm256_permute2f128_ps(b3, c3, 0x31));
        }
    }
    for (; k < kc; k++)
        for (int64_t j = 0; j < rn; j++) dst[k * NT + j] = ((const float *)(x + (size_t)j * ldx))[k0 + k];
}

/* Bytes of a thread's scratch this file uses: a block's copy, and the 2 floats the last 8-value store of
   copy_tile writes past its tile. */
size_t X86(matmul_scratch_bytes_float_r8)(void) { return ((size_t)TB * KC + 2) * sizeof(float); }

/* out[j * ldo + i] for the rows of ng groups at g (8 ng rows, i < 8 ng) and tokens j < rn, over values [k0, k1)
   of the tokens' copy xt (value k of token j at xt[(k - k0) * NT + j]): the sums start from zero at k0 == 0,
   else from what out holds. Always inlined with constant ng and rn: each call site is a kernel with its
   accumulators in registers (12 of AVX2's 16, the two weight vectors and a broadcast beside them). */
INLINE void tile(float *out, int64_t ldo, const char *g, size_t gb, const float *xt, int64_t k0, int64_t k1,
                 float_kind kind, int ng, int rn) {
    __m256 acc[NT][2];
    for (int j = 0; j < rn; j++)
        for (int h = 0; h < ng; h++) {
            acc[j][h] = k0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(out + j * ldo + 8 * h);
            IN_REGISTER(acc[j][h]);
        }
    for (int64_t k = k0; k < k1; k++, xt += NT) {
        __m256 wv[2];
        for (int h = 0; h < ng; h++) {
            wv[h] = column(g + (size_t)h * gb, k, kind);
            if (rn > 1) IN_REGISTER(wv[h]);
        }
        for (int j = 0; j < rn; j++) {
            __m256 xb = _mm256_broadcast_ss(xt + j);
            for (int h = 0; h < ng; h++) acc[j][h] = _mm256_fmadd_ps(wv[h], xb, acc[j][h]);
        }
    }
    for (int j = 0; j < rn; j++)
        for (int h = 0; h < ng; h++) _mm256_storeu_ps(out + j * ldo + 8 * h, acc[j][h]);
}

/* The tile above for rn <= NT tokens, rn a run-time value. */
INLINE void tile_tokens(float *out, int64_t ldo, const char *g, size_t gb, const float *xt, int64_t k0, int64_t k1,
                        float_kind kind, int ng, int64_t rn) {
    _Static_assert(NT == 6, "a case per tile width");
    switch (rn) {
    case 1: tile(out, ldo, g, gb, xt, k0, k1, kind, ng, 1); break;
    case 2: tile(out, ldo, g, gb, xt, k0, k1, kind, ng, 2); break;
    case 3: tile(out, ldo, g, gb, xt, k0, k1, kind, ng, 3); break;
    case 4: tile(out, ldo, g, gb, xt, k0, k1, kind, ng, 4); break;
    case 5: tile(out, ldo, g, gb, xt, k0, k1, kind, ng, 5); break;
    default: tile(out, ldo, g, gb, xt, k0, k1, kind, ng, 6); break;
    }
}

/* Rows [row_begin, row_end) (whole groups) x tokens [0, n): blocks of TB tokens; in each, panels of KC values;
   for each panel the block's copy, then the rows two groups at a time (the last group alone), each over the
   block's tokens NT at a time. */
INLINE void matmul(float *out, int64_t ldo, const void *w, const char *x, size_t ldx, int64_t n, int64_t row_begin,
                   int64_t row_end, int64_t cols, float *xt, float_kind kind) {
    size_t gb = group_bytes(cols, kind);
    for (int64_t t0 = 0; t0 < n; t0 += TB) {
        int64_t t1 = t0 + TB < n ? t0 + TB : n;
        for (int64_t k0 = 0; k0 < cols; k0 += KC) {
            int64_t k1 = cols - k0 > KC ? k0 + KC : cols;
            for (int64_t t = t0; t < t1; t += NT)
                copy_tile(xt + (t - t0) * KC, x + (size_t)t * ldx, ldx, t1 - t < NT ? t1 - t : NT, k0, k1 - k0);
            for (int64_t r = row_begin; r < row_end; r += 2 * LLM_R8) {
                const char *g = (const char *)w + (size_t)(r / LLM_R8) * gb;
                int ng = row_end - r >= 2 * LLM_R8 ? 2 : 1;
                for (int64_t t = t0; t < t1; t += NT) {
                    float *o = out + t * ldo + (r - row_begin);
                    const float *xtt = xt + (t - t0) * KC;
                    if (ng == 2) tile_tokens(o, ldo, g, gb, xtt, k0, k1, kind, 2, t1 - t);
                    else tile_tokens(o, ldo, g, gb, xtt, k0, k1, kind, 1, t1 - t);
                }
            }
        }
    }
}

void X86(matmul_f32_r8)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                        int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    matmul(out, ldo, w, x, ldx, n, row_begin, row_end, cols, scratch, KIND_F32);
}

void X86(matmul_f16_r8)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                        int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    matmul(out, ldo, w, x, ldx, n, row_begin, row_end, cols, scratch, KIND_F16);
}

void X86(matmul_bf16_r8)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                         int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    matmul(out, ldo, w, x, ldx, n, row_begin, row_end, cols, scratch, KIND_BF16);
}
