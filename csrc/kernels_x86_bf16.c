/*
 * kernels_x86_bf16.c: products of bfloat16 weights in the CPU's own bfloat16 dot product, for the avx512bf16
 * level (AVX512_BF16: Cooper Lake, Sapphire Rapids and later Xeons, AMD Zen 4 and later). The other x86 levels
 * widen bfloat16 to f32 (kernels_x86_float.c); this file is empty for them.
 *
 * vdpbf16ps multiplies 32 pairs of bfloat16 values and adds each pair's two products into one of 16 f32 lanes:
 * twice the multiply-adds of an f32 FMA per instruction at the same rate (Zen 4: one 512-bit instruction a cycle
 * of either, 231 against 115 GFLOP/s measured on one core), from half the bytes. The price is the input: the
 * token's f32 values are rounded to bfloat16 (to nearest, ties to even: vcvtne2ps2bf16), a relative error of at
 * most 2^-8 per value, which is what llama.cpp's bfloat16 products do too. The products of two bfloat16 values
 * are exact in f32; the instruction treats subnormal inputs and results as zero (values under 1.2e-38, far below
 * anything a layer's sum can feel).
 *
 * The order of every sum, shared by the one-token kernel and the batch tiles (so that a token's result is bit
 * for bit the same alone or in any batch, issue 16): one 16-lane accumulator per (row, token), lane l summing
 * the pairs (32 s + 2 l, 32 s + 2 l + 1) for s = 0, 1, ... in turn, the last cols % 32 values by the same
 * instruction on the lanes they reach (zeros beyond cols; lanes past them keep their sums); then the same
 * fixed tree over the lanes as the f32 products (reduce16, kernels_x86.h).
 */
#include "kernels_x86.h"

#ifdef __AVX512BF16__

enum {
    PAIR_STEP = 32, /* values per accumulator step: 16 lanes x a pair */
    RM = 4,         /* a batch tile: rows ... */
    RN = 4,         /* ... x tokens, an accumulator each (16: on Zen 4 24 chains ran 20% slower than 16 from L1), the
                       rows' weights (4) and a token's values (1) */
    KC = 1024,      /* values per panel of a tile's rows: four rows' panels (8 KiB) stay in L1 while the tokens pass */
    TOKEN_BYTES = 384 * 1024, /* a token block's rounded inputs, kept in L2 while every row tile goes past */
    TB_MAX = 16 * RN,
};

/* IN_REGISTER (kernels_x86.h) for bfloat16 vectors, held as integers: clang 16 and 17 cannot give a vector of
   __bf16 to an asm operand. */
#define IN_REGISTER_BH(v)                                                                                            \
    do {                                                                                                             \
        __m512i held_ = (__m512i)(v);                                                                                \
        IN_REGISTER(held_);                                                                                          \
        (v) = (__m512bh)held_;                                                                                       \
    } while (0)

/* Rounded to bfloat16, 32 values as one vector: x[k .. k + 32), zeros past cols (nothing read there). */
INLINE __m512bh round32(const float *x, int64_t k, int64_t cols) {
    if (k + PAIR_STEP <= cols) return _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + k + 16), _mm512_loadu_ps(x + k));
    int64_t left = cols - k;
    __mmask16 lo = (__mmask16)(left >= 16 ? 0xffff : (1u << left) - 1);
    __mmask16 hi = (__mmask16)(left > 16 ? (1u << (left - 16)) - 1 : 0);
    return _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, x + k + 16), _mm512_maskz_loadu_ps(lo, x + k));
}

/* Step k of a token's bfloat16 input: from its f32 values, rounded on the way (rounded == 0: one token, nothing
   to share the rounding with), or from the values rounded ahead into a buffer (batches: once per token block,
   zero-padded to whole steps). A constant in each inlined kernel. */
INLINE __m512bh token_step(const void *x, int rounded, int64_t k, int64_t cols) {
    if (rounded) return (__m512bh)_mm512_loadu_si512((const uint16_t *)x + k);
    return round32(x, k, cols);
}

/* out[j * ldo + i] = dot(row i, token j) for i < rm, j < rn over the values [k0, k1) (a panel; k1 == cols or a
   multiple of 32): the accumulators start from zero if k0 == 0, else from part[], where a panel that does not
   reach cols leaves them; the panel that reaches cols finishes the sums (tail and tree) and writes out. Always
   inlined with constant rm, rn: each call site is a kernel with its accumulators in registers. */
INLINE void tile(float *out, int64_t ldo, const uint16_t *const *wr, const void *const *xr, int rounded, int64_t k0,
                 int64_t k1, int64_t cols, __m512 *part, int rm, int rn) {
    enum { MAX_SLOTS = RM * RN };
    __m512 acc[(MAX_SLOTS + 15) / 16 * 16];
    int n_slots = (rm * rn + 15) / 16 * 16;
    for (int s = 0; s < n_slots; s++) {
        acc[s] = k0 > 0 && s < rm * rn ? part[s] : _mm512_setzero_ps();
        IN_REGISTER(acc[s]);
    }
    int64_t k = k0;
    for (; k + PAIR_STEP <= k1; k += PAIR_STEP) {
        __m512bh wv[RM];
        for (int i = 0; i < rm; i++) {
            wv[i] = (__m512bh)_mm512_loadu_si512(wr[i] + k);
            if (rn > 1) IN_REGISTER_BH(wv[i]); /* loaded once, used rn times */
        }
        for (int j = 0; j < rn; j++) {
            __m512bh xv = token_step(xr[j], rounded, k, cols);
            IN_REGISTER_BH(xv);
            for (int i = 0; i < rm; i++) acc[j * rm + i] = _mm512_dpbf16_ps(acc[j * rm + i], wv[i], xv);
        }
    }
    if (k1 < cols) {
        for (int s = 0; s < rm * rn; s++) part[s] = acc[s];
        return;
    }
    if (k < cols) { /* the last cols % 32 values: the lanes their pairs reach */
        int64_t left = cols - k;
        __mmask32 values = (__mmask32)((1ull << left) - 1);
        __mmask16 lanes = (__mmask16)((1u << ((left + 1) / 2)) - 1);
        for (int j = 0; j < rn; j++) {
            __m512bh xv = token_step(xr[j], rounded, k, cols);
            for (int i = 0; i < rm; i++) {
                __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(values, wr[i] + k);
                acc[j * rm + i] = _mm512_mask_dpbf16_ps(acc[j * rm + i], lanes, wv, xv);
            }
        }
    }
    float sums[(MAX_SLOTS + 15) / 16 * 16];
    for (int s = 0; s < n_slots; s += 16) _mm512_storeu_ps(sums + s, reduce16(acc + s));
    for (int j = 0; j < rn; j++)
        for (int i = 0; i < rm; i++) out[j * ldo + i] = sums[j * rm + i];
}

/* One token: a row at a time, front to back, one sequential stream through the weights that the prefetchers
   follow. (Eight rows at a time, eight independent chains, decoded 1.6x slower on Zen 4: the 110M shape's rows
   are 1.5 KiB, eight short streams that the prefetchers never got ahead of.) The token is rounded once, into
   MV_ROUNDED values on the stack, where it fits (rounding it again for each row decoded 20% slower than even
   the widening of the other levels); wider tokens are rounded on the way, to the same values. */
enum { MV_ROUNDED = 8192 };

void X86(matvec_bf16_native)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end,
                             int64_t cols) {
    _Alignas(64) uint16_t rounded[MV_ROUNDED];
    int ahead = cols <= MV_ROUNDED;
    for (int64_t k = 0; ahead && k < cols; k += PAIR_STEP)
        _mm512_storeu_si512(rounded + k, (__m512i)round32(x, k, cols));
    const void *xr = ahead ? (const void *)rounded : x;
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint16_t *wr = (const uint16_t *)w + r * cols;
        if (ahead) tile(out + (r - row_begin), 0, &wr, &xr, 1, 0, cols, cols, NULL, 1, 1);
        else tile(out + (r - row_begin), 0, &wr, &xr, 0, 0, cols, cols, NULL, 1, 1);
    }
}

/* Values from one token's rounded input to the next in the scratch: whole steps of 32 values, and one step more,
   so that the tile's tokens never lie a multiple of 4 KiB apart (rows of 2048 values would: their vectors would
   all fall in the same sets of the L1 cache, with the weight rows', which do). */
static int64_t token_stride(int64_t cols) { return (cols + PAIR_STEP - 1) / PAIR_STEP * PAIR_STEP + PAIR_STEP; }

/* Tokens per block: their rounded inputs (TOKEN_BYTES of them) stay in L2 while the chunk's row tiles pass. */
static int64_t token_block(int64_t cols) {
    int64_t t = (int64_t)(TOKEN_BYTES / ((size_t)token_stride(cols) * sizeof(uint16_t)));
    t = t < TB_MAX ? t / RN * RN : TB_MAX;
    return t > RN ? t : RN;
}

/* At least a block's rounded inputs for any product of at most cols values: token_block keeps those under
   TB_MAX tokens, and under TOKEN_BYTES unless RN tokens exceed it (bounds that grow with cols, as the scratch
   must: it is sized once for the widest product). */
size_t X86(matmul_scratch_bytes_bf16)(int64_t cols) {
    size_t token = (size_t)token_stride(cols) * sizeof(uint16_t);
    size_t by_bytes = RN * token > TOKEN_BYTES ? RN * token : TOKEN_BYTES;
    size_t rounded = TB_MAX * token < by_bytes ? TB_MAX * token : by_bytes;
    size_t others = X86(matmul_scratch_bytes)(cols); /* the block types' kernels share the scratch */
    return rounded > others ? rounded : others;
}

/* The tile of rows wr[0 .. rm) x tokens xr[0 .. rn) for rn <= RN, rn a run-time value. */
INLINE void tile_tokens(float *out, int64_t ldo, const uint16_t *const *wr, const void *const *xr, int64_t k0,
                        int64_t k1, int64_t cols, __m512 *part, int rm, int64_t rn) {
    _Static_assert(RN == 4, "a case per tile width");
    switch (rn) {
    case 1: tile(out, ldo, wr, xr, 1, k0, k1, cols, part, rm, 1); break;
    case 2: tile(out, ldo, wr, xr, 1, k0, k1, cols, part, rm, 2); break;
    case 3: tile(out, ldo, wr, xr, 1, k0, k1, cols, part, rm, 3); break;
    default: tile(out, ldo, wr, xr, 1, k0, k1, cols, part, rm, 4); break;
    }
}

/* Rows [row_begin, row_end) x tokens [0, n): blocks of tokens, each rounded into the scratch once; in a block,
   the rows RM at a time (the last ones one at a time), each row tile's panels of KC values in turn, over all the
   block's tokens RN at a time (the last ones in one narrower tile). */
void X86(matmul_bf16_native)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                             int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    int64_t tb = token_block(cols), step = token_stride(cols);
    uint16_t *rounded = scratch;
    __m512 part[TB_MAX * RM]; /* the partial sums of a row tile with the block's tokens, between panels */
    for (int64_t t0 = 0; t0 < n; t0 += tb) {
        int64_t t1 = t0 + tb < n ? t0 + tb : n;
        for (int64_t t = t0; t < t1; t++) {
            const float *xt = (const float *)((const char *)x + (size_t)t * ldx);
            for (int64_t k = 0; k < cols; k += PAIR_STEP)
                _mm512_storeu_si512(rounded + (t - t0) * step + k, (__m512i)round32(xt, k, cols));
        }
        for (int64_t r = row_begin; r < row_end;) {
            const uint16_t *wr[RM];
            int rm = row_end - r >= RM ? RM : 1;
            for (int i = 0; i < rm; i++) wr[i] = (const uint16_t *)w + (r + i) * cols;
            int64_t k0 = 0;
            do {
                int64_t k1 = cols - k0 > KC ? k0 + KC : cols;
                for (int64_t t = t0; t < t1; t += RN) {
                    const void *xr[RN];
                    int64_t rn = t1 - t < RN ? t1 - t : RN;
                    for (int j = 0; j < rn; j++) xr[j] = rounded + (t - t0 + j) * step;
                    float *o = out + t * ldo + (r - row_begin);
                    __m512 *p = part + (t - t0) * rm;
                    if (rm == RM) tile_tokens(o, ldo, wr, xr, k0, k1, cols, p, RM, rn);
                    else tile_tokens(o, ldo, wr, xr, k0, k1, cols, p, 1, rn);
                }
                k0 = k1;
            } while (k0 < cols);
            r += rm;
        }
    }
}

#endif /* __AVX512BF16__ */
