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

/* v stays in a register: the compiler would otherwise fold its load into each multiply-add that uses it, one
   load per use, and a tile's loads are its bottleneck (and it would make a memset of an array of accumulators). */
#define IN_REGISTER(v) __asm__("" : "+v"(v))

/* The float weight types as the float kernels read them (kernels_x86_float.c, kernels_x86_float_r8.c). */
typedef enum { KIND_F32, KIND_F16, KIND_BF16 } float_kind;

INLINE size_t element_bytes(float_kind kind) { return kind == KIND_F32 ? sizeof(float) : sizeof(uint16_t); }

/* Eight weights from w + k as f32 (F16C's conversion; bfloat16 by moving its bits up 16 places). */
INLINE __m256 load8(const void *w, int64_t k, float_kind kind) {
    if (kind == KIND_F32) return _mm256_loadu_ps((const float *)w + k);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + k));
    if (kind == KIND_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

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
void X86(swiglu)(float *gate, const float *up, int64_t n);
void X86(geglu)(float *gate, const float *up, int64_t n);
void X86(softcap)(float *x, int64_t n, float cap);

/* kernels_x86_float_r8.c: the repacked float types */
void X86(matvec_f32_r8)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end, int64_t cols);
void X86(matvec_f16_r8)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end, int64_t cols);
void X86(matvec_bf16_r8)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end,
                         int64_t cols);
void X86(matmul_f32_r8)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                        int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void X86(matmul_f16_r8)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                        int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void X86(matmul_bf16_r8)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                         int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
size_t X86(matmul_scratch_bytes_float_r8)(void);

/* kernels_x86_bf16.c (the avx512bf16 level) */
void X86(matvec_bf16_native)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end,
                             int64_t cols);
void X86(matmul_bf16_native)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                             int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
size_t X86(matmul_scratch_bytes_bf16)(int64_t cols);

/* kernels_x86_attention.c */
void X86(attention)(const llm_attention_tile *tile, float *scratch);

/* kernels_x86_int8.c */
void X86(quantize_q8_act)(void *out, const float *x, int64_t cols);
void X86(matvec_q8_0)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void X86(matvec_q4_0)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void X86(matmul_q8_0)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void X86(matmul_q4_0)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void X86(matvec_q4_1)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void X86(matvec_q5_0)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void X86(matvec_q5_1)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void X86(matvec_iq4_nl)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void X86(matmul_q4_1)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void X86(matmul_q5_0)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void X86(matmul_q5_1)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void X86(matmul_iq4_nl)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                        int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
size_t X86(matmul_scratch_bytes)(int64_t cols);

/* kernels_x86_kquants.c */
void X86(quantize_q8k_act)(void *out, const float *x, int64_t cols);
void X86(matvec_q4_K)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void X86(matvec_q5_K)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void X86(matvec_q6_K)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols);
void X86(matmul_q4_K)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void X86(matmul_q5_K)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
void X86(matmul_q6_K)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);

/* ---------------------------------------------------------------------------------------------------- */
/* helpers */

/* The sum of the eight float lanes. */
INLINE float hsum_f32x8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* e^x for eight floats, exp8, and for sixteen, exp16 (AVX-512) (Cephes' expf: x = n ln2 + r, e^r by a degree-6
   polynomial, 2^n in the exponent bits); relative error about 2e-7. The clamps keep n within [-126, 127], so 2^n is
   a normal float (e^x saturates at about 1.7e38 and 1.2e-38); NaN passes through. One definition for both widths
   (W bits, ROUND the width's rounding to an integer), so that every lane of exp16 computes what exp8 does. */
#define DEFINE_EXP(name, W, ROUND)                                                                                   \
    INLINE __m##W name(__m##W x) {                                                                                   \
        x = _mm##W##_min_ps(_mm##W##_set1_ps(88.0f), _mm##W##_max_ps(_mm##W##_set1_ps(-87.3365478515625f), x));      \
        __m##W n = ROUND(_mm##W##_mul_ps(x, _mm##W##_set1_ps(1.44269504088896341f)),                                 \
                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);                                             \
        __m##W r = _mm##W##_fnmadd_ps(n, _mm##W##_set1_ps(0.693359375f), x);                                         \
        r = _mm##W##_fnmadd_ps(n, _mm##W##_set1_ps(-2.12194440e-4f), r);                                             \
        __m##W p = _mm##W##_set1_ps(1.9875691500e-4f);                                                               \
        p = _mm##W##_fmadd_ps(p, r, _mm##W##_set1_ps(1.3981999507e-3f));                                             \
        p = _mm##W##_fmadd_ps(p, r, _mm##W##_set1_ps(8.3334519073e-3f));                                             \
        p = _mm##W##_fmadd_ps(p, r, _mm##W##_set1_ps(4.1665795894e-2f));                                             \
        p = _mm##W##_fmadd_ps(p, r, _mm##W##_set1_ps(1.6666665459e-1f));                                             \
        p = _mm##W##_fmadd_ps(p, r, _mm##W##_set1_ps(5.0000001201e-1f));                                             \
        __m##W y = _mm##W##_add_ps(_mm##W##_fmadd_ps(_mm##W##_mul_ps(p, r), r, r), _mm##W##_set1_ps(1.0f));          \
        __m##W##i e = _mm##W##_cvtps_epi32(n);                                                                       \
        e = _mm##W##_slli_epi32(_mm##W##_add_epi32(e, _mm##W##_set1_epi32(127)), 23);                                \
        return _mm##W##_mul_ps(y, _mm##W##_castsi##W##_ps(e));                                                       \
    }
DEFINE_EXP(exp8, 256, _mm256_round_ps)

#ifdef __AVX512F__
DEFINE_EXP(exp16, 512, _mm512_roundscale_ps)

/* For four accumulators, the tree's first two levels: [a | b | c | d] in 128-bit blocks, each block the four
   sums lane l + (l + 8) + (l + 4) + (l + 12) of its accumulator, as hsum16 adds them. */
INLINE __m512 fold4(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xee));
    __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xee));
    return _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xdd));
}

/* Lane s = the tree's sum of a[s], for 16 accumulators: fold4 of a[l], a[l + 4], a[l + 8], a[l + 12] puts a[4b + l]'s
   partial sums in block b of p[l]; the last two levels pair lanes (0, 2), (1, 3) of a block, then (0, 1). */
INLINE __m512 reduce16(const __m512 a[16]) {
    __m512 p[4];
    for (int l = 0; l < 4; l++) p[l] = fold4(a[l], a[l + 4], a[l + 8], a[l + 12]);
    __m512 u = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(p[0]), _mm512_castps_pd(p[1]))),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(p[0]), _mm512_castps_pd(p[1]))));
    __m512 v = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(p[2]), _mm512_castps_pd(p[3]))),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(p[2]), _mm512_castps_pd(p[3]))));
    return _mm512_add_ps(_mm512_shuffle_ps(u, v, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_ps(u, v, _MM_SHUFFLE(3, 1, 3, 1)));
}
#endif

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
   0-15), then the high ones. The bytes are loaded into both halves and the upper half shifted down by four:
   no lane insert, which the decode loops feel (shuffles are their scarcest resource). */
INLINE __m256i unpack_q4_0(const uint8_t *qs) {
    __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    return _mm256_and_si256(_mm256_srlv_epi64(both, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0f));
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

/* The fp16 scales d and mins m of eight consecutive blocks of `block_bytes` bytes each that start with d, m
   (Q4_1, Q5_1), as f32: one 32-bit load per block, the halves sorted apart by a byte shuffle. */
INLINE void scales_mins8(const void *first_block, size_t block_bytes, __m256 *d, __m256 *m) {
    const uint8_t *p = first_block;
    uint32_t dm[8];
    for (int k = 0; k < 8; k++) memcpy(&dm[k], p + k * block_bytes, sizeof dm[k]);
    __m256i v = _mm256_loadu_si256((const __m256i *)dm);
    /* per 128-bit half: its four d (bytes 0-1 of each 32 bits) to the low 8 bytes, its four m to the high 8 */
    v = _mm256_shuffle_epi8(v, _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                                0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15));
    v = _mm256_permute4x64_epi64(v, 0xd8); /* 64-bit quarters 0, 2, 1, 3: the eight d, then the eight m */
    *d = _mm256_cvtph_ps(_mm256_castsi256_si128(v));
    *m = _mm256_cvtph_ps(_mm256_extracti128_si256(v, 1));
}

/* Transposes eight vectors of eight 32-bit lanes: v[i] lane j <-> v[j] lane i (the eight-row repacking of
   the batched products: eight rows' vectors in, per four values one vector of all eight rows out). */
INLINE void transpose8x8_i32(__m256i v[8]) {
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

/* acc + the products of unsigned bytes u (at most 63) and signed bytes s, pairs summed into 16 bits, then
   each pair sum times the int16 lane of `scale` and summed in twos into int32 lanes: the dot product of a
   K-quant sub-block with its integer scale applied on the way. */
INLINE __m256i dot_scaled_u8i8(__m256i acc, __m256i u, __m256i s, __m256i scale) {
#ifdef __AVX512VNNI__
    return _mm256_dpwssd_epi32(acc, _mm256_maddubs_epi16(u, s), scale);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale));
#endif
}

/* kernels_x86_repacked.c: the repacked block types, one kernel for every n (matvec: that with one token) */
#define X86_R8_DECLARE(name)                                                                                     \
    void X86(matvec_##name##_r8)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,      \
                                 int64_t cols);                                                                  \
    void X86(matmul_##name##_r8)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,       \
                                 int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);
X86_R8_DECLARE(q8_0)
X86_R8_DECLARE(q4_0)
X86_R8_DECLARE(q4_1)
X86_R8_DECLARE(q5_0)
X86_R8_DECLARE(q5_1)
X86_R8_DECLARE(iq4_nl)
#undef X86_R8_DECLARE

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

#endif /* LLMRUN_KERNELS_X86_H */
