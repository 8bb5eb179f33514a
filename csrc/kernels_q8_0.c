/*
 * kernels_q8_0.c: Q8_0 weights (GGUF blocks of 32 int8 values and an fp16 scale), and the 8-bit
 * quantization of activations (q8_act) that the Q8_0 and Q4_0 products use.
 *
 * A product quantizes its input vector once, then every block pair is a 32-term integer dot product
 * scaled by d_w * d_x: integer multiply-adds do four times the work of f32 FMAs per instruction, and the
 * weights are read as they are stored. The SIMD versions take eight blocks at a time, so that the
 * scales cost one vector multiply per eight blocks rather than a broadcast each.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "simd_x86.h"

/* ---------------------------------------------------------------------------------------------------- */
/* portable reference */

/* Per block: d = max|x| / 127, q = round(x / d) (to nearest even, as the AVX2 version rounds). */
static void quantize_q8_act_scalar(void *out, const float *x, int64_t cols) {
    q8_act y = q8_act_view(out, cols);
    for (int64_t b = 0; b < cols / QK; b++, x += QK) {
        int8_t *q = y.qs + b * QK;
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        if (!isfinite(amax)) { /* inf or NaN in x: let it reach the logits (the sampler rejects them) */
            memset(q, 0, QK);
            y.d[b] = y.dsum[b] = NAN;
            continue;
        }
        float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        int32_t sum = 0;
        for (int j = 0; j < QK; j++) {
            q[j] = (int8_t)nearbyintf(x[j] * id);
            sum += q[j];
        }
        y.d[b] = d;
        y.dsum[b] = d * (float)sum;
    }
}

static void matvec_q8_0_scalar(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
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

static void get_row_q8_0(float *out, const void *w, int64_t row, int64_t cols) {
    const block_q8_0 *src = (const block_q8_0 *)w + row * (cols / QK);
    for (int64_t b = 0; b < cols / QK; b++) {
        float d = llm_fp16_to_fp32(src[b].d);
        for (int j = 0; j < QK; j++) out[b * QK + j] = d * src[b].qs[j];
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* x86-64 AVX2, and AVX-512 VNNI */

#ifdef LLM_HAVE_X86
AVX2 static void quantize_q8_act_avx2(void *out, const float *x, int64_t cols) {
    q8_act y = q8_act_view(out, cols);
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < cols / QK; b++, x += QK) {
        __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
        __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
        __m256 amax = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign_bit, v0), _mm256_andnot_ps(sign_bit, v1)),
                                    _mm256_max_ps(_mm256_andnot_ps(sign_bit, v2), _mm256_andnot_ps(sign_bit, v3)));
        __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(amax, 1), _mm256_castps256_ps128(amax));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float max = _mm_cvtss_f32(m4);
        __m256 id = _mm256_set1_ps(max > 0.0f ? 127.0f / max : 0.0f);
        /* scale, round to nearest even, narrow 32 -> 16 -> 8 bits; the packs interleave 128-bit lanes,
           which the final permutation undoes */
        __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, id), _MM_FROUND_TO_NEAREST_INT));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, id), _MM_FROUND_TO_NEAREST_INT));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, id), _MM_FROUND_TO_NEAREST_INT));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, id), _MM_FROUND_TO_NEAREST_INT));
        __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(y.qs + b * QK), packed);
        y.d[b] = max / 127.0f;
        y.dsum[b] = y.d[b] * (float)hsum_i32_avx2(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
    }
}

/* One block's products as eight int32 lanes; the signs of w move onto x as in dot_i8_avx2. */
AVX2 static inline __m256i block_dot_avx2(const block_q8_0 *w, const int8_t *x) {
    return dot_i8_avx2(_mm256_loadu_si256((const __m256i *)w->qs), _mm256_loadu_si256((const __m256i *)x));
}

VNNI static inline __m256i block_dot_vnni(const block_q8_0 *w, const int8_t *x) {
    __m256i wq = _mm256_loadu_si256((const __m256i *)w->qs), xv = _mm256_loadu_si256((const __m256i *)x);
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xv, wq));
}

AVX2 static void matvec_q8_0_avx2(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                                  int64_t cols) {
    MATVEC_BLOCKS8(block_q8_0, block_dot_avx2, 0)
}

VNNI static void matvec_q8_0_vnni(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                                  int64_t cols) {
    MATVEC_BLOCKS8(block_q8_0, block_dot_vnni, 0)
}
#endif

/* ---------------------------------------------------------------------------------------------------- */
/* dispatch */

int llm_q8_0_traits(int32_t isa, llm_type_traits *out) {
    *out = (llm_type_traits){"q8_0", QK, sizeof(block_q8_0), matvec_q8_0_scalar, get_row_q8_0,
                             quantize_q8_act_scalar, NULL};
#ifdef LLM_HAVE_X86
    if (isa >= LLM_ISA_AVX2) {
        out->matvec = isa >= LLM_ISA_AVX512VNNI ? matvec_q8_0_vnni : matvec_q8_0_avx2;
        out->quantize_x = quantize_q8_act_avx2;
    }
#endif
    (void)isa;
    return 0;
}
