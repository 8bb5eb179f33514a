/*
 * kernels_q4_0.c: Q4_0 weights (GGUF blocks of 32 four-bit values and an fp16 scale) against 8-bit
 * quantized activations (block_q8_act, kernels_q8_0.c). A weight block unpacks to 32 signed bytes q - 8, and from
 * there the product is the same integer dot product as Q8_0's.
 */
#include "kernels.h"
#include "simd_x86.h"

/* ---------------------------------------------------------------------------------------------------- */
/* portable reference */

static void matvec_q4_0_scalar(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                               int64_t cols) {
    const block_q8_act *x = xq;
    int64_t nb = cols / QK;
    for (int64_t r = row_begin; r < row_end; r++) {
        const block_q4_0 *row = (const block_q4_0 *)w + r * nb;
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            int32_t sumi = 0;
            for (int j = 0; j < QK / 2; j++) {
                sumi += ((row[b].qs[j] & 0x0f) - 8) * x[b].qs[j];
                sumi += ((row[b].qs[j] >> 4) - 8) * x[b].qs[j + QK / 2];
            }
            sum += (float)sumi * (llm_fp16_to_fp32(row[b].d) * x[b].d);
        }
        out[r - row_begin] = sum;
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
/* x86-64 AVX2 */

#ifdef LLM_HAVE_X86
/* The 32 values of a block as signed bytes q - 8, in order: low nibbles (values 0-15), then high ones. */
AVX2 static inline __m256i unpack_q4_0(const uint8_t *qs) {
    __m128i packed = _mm_loadu_si128((const __m128i *)qs);
    __m256i nibbles = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
    return _mm256_sub_epi8(_mm256_and_si256(nibbles, _mm256_set1_epi8(0x0f)), _mm256_set1_epi8(8));
}

AVX2 static void matvec_q4_0_avx2(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                                  int64_t cols) {
    const block_q8_act *x = xq;
    int64_t nb = cols / QK;
    for (int64_t r = row_begin; r < row_end; r++) {
        const block_q4_0 *row = (const block_q4_0 *)w + r * nb;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            __m256i sums = dot_i8_avx2(unpack_q4_0(row[b].qs), _mm256_loadu_si256((const __m256i *)x[b].qs));
            __m256 scale = _mm256_set1_ps(_cvtsh_ss(row[b].d) * x[b].d);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc);
        }
        out[r - row_begin] = hsum_avx2(acc);
    }
}

/* With VNNI the nibbles go in as they are, unsigned 0..15: one instruction multiplies them by x's signed
   bytes, and the offset comes off at the end: sum (q - 8) x = sum q x - 8 sum x, where the activation
   block carries d_x * sum q_x. */
VNNI static void matvec_q4_0_vnni(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                                  int64_t cols) {
    const block_q8_act *x = xq;
    int64_t nb = cols / QK;
    const __m256i low_nibbles = _mm256_set1_epi8(0x0f);
    for (int64_t r = row_begin; r < row_end; r++) {
        const block_q4_0 *row = (const block_q4_0 *)w + r * nb;
        __m256 acc = _mm256_setzero_ps();
        float offset = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            __m128i packed = _mm_loadu_si128((const __m128i *)row[b].qs);
            __m256i q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), low_nibbles);
            __m256i sums = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, _mm256_loadu_si256((const __m256i *)x[b].qs));
            float dw = _cvtsh_ss(row[b].d);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(dw * x[b].d), acc);
            offset += dw * x[b].dsum;
        }
        out[r - row_begin] = hsum_avx2(acc) - 8.0f * offset;
    }
}
#endif

/* ---------------------------------------------------------------------------------------------------- */
/* dispatch */

int llm_q4_0_traits(int32_t isa, llm_type_traits *out) {
    llm_type_traits q8;
    llm_q8_0_traits(isa, &q8); /* the activations are quantized the same way */
    *out = (llm_type_traits){"q4_0", QK, sizeof(block_q4_0), matvec_q4_0_scalar, get_row_q4_0, q8.quantize_x};
#ifdef LLM_HAVE_X86
    if (isa >= LLM_ISA_AVX2) out->matvec = isa >= LLM_ISA_AVX512VNNI ? matvec_q4_0_vnni : matvec_q4_0_avx2;
#endif
    return 0;
}
