/*
 * kernels_arm.h: what the arm64 (AArch64) kernels share (internal to the library).
 *
 * As on x86 (kernels_x86.h), the ARM sources (kernels_arm*.c) are compiled once per level, each time with that
 * level's -march flags (bindings/build_kernel.py): neon (ARMv8.0 Advanced SIMD, every arm64 CPU), dotprod
 * (+ sdot: Cortex-A76, Neoverse N1, Apple M1) and i8mm (+ smmla: Neoverse V1/N2, Apple M2 and later). The
 * places where the levels differ test the compiler's feature macros (__ARM_FEATURE_DOTPROD,
 * __ARM_FEATURE_MATMUL_INT8). The build names the level in LLM_ARM_LEVEL, and ARM(name) gives each exported
 * function its level's suffix (matvec_q8_0_dotprod), so that the builds link side by side. cpu.c, compiled
 * for the baseline, picks a level's table only where the OS reports the level's instructions.
 *
 * The float kernels accumulate in a different order from the scalar reference (four vectors of partial sums,
 * fused multiply-adds), so they agree with it to rounding. The 8-bit kernels compute each block's integer dot
 * product exactly and then accumulate the scaled block sums of a row in the reference's order, with separate
 * multiplies and adds (the ARM levels are built with -ffp-contract=off): their results are the reference's,
 * bit for bit, at every level and batch size.
 */
#ifndef LLMRUN_KERNELS_ARM_H
#define LLMRUN_KERNELS_ARM_H

#if !defined(__aarch64__) || !defined(__ARM_NEON) || !defined(LLM_ARM_LEVEL)
#error "arm64 kernel sources are compiled per level by bindings/build_kernel.py (aarch64, -DLLM_ARM_LEVEL=...)"
#endif

#include <arm_neon.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

#define ARM_JOIN(name, level) name##_##level
#define ARM_NAME(name, level) ARM_JOIN(name, level)
#define ARM(name) ARM_NAME(name, LLM_ARM_LEVEL)

#define INLINE static inline __attribute__((always_inline))

/* kernels_arm_float.c */
void ARM(matvec_f32)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end, int64_t cols);
void ARM(matvec_f16)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end, int64_t cols);
void ARM(matvec_bf16)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end, int64_t cols);
void ARM(matmul_f32)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                     int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void ARM(matmul_f16)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                     int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void ARM(matmul_bf16)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);

/* kernels_arm_int8.c */
void ARM(quantize_q8_act)(void *out, const float *x, int64_t cols);
void ARM(quantize_q8k_act)(void *out, const float *x, int64_t cols);
void ARM(matvec_q8_0)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void ARM(matvec_q4_0)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void ARM(matmul_q8_0)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void ARM(matmul_q4_0)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void ARM(matvec_q4_1)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void ARM(matmul_q4_1)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void ARM(matvec_q5_0)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void ARM(matmul_q5_0)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void ARM(matvec_q5_1)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void ARM(matmul_q5_1)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void ARM(matvec_iq4_nl)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void ARM(matmul_iq4_nl)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);

/* kernels_arm_kquants.c */
void ARM(matvec_q2_K)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void ARM(matvec_q4_K)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void ARM(matvec_q5_K)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void ARM(matvec_q6_K)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void ARM(matvec_iq4_xs)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                        int64_t cols);

/* ---------------------------------------------------------------------------------------------------- */
/* helpers */

/* acc + the products of the 16 signed bytes a and b, summed in groups of four into the int32 lanes. Exact at
   every level: sdot where the CPU has it, else widening multiplies to 16 bits (|a b| <= 2^14 fits) and
   pairwise widening adds. Which products land in which lane differs between the two; callers only ever use
   the sum of the four lanes. */
INLINE int32x4_t dot16_i8(int32x4_t acc, int8x16_t a, int8x16_t b) {
#ifdef __ARM_FEATURE_DOTPROD
    return vdotq_s32(acc, a, b);
#else
    int16x8_t lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    int16x8_t hi = vmull_high_s8(a, b);
    return vpadalq_s16(vpadalq_s16(acc, lo), hi);
#endif
}

/* The four fp16 scales at p[0], p[stride], p[2 stride], p[3 stride] (bytes) as f32, exactly. */
INLINE float32x4_t scales4(const uint8_t *p, size_t stride) {
    uint16_t d[4];
    for (int k = 0; k < 4; k++) memcpy(&d[k], p + k * stride, sizeof d[k]);
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(d)));
}

/* Lane k = the sum of the four lanes of s[k]. */
INLINE int32x4_t sum4x4(int32x4_t s0, int32x4_t s1, int32x4_t s2, int32x4_t s3) {
    return vpaddq_s32(vpaddq_s32(s0, s1), vpaddq_s32(s2, s3));
}

#endif /* LLMRUN_KERNELS_ARM_H */
