/*
 * kernels_x86_float.c: products of float weights (F32, F16, BF16) with f32 tokens, and the vector helpers
 * of attention and the feed-forward layer, for one x86 level (kernels_x86.h).
 *
 * F16 and BF16 weights are widened to f32 (F16C's conversion; bfloat16 by moving its bits up 16 places)
 * and multiplied in f32 with fused multiply-adds.
 */
#include <math.h>

#include "kernels_x86.h"

typedef enum { KIND_F32, KIND_F16, KIND_BF16 } float_kind;

/* Eight weights from w + k as f32. */
INLINE __m256 load8(const void *w, int64_t k, float_kind kind) {
    if (kind == KIND_F32) return _mm256_loadu_ps((const float *)w + k);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + k));
    if (kind == KIND_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* One weight w[k] as f32 (the tail of a row that is not a multiple of 8). */
INLINE float load1(const void *w, int64_t k, float_kind kind) {
    if (kind == KIND_F32) return ((const float *)w)[k];
    uint16_t h = ((const uint16_t *)w)[k];
    return kind == KIND_F16 ? llm_fp16_to_fp32(h) : llm_bf16_to_fp32(h);
}

static size_t element_bytes(float_kind kind) { return kind == KIND_F32 ? sizeof(float) : sizeof(uint16_t); }

/* ---------------------------------------------------------------------------------------------------- */
/* The order of every sum. A row's product with a token is summed in one order whether the token comes alone
 * (matvec) or in a batch (matmul, in a tile of any shape), so that its result is bit for bit the same either
 * way (issue 16: users' decode steps share one forward pass, and each must get the greedy tokens it gets
 * alone). The order is the one-token kernel's, chosen for decode speed: four 8-lane accumulators, acc[p]
 * taking the values k + 8p .. k + 8p + 7 of each step of 32 (four independent chains hide the latency of the
 * fused multiply-adds, and the row is read as one stream, which the hardware prefetchers serve best); then
 * finish(). A batch tile keeps four accumulators per (row, token) to follow it. */

/* The end of one sum from k on (k = cols rounded down to 32): the remaining whole 8-value steps into acc[0],
   the four accumulators added in pairs, their lanes (hsum_f32x8), then the tail value by value. */
INLINE float finish(const __m256 acc[4], const void *w, const float *x, int64_t k, int64_t cols, float_kind kind) {
    __m256 acc0 = acc[0];
    for (; k + 8 <= cols; k += 8) acc0 = _mm256_fmadd_ps(load8(w, k, kind), _mm256_loadu_ps(x + k), acc0);
    float sum = hsum_f32x8(_mm256_add_ps(_mm256_add_ps(acc0, acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; k < cols; k++) sum += load1(w, k, kind) * x[k];
    return sum;
}

/* ---------------------------------------------------------------------------------------------------- */
/* one token: out[r] = dot(row r, x) */

INLINE float dot(const void *w, const float *x, int64_t n, float_kind kind) {
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int p = 0; p < 4; p++)
            acc[p] = _mm256_fmadd_ps(load8(w, i + 8 * p, kind), _mm256_loadu_ps(x + i + 8 * p), acc[p]);
    return finish(acc, w, x, i, n, kind);
}

INLINE void matvec(float *out, const void *w, const float *x, int64_t row_begin, int64_t row_end, int64_t cols,
                   float_kind kind) {
    size_t row_bytes = (size_t)cols * element_bytes(kind);
    for (int64_t r = row_begin; r < row_end; r++) out[r - row_begin] = dot((const char *)w + r * row_bytes, x, cols, kind);
}

void X86(matvec_f32)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end, int64_t cols) {
    matvec(out, w, x, row_begin, row_end, cols, KIND_F32);
}

void X86(matvec_f16)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end, int64_t cols) {
    matvec(out, w, x, row_begin, row_end, cols, KIND_F16);
}

void X86(matvec_bf16)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end, int64_t cols) {
    matvec(out, w, x, row_begin, row_end, cols, KIND_BF16);
}

/* ---------------------------------------------------------------------------------------------------- */
/* a batch: tiles of RM weight rows x RN tokens, 4 x RM x RN accumulators in registers
 *
 * With a batch each weight is read once and used n times, so the work is bound by arithmetic, and what
 * matters is how many multiply-adds each load feeds: a weight vector loaded once serves RN tokens and a
 * token vector serves RM rows. Each (row i, token j) has the one-token kernel's four accumulators,
 * acc[i][j][p] += w_i[k + 8p ..] * x_j[k + 8p ..], and the same finish(): its result is the matvec's, bit for
 * bit, whatever the tile (RM x RN or a remainder). Four per pair make the tiles small: AVX2's 16 vector
 * registers hold one row x three tokens (12 accumulators); AVX-512 keeps two of them side by side in each of
 * its 32 registers (16 lanes), four rows x three tokens in 24.
 */

/* v stays in a register: the compiler would otherwise fold its load into each multiply-add that uses it, one
   load per use, and a tile's loads are its bottleneck. */
#define IN_REGISTER(v) __asm__("" : "+v"(v))

#ifdef __AVX512F__
enum { RM = 4, RN = 3 };

/* Sixteen weights from w + k as f32. */
INLINE __m512 load16(const void *w, int64_t k, float_kind kind) {
    if (kind == KIND_F32) return _mm512_loadu_ps((const float *)w + k);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + k));
    if (kind == KIND_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* The upper eight lanes of v. */
INLINE __m256 upper8(__m512 v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); }
#else
enum { RM = 1, RN = 3 };
#endif

/* Tokens per pass over a chunk of weight rows: the pass's tokens stay in the cache while every row tile of
   the chunk uses them. */
static int64_t token_tile(size_t token_bytes) {
    int64_t t = (int64_t)((256 * 1024) / (token_bytes ? token_bytes : 1));
    t = t / RN * RN;
    return t > RN ? t : RN;
}

/* out[token + j][row + i - row_begin] for i < rm, j < rn. Always inlined with constant rm, rn: each call
   site becomes a kernel with its accumulators in registers. */
INLINE void tile(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t row, int64_t token,
                 int64_t row_begin, int64_t cols, float_kind kind, int rm, int rn) {
    size_t row_bytes = (size_t)cols * element_bytes(kind);
    const void *wr[RM];
    const float *xr[RN];
    for (int i = 0; i < rm; i++) wr[i] = (const char *)w + (size_t)(row + i) * row_bytes;
    for (int j = 0; j < rn; j++) xr[j] = (const float *)((const char *)x + (size_t)(token + j) * ldx);
    __m256 acc[RM][RN][4];
    int64_t k = 0;
#ifdef __AVX512F__
    /* acc[p] and acc[p + 1] side by side in one 16-lane register: lane for lane the same fused multiply-adds
       (so the same sums) with half the instructions */
    __m512 acc2[RM][RN][2];
    for (int i = 0; i < rm; i++)
        for (int j = 0; j < rn; j++) acc2[i][j][0] = acc2[i][j][1] = _mm512_setzero_ps();
    for (; k + 32 <= cols; k += 32)
        for (int h = 0; h < 2; h++) {
            __m512 wv[RM];
            for (int i = 0; i < rm; i++) {
                wv[i] = load16(wr[i], k + 16 * h, kind);
                IN_REGISTER(wv[i]);
            }
            for (int j = 0; j < rn; j++) {
                __m512 xv = _mm512_loadu_ps(xr[j] + k + 16 * h);
                IN_REGISTER(xv);
                for (int i = 0; i < rm; i++) acc2[i][j][h] = _mm512_fmadd_ps(wv[i], xv, acc2[i][j][h]);
            }
        }
    for (int i = 0; i < rm; i++)
        for (int j = 0; j < rn; j++)
            for (int h = 0; h < 2; h++) {
                acc[i][j][2 * h] = _mm512_castps512_ps256(acc2[i][j][h]);
                acc[i][j][2 * h + 1] = upper8(acc2[i][j][h]);
            }
#else
    for (int i = 0; i < rm; i++)
        for (int j = 0; j < rn; j++)
            for (int p = 0; p < 4; p++) acc[i][j][p] = _mm256_setzero_ps();
    for (; k + 32 <= cols; k += 32)
        for (int p = 0; p < 4; p++) {
            __m256 wv[RM];
            for (int i = 0; i < rm; i++) {
                wv[i] = load8(wr[i], k + 8 * p, kind);
                IN_REGISTER(wv[i]);
            }
            for (int j = 0; j < rn; j++) {
                __m256 xv = _mm256_loadu_ps(xr[j] + k + 8 * p);
                for (int i = 0; i < rm; i++) acc[i][j][p] = _mm256_fmadd_ps(wv[i], xv, acc[i][j][p]);
            }
        }
#endif
    for (int i = 0; i < rm; i++)
        for (int j = 0; j < rn; j++)
            out[(token + j) * ldo + (row + i - row_begin)] = finish(acc[i][j], wr[i], xr[j], k, cols, kind);
}

/* Rows [row_begin, row_end) x tokens [0, n) in RM x RN tiles, with tails of RM x 1 and 1 x 1. */
INLINE void matmul(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n, int64_t row_begin,
                   int64_t row_end, int64_t cols, float_kind kind) {
    int64_t tile_n = token_tile(ldx);
    for (int64_t t0 = 0; t0 < n; t0 += tile_n) {
        int64_t t1 = t0 + tile_n < n ? t0 + tile_n : n;
        int64_t r = row_begin;
        for (; r + RM <= row_end; r += RM) {
            int64_t t = t0;
            for (; t + RN <= t1; t += RN) tile(out, ldo, w, x, ldx, r, t, row_begin, cols, kind, RM, RN);
            for (; t < t1; t++) tile(out, ldo, w, x, ldx, r, t, row_begin, cols, kind, RM, 1);
        }
        for (; r < row_end; r++)
            for (int64_t t = t0; t < t1; t++) tile(out, ldo, w, x, ldx, r, t, row_begin, cols, kind, 1, 1);
    }
}

void X86(matmul_f32)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                     int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    (void)scratch;
    matmul(out, ldo, w, x, ldx, n, row_begin, row_end, cols, KIND_F32);
}

void X86(matmul_f16)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                     int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    (void)scratch;
    matmul(out, ldo, w, x, ldx, n, row_begin, row_end, cols, KIND_F16);
}

void X86(matmul_bf16)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    (void)scratch;
    matmul(out, ldo, w, x, ldx, n, row_begin, row_end, cols, KIND_BF16);
}

/* ---------------------------------------------------------------------------------------------------- */
/* feed-forward helpers (exp8: kernels_x86.h) */

void X86(swiglu)(float *gate, const float *up, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 silu = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

/* gelu_tanh(x) = x / (1 + e^(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3): kernels_scalar.c's form in floats, with
   exp8 (relative error about 2e-7): within 1e-6 relative of the exact value down to x = -3; below, the rounding of
   the float argument 2u, magnified |2u| times by the exponential, adds up to 2e-5 of a result under 1e-5 |x|.
   exp8's clamp acts only below x = -10, where the result is under 1e-37 and tends to 0 as the exact one does. */
void X86(geglu)(float *gate, const float *up, int64_t n) {
    int64_t i = 0;
    const __m256 c = _mm256_set1_ps(-1.5957691216057308f), c3 = _mm256_set1_ps(0.044715f), one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(gate + i);
        __m256 minus_2u = _mm256_mul_ps(c, _mm256_fmadd_ps(_mm256_mul_ps(c3, x), _mm256_mul_ps(x, x), x));
        __m256 gelu = _mm256_div_ps(x, _mm256_add_ps(one, exp8(minus_2u)));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(gelu, _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) {
        float x = gate[i], u2 = 1.5957691216057308f * (x + 0.044715f * x * x * x);
        gate[i] = x / (1.0f + expf(-u2)) * up[i];
    }
}

/* cap * tanh(x / cap), y = x / cap: for |y| < 0.625 tanh's odd polynomial (Cephes' tanhf), exact to a few ulp
   down to the smallest y (a huge cap leaves x as it is, -0 stays -0); beyond, 1 - 2 / (1 + e^(2y)) with exp8,
   whose clamps give exactly +-cap far out. NaN passes through. Relative error under 5e-7 everywhere. Gemma 2 caps
   every attention score and every logit: the scalar tanhf, 20 ns a value, was 5% of a decode step. */
void X86(softcap)(float *x, int64_t n, float cap) {
    const __m256 vcap = _mm256_set1_ps(cap), inv_cap = _mm256_set1_ps(1.0f / cap), one = _mm256_set1_ps(1.0f);
    const __m256 two = _mm256_set1_ps(2.0f), small = _mm256_set1_ps(0.625f);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 y = _mm256_mul_ps(_mm256_loadu_ps(x + i), inv_cap);
        __m256 z = _mm256_mul_ps(y, y);
        __m256 p = _mm256_set1_ps(-5.70498872745e-3f);
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.06390887954e-2f));
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.37397155531e-2f));
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.33314422036e-1f));
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.33332819422e-1f));
        __m256 near = _mm256_fmadd_ps(_mm256_mul_ps(p, z), y, y);
        __m256 far = _mm256_sub_ps(one, _mm256_div_ps(two, _mm256_add_ps(one, exp8(_mm256_add_ps(y, y)))));
        __m256 is_small = _mm256_cmp_ps(_mm256_andnot_ps(sign, y), small, _CMP_LT_OQ);
        _mm256_storeu_ps(x + i, _mm256_mul_ps(vcap, _mm256_blendv_ps(far, near, is_small)));
    }
    for (; i < n; i++) x[i] = cap * tanhf(x[i] / cap);
}
