/*
 * kernels_q4_0.c: Q4_0 weights (GGUF blocks of 32 four-bit values and an fp16 scale) against 8-bit
 * quantized activations (q8_act, kernels_q8_0.c).
 *
 * The SIMD versions multiply the nibbles as they are, unsigned 0..15, by x's signed bytes, and take the
 * offset off once per block: sum (q - 8) x = sum q x - 8 sum x, where the activations carry d_x * sum q_x.
 * Like the Q8_0 products they take eight blocks at a time, so that the scales cost one vector multiply
 * per eight blocks.
 */
#include "kernels.h"
#include "simd_x86.h"

/* ---------------------------------------------------------------------------------------------------- */
/* portable reference */

static void matvec_q4_0_scalar(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
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
/* x86-64 AVX2, and AVX-512 VNNI */

#ifdef LLM_HAVE_X86
/* sum q x of one block as eight int32 lanes. maddubs takes unsigned (q) times signed (x) bytes; with
   q <= 15 its 16-bit pair sums cannot saturate. VNNI does both steps in one instruction. */
AVX2 static inline __m256i block_dot_avx2(const block_q4_0 *w, const int8_t *x) {
    __m256i pairs = _mm256_maddubs_epi16(unpack_q4_0(w->qs), _mm256_loadu_si256((const __m256i *)x));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

VNNI static inline __m256i block_dot_vnni(const block_q4_0 *w, const int8_t *x) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), unpack_q4_0(w->qs), _mm256_loadu_si256((const __m256i *)x));
}

AVX2 static void matvec_q4_0_avx2(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                                  int64_t cols) {
    MATVEC_BLOCKS8(block_q4_0, block_dot_avx2, 8)
}

VNNI static void matvec_q4_0_vnni(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                                  int64_t cols) {
    MATVEC_BLOCKS8(block_q4_0, block_dot_vnni, 8)
}
#endif

/* ---------------------------------------------------------------------------------------------------- */
/* dispatch */

int llm_q4_0_traits(int32_t isa, llm_type_traits *out) {
    llm_type_traits q8;
    llm_q8_0_traits(isa, &q8); /* the activations are quantized the same way */
    *out = (llm_type_traits){"q4_0", QK, sizeof(block_q4_0), matvec_q4_0_scalar, get_row_q4_0, q8.quantize_x, NULL};
#ifdef LLM_HAVE_X86
    if (isa >= LLM_ISA_AVX2) out->matvec = isa >= LLM_ISA_AVX512VNNI ? matvec_q4_0_vnni : matvec_q4_0_avx2;
#endif
    return 0;
}
