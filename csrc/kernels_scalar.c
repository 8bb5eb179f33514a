/*
 * kernels_scalar.c: the portable reference of every kernel, the table of weight types (llm_types) and the
 * scalar level's table.
 *
 * Plain C that any compiler vectorizes a little. These versions are the oracle the SIMD kernels are tested
 * against (tests/test_kernels.py), so they stay simple: one row, one block, one value at a time.
 */
#include <math.h>
#include <string.h>

#include "kernels.h"

/* ---------------------------------------------------------------------------------------------------- */
/* f32 */

static float dot_f32(const float *a, const float *b, int64_t n) {
    /* Eight partial sums: independent chains the compiler can keep in one vector register. */
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += a[i + j] * b[i + j];
    float sum = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

static void matvec_f32(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end, int64_t cols) {
    for (int64_t r = row_begin; r < row_end; r++) out[r - row_begin] = dot_f32((const float *)w + r * cols, x, cols);
}

static void get_row_f32(float *out, const void *w, int64_t row, int64_t cols) {
    memcpy(out, (const float *)w + row * cols, (size_t)cols * sizeof(float));
}

/* ---------------------------------------------------------------------------------------------------- */
/* F16 and BF16: each weight widened to f32 and multiplied in f32. The two differ only in the widening, so
   each function takes `bf16` as a flag that the compiler folds away in the small wrappers. */

static inline float widen(uint16_t h, int bf16) { return bf16 ? llm_bf16_to_fp32(h) : llm_fp16_to_fp32(h); }

static inline void matvec_16(float *out, const void *w, const float *x, int64_t row_begin, int64_t row_end,
                             int64_t cols, int bf16) {
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint16_t *row = (const uint16_t *)w + r * cols;
        float sum = 0.0f;
        for (int64_t i = 0; i < cols; i++) sum += widen(row[i], bf16) * x[i];
        out[r - row_begin] = sum;
    }
}

static inline void get_row_16(float *out, const void *w, int64_t row, int64_t cols, int bf16) {
    const uint16_t *src = (const uint16_t *)w + row * cols;
    for (int64_t i = 0; i < cols; i++) out[i] = widen(src[i], bf16);
}

static void matvec_f16(float *out, const void *w, const void *x, int64_t b, int64_t e, int64_t n) {
    matvec_16(out, w, x, b, e, n, 0);
}

static void matvec_bf16(float *out, const void *w, const void *x, int64_t b, int64_t e, int64_t n) {
    matvec_16(out, w, x, b, e, n, 1);
}

static void get_row_f16(float *out, const void *w, int64_t row, int64_t cols) { get_row_16(out, w, row, cols, 0); }

static void get_row_bf16(float *out, const void *w, int64_t row, int64_t cols) { get_row_16(out, w, row, cols, 1); }

/* ---------------------------------------------------------------------------------------------------- */
/* The repacked float types (F32_R8, F16_R8, BF16_R8: kernels.h): a row's product is one chain of fused
   multiply-adds in increasing k, the order every level keeps for them (so these are bit for bit the SIMD
   kernels' results, not just close). */

typedef enum { R8F_F32, R8F_F16, R8F_BF16 } r8f_kind;

static inline float r8f_value(const void *w, int64_t i, r8f_kind kind) {
    if (kind == R8F_F32) return ((const float *)w)[i];
    return widen(((const uint16_t *)w)[i], kind == R8F_BF16);
}

static inline void matvec_r8f(float *out, const void *w, const float *x, int64_t row_begin, int64_t row_end,
                              int64_t cols, r8f_kind kind) {
    for (int64_t r = row_begin; r < row_end; r++) {
        float sum = 0.0f;
        for (int64_t k = 0; k < cols; k++) sum = fmaf(r8f_value(w, llm_r8f_index(r, k, cols), kind), x[k], sum);
        out[r - row_begin] = sum;
    }
}

static inline void get_row_r8f(float *out, const void *w, int64_t row, int64_t cols, r8f_kind kind) {
    for (int64_t k = 0; k < cols; k++) out[k] = r8f_value(w, llm_r8f_index(row, k, cols), kind);
}

#define R8F_TYPE(name, KIND)                                                                                      \
    static void matvec_##name##_r8(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end, \
                                   int64_t cols) {                                                               \
        matvec_r8f(out, w, x, row_begin, row_end, cols, KIND);                                                   \
    }                                                                                                            \
    static void get_row_##name##_r8(float *out, const void *w, int64_t row, int64_t cols) {                      \
        get_row_r8f(out, w, row, cols, KIND);                                                                    \
    }
R8F_TYPE(f32, R8F_F32)
R8F_TYPE(f16, R8F_F16)
R8F_TYPE(bf16, R8F_BF16)
#undef R8F_TYPE

/* ---------------------------------------------------------------------------------------------------- */
/* 8-bit activations (LLM_ACT_Q8) */

/* Per block: d = max|x| / 127, q = round(x / d), to nearest even as the SIMD versions round. */
static void quantize_q8_act(void *out, const float *x, int64_t cols) {
    q8_act y = q8_act_view(out, cols);
    for (int64_t b = 0; b < cols / QK; b++, x += QK) {
        int8_t *q = y.qs + b * QK;
        float amax = 0.0f;
        int finite = 1; /* fmaxf passes NaN over, so NaN is looked for value by value */
        for (int j = 0; j < QK; j++) {
            amax = fmaxf(amax, fabsf(x[j]));
            finite &= isfinite(x[j]) != 0;
        }
        if (!finite) { /* inf or NaN in x: let it reach the logits (the sampler rejects them) */
            memset(q, 0, QK);
            y.d[b] = y.dsum[b] = NAN;
            continue;
        }
        float d = amax / 127.0f, id = llm_act_inv_scale(amax);
        int32_t sum = 0;
        for (int j = 0; j < QK; j++) {
            q[j] = (int8_t)nearbyintf(x[j] * id);
            sum += q[j];
        }
        y.d[b] = d;
        y.dsum[b] = d * (float)sum;
    }
}

/* Per 256-value block the same rule, plus the sums of q over each 16 values (LLM_ACT_Q8K). */
static void quantize_q8k_act(void *out, const float *x, int64_t cols) {
    q8k_act y = q8k_act_view(out, cols);
    for (int64_t b = 0; b < cols / QK_K; b++, x += QK_K) {
        int8_t *q = y.qs + b * QK_K;
        float amax = 0.0f;
        int finite = 1;
        for (int j = 0; j < QK_K; j++) {
            amax = fmaxf(amax, fabsf(x[j]));
            finite &= isfinite(x[j]) != 0;
        }
        if (!finite) { /* as quantize_q8_act: inf or NaN reaches the logits */
            memset(q, 0, QK_K);
            memset(y.bsums + b * (QK_K / 16), 0, QK_K / 16 * sizeof(int16_t));
            y.d[b] = NAN;
            continue;
        }
        float id = llm_act_inv_scale(amax);
        for (int j = 0; j < QK_K; j++) q[j] = (int8_t)nearbyintf(x[j] * id);
        for (int i = 0; i < QK_K / 16; i++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) sum += q[16 * i + j];
            y.bsums[b * (QK_K / 16) + i] = (int16_t)sum;
        }
        y.d[b] = amax / 127.0f;
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* Q8_0 and Q4_0 against 8-bit activations: per block an integer dot product, scaled by d_w * d_x */

static void matvec_q8_0(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                        int64_t cols) {
    q8_act x = q8_act_view(xq, cols);
    int64_t nb = cols / QK;
    for (int64_t r = row_begin; r < row_end; r++) {
        const block_q8_0 *row = (const block_q8_0 *)w + r * nb;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            int32_t sumi = 0;
            for (int j = 0; j < QK; j++) sumi += row[b].qs[j] * x.qs[b * QK + j];
            sum += (float)sumi * (llm_fp16_to_fp32(row[b].d) * x.d[b]);
        }
        out[r - row_begin] = sum;
    }
}

static void matvec_q4_0(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                        int64_t cols) {
    q8_act x = q8_act_view(xq, cols);
    int64_t nb = cols / QK;
    for (int64_t r = row_begin; r < row_end; r++) {
        const block_q4_0 *row = (const block_q4_0 *)w + r * nb;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const int8_t *xb = x.qs + b * QK;
            int32_t sumi = 0;
            for (int j = 0; j < QK / 2; j++) {
                sumi += ((row[b].qs[j] & 0x0f) - 8) * xb[j];
                sumi += ((row[b].qs[j] >> 4) - 8) * xb[j + QK / 2];
            }
            sum += (float)sumi * (llm_fp16_to_fp32(row[b].d) * x.d[b]);
        }
        out[r - row_begin] = sum;
    }
}

static void get_row_q8_0(float *out, const void *w, int64_t row, int64_t cols) {
    const block_q8_0 *src = (const block_q8_0 *)w + row * (cols / QK);
    for (int64_t b = 0; b < cols / QK; b++) {
        float d = llm_fp16_to_fp32(src[b].d);
        for (int j = 0; j < QK; j++) out[b * QK + j] = d * src[b].qs[j];
    }
}

static void get_row_q4_0(float *out, const void *w, int64_t row, int64_t cols) {
    const block_q4_0 *src = (const block_q4_0 *)w + row * (cols / QK);
    for (int64_t b = 0; b < cols / QK; b++) {
        float d = llm_fp16_to_fp32(src[b].d);
        for (int j = 0; j < QK / 2; j++) {
            out[b * QK + j] = d * ((src[b].qs[j] & 0x0f) - 8);
            out[b * QK + j + QK / 2] = d * ((src[b].qs[j] >> 4) - 8);
        }
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* Q4_1, Q5_0, Q5_1 and IQ4_NL: the other 32-value blocks (kernels.h has their layouts). One value at a time
   through two accessors: a block's 16 nibble bytes hold value j < 16 in the low nibble of byte j and value
   j >= 16 in the high nibble of byte j - 16; the Q5 types' fifth bit of value j is bit j of qh (little
   endian). Against 8-bit activations, per block with sumi = sum q_w q_x:
     Q4_1, Q5_1: sum (d q_w + m) d_x q_x = d d_x sumi + m (d_x sum q_x) = d d_x sumi + m dsum
     Q5_0:       sum d (q_w - 16) d_x q_x, the offset taken off value by value as Q4_0 does
     IQ4_NL:     sum d values[q_w] d_x q_x
   Rows dequantize as gguf.quants and ggml do, x = d * q + m: d * q is exact in f32 (11 by 5 significant bits),
   so the one rounding of the sum gives the same bits whether or not a compiler fuses it into an FMA. */

static inline int nibble(const uint8_t *qs, int j) { return j < QK / 2 ? qs[j] & 0x0f : qs[j - QK / 2] >> 4; }

static inline int fifth_bit(const uint8_t *qh, int j) { return (qh[j / 8] >> (j % 8)) & 1; }

static inline int q5_value(const uint8_t *qh, const uint8_t *qs, int j) {
    return nibble(qs, j) | fifth_bit(qh, j) << 4;
}

static void get_row_q4_1(float *out, const void *w, int64_t row, int64_t cols) {
    const block_q4_1 *src = (const block_q4_1 *)w + row * (cols / QK);
    for (int64_t b = 0; b < cols / QK; b++) {
        float d = llm_fp16_to_fp32(src[b].d), m = llm_fp16_to_fp32(src[b].m);
        for (int j = 0; j < QK; j++) out[b * QK + j] = d * (float)nibble(src[b].qs, j) + m;
    }
}

static void get_row_q5_0(float *out, const void *w, int64_t row, int64_t cols) {
    const block_q5_0 *src = (const block_q5_0 *)w + row * (cols / QK);
    for (int64_t b = 0; b < cols / QK; b++) {
        float d = llm_fp16_to_fp32(src[b].d);
        for (int j = 0; j < QK; j++) out[b * QK + j] = d * (float)(q5_value(src[b].qh, src[b].qs, j) - 16);
    }
}

static void get_row_q5_1(float *out, const void *w, int64_t row, int64_t cols) {
    const block_q5_1 *src = (const block_q5_1 *)w + row * (cols / QK);
    for (int64_t b = 0; b < cols / QK; b++) {
        float d = llm_fp16_to_fp32(src[b].d), m = llm_fp16_to_fp32(src[b].m);
        for (int j = 0; j < QK; j++) out[b * QK + j] = d * (float)q5_value(src[b].qh, src[b].qs, j) + m;
    }
}

static void get_row_iq4_nl(float *out, const void *w, int64_t row, int64_t cols) {
    const block_iq4_nl *src = (const block_iq4_nl *)w + row * (cols / QK);
    for (int64_t b = 0; b < cols / QK; b++) {
        float d = llm_fp16_to_fp32(src[b].d);
        for (int j = 0; j < QK; j++) out[b * QK + j] = d * (float)llm_iq4nl_values[nibble(src[b].qs, j)];
    }
}

static void matvec_q4_1(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                        int64_t cols) {
    q8_act x = q8_act_view(xq, cols);
    int64_t nb = cols / QK;
    for (int64_t r = row_begin; r < row_end; r++) {
        const block_q4_1 *row = (const block_q4_1 *)w + r * nb;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            int32_t sumi = 0;
            for (int j = 0; j < QK; j++) sumi += nibble(row[b].qs, j) * x.qs[b * QK + j];
            sum += (float)sumi * (llm_fp16_to_fp32(row[b].d) * x.d[b]) + llm_fp16_to_fp32(row[b].m) * x.dsum[b];
        }
        out[r - row_begin] = sum;
    }
}

static void matvec_q5_0(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                        int64_t cols) {
    q8_act x = q8_act_view(xq, cols);
    int64_t nb = cols / QK;
    for (int64_t r = row_begin; r < row_end; r++) {
        const block_q5_0 *row = (const block_q5_0 *)w + r * nb;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            int32_t sumi = 0;
            for (int j = 0; j < QK; j++) sumi += (q5_value(row[b].qh, row[b].qs, j) - 16) * x.qs[b * QK + j];
            sum += (float)sumi * (llm_fp16_to_fp32(row[b].d) * x.d[b]);
        }
        out[r - row_begin] = sum;
    }
}

static void matvec_q5_1(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                        int64_t cols) {
    q8_act x = q8_act_view(xq, cols);
    int64_t nb = cols / QK;
    for (int64_t r = row_begin; r < row_end; r++) {
        const block_q5_1 *row = (const block_q5_1 *)w + r * nb;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            int32_t sumi = 0;
            for (int j = 0; j < QK; j++) sumi += q5_value(row[b].qh, row[b].qs, j) * x.qs[b * QK + j];
            sum += (float)sumi * (llm_fp16_to_fp32(row[b].d) * x.d[b]) + llm_fp16_to_fp32(row[b].m) * x.dsum[b];
        }
        out[r - row_begin] = sum;
    }
}

static void matvec_iq4_nl(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                          int64_t cols) {
    q8_act x = q8_act_view(xq, cols);
    int64_t nb = cols / QK;
    for (int64_t r = row_begin; r < row_end; r++) {
        const block_iq4_nl *row = (const block_iq4_nl *)w + r * nb;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            int32_t sumi = 0;
            for (int j = 0; j < QK; j++) sumi += llm_iq4nl_values[nibble(row[b].qs, j)] * x.qs[b * QK + j];
            sum += (float)sumi * (llm_fp16_to_fp32(row[b].d) * x.d[b]);
        }
        out[r - row_begin] = sum;
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* The repacked 32-value types (_R8, kernels.h): each block read back into its source layout (llm_r8_block),
   then the source type's arithmetic above, term for term in the same order, so that on this level a repacked
   matrix gives bit for bit its source's products. */

static void get_row_r8(float *out, const void *w, int64_t row, int64_t cols, int32_t type) {
    int32_t base = llm_types[type].repacked_from;
    uint8_t block[sizeof(block_q8_0)]; /* the largest 32-value block */
    for (int64_t b = 0; b < cols / QK; b++) {
        llm_r8_block(type, w, row, b, cols, block);
        llm_types[base].get_row(out + b * QK, block, 0, QK);
    }
}

/* One block's term of the source type's matvec sum (the expressions of matvec_q8_0 ... matvec_iq4_nl). */
static float block_term(int32_t base, const void *block, q8_act x, int64_t b) {
    const int8_t *xb = x.qs + b * QK;
    int32_t sumi = 0;
    uint16_t d, m = 0;
    memcpy(&d, block, sizeof d);
    switch (base) {
    case LLM_Q8_0: {
        const block_q8_0 *k = block;
        for (int j = 0; j < QK; j++) sumi += k->qs[j] * xb[j];
        break;
    }
    case LLM_Q4_0: {
        const block_q4_0 *k = block;
        for (int j = 0; j < QK / 2; j++) {
            sumi += ((k->qs[j] & 0x0f) - 8) * xb[j];
            sumi += ((k->qs[j] >> 4) - 8) * xb[j + QK / 2];
        }
        break;
    }
    case LLM_Q4_1: {
        const block_q4_1 *k = block;
        for (int j = 0; j < QK; j++) sumi += nibble(k->qs, j) * xb[j];
        m = k->m;
        break;
    }
    case LLM_Q5_0: {
        const block_q5_0 *k = block;
        for (int j = 0; j < QK; j++) sumi += (q5_value(k->qh, k->qs, j) - 16) * xb[j];
        break;
    }
    case LLM_Q5_1: {
        const block_q5_1 *k = block;
        for (int j = 0; j < QK; j++) sumi += q5_value(k->qh, k->qs, j) * xb[j];
        m = k->m;
        break;
    }
    case LLM_IQ4_NL: {
        const block_iq4_nl *k = block;
        for (int j = 0; j < QK; j++) sumi += llm_iq4nl_values[nibble(k->qs, j)] * xb[j];
        break;
    }
    }
    if (base == LLM_Q4_1 || base == LLM_Q5_1)
        return (float)sumi * (llm_fp16_to_fp32(d) * x.d[b]) + llm_fp16_to_fp32(m) * x.dsum[b];
    return (float)sumi * (llm_fp16_to_fp32(d) * x.d[b]);
}

static void matvec_r8(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols,
                      int32_t type) {
    q8_act x = q8_act_view(xq, cols);
    int32_t base = llm_types[type].repacked_from;
    uint8_t block[sizeof(block_q8_0)];
    for (int64_t r = row_begin; r < row_end; r++) {
        float sum = 0.0f;
        for (int64_t b = 0; b < cols / QK; b++) {
            llm_r8_block(type, w, r, b, cols, block);
            sum += block_term(base, block, x, b);
        }
        out[r - row_begin] = sum;
    }
}

#define R8_TYPE(name, TYPE)                                                                                      \
    static void get_row_##name##_r8(float *out, const void *w, int64_t row, int64_t cols) {                      \
        get_row_r8(out, w, row, cols, TYPE);                                                                     \
    }                                                                                                            \
    static void matvec_##name##_r8(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, \
                                   int64_t cols) {                                                               \
        matvec_r8(out, w, xq, row_begin, row_end, cols, TYPE);                                                   \
    }
R8_TYPE(q8_0, LLM_Q8_0_R8)
R8_TYPE(q4_0, LLM_Q4_0_R8)
R8_TYPE(q4_1, LLM_Q4_1_R8)
R8_TYPE(q5_0, LLM_Q5_0_R8)
R8_TYPE(q5_1, LLM_Q5_1_R8)
R8_TYPE(iq4_nl, LLM_IQ4_NL_R8)
#undef R8_TYPE

/* ---------------------------------------------------------------------------------------------------- */
/* Q4_K, Q5_K, Q6_K against 256-value 8-bit activations (LLM_ACT_Q8K): per sub-block an integer dot
   product times the sub-block's integer scale, the super-block's sum times d_w * d_x. The mins (Q4_K, Q5_K)
   and Q6_K's offset of 32 multiply the activation's sums per 16 values (bsums), not every value. */

/* Sub-block j's (0..7) 6-bit scale and min, from Q4_K's and Q5_K's 12 packed bytes: sub-blocks 0-3 keep
   theirs in the low six bits of bytes 0-3 (scales) and 4-7 (mins); 4-7 have their low four bits in the
   nibbles of bytes 8-11 and their top two bits in the spare top bits of bytes 0-3 and 4-7. */
static inline void k4_scale_min(const uint8_t *scales, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = scales[j] & 63;
        *m = scales[j + 4] & 63;
    } else {
        *sc = (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4);
        *m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
    }
}

/* Value l (0..31) of sub-block j (0..7) of a Q4_K or Q5_K super-block, without the fifth bit: sub-blocks
   2i and 2i + 1 share the 32 bytes qs[32 i ..], in their low and high nibbles. */
static inline int k4_nibble(const uint8_t *qs, int j, int l) { return (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0x0f; }

/* Value v (0..255) of a Q6_K super-block, 0..63 (the stored q, 32 above the real one): each 128 values take
   64 bytes of ql and 32 of qh; their four quarters are ql's low nibbles of bytes 0-31 and 32-63, then the
   high nibbles, each with two bits of qh (bits 0-1, 2-3, 4-5, 6-7 of the quarter's byte l). */
static inline int q6_K_value(const block_q6_K *b, int v) {
    int half = v / 128, quarter = (v % 128) / 32, l = v % 32;
    int low = (b->ql[64 * half + 32 * (quarter & 1) + l] >> (4 * (quarter >> 1))) & 0x0f;
    int high = (b->qh[32 * half + l] >> (2 * quarter)) & 3;
    return low | (high << 4);
}

/* The float expressions are gguf's (and ggml's) to the bit: (d * scale) * q, then minus dmin * min, as two
   statements so that no compiler fuses them into one rounding. */
static void get_row_q4_K(float *out, const void *w, int64_t row, int64_t cols) {
    const block_q4_K *src = (const block_q4_K *)w + row * (cols / QK_K);
    for (int64_t b = 0; b < cols / QK_K; b++, out += QK_K) {
        float d = llm_fp16_to_fp32(src[b].d), dmin = llm_fp16_to_fp32(src[b].dmin);
        for (int j = 0; j < 8; j++) {
            int sc, m;
            k4_scale_min(src[b].scales, j, &sc, &m);
            float dj = d * (float)sc, mj = dmin * (float)m;
            for (int l = 0; l < 32; l++) {
                float v = dj * (float)k4_nibble(src[b].qs, j, l);
                out[32 * j + l] = v - mj;
            }
        }
    }
}

static void get_row_q5_K(float *out, const void *w, int64_t row, int64_t cols) {
    const block_q5_K *src = (const block_q5_K *)w + row * (cols / QK_K);
    for (int64_t b = 0; b < cols / QK_K; b++, out += QK_K) {
        float d = llm_fp16_to_fp32(src[b].d), dmin = llm_fp16_to_fp32(src[b].dmin);
        for (int j = 0; j < 8; j++) {
            int sc, m;
            k4_scale_min(src[b].scales, j, &sc, &m);
            float dj = d * (float)sc, mj = dmin * (float)m;
            for (int l = 0; l < 32; l++) {
                int q = k4_nibble(src[b].qs, j, l) | (((src[b].qh[l] >> j) & 1) << 4); /* bit j: sub-block j */
                float v = dj * (float)q;
                out[32 * j + l] = v - mj;
            }
        }
    }
}

static void get_row_q6_K(float *out, const void *w, int64_t row, int64_t cols) {
    const block_q6_K *src = (const block_q6_K *)w + row * (cols / QK_K);
    for (int64_t b = 0; b < cols / QK_K; b++, out += QK_K) {
        float d = llm_fp16_to_fp32(src[b].d);
        for (int v = 0; v < QK_K; v++) out[v] = d * (float)src[b].scales[v / 16] * (float)(q6_K_value(&src[b], v) - 32);
    }
}

/* One super-block of Q4_K (qh NULL) or Q5_K against 256 activations: d_x * (d * sum_j sc_j dot_j - dmin *
   sum_j m_j sum_j(x)), where the sums of sub-block j's x are its two bsums. */
static float dot_k4(const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, uint16_t d, uint16_t dmin,
                    const int8_t *x, const int16_t *bsums, float dx) {
    int32_t sumi = 0, summ = 0;
    for (int j = 0; j < 8; j++) {
        int sc, m;
        k4_scale_min(scales, j, &sc, &m);
        int32_t dot = 0;
        for (int l = 0; l < 32; l++) {
            int q = k4_nibble(qs, j, l) | (qh ? ((qh[l] >> j) & 1) << 4 : 0);
            dot += q * x[32 * j + l];
        }
        sumi += sc * dot;
        summ += m * (bsums[2 * j] + bsums[2 * j + 1]);
    }
    return dx * (llm_fp16_to_fp32(d) * (float)sumi - llm_fp16_to_fp32(dmin) * (float)summ);
}

static void matvec_q4_K(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                        int64_t cols) {
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

static void matvec_q5_K(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                        int64_t cols) {
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

/* Q6_K: 16 sub-blocks of 16, sum_i sc_i * (dot_i - 32 * bsum_i) with the stored q = real q + 32. */
static void matvec_q6_K(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                        int64_t cols) {
    q8k_act x = q8k_act_view(xq, cols);
    int64_t nb = cols / QK_K;
    for (int64_t r = row_begin; r < row_end; r++) {
        const block_q6_K *row = (const block_q6_K *)w + r * nb;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const int8_t *xb = x.qs + b * QK_K;
            const int16_t *bsums = x.bsums + b * (QK_K / 16);
            int32_t sumi = 0;
            for (int i = 0; i < QK_K / 16; i++) {
                int32_t dot = 0;
                for (int l = 0; l < 16; l++) dot += q6_K_value(&row[b], 16 * i + l) * xb[16 * i + l];
                sumi += row[b].scales[i] * (dot - 32 * bsums[i]);
            }
            sum += x.d[b] * (llm_fp16_to_fp32(row[b].d) * (float)sumi);
        }
        out[r - row_begin] = sum;
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* Q2_K, Q3_K and IQ4_XS against 256-value activations (LLM_ACT_Q8K)
 *
 * Each super-block is first spelled out as its 256 integer values and its 16 sub-block scales (one per 16
 * values; IQ4_XS's 8 scales of 32 values are repeated), so that dequantizing and the dot product read the
 * layout in one place. The floats follow ggml's dequantize_row_q2_K / q3_K / iq4_xs expression by
 * expression: dl = d * scale, then dl * q (- ml), which makes get_row equal gguf.quants.dequantize bit for
 * bit (tests/test_kernels.py). The dot product sums q_w q_x per sub-block in integers, weights each sub-block
 * sum by its scale, and scales the super-block once by d_w d_x; Q2_K's mins multiply the activations' sums
 * per 16 values (bsums) instead of every value. */

/* Q2_K: value 128 n + 32 j + l (n < 2, j < 4, l < 32) is bits 2j, 2j+1 of qs[32 n + l], 0..3; sub-block i
   has scale scales[i] & 15 and min scales[i] >> 4. */
static void q2_K_values(const block_q2_K *b, int8_t q[QK_K]) {
    for (int n = 0; n < 2; n++)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) q[128 * n + 32 * j + l] = (int8_t)((b->qs[32 * n + l] >> (2 * j)) & 3);
}

/* Q3_K: the low two bits as Q2_K's; the third is bit 4 n + j of hmask[l], and a clear bit means q - 4
   (the stored 3 bits are q + 4): values -4..3. */
static void q3_K_values(const block_q3_K *b, int8_t q[QK_K]) {
    for (int n = 0; n < 2; n++)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) {
                int low = (b->qs[32 * n + l] >> (2 * j)) & 3, high = (b->hmask[l] >> (4 * n + j)) & 1;
                q[128 * n + 32 * j + l] = (int8_t)(low - (high ? 0 : 4));
            }
}

/* Q3_K's 16 six-bit scales, stored + 32: the low four bits of scale i are the low (i < 8) or high (i >= 8)
   nibble of scales[i % 8], its top two bits are bits 2 (i / 4), 2 (i / 4) + 1 of scales[8 + i % 4]. */
static void q3_K_scales(const block_q3_K *b, int8_t sc[16]) {
    for (int i = 0; i < 16; i++) {
        int low = (b->scales[i % 8] >> (4 * (i / 8))) & 15, high = (b->scales[8 + i % 4] >> (2 * (i / 4))) & 3;
        sc[i] = (int8_t)((low | high << 4) - 32);
    }
}

/* IQ4_XS: sub-block i (32 values) is IQ4_NL's block layout over qs[16 i .. 16 i + 15] (nibble() above), each
   nibble an index into llm_iq4nl_values. */
static void iq4_xs_values(const block_iq4_xs *b, int8_t q[QK_K]) {
    for (int i = 0; i < QK_K / 32; i++)
        for (int l = 0; l < 32; l++) q[32 * i + l] = llm_iq4nl_values[nibble(b->qs + 16 * i, l)];
}

/* IQ4_XS's 8 six-bit scales, stored + 32: the low nibble of scale i in scales_l[i / 2] (low nibble for even
   i), its top two bits at bits 2 i, 2 i + 1 of scales_h. */
static int iq4_xs_scale(const block_iq4_xs *b, int i) {
    int low = (b->scales_l[i / 2] >> (4 * (i % 2))) & 15, high = (b->scales_h >> (2 * i)) & 3;
    return (low | high << 4) - 32;
}

static void get_row_q2_K(float *out, const void *w, int64_t row, int64_t cols) {
    const block_q2_K *src = (const block_q2_K *)w + row * (cols / QK_K);
    for (int64_t b = 0; b < cols / QK_K; b++, out += QK_K) {
        int8_t q[QK_K];
        q2_K_values(&src[b], q);
        float d = llm_fp16_to_fp32(src[b].d), dmin = llm_fp16_to_fp32(src[b].dmin);
        for (int i = 0; i < 16; i++) {
            float dl = d * (float)(src[b].scales[i] & 15), ml = dmin * (float)(src[b].scales[i] >> 4);
            for (int l = 0; l < 16; l++) out[16 * i + l] = dl * (float)q[16 * i + l] - ml;
        }
    }
}

static void get_row_q3_K(float *out, const void *w, int64_t row, int64_t cols) {
    const block_q3_K *src = (const block_q3_K *)w + row * (cols / QK_K);
    for (int64_t b = 0; b < cols / QK_K; b++, out += QK_K) {
        int8_t q[QK_K], sc[16];
        q3_K_values(&src[b], q);
        q3_K_scales(&src[b], sc);
        float d = llm_fp16_to_fp32(src[b].d);
        for (int i = 0; i < 16; i++) {
            float dl = d * (float)sc[i];
            for (int l = 0; l < 16; l++) out[16 * i + l] = dl * (float)q[16 * i + l];
        }
    }
}

static void get_row_iq4_xs(float *out, const void *w, int64_t row, int64_t cols) {
    const block_iq4_xs *src = (const block_iq4_xs *)w + row * (cols / QK_K);
    for (int64_t b = 0; b < cols / QK_K; b++, out += QK_K) {
        int8_t q[QK_K];
        iq4_xs_values(&src[b], q);
        float d = llm_fp16_to_fp32(src[b].d);
        for (int i = 0; i < QK_K / 32; i++) {
            float dl = d * (float)iq4_xs_scale(&src[b], i);
            for (int l = 0; l < 32; l++) out[32 * i + l] = dl * (float)q[32 * i + l];
        }
    }
}

/* sum over sub-blocks i of sc[i] * (sum of q[l] x[l] over its 16 values) */
static int32_t scaled_dot_256(const int8_t q[QK_K], const int8_t sc[16], const int8_t *x) {
    int32_t sum = 0;
    for (int i = 0; i < 16; i++) {
        int32_t sub = 0;
        for (int l = 0; l < 16; l++) sub += q[16 * i + l] * x[16 * i + l];
        sum += sc[i] * sub;
    }
    return sum;
}

static void matvec_q2_K(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                        int64_t cols) {
    q8k_act x = q8k_act_view(xq, cols);
    int64_t nb = cols / QK_K;
    for (int64_t r = row_begin; r < row_end; r++) {
        const block_q2_K *row = (const block_q2_K *)w + r * nb;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            int8_t q[QK_K], sc[16];
            q2_K_values(&row[b], q);
            int32_t mins = 0; /* sum of min_i * (sum of q_x over sub-block i) */
            for (int i = 0; i < 16; i++) {
                sc[i] = (int8_t)(row[b].scales[i] & 15);
                mins += (row[b].scales[i] >> 4) * x.bsums[b * 16 + i];
            }
            int32_t dot = scaled_dot_256(q, sc, x.qs + b * QK_K);
            sum += x.d[b] * (llm_fp16_to_fp32(row[b].d) * (float)dot - llm_fp16_to_fp32(row[b].dmin) * (float)mins);
        }
        out[r - row_begin] = sum;
    }
}

static void matvec_q3_K(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                        int64_t cols) {
    q8k_act x = q8k_act_view(xq, cols);
    int64_t nb = cols / QK_K;
    for (int64_t r = row_begin; r < row_end; r++) {
        const block_q3_K *row = (const block_q3_K *)w + r * nb;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            int8_t q[QK_K], sc[16];
            q3_K_values(&row[b], q);
            q3_K_scales(&row[b], sc);
            sum += x.d[b] * llm_fp16_to_fp32(row[b].d) * (float)scaled_dot_256(q, sc, x.qs + b * QK_K);
        }
        out[r - row_begin] = sum;
    }
}

static void matvec_iq4_xs(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                          int64_t cols) {
    q8k_act x = q8k_act_view(xq, cols);
    int64_t nb = cols / QK_K;
    for (int64_t r = row_begin; r < row_end; r++) {
        const block_iq4_xs *row = (const block_iq4_xs *)w + r * nb;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            int8_t q[QK_K], sc[16];
            iq4_xs_values(&row[b], q);
            for (int i = 0; i < 16; i++) sc[i] = (int8_t)iq4_xs_scale(&row[b], i / 2);
            sum += x.d[b] * llm_fp16_to_fp32(row[b].d) * (float)scaled_dot_256(q, sc, x.qs + b * QK_K);
        }
        out[r - row_begin] = sum;
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* attention and feed-forward helpers */

/* The attention of a tile (kernels.h), the reference of the SIMD kernels: for each block of positions and each
   query that sees some of them, the scores, then the online softmax's update of the running maximum m, the sum of
   e^(s - m) and the output (both rescaled by e^(m_old - m_new) when m grows); the output over the sum at the end. */
static void attention(const llm_attention_tile *t, float *scratch) {
    enum { B = LLM_KV_BLOCK };
    int64_t dim = t->dim, n_q = (int64_t)t->n_tok * t->n_head;
    float *out = scratch, *max = out + n_q * dim, *sum = max + n_q, *s = sum + n_q;
    for (int64_t i = 0; i < n_q; i++) max[i] = -INFINITY, sum[i] = 0.0f;
    memset(out, 0, (size_t)(n_q * dim) * sizeof *out);
    int32_t last = t->pos + t->n_tok - 1, first = t->window && t->pos >= t->window ? t->pos - t->window + 1 : 0;
    for (int32_t b = first / B; b <= last / B; b++) {
        const float *keys = t->keys + t->table[b] * t->stride, *values = t->values + t->table[b] * t->stride;
        for (int32_t tok = 0; tok < t->n_tok; tok++) {
            int32_t to = t->pos + tok, from = t->window && to >= t->window ? to - t->window + 1 : 0;
            int32_t lo = from > b * B ? from - b * B : 0, hi = to < b * B + B ? to - b * B + 1 : B; /* [lo, hi) */
            for (int32_t h = 0; lo < hi && h < t->n_head; h++) {
                int64_t i = (int64_t)tok * t->n_head + h;
                const float *q = t->q + tok * t->ldq + h * dim;
                float m = max[i];
                for (int32_t j = lo; j < hi; j++) {
                    float dot = 0.0f;
                    for (int64_t d = 0; d < dim; d++) dot += q[d] * keys[d * B + j];
                    s[j] = t->scale * dot;
                    if (t->softcap) s[j] = t->softcap * tanhf(s[j] / t->softcap);
                    m = s[j] > m ? s[j] : m;
                }
                float rescale = max[i] == -INFINITY ? 0.0f : expf(max[i] - m), *o = out + i * dim;
                sum[i] *= rescale;
                for (int64_t d = 0; d < dim; d++) o[d] *= rescale;
                for (int32_t j = lo; j < hi; j++) {
                    float e = expf(s[j] - m);
                    sum[i] += e;
                    for (int64_t d = 0; d < dim; d++) o[d] += e * values[j * dim + d];
                }
                max[i] = m;
            }
        }
    }
    for (int64_t i = 0; i < n_q; i++)
        for (int64_t d = 0; d < dim; d++)
            t->out[i / t->n_head * t->ldo + i % t->n_head * dim + d] = out[i * dim + d] / sum[i];
}

static void swiglu(float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

/* GELU's tanh approximation, 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), written as
   x / (1 + e^(-2u)) (the same function: 0.5 (1 + tanh u) is the logistic of 2u): the sum 1 + tanh(u) loses
   the digits of a small result (x below -3) that this form keeps. In double, as the reference of the SIMD
   kernels: e^(-2u) magnifies the rounding of its argument |2u| times, which floats would make 1e-6 at x = -4. */
static void geglu(float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double x = gate[i], u2 = 1.5957691216057308 * (x + 0.044715 * x * x * x); /* 2u: 2 sqrt(2/pi) */
        gate[i] = (float)(x / (1.0 + exp(-u2)) * up[i]);
    }
}

/* Soft-capping bounds x to (-cap, cap) and leaves small values alone. */
static void softcap(float *x, int64_t n, float cap) {
    for (int64_t i = 0; i < n; i++) x[i] = cap * tanhf(x[i] / cap);
}

/* ---------------------------------------------------------------------------------------------------- */
/* the tables */

const llm_type_info llm_types[LLM_TYPE_COUNT] = {
    [LLM_F32]  = {"f32", 1, sizeof(float), LLM_ACT_F32, get_row_f32, -1},
    [LLM_F16]  = {"f16", 1, sizeof(uint16_t), LLM_ACT_F32, get_row_f16, -1},
    [LLM_BF16] = {"bf16", 1, sizeof(uint16_t), LLM_ACT_F32, get_row_bf16, -1},
    [LLM_Q8_0] = {"q8_0", QK, sizeof(block_q8_0), LLM_ACT_Q8, get_row_q8_0, -1},
    [LLM_Q4_0] = {"q4_0", QK, sizeof(block_q4_0), LLM_ACT_Q8, get_row_q4_0, -1},
    [LLM_Q4_1] = {"q4_1", QK, sizeof(block_q4_1), LLM_ACT_Q8, get_row_q4_1, -1},
    [LLM_Q5_0] = {"q5_0", QK, sizeof(block_q5_0), LLM_ACT_Q8, get_row_q5_0, -1},
    [LLM_Q5_1] = {"q5_1", QK, sizeof(block_q5_1), LLM_ACT_Q8, get_row_q5_1, -1},
    [LLM_IQ4_NL] = {"iq4_nl", QK, sizeof(block_iq4_nl), LLM_ACT_Q8, get_row_iq4_nl, -1},
    [LLM_Q2_K] = {"q2_k", QK_K, sizeof(block_q2_K), LLM_ACT_Q8K, get_row_q2_K, -1},
    [LLM_Q3_K] = {"q3_k", QK_K, sizeof(block_q3_K), LLM_ACT_Q8K, get_row_q3_K, -1},
    [LLM_Q4_K] = {"q4_k", QK_K, sizeof(block_q4_K), LLM_ACT_Q8K, get_row_q4_K, -1},
    [LLM_Q5_K] = {"q5_k", QK_K, sizeof(block_q5_K), LLM_ACT_Q8K, get_row_q5_K, -1},
    [LLM_Q6_K] = {"q6_k", QK_K, sizeof(block_q6_K), LLM_ACT_Q8K, get_row_q6_K, -1},
    [LLM_IQ4_XS] = {"iq4_xs", QK_K, sizeof(block_iq4_xs), LLM_ACT_Q8K, get_row_iq4_xs, -1},
    [LLM_Q8_0_R8] = {"q8_0_r8", QK, sizeof(block_q8_0), LLM_ACT_Q8, get_row_q8_0_r8, LLM_Q8_0},
    [LLM_Q4_0_R8] = {"q4_0_r8", QK, sizeof(block_q4_0), LLM_ACT_Q8, get_row_q4_0_r8, LLM_Q4_0},
    [LLM_Q4_1_R8] = {"q4_1_r8", QK, sizeof(block_q4_1), LLM_ACT_Q8, get_row_q4_1_r8, LLM_Q4_1},
    [LLM_Q5_0_R8] = {"q5_0_r8", QK, sizeof(block_q5_0), LLM_ACT_Q8, get_row_q5_0_r8, LLM_Q5_0},
    [LLM_Q5_1_R8] = {"q5_1_r8", QK, sizeof(block_q5_1), LLM_ACT_Q8, get_row_q5_1_r8, LLM_Q5_1},
    [LLM_IQ4_NL_R8] = {"iq4_nl_r8", QK, sizeof(block_iq4_nl), LLM_ACT_Q8, get_row_iq4_nl_r8, LLM_IQ4_NL},
    [LLM_F32_R8]  = {"f32_r8", 1, sizeof(float), LLM_ACT_F32, get_row_f32_r8, LLM_F32},
    [LLM_F16_R8]  = {"f16_r8", 1, sizeof(uint16_t), LLM_ACT_F32, get_row_f16_r8, LLM_F16},
    [LLM_BF16_R8] = {"bf16_r8", 1, sizeof(uint16_t), LLM_ACT_F32, get_row_bf16_r8, LLM_BF16},
};

/* No matmul kernels: a batch runs through the matrix-vector products one token at a time. */
const llm_kernels llm_kernels_scalar = {
    .type = {
        [LLM_F32]  = {matvec_f32, NULL},
        [LLM_F16]  = {matvec_f16, NULL},
        [LLM_BF16] = {matvec_bf16, NULL},
        [LLM_Q8_0] = {matvec_q8_0, NULL},
        [LLM_Q4_0] = {matvec_q4_0, NULL},
        [LLM_Q4_1] = {matvec_q4_1, NULL},
        [LLM_Q5_0] = {matvec_q5_0, NULL},
        [LLM_Q5_1] = {matvec_q5_1, NULL},
        [LLM_IQ4_NL] = {matvec_iq4_nl, NULL},
        [LLM_Q4_K] = {matvec_q4_K, NULL},
        [LLM_Q5_K] = {matvec_q5_K, NULL},
        [LLM_Q6_K] = {matvec_q6_K, NULL},
        [LLM_Q2_K] = {matvec_q2_K, NULL},
        [LLM_Q3_K] = {matvec_q3_K, NULL},
        [LLM_IQ4_XS] = {matvec_iq4_xs, NULL},
        [LLM_Q8_0_R8] = {matvec_q8_0_r8, NULL},
        [LLM_Q4_0_R8] = {matvec_q4_0_r8, NULL},
        [LLM_Q4_1_R8] = {matvec_q4_1_r8, NULL},
        [LLM_Q5_0_R8] = {matvec_q5_0_r8, NULL},
        [LLM_Q5_1_R8] = {matvec_q5_1_r8, NULL},
        [LLM_IQ4_NL_R8] = {matvec_iq4_nl_r8, NULL},
        [LLM_F32_R8]  = {matvec_f32_r8, NULL},
        [LLM_F16_R8]  = {matvec_f16_r8, NULL},
        [LLM_BF16_R8] = {matvec_bf16_r8, NULL},
    },
    .quantize = {[LLM_ACT_Q8] = quantize_q8_act, [LLM_ACT_Q8K] = quantize_q8k_act},
    .vec = {.attention = attention, .swiglu = swiglu, .geglu = geglu, .softcap = softcap},
    .scratch_bytes = NULL,
};
