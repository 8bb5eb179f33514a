/*
 * kernels_matmul.c: matrix-matrix products, out = x @ w^T for a batch of tokens (prompt processing).
 *
 * A matrix-vector product reads each weight once and does one multiply-add with it, so decoding is
 * bound by memory bandwidth. With a batch of n tokens each weight is read once and used n times, so
 * the work becomes bound by arithmetic, and what matters is how many multiply-adds each instruction
 * does and how few loads feed them. Each kernel computes a tile of RM weight rows by RN tokens at once,
 * RM x RN accumulators held in registers: a weight vector loaded once serves RN tokens and a token
 * vector serves RM rows. The instruction set with AVX-512 has 32 vector registers instead of 16, so it
 * gets bigger tiles.
 *
 * Float weights (F32, F16, BF16) are widened to f32 and multiplied with f32 tokens. Block weights (Q8_0,
 * Q4_0) are multiplied as signed bytes with the tokens' 8-bit blocks (q8_act) in integer dot products,
 * and each block's sum is scaled by d_w * d_x, the same arithmetic as the matrix-vector kernels, so a
 * batch gives the same logits as token-by-token decoding up to float rounding.
 *
 * Types and instruction sets without a kernel here (the portable reference) run the batch through the
 * matrix-vector kernel one token at a time (llm_matmul_fn is NULL).
 */
#include <string.h>

#include "kernels.h"
#include "simd_x86.h"

/* The eight-row kernels' repacked weights, per block of an eight-row group: eight groups of 32 bytes
   (four values x eight rows), then the eight rows' scales as f32 (see below). */
#define PACKED_BLOCK_BYTES (8 * QK + 8 * sizeof(float))

#ifdef LLM_HAVE_X86

#define INLINE __attribute__((always_inline)) static inline

/* Tokens per pass over a chunk of weight rows: the pass's tokens stay in the cache while every row
   group of the chunk uses them. */
static int64_t token_tile(size_t token_bytes, int rn) {
    int64_t t = (int64_t)((256 * 1024) / (token_bytes ? token_bytes : 1));
    t = t / rn * rn;
    return t > rn ? t : rn;
}

/* Runs TILE_FN over rows [row_begin, row_end) x tokens [0, n) in tiles of RM x RN, with tails of RM x 1
   and 1 x 1. The tile functions are always inlined and RM, RN are constants, so each call site becomes
   a kernel with its accumulators in registers. */
#define FOR_EACH_TILE(TILE_FN, KIND, RM, RN)                                                            \
    int64_t tile_n = token_tile(ldx, RN);                                                               \
    for (int64_t t0 = 0; t0 < n; t0 += tile_n) {                                                        \
        int64_t t1 = t0 + tile_n < n ? t0 + tile_n : n;                                                 \
        int64_t r = row_begin;                                                                          \
        for (; r + RM <= row_end; r += RM) {                                                            \
            int64_t t = t0;                                                                             \
            for (; t + RN <= t1; t += RN) TILE_FN(out, ldo, w, x, ldx, r, t, row_begin, cols, KIND, RM, RN); \
            for (; t < t1; t++) TILE_FN(out, ldo, w, x, ldx, r, t, row_begin, cols, KIND, RM, 1);       \
        }                                                                                               \
        for (; r < row_end; r++)                                                                        \
            for (int64_t t = t0; t < t1; t++) TILE_FN(out, ldo, w, x, ldx, r, t, row_begin, cols, KIND, 1, 1); \
    }

/* A matmul kernel (llm_matmul_fn) for one weight kind and instruction set. */
#define MATMUL(NAME, TARGET, TILE_FN, KIND, RM, RN)                                                     \
    TARGET static void NAME(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n, \
                            int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {          \
        (void)scratch;                                                                                  \
        FOR_EACH_TILE(TILE_FN, KIND, RM, RN)                                                            \
    }

/* ---------------------------------------------------------------------------------------------------- */
/* float weights: acc[i][j] += w_i[k..k+8] * x_j[k..k+8], summed across lanes at the end */

/* Eight weights as f32: kind 0 is f32, 1 half precision (F16C), 2 bfloat16 (its bits moved up 16). */
INLINE __m256 AVX2 load8_as_f32(const void *w, int64_t k, int kind) {
    if (kind == 0) return _mm256_loadu_ps((const float *)w + k);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + k));
    if (kind == 1) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

INLINE float AVX2 scalar_as_f32(const void *w, int64_t k, int kind) {
    if (kind == 0) return ((const float *)w)[k];
    uint16_t h = ((const uint16_t *)w)[k];
    return kind == 1 ? llm_fp16_to_fp32(h) : llm_bf16_to_fp32(h);
}

INLINE void AVX2 tile_float(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t row,
                            int64_t token, int64_t row_begin, int64_t cols, int kind, int rm, int rn) {
    size_t esize = kind == 0 ? sizeof(float) : sizeof(uint16_t);
    const void *wr[4];
    const float *xr[8];
    for (int i = 0; i < rm; i++) wr[i] = (const char *)w + (size_t)(row + i) * (size_t)cols * esize;
    for (int j = 0; j < rn; j++) xr[j] = (const float *)((const char *)x + (size_t)(token + j) * ldx);
    __m256 acc[4][8];
    for (int i = 0; i < rm; i++)
        for (int j = 0; j < rn; j++) acc[i][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= cols; k += 8) {
        __m256 wv[4];
        for (int i = 0; i < rm; i++) wv[i] = load8_as_f32(wr[i], k, kind);
        for (int j = 0; j < rn; j++) {
            __m256 xv = _mm256_loadu_ps(xr[j] + k);
            for (int i = 0; i < rm; i++) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    for (int i = 0; i < rm; i++)
        for (int j = 0; j < rn; j++) {
            float sum = hsum_avx2(acc[i][j]);
            for (int64_t kk = k; kk < cols; kk++) sum += scalar_as_f32(wr[i], kk, kind) * xr[j][kk];
            out[(token + j) * ldo + (row + i - row_begin)] = sum;
        }
}

/* The VNNI level differs only in having 32 vector registers: bigger tiles. */
MATMUL(matmul_f32_avx2, AVX2, tile_float, 0, 2, 6)
MATMUL(matmul_f32_avx512, VNNI, tile_float, 0, 4, 6)
MATMUL(matmul_f16_avx2, AVX2, tile_float, 1, 2, 6)
MATMUL(matmul_f16_avx512, VNNI, tile_float, 1, 4, 6)
MATMUL(matmul_bf16_avx2, AVX2, tile_float, 2, 2, 6)
MATMUL(matmul_bf16_avx512, VNNI, tile_float, 2, 4, 6)

/* ---------------------------------------------------------------------------------------------------- */
/* block weights: per 32-value block, an integer dot product of signed bytes, scaled by d_w * d_x */

/* A block's 32 weights as signed bytes and its scale: Q8_0 as stored, Q4_0's nibbles minus 8. */
INLINE __m256i AVX2 block_values(const void *row, int64_t b, int q4, float *d) {
    if (!q4) {
        const block_q8_0 *blk = (const block_q8_0 *)row + b;
        *d = _cvtsh_ss(blk->d);
        return _mm256_loadu_si256((const __m256i *)blk->qs);
    }
    const block_q4_0 *blk = (const block_q4_0 *)row + b;
    *d = _cvtsh_ss(blk->d);
    return _mm256_sub_epi8(unpack_q4_0(blk->qs), _mm256_set1_epi8(8));
}

/* AVX2: maddubs wants one unsigned operand, so the weights' signs move onto x (|w| * sign(w) x = w x). */
INLINE void AVX2 tile_blocks_avx2(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t row,
                                  int64_t token, int64_t row_begin, int64_t cols, int q4, int rm, int rn) {
    int64_t nb = cols / QK;
    size_t row_bytes = (size_t)nb * (q4 ? sizeof(block_q4_0) : sizeof(block_q8_0));
    const void *wr[4];
    q8_act xa[8];
    for (int i = 0; i < rm; i++) wr[i] = (const char *)w + (size_t)(row + i) * row_bytes;
    for (int j = 0; j < rn; j++) xa[j] = q8_act_view((const char *)x + (size_t)(token + j) * ldx, cols);
    __m256 acc[4][8];
    for (int i = 0; i < rm; i++)
        for (int j = 0; j < rn; j++) acc[i][j] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < nb; b++) {
        __m256i wv[4], wabs[4];
        __m256 dw[4];
        for (int i = 0; i < rm; i++) {
            float d;
            wv[i] = block_values(wr[i], b, q4, &d);
            wabs[i] = _mm256_sign_epi8(wv[i], wv[i]);
            dw[i] = _mm256_set1_ps(d);
        }
        for (int j = 0; j < rn; j++) {
            __m256i xq = _mm256_loadu_si256((const __m256i *)(xa[j].qs + b * QK));
            __m256 dx = _mm256_set1_ps(xa[j].d[b]);
            for (int i = 0; i < rm; i++) {
                __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs[i], _mm256_sign_epi8(xq, wv[i])), ones);
                acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw[i], dx), acc[i][j]);
            }
        }
    }
    for (int i = 0; i < rm; i++)
        for (int j = 0; j < rn; j++) out[(token + j) * ldo + (row + i - row_begin)] = hsum_avx2(acc[i][j]);
}

/* AVX2 without VNNI multiplies Q8_0 weights a row at a time (the eight-row kernels below need unsigned
   weights, and Q8_0's shifted to 0..255 would overflow maddubs's 16-bit sums). */
MATMUL(matmul_q8_0_avx2, AVX2, tile_blocks_avx2, 0, 2, 4)

/* ---------------------------------------------------------------------------------------------------- */
/* block weights, eight rows at a time: the rows in the vector lanes
 *
 * The kernels above put 32 values of one row in a vector, so every block costs a scale multiply and a
 * sum across lanes per row and token. Here a group of eight rows is first repacked (into the caller's
 * scratch buffer, once for all the tokens) so that a vector holds four consecutive values of each of
 * the eight rows, one row per 32-bit lane. A dot-product instruction against four bytes of a token,
 * broadcast to all lanes, then adds to all eight rows' sums at once; after the block's eight such steps
 * the eight rows' scales apply with one vector multiply. The weights are repacked as unsigned bytes,
 * value + OFFSET (8 for Q4_0, whose nibbles are stored that way; 128 for Q8_0), since the instruction
 * multiplies unsigned by signed bytes; OFFSET * (the token block's sum) comes off once per block.
 */

/* Transposes eight vectors of eight 32-bit lanes: v[i] lane j <-> v[j] lane i. */
INLINE void AVX2 transpose8x8_epi32(__m256i v[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(_mm256_castsi256_ps(v[2 * i]), _mm256_castsi256_ps(v[2 * i + 1]));
        t[2 * i + 1] = _mm256_unpackhi_ps(_mm256_castsi256_ps(v[2 * i]), _mm256_castsi256_ps(v[2 * i + 1]));
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_castps_si256(_mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
        v[i + 4] = _mm256_castps_si256(_mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
    }
}

/* Rows [row, row + 8) of w into the packed layout at dst. */
INLINE void AVX2 repack8(uint8_t *dst, const void *w, int64_t row, int64_t nb, int q4) {
    size_t block_bytes = q4 ? sizeof(block_q4_0) : sizeof(block_q8_0), row_bytes = (size_t)nb * block_bytes;
    for (int64_t b = 0; b < nb; b++, dst += PACKED_BLOCK_BYTES) {
        __m256i v[8];
        float d[8];
        for (int r = 0; r < 8; r++) {
            const uint8_t *blk = (const uint8_t *)w + (size_t)(row + r) * row_bytes + (size_t)b * block_bytes;
            uint16_t h;
            memcpy(&h, blk, sizeof h);
            d[r] = _cvtsh_ss(h);
            if (q4) v[r] = unpack_q4_0(blk + 2);
            else v[r] = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(blk + 2)), _mm256_set1_epi8((char)0x80));
        }
        transpose8x8_epi32(v);
        for (int g = 0; g < 8; g++) _mm256_storeu_si256((__m256i *)(dst + g * 32), v[g]);
        memcpy(dst + 8 * QK, d, sizeof d);
    }
}

/* out[token + j][row .. row + 8) for j < RN from a packed eight-row group. DOT4(s, w, x) adds the
   products of unsigned w and signed x bytes, in groups of four, to the int32 lanes of s. A macro, for
   the same reason as MATVEC_BLOCKS8 (simd_x86.h). */
#define TILE8_BODY(DOT4)                                                                                \
    q8_act xa[16];                                                                                      \
    for (int j = 0; j < rn; j++) xa[j] = q8_act_view((const char *)x + (size_t)(token + j) * ldx, nb * QK); \
    __m256 acc[16];                                                                                     \
    for (int j = 0; j < rn; j++) acc[j] = _mm256_setzero_ps();                                          \
    for (int64_t b = 0; b < nb; b++) {                                                                  \
        const uint8_t *p = packed + b * PACKED_BLOCK_BYTES;                                             \
        __m256i s[16];                                                                                  \
        for (int j = 0; j < rn; j++) s[j] = _mm256_setzero_si256();                                     \
        for (int g = 0; g < 8; g++) {                                                                   \
            __m256i wv = _mm256_loadu_si256((const __m256i *)(p + g * 32));                             \
            for (int j = 0; j < rn; j++) {                                                              \
                int32_t four;                                                                           \
                memcpy(&four, xa[j].qs + b * QK + g * 4, sizeof four);                                  \
                s[j] = DOT4(s[j], wv, _mm256_set1_epi32(four));                                         \
            }                                                                                           \
        }                                                                                               \
        __m256 dw = _mm256_loadu_ps((const float *)(p + 8 * QK));                                       \
        for (int j = 0; j < rn; j++) {                                                                  \
            __m256 dot = _mm256_fmsub_ps(_mm256_set1_ps(xa[j].d[b]), _mm256_cvtepi32_ps(s[j]),          \
                                         _mm256_set1_ps(offset * xa[j].dsum[b]));                       \
            acc[j] = _mm256_fmadd_ps(dw, dot, acc[j]);                                                  \
        }                                                                                               \
    }                                                                                                   \
    for (int j = 0; j < rn; j++) _mm256_storeu_ps(out + (token + j) * ldo + row_out, acc[j]);

#define DOT4_AVX2(s, w, x) _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)))
#define DOT4_VNNI(s, w, x) _mm256_dpbusd_epi32(s, w, x)

INLINE void AVX2 tile8_avx2(float *out, int64_t ldo, const uint8_t *packed, const void *x, size_t ldx,
                            int64_t token, int64_t row_out, int64_t nb, float offset, int rn) {
    TILE8_BODY(DOT4_AVX2)
}

INLINE void VNNI tile8_vnni(float *out, int64_t ldo, const uint8_t *packed, const void *x, size_t ldx,
                            int64_t token, int64_t row_out, int64_t nb, float offset, int rn) {
    TILE8_BODY(DOT4_VNNI)
}

/* Eight rows at a time (repacked once, then run past all n tokens, RN at a time); the last rows % 8
   one at a time. */
#define MATMUL_PACKED(NAME, TARGET, TILE8, Q4, RN)                                                      \
    TARGET static void NAME(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n, \
                            int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {          \
        int64_t nb = cols / QK, r = row_begin;                                                          \
        float offset = Q4 ? 8.0f : 128.0f;                                                              \
        for (; r + 8 <= row_end; r += 8) {                                                              \
            repack8(scratch, w, r, nb, Q4);                                                             \
            int64_t t = 0;                                                                              \
            for (; t + RN <= n; t += RN) TILE8(out, ldo, scratch, x, ldx, t, r - row_begin, nb, offset, RN); \
            for (; t < n; t++) TILE8(out, ldo, scratch, x, ldx, t, r - row_begin, nb, offset, 1);       \
        }                                                                                               \
        for (; r < row_end; r++)                                                                        \
            for (int64_t t = 0; t < n; t++) tile_blocks_avx2(out, ldo, w, x, ldx, r, t, row_begin, cols, Q4, 1, 1); \
    }

/* Q4_0's unsigned values are at most 15, so maddubs's 16-bit pair sums cannot overflow on AVX2 either. */
MATMUL_PACKED(matmul_q4_0_avx2, AVX2, tile8_avx2, 1, 4)
MATMUL_PACKED(matmul_q4_0_vnni, VNNI, tile8_vnni, 1, 12)
MATMUL_PACKED(matmul_q8_0_vnni, VNNI, tile8_vnni, 0, 12)
#endif /* LLM_HAVE_X86 */

/* ---------------------------------------------------------------------------------------------------- */
/* dispatch */

size_t llm_matmul_scratch_bytes(int64_t cols) { return (size_t)(cols / QK) * PACKED_BLOCK_BYTES; }

llm_matmul_fn llm_matmul_get(int32_t type, int32_t isa) {
#ifdef LLM_HAVE_X86
    int wide = isa >= LLM_ISA_AVX512VNNI;
    if (isa >= LLM_ISA_AVX2) switch (type) {
        case LLM_F32: return wide ? matmul_f32_avx512 : matmul_f32_avx2;
        case LLM_F16: return wide ? matmul_f16_avx512 : matmul_f16_avx2;
        case LLM_BF16: return wide ? matmul_bf16_avx512 : matmul_bf16_avx2;
        case LLM_Q8_0: return wide ? matmul_q8_0_vnni : matmul_q8_0_avx2;
        case LLM_Q4_0: return wide ? matmul_q4_0_vnni : matmul_q4_0_avx2;
        default: break;
        }
#endif
    (void)type, (void)isa;
    return NULL;
}
