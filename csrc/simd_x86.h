/*
 * simd_x86.h: what the x86-64 AVX2 kernels share. Each function carries the target attribute itself,
 * so the library is still compiled for the baseline and runs on CPUs without AVX2 (cpu.c decides).
 */
#ifndef LLMRUN_SIMD_X86_H
#define LLMRUN_SIMD_X86_H

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LLM_HAVE_X86 1
#include <immintrin.h>

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
#endif

#endif /* LLMRUN_SIMD_X86_H */
