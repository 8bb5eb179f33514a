/*
 * kernels_x86_float.c: products of float weights (F32, F16, BF16) with f32 tokens, and the vector helpers
 * of attention and the feed-forward layer, for one x86 level (kernels_x86.h).
 *
 * F16 and BF16 weights are widened to f32 (F16C's conversion; bfloat16 by moving its bits up 16 places)
 * and multiplied in f32 with fused multiply-adds.
 */
#include <math.h>

#include "kernels_x86.h"

#ifndef __AVX512F__ /* AVX2's loads (AVX-512's below fold the tail into masked lanes; load8: kernels_x86.h) */
/* One weight w[k] as f32 (the tail of a row that is not a multiple of 8). */
INLINE float load1(const void *w, int64_t k, float_kind kind) {
    if (kind == KIND_F32) return ((const float *)w)[k];
    uint16_t h = ((const uint16_t *)w)[k];
    return kind == KIND_F16 ? llm_fp16_to_fp32(h) : llm_bf16_to_fp32(h);
}
#endif

/* ---------------------------------------------------------------------------------------------------- */
/* The products: the order of every sum
 *
 * A row's product with a token is summed in one order whether the token comes alone (matvec) or in a batch
 * (matmul, in a tile of any shape), so that its result is bit for bit the same either way (issue 16: users'
 * decode steps share one forward pass, and each must get the greedy tokens it gets alone). The order is the
 * one a register-tiled product can afford, per level:
 * - one accumulator of the level's width per (row, token): lane l sums w[k] * x[k] for the k = l (mod
 *   VL) in increasing k, one fused multiply-add per step of VL values (VL = 16 on AVX-512, 8 on AVX2);
 *   AVX-512 takes the last cols % 16 values into the same lanes with a masked multiply-add;
 * - then a fixed tree over the lanes: AVX-512 adds lanes l and l + 8, then l and l + 4, l and l + 2, l and
 *   l + 1 (hsum_f32x8's order after the first step); AVX2 adds neighbours first, hadd's order:
 *   ((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7));
 * - AVX2 then adds the last cols % 8 products one by one, in increasing k.
 * One token goes through the rows one at a time, front to back: one sequential stream through the weights,
 * which the prefetchers follow (eight rows at a time, eight short streams of 1.5-3 KiB for the 110M shape,
 * decoded F16 1.7x and F32 1.1-1.2x slower on Zen 4; one chain's latency still allows 29-58 GB/s); a batch
 * has tiles of RM rows x RN tokens, a register each. The trees of a tile's accumulators are computed
 * jointly (reduce_slots: a transpose and add, every lane's additions the same as the one-accumulator
 * tree's), a few instructions per sum.
 */

#ifdef __AVX512F__
enum { VL = 16, RM = 4, RN = 4, SLOTS = 16 };
typedef __m512 vacc;

/* Sixteen weights from w + k as f32. */
INLINE __m512 loadv(const void *w, int64_t k, float_kind kind) {
    if (kind == KIND_F32) return _mm512_loadu_ps((const float *)w + k);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + k));
    if (kind == KIND_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* The weights w[k + l] for the lanes l in m, zero elsewhere (nothing read there). */
INLINE __m512 loadv_masked(const void *w, int64_t k, __mmask16 m, float_kind kind) {
    if (kind == KIND_F32) return _mm512_maskz_loadu_ps(m, (const float *)w + k);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + k);
    if (kind == KIND_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* sums[s] = the tree's sum of acc[s], s < n_slots (16 at a time; unused slots are zero). */
INLINE void reduce_slots(float *sums, const __m512 *acc, int n_slots) {
    for (int s = 0; s < n_slots; s += 16) _mm512_storeu_ps(sums + s, reduce16(acc + s));
}
#else
enum { VL = 8, RM = 4, RN = 3, SLOTS = 12 };
typedef __m256 vacc;

INLINE __m256 loadv(const void *w, int64_t k, float_kind kind) { return load8(w, k, kind); }

/* The tree's sums of four accumulators: hadd adds neighbours, (0 + 1) + (2 + 3) in each half, then the halves. */
INLINE __m128 reduce4(const __m256 a[4]) {
    __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* sums[s] = the tree's sum of acc[s], s < n_slots (4 at a time; unused slots are zero). */
INLINE void reduce_slots(float *sums, const __m256 *acc, int n_slots) {
    for (int s = 0; s < n_slots; s += 4) _mm_storeu_ps(sums + s, reduce4(acc + s));
}
#endif

enum { MAX_SLOTS = SLOTS, GROUP = VL == 16 ? 16 : 4 /* slots per reduce_slots step */ };

/* out[j * ldo + i] = dot(row i, token j) for i < rm, j < rn, in the order above: accumulator slot j * rm + i.
   Only the values [k0, k1) of the rows (a panel; k1 == cols or a multiple of VL): the accumulators start
   from zero if k0 == 0, else from part[slot], where a panel that does not reach cols leaves them (storing a
   vector and loading it back changes nothing: the sums are the same whatever the panels). The panel that
   reaches cols finishes the sums and writes out. Row i's value k is read at wr[i] + (k - wk) (wk = k0: a packed
   copy of the panel); with ws, the values read are also stored as f32 at ws[i] + (k - k0), the copy the block's
   next tiles read. Always inlined with constant rm, rn (and ws NULL or not): each call site becomes a kernel
   with its accumulators in registers. */
INLINE void tile(float *out, int64_t ldo, const void *const *wr, int64_t wk, float *const *ws, const float *const *xr,
                 int64_t k0, int64_t k1, int64_t cols, vacc *part, float_kind kind, int rm, int rn) {
    vacc acc[MAX_SLOTS + GROUP];
    int n_slots = (rm * rn + GROUP - 1) / GROUP * GROUP;
    int64_t k = k0;
#ifdef __AVX512F__
    for (int s = 0; s < n_slots; s++) { /* (in registers: else GCC makes a memset of the array, a tile's 5%) */
        acc[s] = k0 > 0 && s < rm * rn ? part[s] : _mm512_setzero_ps();
        IN_REGISTER(acc[s]);
    }
    /* the rows' weights and one token in registers: 4 + 1 + 16 of the 32 */
    for (; k + VL <= k1; k += VL) {
        __m512 wv[RM];
        for (int i = 0; i < rm; i++) {
            wv[i] = loadv(wr[i], k - wk, kind);
            if (ws) _mm512_store_ps(ws[i] + (k - k0), wv[i]);
            if (rn > 1) IN_REGISTER(wv[i]);
        }
        for (int j = 0; j < rn; j++) {
            __m512 xv = _mm512_loadu_ps(xr[j] + k);
            IN_REGISTER(xv);
            for (int i = 0; i < rm; i++) acc[j * rm + i] = _mm512_fmadd_ps(wv[i], xv, acc[j * rm + i]);
        }
    }
    if (k1 < cols) {
        for (int s = 0; s < rm * rn; s++) part[s] = acc[s];
        return;
    }
    if (k < cols) { /* the last cols % 16 values: lanes outside the mask keep their sums */
        __mmask16 m = (__mmask16)((1u << (cols - k)) - 1);
        __m512 wv[RM];
        for (int i = 0; i < rm; i++) {
            wv[i] = loadv_masked(wr[i], k - wk, m, kind);
            if (ws) _mm512_store_ps(ws[i] + (k - k0), wv[i]); /* (zeros past cols: within KC) */
        }
        for (int j = 0; j < rn; j++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, xr[j] + k);
            for (int i = 0; i < rm; i++) acc[j * rm + i] = _mm512_mask3_fmadd_ps(wv[i], xv, acc[j * rm + i], m);
        }
    }
#else
    for (int s = 0; s < n_slots; s++) { /* (in registers: else GCC makes a memset of the array) */
        acc[s] = k0 > 0 && s < rm * rn ? part[s] : _mm256_setzero_ps();
        IN_REGISTER(acc[s]);
    }
    /* the tokens' values in registers and one row's weights at a time: 3 + 1 + 12 of the 16 */
    for (; k + VL <= k1; k += VL) {
        __m256 xv[RN];
        for (int j = 0; j < rn; j++) {
            xv[j] = _mm256_loadu_ps(xr[j] + k);
            if (rm > 1) IN_REGISTER(xv[j]);
        }
        for (int i = 0; i < rm; i++) {
            __m256 wv = loadv(wr[i], k - wk, kind);
            if (ws) _mm256_store_ps(ws[i] + (k - k0), wv);
            if (rn > 1) IN_REGISTER(wv);
            for (int j = 0; j < rn; j++) acc[j * rm + i] = _mm256_fmadd_ps(wv, xv[j], acc[j * rm + i]);
        }
    }
    if (k1 < cols) {
        for (int s = 0; s < rm * rn; s++) part[s] = acc[s];
        return;
    }
#endif
    float sums[MAX_SLOTS + GROUP];
    reduce_slots(sums, acc, n_slots);
#ifndef __AVX512F__
    if (ws)
        for (int64_t kk = k; kk < cols; kk++)
            for (int i = 0; i < rm; i++) ws[i][kk - k0] = load1(wr[i], kk - wk, kind);
    for (; k < cols; k++) /* the last cols % 8 products, one by one */
        for (int j = 0; j < rn; j++)
            for (int i = 0; i < rm; i++) {
                float p = load1(wr[i], k - wk, kind) * xr[j][k];
                sums[j * rm + i] += p;
            }
#endif
    for (int j = 0; j < rn; j++)
        for (int i = 0; i < rm; i++) out[j * ldo + i] = sums[j * rm + i];
}

/* ---------------------------------------------------------------------------------------------------- */
/* one token: out[r] = dot(row r, x), a row at a time */

INLINE void matvec(float *out, const void *w, const float *x, int64_t row_begin, int64_t row_end, int64_t cols,
                   float_kind kind) {
    size_t row_bytes = (size_t)cols * element_bytes(kind);
    for (int64_t r = row_begin; r < row_end; r++) {
        const void *wr = (const char *)w + (size_t)r * row_bytes;
        tile(out + (r - row_begin), 0, &wr, 0, NULL, &x, 0, cols, cols, NULL, kind, 1, 1);
    }
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
/* a batch: tiles of RM weight rows x RN tokens, one accumulator each
 *
 * With a batch each weight is read once and used n times, so the work is bound by arithmetic, and what
 * matters is how many multiply-adds each load feeds: a weight vector loaded (and converted) once serves RN
 * tokens and a token vector serves RM rows. AVX-512 takes 4 x 4 accumulators, the four rows' weights and a
 * token's values, although its 32 registers would hold 4 x 6: on AMD Zen 4 a loop of 16 independent zmm
 * multiply-add chains (8 loads) runs at the core's peak from L1, while 20 to 24 chains run 10-20% slower
 * (measured: 4x4, 5x3, 2x8 tiles 115 GFLOP/s on one core, 4x5, 5x4, 4x6 97-102), and 16 slots are one
 * reduce16. AVX2's 16 registers hold 4 x 3 and four more.
 */

/* Values per panel of a tile's rows (a multiple of 16): the four rows' panels, copied as f32 (8 KiB), stay in
   the L1 cache while the block's tokens go past them, their partial sums kept in part[] between panels. */
enum { KC = 512, PACK_TILES = 8 };

/* Tokens per block (a multiple of RN, at most TB_MAX): a block's tokens stay in the L2 cache while every row
   tile of the chunk goes past them, and the chunk's weights (products.c: about 256 KiB, more when its rows are
   long) stay there for the next block. So the tokens get what the weights leave of L2_BYTES (3/4 of Zen 4's
   1 MiB L2), between TOKEN_MIN and TOKEN_MAX bytes. Larger blocks copy each panel for more tiles: measured at
   2048 x 5632 and 8192 x 8192, this is 5-15% faster than a fixed 384 KiB and 16 tiles. */
enum { L2_BYTES = 768 * 1024, TOKEN_MIN = 256 * 1024, TOKEN_MAX = 576 * 1024, TB_MAX = 32 * RN };

static int64_t token_block(size_t token_bytes, size_t weight_bytes) {
    size_t budget = L2_BYTES > weight_bytes + TOKEN_MIN ? L2_BYTES - weight_bytes : TOKEN_MIN;
    if (budget > TOKEN_MAX) budget = TOKEN_MAX;
    int64_t t = (int64_t)(budget / (token_bytes ? token_bytes : 1));
    t = t < TB_MAX ? t / RN * RN : TB_MAX;
    return t > RN ? t : RN;
}

/* The tile of rows wr[0 .. rm) x tokens [token, token + rn) for rn <= RN, rn a run-time value. */
INLINE void tile_tokens(float *out, int64_t ldo, const void *const *wr, int64_t wk, float *const *ws,
                        const float *const *xr, int64_t k0, int64_t k1, int64_t cols, vacc *part, float_kind kind,
                        int rm, int64_t rn) {
    switch (rn) {
    case 1: tile(out, ldo, wr, wk, ws, xr, k0, k1, cols, part, kind, rm, 1); break;
    case 2: tile(out, ldo, wr, wk, ws, xr, k0, k1, cols, part, kind, rm, 2); break;
    case 3: tile(out, ldo, wr, wk, ws, xr, k0, k1, cols, part, kind, rm, 3); break;
#ifdef __AVX512F__
    case 4: tile(out, ldo, wr, wk, ws, xr, k0, k1, cols, part, kind, rm, 4); break;
#endif
    default: break;
    }
}

/* Part q of nq of the cache lines of rows wr[0 .. rm)'s values [k0, k1), into the L1 cache. */
INLINE void prefetch_part(const void *const *wr, int rm, int64_t k0, int64_t k1, float_kind kind, int64_t q,
                          int64_t nq) {
    size_t eb = element_bytes(kind);
    int64_t lines = (int64_t)(((size_t)(k1 - k0) * eb + 63) / 64) + 1; /* + 1: the rows need not start a line */
    for (int i = 0; i < rm; i++)
        for (int64_t l = lines * q / nq; l < lines * (q + 1) / nq; l++)
            _mm_prefetch((const char *)wr[i] + (size_t)k0 * eb + (size_t)l * 64, _MM_HINT_T0);
}

/* Rows [row_begin, row_end) x tokens [0, n): blocks of tokens; in each, the rows RM at a time (the last ones
   one at a time), and each row tile's panels of KC values in turn, over all the block's tokens RN at a time
   (the last ones in one narrower tile).
   A panel's first tile reads the rows and keeps them, as f32, in packed[]; the block's other tiles read that
   copy: contiguous, it cannot conflict in the L1 cache with itself or with the tokens, which rows a multiple of
   4 KiB apart do (the L1 has 64 sets of 64 bytes, 8 ways: 4 rows and 4 tokens of 2048 f32 values put 8 lines
   in one set; measured at 768 x 2048, n = 512: AVX2 80 -> 94 GFLOP/s, AVX-512 93 -> 100); and F16's values
   are converted once. The tiles of a panel also prefetch the next panel's rows, a slice each, so that the
   next first tile does not wait for them (AVX-512 at 5632 x 2048: +10%). Neither changes any sum. Both only
   for blocks of PACK_TILES tiles or more: with fewer the copy and the prefetches are paid for by few tiles
   (768 x 768, n = 16: 20% slower with them), and the weights come from memory at its speed anyway. */
INLINE void matmul(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n, int64_t row_begin,
                   int64_t row_end, int64_t cols, float_kind kind) {
    size_t row_bytes = (size_t)cols * element_bytes(kind);
    int64_t tb = token_block(ldx, (size_t)(row_end - row_begin) * row_bytes);
    vacc part[TB_MAX * RM]; /* the partial sums of a row tile with the block's tokens, between panels */
    _Alignas(64) float packed[RM][KC];
    float *ws[RM];
    const void *wp[RM];
    for (int i = 0; i < RM; i++) ws[i] = packed[i], wp[i] = packed[i];
    for (int64_t t0 = 0; t0 < n; t0 += tb) {
        int64_t t1 = t0 + tb < n ? t0 + tb : n;
        for (int64_t r = row_begin; r < row_end;) {
            const void *wr[RM];
            int rm = row_end - r >= RM ? RM : 1;
            for (int i = 0; i < rm; i++) wr[i] = (const char *)w + (size_t)(r + i) * row_bytes;
            int64_t k0 = 0;
            do {
                int64_t k1 = cols - k0 > KC ? k0 + KC : cols;
                /* the next panel, prefetched while this one's tiles run */
                const void *wn[RM];
                int64_t n0 = k1, n1 = cols - k1 > KC ? k1 + KC : cols;
                int rmn = rm;
                for (int i = 0; i < rm; i++) wn[i] = wr[i];
                if (k1 == cols) {
                    int64_t rr = r + rm;
                    rmn = rr >= row_end ? 0 : row_end - rr >= RM ? RM : 1;
                    for (int i = 0; i < rmn; i++) wn[i] = (const char *)w + (size_t)(rr + i) * row_bytes;
                    n0 = 0, n1 = cols > KC ? KC : cols;
                }
                int64_t nq = (t1 - t0 + RN - 1) / RN;
                int pack = nq >= PACK_TILES;
                for (int64_t t = t0; t < t1; t += RN) {
                    if (pack) prefetch_part(wn, rmn, n0, n1, kind, (t - t0) / RN, nq);
                    const float *xr[RN];
                    int64_t rn = t1 - t < RN ? t1 - t : RN;
                    for (int j = 0; j < rn; j++) xr[j] = (const float *)((const char *)x + (size_t)(t + j) * ldx);
                    float *o = out + t * ldo + (r - row_begin);
                    vacc *p = part + (t - t0) * rm;
                    if (rm < RM) tile_tokens(o, ldo, wr, 0, NULL, xr, k0, k1, cols, p, kind, 1, rn);
                    else if (!pack) tile_tokens(o, ldo, wr, 0, NULL, xr, k0, k1, cols, p, kind, RM, rn);
                    else if (t > t0) tile_tokens(o, ldo, wp, k0, NULL, xr, k0, k1, cols, p, KIND_F32, RM, rn);
                    else tile_tokens(o, ldo, wr, 0, ws, xr, k0, k1, cols, p, kind, RM, rn);
                }
                k0 = k1;
            } while (k0 < cols);
            r += rm;
        }
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

