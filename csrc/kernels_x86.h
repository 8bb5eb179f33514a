/*
 * kernels_x86.h: what the x86-64 kernels share (internal to the library).
 *
 * The x86 sources (kernels_x86*.c) are compiled once per level, each time with that level's -m flags
 * (bindings/build_kernel.py): a whole file may use the level's instructions, helpers are plain inline
 * functions, and the few places where the levels differ test the compiler's feature macros
 * (__AVX512VNNI__, __AVX512F__). The build names the level in LLM_X86_LEVEL (avx2, avx512vnni), and X86(name)
 * gives each exported function its level's suffix (matvec_q8_0_avx2), so that the builds link side by side.
 * cpu.c, compiled for the baseline, picks a level's table only on a CPU that has its instructions.
 */
#ifndef LLMRUN_KERNELS_X86_H
#define LLMRUN_KERNELS_X86_H

#if !defined(__x86_64__) || !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__) || !defined(LLM_X86_LEVEL)
#error "x86 kernel sources are compiled per level by bindings/build_kernel.py (-mavx2 -mfma -mf16c at least)"
#endif

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

#define X86_JOIN(name, level) name##_##level
#define X86_NAME(name, level) X86_JOIN(name, level)
#define X86(name) X86_NAME(name, LLM_X86_LEVEL)

#define INLINE static inline __attribute__((always_inline))

/* kernels_x86_float.c */
void X86(matvec_f32)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end, int64_t cols);
void X86(matvec_f16)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end, int64_t cols);
void X86(matvec_bf16)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end, int64_t cols);
void X86(matmul_f32)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                     int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void X86(matmul_f16)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                     int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void X86(matmul_bf16)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void X86(scores)(float *out, const float *q, const float *rows, int64_t stride, int64_t n_rows, int64_t dim,
                 float scale);
void X86(weighted_sum)(float *out, const float *weights, const float *rows, int64_t stride, int64_t n_rows,
                       int64_t dim);
void X86(softmax)(float *x, int64_t n);
void X86(swiglu)(float *gate, const float *up, int64_t n);

/* kernels_x86_int8.c */
void X86(quantize_q8_act)(void *out, const float *x, int64_t cols);
void X86(matvec_q8_0)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void X86(matvec_q4_0)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void X86(matmul_q8_0)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void X86(matmul_q4_0)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
size_t X86(matmul_scratch_bytes)(int64_t cols);

/* ---------------------------------------------------------------------------------------------------- */
/* helpers */

/* The sum of the eight float lanes. */
INLINE float hsum_f32x8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The sum of the eight int32 lanes. */
INLINE int32_t hsum_i32x8(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* acc + the products of unsigned bytes u and signed bytes s, summed in groups of four into int32 lanes.
   Without VNNI the pair sums pass through 16 bits (maddubs), which saturate unless u <= 127 or the pairs are
   small: callers keep u <= 15, or move a signed operand's signs onto the other (dot_i8). */
INLINE __m256i dot4_u8i8(__m256i acc, __m256i u, __m256i s) {
#ifdef __AVX512VNNI__
    return _mm256_dpbusd_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

/* Eight int32 sums of products of 32 signed bytes, a[i] * b[i] in groups of four: a's signs move onto b
   (|a| * sign(a) * b = a * b), so that one operand is unsigned (|a| <= 128: the pairs fit 16 bits). */
INLINE __m256i dot_i8(__m256i a, __m256i b) {
    return dot4_u8i8(_mm256_setzero_si256(), _mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
}

/* The 32 values of a Q4_0 block's 16 bytes as unsigned bytes 0..15, in order: the low nibbles (values
   0-15), then the high ones. */
INLINE __m256i unpack_q4_0(const uint8_t *qs) {
    __m128i packed = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0x0f));
}

/* Lane k = the sum of the eight lanes of s[k]: eight blocks' dot products in one vector, so that their
   scales are applied with one multiply instead of eight broadcasts. */
INLINE __m256i sum8x8(const __m256i s[8]) {
    __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
    __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(s[4], s[5]), _mm256_hadd_epi32(s[6], s[7]));
    /* a = [s0..s3 low halves | s0..s3 high halves], b likewise for s4..s7 */
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* The fp16 scales of eight consecutive blocks of `block_bytes` bytes each (the scale first), as f32. */
INLINE __m256 scales8(const void *first_block, size_t block_bytes) {
    const uint8_t *p = first_block;
    uint16_t d[8];
    for (int k = 0; k < 8; k++) memcpy(&d[k], p + k * block_bytes, sizeof d[k]);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)d));
}

/* kernels_x86_kquants_low.c */
void X86(matvec_q2_K)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void X86(matvec_q3_K)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void X86(matvec_iq4_xs)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void X86(matmul_q2_K)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void X86(matmul_q3_K)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void X86(matmul_iq4_xs)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                        int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void X86(quantize_q8k_act_low)(void *out, const float *x, int64_t cols); /* temporary until the kq456 branch merges */

#endif /* LLMRUN_KERNELS_X86_H */
