/*
 * kernels_arm_kquants.c: the products of Q2_K, Q4_K, Q5_K, Q6_K and IQ4_XS on arm64 (decoding; a batch runs
 * them token by token, as the scalar level does).
 *
 * As the 32-value types (kernels_arm_int8.c), only the integer part is vectorized: per super-block the
 * reference's integer sums (sum of sub-block scale x sub-block dot product, and the mins' or offsets' sums
 * over the activations' bsums) are exact whatever their order, and the float expression per super-block and
 * the row's accumulation are the reference's (kernels_scalar.c), so the results are its results bit for bit.
 * The sub-block dot products are sdot at the dotprod level, widening multiplies at neon (dot16_i8).
 */
#include "kernels_arm.h"

/* Sub-block j's 6-bit scale and min from Q4_K's and Q5_K's 12 packed bytes (the layout in kernels.h; the
   reference's k4_scale_min). */
INLINE void scale_min(const uint8_t *scales, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = scales[j] & 63;
        *m = scales[j + 4] & 63;
    } else {
        *sc = (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4);
        *m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
    }
}

/* The 32 values of one sub-block against 32 activations: the sum of the products. */
INLINE int32_t dot32(uint8x16_t q0, uint8x16_t q1, const int8_t *x) {
    int32x4_t s = dot16_i8(vdupq_n_s32(0), vreinterpretq_s8_u8(q0), vld1q_s8(x));
    return vaddvq_s32(dot16_i8(s, vreinterpretq_s8_u8(q1), vld1q_s8(x + 16)));
}

/* One Q4_K (qh NULL) or Q5_K super-block: d_x * (d * sum_j sc_j dot_j - dmin * sum_j m_j sum_j(x)). Sub-blocks
   2i and 2i + 1 share qs[32 i ..] (low, high nibbles); Q5_K's fifth bit of value l of sub-block j is bit j
   of qh[l]. */
INLINE float dot_k4(const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, uint16_t d, uint16_t dmin,
                    const int8_t *x, const int16_t *bsums, float dx) {
    const uint8x16_t low4 = vdupq_n_u8(0x0f);
    uint8x16_t h0 = vdupq_n_u8(0), h1 = h0;
    if (qh) {
        h0 = vld1q_u8(qh);
        h1 = vld1q_u8(qh + 16);
    }
    int32_t sumi = 0, summ = 0;
    for (int i = 0; i < 4; i++) {
        uint8x16_t v0 = vld1q_u8(qs + 32 * i), v1 = vld1q_u8(qs + 32 * i + 16);
        uint8x16_t lo0 = vandq_u8(v0, low4), lo1 = vandq_u8(v1, low4);
        uint8x16_t hi0 = vshrq_n_u8(v0, 4), hi1 = vshrq_n_u8(v1, 4);
        if (qh) { /* 0x10 where bit j of qh[l] is set: j = 2i for the low nibbles, 2i + 1 for the high ones */
            uint8x16_t blo = vdupq_n_u8((uint8_t)(1u << (2 * i))), bhi = vdupq_n_u8((uint8_t)(2u << (2 * i)));
            const uint8x16_t five = vdupq_n_u8(0x10);
            lo0 = vorrq_u8(lo0, vandq_u8(vtstq_u8(h0, blo), five));
            lo1 = vorrq_u8(lo1, vandq_u8(vtstq_u8(h1, blo), five));
            hi0 = vorrq_u8(hi0, vandq_u8(vtstq_u8(h0, bhi), five));
            hi1 = vorrq_u8(hi1, vandq_u8(vtstq_u8(h1, bhi), five));
        }
        int sc, m;
        scale_min(scales, 2 * i, &sc, &m);
        sumi += sc * dot32(lo0, lo1, x + 64 * i);
        summ += m * (bsums[4 * i] + bsums[4 * i + 1]);
        scale_min(scales, 2 * i + 1, &sc, &m);
        sumi += sc * dot32(hi0, hi1, x + 64 * i + 32);
        summ += m * (bsums[4 * i + 2] + bsums[4 * i + 3]);
    }
    return dx * (llm_fp16_to_fp32(d) * (float)sumi - llm_fp16_to_fp32(dmin) * (float)summ);
}

void ARM(matvec_q4_K)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols) {
    q8k_act x = q8k_act_view(xq, cols);
    int64_t nb = cols / QK_K;
    for (int64_t r = row_begin; r < row_end; r++) {
        const block_q4_K *row = (const block_q4_K *)w + r * nb;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++)
            sum += dot_k4(row[b].scales, row[b].qs, NULL, row[b].d, row[b].dmin, x.qs + b * QK_K,
                          x.bsums + b * (QK_K / 16), x.d[b]);
        out[r - row_begin] = sum;
    }
}

void ARM(matvec_q5_K)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols) {
    q8k_act x = q8k_act_view(xq, cols);
    int64_t nb = cols / QK_K;
    for (int64_t r = row_begin; r < row_end; r++) {
        const block_q5_K *row = (const block_q5_K *)w + r * nb;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++)
            sum += dot_k4(row[b].scales, row[b].qs, row[b].qh, row[b].d, row[b].dmin, x.qs + b * QK_K,
                          x.bsums + b * (QK_K / 16), x.d[b]);
        out[r - row_begin] = sum;
    }
}

/* Q6_K: 16 sub-blocks of 16, sumi = sum_i sc_i (dot_i - 32 bsum_i) with the stored q (0..63) = real q + 32.
   Each half of 128 values is four quarters of 32: ql's low nibbles of bytes 0-31, of 32-63, then their high
   nibbles, each with two bits of qh's 32 bytes (bits 0-1, 2-3, 4-5, 6-7). */
void ARM(matvec_q6_K)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols) {
    q8k_act x = q8k_act_view(xq, cols);
    int64_t nb = cols / QK_K;
    const uint8x16_t low4 = vdupq_n_u8(0x0f), two = vdupq_n_u8(0x30);
    for (int64_t r = row_begin; r < row_end; r++) {
        const block_q6_K *row = (const block_q6_K *)w + r * nb;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const block_q6_K *blk = &row[b];
            const int8_t *xb = x.qs + b * QK_K;
            const int16_t *bsums = x.bsums + b * (QK_K / 16);
            int32_t sumi = 0;
            for (int half = 0; half < 2; half++) {
                const uint8_t *ql = blk->ql + 64 * half, *qh = blk->qh + 32 * half;
                uint8x16_t a[2] = {vld1q_u8(ql), vld1q_u8(ql + 16)}, c[2] = {vld1q_u8(qh), vld1q_u8(qh + 16)};
                uint8x16_t e[2] = {vld1q_u8(ql + 32), vld1q_u8(ql + 48)};
                for (int k = 0; k < 2; k++) { /* the 16 values l = 16 k .. 16 k + 15 of each quarter */
                    uint8x16_t q[4] = {
                        vorrq_u8(vandq_u8(a[k], low4), vandq_u8(vshlq_n_u8(c[k], 4), two)),
                        vorrq_u8(vandq_u8(e[k], low4), vandq_u8(vshlq_n_u8(c[k], 2), two)),
                        vorrq_u8(vshrq_n_u8(a[k], 4), vandq_u8(c[k], two)),
                        vorrq_u8(vshrq_n_u8(e[k], 4), vandq_u8(vshrq_n_u8(c[k], 2), two)),
                    };
                    for (int quarter = 0; quarter < 4; quarter++) {
                        int i = 8 * half + 2 * quarter + k; /* the sub-block of 16 */
                        int32x4_t s = dot16_i8(vdupq_n_s32(0), vreinterpretq_s8_u8(q[quarter]),
                                               vld1q_s8(xb + 16 * i));
                        sumi += blk->scales[i] * (vaddvq_s32(s) - 32 * bsums[i]);
                    }
                }
            }
            sum += x.d[b] * (llm_fp16_to_fp32(blk->d) * (float)sumi);
        }
        out[r - row_begin] = sum;
    }
}

/* IQ4_XS: 8 sub-blocks of 32, each IQ4_NL's nibble layout over qs[16 i ..] indexing the 16 levels (one tbl
   lookup per 16 values), with a 6-bit scale stored + 32 (low nibble in scales_l, top two bits in scales_h):
   sum += (d_x * d) * sum_i scale_i dot_i, the reference's expression. */
void ARM(matvec_iq4_xs)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                        int64_t cols) {
    q8k_act x = q8k_act_view(xq, cols);
    int64_t nb = cols / QK_K;
    const int8x16_t levels = vld1q_s8(llm_iq4nl_values);
    const uint8x16_t low4 = vdupq_n_u8(0x0f);
    for (int64_t r = row_begin; r < row_end; r++) {
        const block_iq4_xs *row = (const block_iq4_xs *)w + r * nb;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const block_iq4_xs *blk = &row[b];
            const int8_t *xb = x.qs + b * QK_K;
            int32_t sumi = 0;
            for (int i = 0; i < QK_K / 32; i++) {
                uint8x16_t v = vld1q_u8(blk->qs + 16 * i);
                uint8x16_t lo = vreinterpretq_u8_s8(vqtbl1q_s8(levels, vandq_u8(v, low4)));
                uint8x16_t hi = vreinterpretq_u8_s8(vqtbl1q_s8(levels, vshrq_n_u8(v, 4)));
                int low = (blk->scales_l[i / 2] >> (4 * (i % 2))) & 15, high = (blk->scales_h >> (2 * i)) & 3;
                int scale = (low | high << 4) - 32;
                sumi += scale * dot32(lo, hi, xb + 32 * i);
            }
            sum += x.d[b] * llm_fp16_to_fp32(blk->d) * (float)sumi;
        }
        out[r - row_begin] = sum;
    }
}

/* Q2_K: value 128 n + 32 j + l is bits 2j, 2j+1 of qs[32 n + l]; sub-block i (16 values) has the 4-bit scale
   scales[i] & 15 and min scales[i] >> 4: sum += d_x * (d * sum_i sc_i dot_i - dmin * sum_i min_i bsum_i). */
void ARM(matvec_q2_K)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols) {
    q8k_act x = q8k_act_view(xq, cols);
    int64_t nb = cols / QK_K;
    const uint8x16_t two_bits = vdupq_n_u8(3);
    for (int64_t r = row_begin; r < row_end; r++) {
        const block_q2_K *row = (const block_q2_K *)w + r * nb;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const block_q2_K *blk = &row[b];
            const int8_t *xb = x.qs + b * QK_K;
            const int16_t *bsums = x.bsums + b * (QK_K / 16);
            int32_t dot = 0, mins = 0;
            for (int i = 0; i < 16; i++) mins += (blk->scales[i] >> 4) * bsums[i];
            for (int n = 0; n < 2; n++) {
                uint8x16_t v[2] = {vld1q_u8(blk->qs + 32 * n), vld1q_u8(blk->qs + 32 * n + 16)};
                for (int j = 0; j < 4; j++)
                    for (int k = 0; k < 2; k++) { /* values l = 16 k .. 16 k + 15: sub-block 8 n + 2 j + k */
                        int i = 8 * n + 2 * j + k;
                        uint8x16_t q = vandq_u8(vshlq_u8(v[k], vdupq_n_s8((int8_t)(-2 * j))), two_bits);
                        int32x4_t s = dot16_i8(vdupq_n_s32(0), vreinterpretq_s8_u8(q), vld1q_s8(xb + 16 * i));
                        dot += (blk->scales[i] & 15) * vaddvq_s32(s);
                    }
            }
            sum += x.d[b] * (llm_fp16_to_fp32(blk->d) * (float)dot - llm_fp16_to_fp32(blk->dmin) * (float)mins);
        }
        out[r - row_begin] = sum;
    }
}
