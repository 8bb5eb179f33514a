/*
 * kernels_arm_int8.c: the 8-bit activations' quantizers and the products of the 32-value block types (Q8_0,
 * Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL) on arm64.
 *
 * Every product here follows the scalar reference's arithmetic (kernels_scalar.c): per 32-value block an exact
 * integer dot product sumi, then sum += (float)sumi * (d_w * d_x) block after block (Q4_1, Q5_1: sum +=
 * (float)sumi * (d_w * d_x) + m_w * dsum_x), multiplies and adds as written, never fused (the ARM levels are
 * built with -ffp-contract=off). Only the integer part is vectorized, which
 * is exact, and the float part is spread over rows (four rows' sums in one vector, lane k = row k), not over
 * blocks, so that every result is the reference's bit for bit, at every level and for any batch.
 *
 * - neon:    the integer dot products by widening multiplies (smull) and pairwise widening adds (sadalp)
 * - dotprod: sdot, 16 products in one instruction
 * - i8mm:    decoding as dotprod; a batch of tokens in tiles of four rows by four tokens with smmla, which
 *            multiplies a 2x8 block of weights by an 8x2 block of activations (four dot products of 8 values
 *            in one instruction), each block's weights unpacked once for four tokens.
 */
#include "kernels_arm.h"

/* ---------------------------------------------------------------------------------------------------- */
/* 8-bit activations (LLM_ACT_Q8): per block d = max|x| / 127 and q = x * (127 / max|x|) rounded to nearest
   even (fcvtns, as nearbyintf in the default rounding mode), exactly the reference's values. */

void ARM(quantize_q8_act)(void *out, const float *x, int64_t cols) {
    q8_act y = q8_act_view(out, cols);
    const float32x4_t inf = vdupq_n_f32(INFINITY);
    for (int64_t b = 0; b < cols / QK; b++, x += QK) {
        float32x4_t v[8];
        float32x4_t amax = vdupq_n_f32(0.0f);
        uint32x4_t finite = vdupq_n_u32(~0u);
        for (int k = 0; k < 8; k++) {
            v[k] = vld1q_f32(x + 4 * k);
            float32x4_t a = vabsq_f32(v[k]);
            amax = vmaxq_f32(amax, a);
            finite = vandq_u32(finite, vcltq_f32(a, inf)); /* false for inf and for NaN */
        }
        int8_t *q = y.qs + b * QK;
        if (vminvq_u32(finite) == 0) { /* as the reference: inf or NaN reaches the logits */
            memset(q, 0, QK);
            y.d[b] = y.dsum[b] = NAN;
            continue;
        }
        float m = vmaxvq_f32(amax);
        float d = m / 127.0f, id = llm_act_inv_scale(m);
        int32x4_t sum = vdupq_n_s32(0);
        for (int k = 0; k < 8; k += 2) {
            int32x4_t q0 = vcvtnq_s32_f32(vmulq_n_f32(v[k], id));
            int32x4_t q1 = vcvtnq_s32_f32(vmulq_n_f32(v[k + 1], id));
            sum = vaddq_s32(sum, vaddq_s32(q0, q1));
            int16x8_t q01 = vcombine_s16(vmovn_s32(q0), vmovn_s32(q1)); /* |q| <= 127: narrowing is exact */
            vst1_s8(q + 4 * k, vmovn_s16(q01));
        }
        y.d[b] = d;
        y.dsum[b] = d * (float)vaddvq_s32(sum);
    }
}

/* LLM_ACT_Q8K: the same rule per 256 values, and the sums of q per 16 values (the K-quants' mins and offsets). */
void ARM(quantize_q8k_act)(void *out, const float *x, int64_t cols) {
    q8k_act y = q8k_act_view(out, cols);
    const float32x4_t inf = vdupq_n_f32(INFINITY);
    for (int64_t b = 0; b < cols / QK_K; b++, x += QK_K) {
        float32x4_t amax = vdupq_n_f32(0.0f);
        uint32x4_t finite = vdupq_n_u32(~0u);
        for (int k = 0; k < QK_K; k += 4) {
            float32x4_t a = vabsq_f32(vld1q_f32(x + k));
            amax = vmaxq_f32(amax, a);
            finite = vandq_u32(finite, vcltq_f32(a, inf));
        }
        int8_t *q = y.qs + b * QK_K;
        int16_t *bsums = y.bsums + b * (QK_K / 16);
        if (vminvq_u32(finite) == 0) { /* as the reference: inf or NaN reaches the logits */
            memset(q, 0, QK_K);
            memset(bsums, 0, QK_K / 16 * sizeof(int16_t));
            y.d[b] = NAN;
            continue;
        }
        float m = vmaxvq_f32(amax), id = llm_act_inv_scale(m);
        for (int k = 0; k < QK_K; k += 16) {
            int32x4_t q0 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + k), id));
            int32x4_t q1 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + k + 4), id));
            int32x4_t q2 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + k + 8), id));
            int32x4_t q3 = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + k + 12), id));
            bsums[k / 16] = (int16_t)vaddvq_s32(vaddq_s32(vaddq_s32(q0, q1), vaddq_s32(q2, q3)));
            int16x8_t q01 = vcombine_s16(vmovn_s32(q0), vmovn_s32(q1));
            int16x8_t q23 = vcombine_s16(vmovn_s32(q2), vmovn_s32(q3));
            vst1q_s8(q + k, vcombine_s8(vmovn_s16(q01), vmovn_s16(q23)));
        }
        y.d[b] = m / 127.0f;
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* The weight blocks (kernels.h), unpacked to the 32 signed values of the integer dot product in order (lo:
   values 0-15, hi: 16-31). Every block starts with its fp16 scale d; Q4_1 and Q5_1 follow it with their fp16
   min m (has_min), which is not in the integer product but added per block as m * dsum_x. */

enum { ARM_Q8_0, ARM_Q4_0, ARM_Q4_1, ARM_Q5_0, ARM_Q5_1, ARM_IQ4_NL };

INLINE size_t block_bytes(int kind) {
    switch (kind) {
    case ARM_Q8_0: return sizeof(block_q8_0);
    case ARM_Q4_1: return sizeof(block_q4_1);
    case ARM_Q5_0: return sizeof(block_q5_0);
    case ARM_Q5_1: return sizeof(block_q5_1);
    default: return sizeof(block_q4_0); /* Q4_0, IQ4_NL */
    }
}

INLINE int has_min(int kind) { return kind == ARM_Q4_1 || kind == ARM_Q5_1; }

/* 16 bytes, 0x10 where bit j of the 16-bit little-endian bits at qh is set (j = 0..15), else 0: the fifth bits
   of 16 Q5 values, each qh byte spread over eight lanes and tested against that lane's bit. */
INLINE uint8x16_t fifth_bits(const uint8_t *qh) {
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    uint8x16_t spread = vcombine_u8(vdup_n_u8(qh[0]), vdup_n_u8(qh[1]));
    return vandq_u8(vtstq_u8(spread, vld1q_u8(bit)), vdupq_n_u8(0x10));
}

INLINE void unpack(const uint8_t *block, int kind, int8x16_t *lo, int8x16_t *hi) {
    if (kind == ARM_Q8_0) {
        *lo = vld1q_s8((const int8_t *)block + 2);
        *hi = vld1q_s8((const int8_t *)block + 18);
        return;
    }
    /* the nibble types: value j in the low nibble of byte j of qs, value j + 16 in its high nibble */
    size_t qs = kind == ARM_Q4_1 ? 4 : kind == ARM_Q5_0 ? 6 : kind == ARM_Q5_1 ? 8 : 2;
    uint8x16_t v = vld1q_u8(block + qs);
    uint8x16_t l = vandq_u8(v, vdupq_n_u8(0x0f)), h = vshrq_n_u8(v, 4);
    if (kind == ARM_Q5_0 || kind == ARM_Q5_1) { /* qh sits just before qs */
        l = vorrq_u8(l, fifth_bits(block + qs - 4));
        h = vorrq_u8(h, fifth_bits(block + qs - 2));
    }
    if (kind == ARM_IQ4_NL) { /* the nibbles index the 16 levels: one table lookup per 16 values */
        int8x16_t levels = vld1q_s8(llm_iq4nl_values);
        *lo = vqtbl1q_s8(levels, l);
        *hi = vqtbl1q_s8(levels, h);
        return;
    }
    /* Q4_0: q - 8; Q5_0: q - 16; Q4_1, Q5_1: q as it is (0..31, a signed byte as well) */
    int8x16_t offset = vdupq_n_s8(kind == ARM_Q4_0 ? 8 : kind == ARM_Q5_0 ? 16 : 0);
    *lo = vsubq_s8(vreinterpretq_s8_u8(l), offset);
    *hi = vsubq_s8(vreinterpretq_s8_u8(h), offset);
}

/* The four int32 lanes whose sum is the block's integer dot product with the activations x0, x1. */
INLINE int32x4_t block_dot(const uint8_t *block, int kind, int8x16_t x0, int8x16_t x1) {
    int8x16_t lo, hi;
    unpack(block, kind, &lo, &hi);
    return dot16_i8(dot16_i8(vdupq_n_s32(0), lo, x0), hi, x1);
}

INLINE float fp16_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return llm_fp16_to_fp32(h);
}

/* out[0..3] = rows r..r+3 (row_bytes apart, starting at `rows`) times one token x. */
INLINE void rows4(float *out, const uint8_t *rows, size_t row_bytes, q8_act x, int64_t nb, int kind) {
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        int8x16_t x0 = vld1q_s8(x.qs + b * QK), x1 = vld1q_s8(x.qs + b * QK + 16);
        const uint8_t *p = rows + (size_t)b * block_bytes(kind);
        int32x4_t s0 = block_dot(p, kind, x0, x1), s1 = block_dot(p + row_bytes, kind, x0, x1);
        int32x4_t s2 = block_dot(p + 2 * row_bytes, kind, x0, x1), s3 = block_dot(p + 3 * row_bytes, kind, x0, x1);
        float32x4_t scale = vmulq_n_f32(scales4(p, row_bytes), x.d[b]);
        float32x4_t block = vmulq_f32(vcvtq_f32_s32(sum4x4(s0, s1, s2, s3)), scale);
        if (has_min(kind)) block = vaddq_f32(block, vmulq_n_f32(scales4(p + 2, row_bytes), x.dsum[b]));
        acc = vaddq_f32(acc, block);
    }
    vst1q_f32(out, acc);
}

/* One row times one token. */
INLINE float row1(const uint8_t *row, q8_act x, int64_t nb, int kind) {
    float sum = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = row + (size_t)b * block_bytes(kind);
        int32x4_t s = block_dot(p, kind, vld1q_s8(x.qs + b * QK), vld1q_s8(x.qs + b * QK + 16));
        float block = (float)vaddvq_s32(s) * (fp16_at(p) * x.d[b]);
        if (has_min(kind)) block += fp16_at(p + 2) * x.dsum[b];
        sum += block;
    }
    return sum;
}

INLINE void matvec(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols,
                   int kind) {
    q8_act x = q8_act_view(xq, cols);
    int64_t nb = cols / QK;
    size_t row_bytes = (size_t)nb * block_bytes(kind);
    const uint8_t *base = (const uint8_t *)w;
    int64_t r = row_begin;
    for (; r + 4 <= row_end; r += 4) rows4(out + r - row_begin, base + (size_t)r * row_bytes, row_bytes, x, nb, kind);
    for (; r < row_end; r++) out[r - row_begin] = row1(base + (size_t)r * row_bytes, x, nb, kind);
}

#ifdef __ARM_FEATURE_MATMUL_INT8
/* A tile of 2 RP rows by 2 TP tokens (RP, TP = 1 or 2, constants after inlining) with smmla. Its operands are
   pairs of 8-value runs: a = (row i's values k..k+7, row i+1's), b = (token j's, token j+1's), and vmmlaq_s32
   adds (a0.b0, a0.b1, a1.b0, a1.b1): the lanes of acc[rp][tp] are (i j, i j+1, i+1 j, i+1 j+1). Each block's
   weights are unpacked once for all the tile's tokens and its activations loaded once for all its rows; the
   float accumulation of each lane is rows4's and row1's. */
INLINE void tile(float *out, int64_t ldo, const uint8_t *row, size_t row_bytes, const q8_act *x, int64_t nb,
                 int kind, int RP, int TP) {
    float32x4_t acc[2][2];
    for (int rp = 0; rp < RP; rp++)
        for (int tp = 0; tp < TP; tp++) acc[rp][tp] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = row + (size_t)b * block_bytes(kind);
        int64x2_t wv[4][2], xv[4][2];
        float dw[4], mw[4], dx[4], dsum[4];
        for (int i = 0; i < 2 * RP; i++) {
            int8x16_t lo, hi;
            unpack(p + i * row_bytes, kind, &lo, &hi);
            wv[i][0] = vreinterpretq_s64_s8(lo);
            wv[i][1] = vreinterpretq_s64_s8(hi);
            dw[i] = fp16_at(p + i * row_bytes);
            mw[i] = has_min(kind) ? fp16_at(p + i * row_bytes + 2) : 0.0f;
        }
        for (int j = 0; j < 2 * TP; j++) {
            xv[j][0] = vreinterpretq_s64_s8(vld1q_s8(x[j].qs + b * QK));
            xv[j][1] = vreinterpretq_s64_s8(vld1q_s8(x[j].qs + b * QK + 16));
            dx[j] = x[j].d[b];
            dsum[j] = x[j].dsum[b];
        }
        for (int rp = 0; rp < RP; rp++)
            for (int tp = 0; tp < TP; tp++) {
                int32x4_t s = vdupq_n_s32(0);
                for (int h = 0; h < 2; h++) {
                    int64x2_t a0 = wv[2 * rp][h], a1 = wv[2 * rp + 1][h], b0 = xv[2 * tp][h], b1 = xv[2 * tp + 1][h];
                    s = vmmlaq_s32(s, vreinterpretq_s8_s64(vzip1q_s64(a0, a1)),
                                   vreinterpretq_s8_s64(vzip1q_s64(b0, b1)));
                    s = vmmlaq_s32(s, vreinterpretq_s8_s64(vzip2q_s64(a0, a1)),
                                   vreinterpretq_s8_s64(vzip2q_s64(b0, b1)));
                }
                float32x4_t dwv = {dw[2 * rp], dw[2 * rp], dw[2 * rp + 1], dw[2 * rp + 1]};
                float32x4_t dxv = {dx[2 * tp], dx[2 * tp + 1], dx[2 * tp], dx[2 * tp + 1]};
                float32x4_t block = vmulq_f32(vcvtq_f32_s32(s), vmulq_f32(dwv, dxv));
                if (has_min(kind)) {
                    float32x4_t mwv = {mw[2 * rp], mw[2 * rp], mw[2 * rp + 1], mw[2 * rp + 1]};
                    float32x4_t dsv = {dsum[2 * tp], dsum[2 * tp + 1], dsum[2 * tp], dsum[2 * tp + 1]};
                    block = vaddq_f32(block, vmulq_f32(mwv, dsv));
                }
                acc[rp][tp] = vaddq_f32(acc[rp][tp], block);
            }
    }
    for (int rp = 0; rp < RP; rp++)
        for (int tp = 0; tp < TP; tp++) {
            float *o = out + 2 * tp * ldo + 2 * rp;
            o[0] = vgetq_lane_f32(acc[rp][tp], 0);
            o[ldo] = vgetq_lane_f32(acc[rp][tp], 1);
            o[1] = vgetq_lane_f32(acc[rp][tp], 2);
            o[ldo + 1] = vgetq_lane_f32(acc[rp][tp], 3);
        }
}

/* Tokens t .. t + 2 TP - 1 (x) against rows [row_begin, row_end): tiles of four rows, then of two, then
   the last odd row token by token. */
INLINE void tokens_i8mm(float *out, int64_t ldo, const uint8_t *base, size_t row_bytes, const q8_act *x, int64_t nb,
                        int64_t row_begin, int64_t row_end, int kind, int TP) {
    int64_t r = row_begin;
    for (; r + 4 <= row_end; r += 4)
        tile(out + r - row_begin, ldo, base + (size_t)r * row_bytes, row_bytes, x, nb, kind, 2, TP);
    for (; r + 2 <= row_end; r += 2)
        tile(out + r - row_begin, ldo, base + (size_t)r * row_bytes, row_bytes, x, nb, kind, 1, TP);
    for (; r < row_end; r++)
        for (int j = 0; j < 2 * TP; j++)
            out[j * ldo + r - row_begin] = row1(base + (size_t)r * row_bytes, x[j], nb, kind);
}
#endif

INLINE void matmul(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n, int64_t row_begin,
                   int64_t row_end, int64_t cols, int kind) {
    int64_t t = 0;
#ifdef __ARM_FEATURE_MATMUL_INT8
    int64_t nb = cols / QK;
    size_t row_bytes = (size_t)nb * block_bytes(kind);
    const uint8_t *base = (const uint8_t *)w;
    q8_act xs[4];
    while (t + 2 <= n) { /* four tokens at a time, then two */
        int tp = t + 4 <= n ? 2 : 1;
        for (int j = 0; j < 2 * tp; j++) xs[j] = q8_act_view((const uint8_t *)x + (size_t)(t + j) * ldx, cols);
        if (tp == 2) tokens_i8mm(out + t * ldo, ldo, base, row_bytes, xs, nb, row_begin, row_end, kind, 2);
        else tokens_i8mm(out + t * ldo, ldo, base, row_bytes, xs, nb, row_begin, row_end, kind, 1);
        t += 2 * tp;
    }
#endif
    for (; t < n; t++)
        matvec(out + t * ldo, w, (const uint8_t *)x + (size_t)t * ldx, row_begin, row_end, cols, kind);
}

void ARM(matvec_q8_0)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols) {
    matvec(out, w, xq, row_begin, row_end, cols, ARM_Q8_0);
}

void ARM(matvec_q4_0)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols) {
    matvec(out, w, xq, row_begin, row_end, cols, ARM_Q4_0);
}

void ARM(matmul_q8_0)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    (void)scratch;
    matmul(out, ldo, w, x, ldx, n, row_begin, row_end, cols, ARM_Q8_0);
}

void ARM(matmul_q4_0)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    (void)scratch;
    matmul(out, ldo, w, x, ldx, n, row_begin, row_end, cols, ARM_Q4_0);
}

/* The other 32-value block types: one matvec and one matmul each, as Q8_0's and Q4_0's. */
#define BLOCK_PRODUCTS(name, kind)                                                                                     \
    void ARM(matvec_##name)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,             \
                            int64_t cols) {                                                                            \
        matvec(out, w, xq, row_begin, row_end, cols, kind);                                                            \
    }                                                                                                                  \
    void ARM(matmul_##name)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,              \
                            int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {                         \
        (void)scratch;                                                                                                 \
        matmul(out, ldo, w, x, ldx, n, row_begin, row_end, cols, kind);                                                \
    }

BLOCK_PRODUCTS(q4_1, ARM_Q4_1)
BLOCK_PRODUCTS(q5_0, ARM_Q5_0)
BLOCK_PRODUCTS(q5_1, ARM_Q5_1)
BLOCK_PRODUCTS(iq4_nl, ARM_IQ4_NL)
