/*
 * kernels_arm_float.c: the float weight types' products on arm64 (F32, F16, BF16 rows against f32 input).
 *
 * One row's dot product keeps four vectors of partial sums (16 values per step: four independent chains of
 * fused multiply-adds, enough to cover their latency on the cores this targets), F16 widened by fcvtl and BF16
 * by a 16-bit shift, both exact. A batch runs the same dot product per (row, token), a row at a time against
 * every token while it is in the cache: each token's result is the matvec's, bit for bit.
 */
#include "kernels_arm.h"

enum { ARM_F32, ARM_F16, ARM_BF16 };

/* Values i..i+3 of a row of the given storage, as f32. */
INLINE float32x4_t load4(const void *row, int64_t i, int kind) {
    if (kind == ARM_F32) return vld1q_f32((const float *)row + i);
    uint16x4_t h = vld1_u16((const uint16_t *)row + i);
    if (kind == ARM_F16) return vcvt_f32_f16(vreinterpret_f16_u16(h));
    return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
}

/* Value i of a row, as f32 (the tail of a row whose length is not a multiple of 4). */
INLINE float load1(const void *row, int64_t i, int kind) {
    if (kind == ARM_F32) return ((const float *)row)[i];
    uint16_t h = ((const uint16_t *)row)[i];
    return kind == ARM_F16 ? llm_fp16_to_fp32(h) : llm_bf16_to_fp32(h);
}

INLINE float dot_row(const void *row, const float *x, int64_t cols, int kind) {
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 16 <= cols; i += 16) {
        s0 = vfmaq_f32(s0, load4(row, i, kind), vld1q_f32(x + i));
        s1 = vfmaq_f32(s1, load4(row, i + 4, kind), vld1q_f32(x + i + 4));
        s2 = vfmaq_f32(s2, load4(row, i + 8, kind), vld1q_f32(x + i + 8));
        s3 = vfmaq_f32(s3, load4(row, i + 12, kind), vld1q_f32(x + i + 12));
    }
    for (; i + 4 <= cols; i += 4) s0 = vfmaq_f32(s0, load4(row, i, kind), vld1q_f32(x + i));
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < cols; i++) sum += load1(row, i, kind) * x[i];
    return sum;
}

INLINE size_t elem_bytes(int kind) { return kind == ARM_F32 ? sizeof(float) : sizeof(uint16_t); }

INLINE void matvec(float *out, const void *w, const float *x, int64_t row_begin, int64_t row_end, int64_t cols,
                   int kind) {
    for (int64_t r = row_begin; r < row_end; r++)
        out[r - row_begin] = dot_row((const uint8_t *)w + (size_t)r * (size_t)cols * elem_bytes(kind), x, cols, kind);
}

INLINE void matmul(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n, int64_t row_begin,
                   int64_t row_end, int64_t cols, int kind) {
    for (int64_t r = row_begin; r < row_end; r++) {
        const void *row = (const uint8_t *)w + (size_t)r * (size_t)cols * elem_bytes(kind);
        for (int64_t t = 0; t < n; t++) {
            const float *token = (const float *)((const uint8_t *)x + (size_t)t * ldx);
            out[t * ldo + r - row_begin] = dot_row(row, token, cols, kind);
        }
    }
}

void ARM(matvec_f32)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end, int64_t cols) {
    matvec(out, w, x, row_begin, row_end, cols, ARM_F32);
}

void ARM(matvec_f16)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end, int64_t cols) {
    matvec(out, w, x, row_begin, row_end, cols, ARM_F16);
}

void ARM(matvec_bf16)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end, int64_t cols) {
    matvec(out, w, x, row_begin, row_end, cols, ARM_BF16);
}

void ARM(matmul_f32)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                     int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    (void)scratch;
    matmul(out, ldo, w, x, ldx, n, row_begin, row_end, cols, ARM_F32);
}

void ARM(matmul_f16)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                     int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    (void)scratch;
    matmul(out, ldo, w, x, ldx, n, row_begin, row_end, cols, ARM_F16);
}

void ARM(matmul_bf16)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    (void)scratch;
    matmul(out, ldo, w, x, ldx, n, row_begin, row_end, cols, ARM_BF16);
}
