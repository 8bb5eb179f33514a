/*
 * kernels_f16.c: matrix-vector products and embedding lookup for 16-bit float weights, IEEE half (F16)
 * and bfloat16 (BF16), against an f32 vector. Each weight is widened to f32 and multiplied in f32.
 * The two types differ only in how a weight is widened, so each function takes `bf16` as a flag that
 * the compiler folds away in the small wrappers at the end.
 */
#include "kernels.h"
#include "simd_x86.h"

static inline float to_f32(uint16_t h, int bf16) { return bf16 ? llm_bf16_to_fp32(h) : llm_fp16_to_fp32(h); }

/* ---------------------------------------------------------------------------------------------------- */
/* portable reference */

static inline void matvec_16_scalar(float *out, const void *w, const float *x, int64_t row_begin,
                                    int64_t row_end, int64_t cols, int bf16) {
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint16_t *row = (const uint16_t *)w + r * cols;
        float sum = 0.0f;
        for (int64_t i = 0; i < cols; i++) sum += to_f32(row[i], bf16) * x[i];
        out[r - row_begin] = sum;
    }
}

static inline void get_row_16(float *out, const void *w, int64_t row, int64_t cols, int bf16) {
    const uint16_t *src = (const uint16_t *)w + row * cols;
    for (int64_t i = 0; i < cols; i++) out[i] = to_f32(src[i], bf16);
}

/* ---------------------------------------------------------------------------------------------------- */
/* x86-64 AVX2 + FMA + F16C */

#ifdef LLM_HAVE_X86
/* Eight weights widened to f32: half precision with F16C, bfloat16 by moving its bits up 16 places. */
AVX2 static inline __m256 load8(const uint16_t *p, int bf16) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (!bf16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AVX2 static inline void matvec_16_avx2(float *out, const void *w, const float *x, int64_t row_begin,
                                       int64_t row_end, int64_t cols, int bf16) {
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint16_t *row = (const uint16_t *)w + r * cols;
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 32 <= cols; i += 32) {
            acc0 = _mm256_fmadd_ps(load8(row + i, bf16), _mm256_loadu_ps(x + i), acc0);
            acc1 = _mm256_fmadd_ps(load8(row + i + 8, bf16), _mm256_loadu_ps(x + i + 8), acc1);
            acc2 = _mm256_fmadd_ps(load8(row + i + 16, bf16), _mm256_loadu_ps(x + i + 16), acc2);
            acc3 = _mm256_fmadd_ps(load8(row + i + 24, bf16), _mm256_loadu_ps(x + i + 24), acc3);
        }
        for (; i + 8 <= cols; i += 8) acc0 = _mm256_fmadd_ps(load8(row + i, bf16), _mm256_loadu_ps(x + i), acc0);
        float sum = hsum_avx2(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
        for (; i < cols; i++) sum += to_f32(row[i], bf16) * x[i];
        out[r - row_begin] = sum;
    }
}

AVX2 static void matvec_f16_avx2(float *out, const void *w, const void *x, int64_t b, int64_t e, int64_t n) {
    matvec_16_avx2(out, w, x, b, e, n, 0);
}

AVX2 static void matvec_bf16_avx2(float *out, const void *w, const void *x, int64_t b, int64_t e, int64_t n) {
    matvec_16_avx2(out, w, x, b, e, n, 1);
}
#endif

/* ---------------------------------------------------------------------------------------------------- */
/* dispatch */

static void matvec_f16_scalar(float *out, const void *w, const void *x, int64_t b, int64_t e, int64_t n) {
    matvec_16_scalar(out, w, x, b, e, n, 0);
}

static void matvec_bf16_scalar(float *out, const void *w, const void *x, int64_t b, int64_t e, int64_t n) {
    matvec_16_scalar(out, w, x, b, e, n, 1);
}

static void get_row_f16(float *out, const void *w, int64_t row, int64_t cols) { get_row_16(out, w, row, cols, 0); }

static void get_row_bf16(float *out, const void *w, int64_t row, int64_t cols) { get_row_16(out, w, row, cols, 1); }

int llm_f16_traits(int32_t isa, llm_type_traits *out) {
    *out = (llm_type_traits){"f16", 1, sizeof(uint16_t), matvec_f16_scalar, get_row_f16, NULL, NULL};
#ifdef LLM_HAVE_X86
    if (isa >= LLM_ISA_AVX2) out->matvec = matvec_f16_avx2;
#endif
    (void)isa;
    return 0;
}

int llm_bf16_traits(int32_t isa, llm_type_traits *out) {
    *out = (llm_type_traits){"bf16", 1, sizeof(uint16_t), matvec_bf16_scalar, get_row_bf16, NULL, NULL};
#ifdef LLM_HAVE_X86
    if (isa >= LLM_ISA_AVX2) out->matvec = matvec_bf16_avx2;
#endif
    (void)isa;
    return 0;
}
