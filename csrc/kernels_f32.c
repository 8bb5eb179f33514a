/*
 * kernels_f32.c: matrix-vector product and embedding lookup for f32 weights, and the f32 vector helpers
 * of the attention and the feed-forward layer.
 *
 * The scalar versions are the reference: plain C that any compiler vectorizes a little. The AVX2 + FMA
 * versions are compiled with target attributes (not -mavx2 for the whole file), so the library still
 * loads on CPUs without AVX2, where cpu.c never selects them.
 */
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "simd_x86.h"

/* ---------------------------------------------------------------------------------------------------- */
/* portable reference */

static float dot_scalar(const float *a, const float *b, int64_t n) {
    /* Eight partial sums: independent chains the compiler can keep in one vector register. */
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += a[i + j] * b[i + j];
    float sum = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

static void scores_scalar(float *out, const float *q, const float *rows, int64_t stride, int64_t n_rows,
                          int64_t dim, float scale) {
    for (int64_t s = 0; s < n_rows; s++) out[s] = scale * dot_scalar(q, rows + s * stride, dim);
}

static void weighted_sum_scalar(float *out, const float *weights, const float *rows, int64_t stride,
                                int64_t n_rows, int64_t dim) {
    memset(out, 0, (size_t)dim * sizeof(float));
    for (int64_t s = 0; s < n_rows; s++)
        for (int64_t i = 0; i < dim; i++) out[i] += weights[s] * rows[s * stride + i];
}

static void softmax_scalar(float *x, int64_t n) {
    float max = x[0];
    for (int64_t i = 1; i < n; i++) max = x[i] > max ? x[i] : max;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    for (int64_t i = 0; i < n; i++) x[i] /= sum;
}

static void swiglu_scalar(float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

static void matvec_f32_scalar(float *out, const void *w, const void *x, int64_t row_begin,
                              int64_t row_end, int64_t cols) {
    const float *wf = w;
    for (int64_t r = row_begin; r < row_end; r++) out[r - row_begin] = dot_scalar(wf + r * cols, x, cols);
}

static void get_row_f32(float *out, const void *w, int64_t row, int64_t cols) {
    memcpy(out, (const float *)w + row * cols, (size_t)cols * sizeof(float));
}

/* ---------------------------------------------------------------------------------------------------- */
/* x86-64 AVX2 + FMA */

#ifdef LLM_HAVE_X86

/* Four independent accumulators (32 floats per step) hide the latency of the fused multiply-adds. */
AVX2 static float dot_avx2(const float *a, const float *b, int64_t n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    float sum = hsum_avx2(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

/* Eight rows at a time: eight independent accumulators keep both FMA units busy, and their eight sums are
   reduced together (a few horizontal adds for all eight instead of five per row). */
AVX2 static void scores_avx2(float *out, const float *q, const float *rows, int64_t stride, int64_t n_rows,
                             int64_t dim, float scale) {
    int64_t s = 0, vec_dim = dim / 8 * 8;
    for (; s + 8 <= n_rows; s += 8) {
        const float *r = rows + s * stride;
        __m256 a[8];
        for (int k = 0; k < 8; k++) a[k] = _mm256_setzero_ps();
        for (int64_t i = 0; i < vec_dim; i += 8) {
            __m256 qv = _mm256_loadu_ps(q + i);
            for (int k = 0; k < 8; k++) a[k] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(r + k * stride + i), a[k]);
        }
        /* lo = [rows 0-3 low halves | rows 0-3 high halves], hi likewise for rows 4-7 */
        __m256 lo = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        __m256 hi = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
        __m256 sums = _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31));
        _mm256_storeu_ps(out + s, _mm256_mul_ps(sums, _mm256_set1_ps(scale)));
        for (int64_t i = vec_dim; i < dim; i++) /* head sizes that are not a multiple of 8 */
            for (int k = 0; k < 8; k++) out[s + k] += scale * q[i] * r[k * stride + i];
    }
    for (; s < n_rows; s++) out[s] = scale * dot_avx2(q, rows + s * stride, dim);
}

/* The output is built 64 values (eight registers: eight independent FMA chains) at a time over all rows,
   so it never leaves the registers until it is finished; then 8 at a time, then one. */
AVX2 static void weighted_sum_avx2(float *out, const float *weights, const float *rows, int64_t stride,
                                   int64_t n_rows, int64_t dim) {
    int64_t i = 0;
    for (; i + 64 <= dim; i += 64) {
        __m256 a[8];
        for (int k = 0; k < 8; k++) a[k] = _mm256_setzero_ps();
        for (int64_t s = 0; s < n_rows; s++) {
            const float *r = rows + s * stride + i;
            __m256 w = _mm256_set1_ps(weights[s]);
            for (int k = 0; k < 8; k++) a[k] = _mm256_fmadd_ps(w, _mm256_loadu_ps(r + 8 * k), a[k]);
        }
        for (int k = 0; k < 8; k++) _mm256_storeu_ps(out + i + 8 * k, a[k]);
    }
    for (; i + 8 <= dim; i += 8) {
        __m256 a = _mm256_setzero_ps();
        for (int64_t s = 0; s < n_rows; s++) a = _mm256_fmadd_ps(_mm256_set1_ps(weights[s]), _mm256_loadu_ps(rows + s * stride + i), a);
        _mm256_storeu_ps(out + i, a);
    }
    for (; i < dim; i++) {
        float sum = 0.0f;
        for (int64_t s = 0; s < n_rows; s++) sum += weights[s] * rows[s * stride + i];
        out[i] = sum;
    }
}

/* e^x for eight floats (Cephes' expf: x = n ln2 + r, e^r by a degree-6 polynomial, 2^n in the exponent
   bits); relative error about 2e-7. The clamps keep n within [-126, 127], so 2^n is a normal float (e^x
   saturates at about 1.7e38 and 1.2e-38); NaN passes through. */
AVX2 static inline __m256 exp_avx2(__m256 x) {
    x = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(_mm256_set1_ps(-87.3365478515625f), x));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

AVX2 static void softmax_avx2(float *x, int64_t n) {
    float max = x[0];
    for (int64_t i = 1; i < n; i++) max = x[i] > max ? x[i] : max;
    __m256 vmax = _mm256_set1_ps(max), vsum = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));
        _mm256_storeu_ps(x + i, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = hsum_avx2(vsum);
    for (; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    __m256 inv = _mm256_set1_ps(1.0f / sum);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    for (; i < n; i++) x[i] /= sum;
}

AVX2 static void swiglu_avx2(float *gate, const float *up, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 silu = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), g))));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

/* One row at a time, front to back: a single linear stream through the weights is what the hardware
   prefetchers follow best, and decoding is bound by how fast the weights stream in from memory
   (interleaving four rows measured 2x slower on matrices larger than the cache). */
AVX2 static void matvec_f32_avx2(float *out, const void *w, const void *x, int64_t row_begin,
                                 int64_t row_end, int64_t cols) {
    const float *wf = w;
    for (int64_t r = row_begin; r < row_end; r++) out[r - row_begin] = dot_avx2(wf + r * cols, x, cols);
}
#endif

/* ---------------------------------------------------------------------------------------------------- */
/* dispatch */

int llm_f32_traits(int32_t isa, llm_type_traits *out) {
    *out = (llm_type_traits){"f32", 1, sizeof(float), matvec_f32_scalar, get_row_f32, NULL, NULL};
#ifdef LLM_HAVE_X86
    if (isa >= LLM_ISA_AVX2) out->matvec = matvec_f32_avx2;
#endif
    (void)isa;
    return 0;
}

void llm_vec_ops_get(int32_t isa, llm_vec_ops *out) {
    *out = (llm_vec_ops){scores_scalar, weighted_sum_scalar, softmax_scalar, swiglu_scalar};
#ifdef LLM_HAVE_X86
    if (isa >= LLM_ISA_AVX2) *out = (llm_vec_ops){scores_avx2, weighted_sum_avx2, softmax_avx2, swiglu_avx2};
#endif
    (void)isa;
}
