/*
 * kernels_x86_attention.c: the attention of a tile of queries (kernels.h, llm_attention_tile), the
 * flash-attention recipe on the KV cache's blocks. The tile's queries share their keys and values: each block of
 * B = 32 positions is read from memory once for all of them (a prompt's tile: up to 16 tokens times the query
 * heads of one key/value head) and stays in L1 while they use it, where attending one query at a time read every
 * key and value row once per query, (prompt length)^2 rows per head from L2 or L3.
 *
 * Per block and query: the B scores (the keys are stored dimension major, so a query's value in dimension d is
 * broadcast and multiplied into B positions with four FMAs, no horizontal sums), the soft-cap, the mask (causal,
 * window), then the online softmax: the running maximum m grows to cover the block, the running sum and output
 * are rescaled by e^(m_old - m_new), and the block's e^(s - m) and their weighted values are added. The output is
 * divided by the sum at the end. Every step of a query's arithmetic is the same whatever else is in its tile (the
 * lanes of the scores are independent FMA chains, the weighted sum runs over the positions in order): a token's
 * result is bit for bit the same in a prompt as alone.
 */
#include <math.h>

#include "kernels_x86.h"

enum { B = LLM_KV_BLOCK };
_Static_assert(LLM_KV_BLOCK == 32, "a block's scores are four vectors of eight");

/* s[i * B + j] = scale * dot(q[i], keys[:, j]) for the n (1 or 2, a constant where this is inlined) queries. Each
   lane is the sum of two FMA chains, over the first and the second half of the dimensions, in order: the same
   arithmetic for a query whichever queries it is computed with, and enough independent chains in flight to hide
   the FMAs' latency even for one query (decoding a model without grouped-query attention): one query does the
   whole block (4 vectors x 2 chains), two queries half a block at a time (2 x 2 x 2), in 8 accumulators that
   stay in registers with the rows of keys they share. */
INLINE void scores(float *s, const float *const q[2], int n, const float *keys, int64_t dim, float scale) {
    enum { V = 2 }; /* vectors per pass for two queries */
    int64_t half = dim / 2;
    const float *k1 = keys + half * B; /* the second half's rows */
    for (int at = 0; at < B; at += n == 1 ? B : 8 * V) {
        __m256 a[2][4][2]; /* query, vector, chain */
        int nv = n == 1 ? 4 : V;
        for (int i = 0; i < n; i++)
            for (int v = 0; v < nv; v++) a[i][v][0] = a[i][v][1] = _mm256_setzero_ps();
        for (int64_t d = 0; d < half; d++) {
            for (int v = 0; v < nv; v++) {
                __m256 x0 = _mm256_loadu_ps(keys + d * B + at + 8 * v), x1 = _mm256_loadu_ps(k1 + d * B + at + 8 * v);
                for (int i = 0; i < n; i++) {
                    a[i][v][0] = _mm256_fmadd_ps(_mm256_broadcast_ss(q[i] + d), x0, a[i][v][0]);
                    a[i][v][1] = _mm256_fmadd_ps(_mm256_broadcast_ss(q[i] + half + d), x1, a[i][v][1]);
                }
            }
        }
        for (int64_t d = 2 * half; d < dim; d++) /* an odd head size's last dimension, into the second chain */
            for (int v = 0; v < nv; v++)
                for (int i = 0; i < n; i++)
                    a[i][v][1] = _mm256_fmadd_ps(_mm256_broadcast_ss(q[i] + d), _mm256_loadu_ps(keys + d * B + at + 8 * v),
                                                 a[i][v][1]);
        for (int i = 0; i < n; i++)
            for (int v = 0; v < nv; v++)
                _mm256_storeu_ps(s + i * B + at + 8 * v,
                                 _mm256_mul_ps(_mm256_add_ps(a[i][v][0], a[i][v][1]), _mm256_set1_ps(scale)));
    }
}

/* The largest of the eight lanes. */
INLINE float hmax_f32x8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* o = o * rescale + sum over j in [lo, hi) of p[j] * values row j, in the order of j: 64 values (eight
   registers) of o at a time over all the rows, then eight, then one (head sizes that are not a multiple of 8). */
INLINE void weighted_sum(float *o, float rescale, const float *p, int lo, int hi, const float *values, int64_t dim) {
    const __m256 r = _mm256_set1_ps(rescale);
    int64_t c = 0;
    for (; c + 64 <= dim; c += 64) {
        __m256 a[8];
        for (int k = 0; k < 8; k++) a[k] = _mm256_mul_ps(_mm256_loadu_ps(o + c + 8 * k), r);
        for (int j = lo; j < hi; j++) {
            __m256 pj = _mm256_broadcast_ss(p + j);
            for (int k = 0; k < 8; k++) a[k] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(values + j * dim + c + 8 * k), a[k]);
        }
        for (int k = 0; k < 8; k++) _mm256_storeu_ps(o + c + 8 * k, a[k]);
    }
    for (; c + 8 <= dim; c += 8) {
        __m256 a = _mm256_mul_ps(_mm256_loadu_ps(o + c), r);
        for (int j = lo; j < hi; j++) a = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j), _mm256_loadu_ps(values + j * dim + c), a);
        _mm256_storeu_ps(o + c, a);
    }
    for (; c < dim; c++) {
        float a = o[c] * rescale;
        for (int j = lo; j < hi; j++) a = fmaf(p[j], values[j * dim + c], a);
        o[c] = a;
    }
}

/* One query's online-softmax step over a block whose scores s (B) it sees in [lo, hi): s becomes e^(s - m_new),
   0 outside [lo, hi); the running maximum *max, sum *sum and output o move to the new maximum. */
INLINE void update(float *o, float *max, float *sum, float *s, int lo, int hi, const float *values, int64_t dim,
                   float softcap) {
    if (softcap) X86(softcap)(s, B, softcap); /* Gemma 2 */
    const __m256i vlo = _mm256_set1_epi32(lo - 1), vhi = _mm256_set1_epi32(hi);
    __m256 v[4], keep[4], vmax = _mm256_set1_ps(-INFINITY);
    for (int k = 0; k < 4; k++) {
        __m256i j = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(8 * k));
        keep[k] = _mm256_castsi256_ps(_mm256_and_si256(_mm256_cmpgt_epi32(j, vlo), _mm256_cmpgt_epi32(vhi, j)));
        v[k] = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_loadu_ps(s + 8 * k), keep[k]);
        vmax = _mm256_max_ps(vmax, v[k]);
    }
    float m = hmax_f32x8(vmax);
    m = *max > m ? *max : m;
    /* e^(m_old - m): exp8 of 0 is 1 exactly, so the output is not rescaled while the maximum stays */
    float rescale = *max == -INFINITY ? 0.0f : _mm256_cvtss_f32(exp8(_mm256_set1_ps(*max - m)));
    __m256 vm = _mm256_set1_ps(m), vsum = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        __m256 p = _mm256_and_ps(exp8(_mm256_sub_ps(v[k], vm)), keep[k]);
        _mm256_storeu_ps(s + 8 * k, p);
        vsum = _mm256_add_ps(vsum, p);
    }
    *sum = *sum * rescale + hsum_f32x8(vsum);
    *max = m;
    weighted_sum(o, rescale, s, lo, hi, values, dim);
}

/* The positions [lo, hi) of block b that token tok of the tile sees (lo >= hi: none). */
INLINE void visible(const llm_attention_tile *t, int32_t tok, int32_t b, int *lo, int *hi) {
    int32_t to = t->pos + tok, from = t->window && to >= t->window ? to - t->window + 1 : 0;
    *lo = from > b * B ? from - b * B : 0;
    *hi = to < b * B + B ? to - b * B + 1 : B;
}

/* Queries i and on (n of them: query i is token i / n_head, head i % n_head) over block b. */
INLINE void attend(const llm_attention_tile *t, float *scratch, int64_t i, int n, int32_t b, const float *keys,
                   const float *values) {
    int64_t dim = t->dim, n_q = (int64_t)t->n_tok * t->n_head;
    float *out = scratch, *max = out + n_q * dim, *sum = max + n_q, *s = sum + n_q;
    const float *q[2];
    for (int k = 0; k < n; k++) q[k] = t->q + (i + k) / t->n_head * t->ldq + (i + k) % t->n_head * dim;
    scores(s, q, n, keys, dim, t->scale);
    for (int k = 0; k < n; k++) {
        int lo, hi;
        visible(t, (int32_t)((i + k) / t->n_head), b, &lo, &hi);
        update(out + (i + k) * dim, max + i + k, sum + i + k, s + k * B, lo, hi, values, dim, t->softcap);
    }
}

void X86(attention)(const llm_attention_tile *t, float *scratch) {
    int64_t dim = t->dim, n_q = (int64_t)t->n_tok * t->n_head;
    float *out = scratch, *max = out + n_q * dim, *sum = max + n_q;
    memset(out, 0, (size_t)(n_q * dim) * sizeof *out);
    for (int64_t i = 0; i < n_q; i++) max[i] = -INFINITY, sum[i] = 0.0f;
    int32_t last = t->pos + t->n_tok - 1, first = t->window && t->pos >= t->window ? t->pos - t->window + 1 : 0;
    for (int32_t b = first / B; b <= last / B; b++) {
        const float *keys = t->keys + t->table[b] * t->stride, *values = t->values + t->table[b] * t->stride;
        /* the tokens that see the block, a run: from the first whose position reaches it to the last whose
           window still does */
        int32_t tok = b * B > t->pos ? b * B - t->pos : 0, end = t->n_tok;
        if (t->window && b * B + B - 1 + t->window - t->pos < end) end = b * B + B - 1 + t->window - t->pos;
        int64_t i = (int64_t)tok * t->n_head, i_end = (int64_t)end * t->n_head;
        for (; i + 2 <= i_end; i += 2) attend(t, scratch, i, 2, b, keys, values); /* two queries share the keys */
        if (i < i_end) attend(t, scratch, i, 1, b, keys, values);
    }
    for (int64_t i = 0; i < n_q; i++) {
        float *o = t->out + i / t->n_head * t->ldo + i % t->n_head * dim;
        __m256 inv = _mm256_set1_ps(1.0f / sum[i]);
        int64_t d = 0;
        for (; d + 8 <= dim; d += 8) _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_loadu_ps(out + i * dim + d), inv));
        for (; d < dim; d++) o[d] = out[i * dim + d] * (1.0f / sum[i]);
    }
}
