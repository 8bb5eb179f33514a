/*
 * simd_x86.h: what the x86-64 AVX2 kernels share. Each function carries the target attribute itself,
 * so the library is still compiled for the baseline and runs on CPUs without AVX2 (cpu.c decides).
 */
#ifndef LLMRUN_SIMD_X86_H
#define LLMRUN_SIMD_X86_H

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LLM_HAVE_X86 1
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

/* The sum of the eight lanes. */
AVX2 static inline float hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Eight int32 sums of products of 32 signed bytes: a[i] * b[i] summed in groups of four. maddubs wants
   one unsigned operand, so a's signs move onto b (|a| * sign(a) * b = a * b). */
AVX2 static inline __m256i dot_i8_avx2(__m256i a, __m256i b) {
    __m256i prod16 = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
    return _mm256_madd_epi16(prod16, _mm256_set1_epi16(1));
}
/* The 32 values of a Q4_0 block's 16 bytes as unsigned bytes 0..15, in order: the low nibbles (values
   0-15), then the high ones. */
AVX2 static inline __m256i unpack_q4_0(const uint8_t *qs) {
    __m128i packed = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0x0f));
}

/* The sum of the eight int32 lanes. */
AVX2 static inline int32_t hsum_i32_avx2(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* Lane k = the sum of the eight lanes of s[k]: eight blocks' dot products in one vector, so that their
   scales are applied with one multiply instead of eight broadcasts. */
AVX2 static inline __m256i sum8x8_avx2(const __m256i s[8]) {
    __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
    __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(s[4], s[5]), _mm256_hadd_epi32(s[6], s[7]));
    /* a = [s0..s3 low halves | s0..s3 high halves], b likewise for s4..s7 */
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* The fp16 scales of eight consecutive blocks of `block_bytes` bytes each (the scale first), as f32. */
AVX2 static inline __m256 scales8_avx2(const void *first_block, size_t block_bytes) {
    const uint8_t *p = first_block;
    uint16_t d[8];
    for (int k = 0; k < 8; k++) memcpy(&d[k], p + k * block_bytes, sizeof d[k]);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)d));
}

/* The body of the Q8_0 and Q4_0 products: out[r] = sum over blocks b of
   d_w[b] * (d_x[b] * sum(q_w q_x) - OFFSET * d_x[b] * sum(q_x)), eight blocks at a time so that their scales
   cost one vector multiply. BLOCK_DOT(block, x bytes) gives sum(q_w q_x) of a block as eight int32 lanes;
   OFFSET is what the stored weights exceed their values by (Q4_0 stores q + 8 as an unsigned nibble;
   with OFFSET 0 the compiler drops those terms). A macro, because a function compiled for AVX2 cannot
   inline one compiled for VNNI, and the two versions differ only in BLOCK_DOT. Needs kernels.h. */
#define MATVEC_BLOCKS8(BLOCK_TYPE, BLOCK_DOT, OFFSET)                                                      \
    q8_act x = q8_act_view(xq, cols);                                                                       \
    int64_t nb = cols / QK;                                                                                 \
    for (int64_t r = row_begin; r < row_end; r++) {                                                         \
        const BLOCK_TYPE *row = (const BLOCK_TYPE *)w + r * nb;                                             \
        __m256 acc = _mm256_setzero_ps(), offset = _mm256_setzero_ps();                                     \
        int64_t b = 0;                                                                                      \
        for (; b + 8 <= nb; b += 8) {                                                                       \
            __m256i s[8];                                                                                   \
            for (int k = 0; k < 8; k++) s[k] = BLOCK_DOT(row + b + k, x.qs + (b + k) * QK);                 \
            __m256 dw = scales8_avx2(row + b, sizeof *row);                                                 \
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8x8_avx2(s)), _mm256_mul_ps(dw, _mm256_loadu_ps(x.d + b)), \
                                  acc);                                                                     \
            if (OFFSET) offset = _mm256_fmadd_ps(dw, _mm256_loadu_ps(x.dsum + b), offset);                  \
        }                                                                                                   \
        float sum = hsum_avx2(acc) - (OFFSET ? (float)(OFFSET) * hsum_avx2(offset) : 0.0f);                 \
        for (; b < nb; b++) { /* the last nb % 8 blocks, one at a time */                                   \
            float dot = x.d[b] * (float)hsum_i32_avx2(BLOCK_DOT(row + b, x.qs + b * QK));                   \
            sum += _cvtsh_ss(row[b].d) * (OFFSET ? dot - (float)(OFFSET) * x.dsum[b] : dot);                \
        }                                                                                                   \
        out[r - row_begin] = sum;                                                                           \
    }
#endif

#endif /* LLMRUN_SIMD_X86_H */
