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

/* The scores and the weighted sum in the level's widest vectors: AVX-512's 16 lanes (two registers per block, and
   32 registers: four chains of FMAs per score), else AVX2's 8 (four per block, 16 registers: two chains). */
#ifdef __AVX512F__
typedef __m512 vec;
enum { LANES = 16, CHAINS = 4 };
#define VLOAD _mm512_loadu_ps
#define VSTORE _mm512_storeu_ps
#define VFMA _mm512_fmadd_ps
#define VSET1 _mm512_set1_ps
#define VZERO _mm512_setzero_ps
#define VADD _mm512_add_ps
#define VMUL _mm512_mul_ps
#else
typedef __m256 vec;
enum { LANES = 8, CHAINS = 2 };
#define VLOAD _mm256_loadu_ps
#define VSTORE _mm256_storeu_ps
#define VFMA _mm256_fmadd_ps
#define VSET1 _mm256_set1_ps
#define VZERO _mm256_setzero_ps
#define VADD _mm256_add_ps
#define VMUL _mm256_mul_ps
#endif
enum { NV = B / LANES }; /* vectors of a block's scores */

/* s[i * B + j] = scale * dot(q[i], keys[:, j]) for the n (1 or 2, a constant where this is inlined) queries. Each
   lane is the sum of CHAINS FMA chains, each over its part of the dimensions in order (the last part takes what
   does not divide): the same arithmetic for a query whichever queries it is computed with, and enough independent
   chains in flight to hide the FMAs' latency even for one query (decoding a model without grouped-query
   attention). One query does the whole block at once, two queries two vectors at a time; the accumulators (8 or
   16) and the rows of keys the queries share stay in registers. */
INLINE void scores(float *s, const float *const q[2], int n, const float *keys, int64_t dim, float scale) {
    int64_t part = dim / CHAINS;
    int pass = n == 1 ? NV : 2; /* vectors per pass */
    for (int at = 0; at < B; at += pass * LANES) {
        vec a[2][NV][CHAINS];
        for (int i = 0; i < n; i++)
            for (int v = 0; v < pass; v++)
                for (int c = 0; c < CHAINS; c++) a[i][v][c] = VZERO();
        for (int64_t d = 0; d < part; d++)
            for (int v = 0; v < pass; v++) {
                vec x[CHAINS];
                for (int c = 0; c < CHAINS; c++) x[c] = VLOAD(keys + (c * part + d) * B + at + LANES * v);
                for (int i = 0; i < n; i++)
                    for (int c = 0; c < CHAINS; c++) a[i][v][c] = VFMA(VSET1(q[i][c * part + d]), x[c], a[i][v][c]);
            }
        for (int64_t d = CHAINS * part; d < dim; d++) /* the rest, into the last chain */
            for (int v = 0; v < pass; v++)
                for (int i = 0; i < n; i++)
                    a[i][v][CHAINS - 1] = VFMA(VSET1(q[i][d]), VLOAD(keys + d * B + at + LANES * v), a[i][v][CHAINS - 1]);
        for (int i = 0; i < n; i++)
            for (int v = 0; v < pass; v++) {
                vec sum = a[i][v][0];
                for (int c = 1; c < CHAINS; c++) sum = VADD(sum, a[i][v][c]);
                VSTORE(s + i * B + at + LANES * v, VMUL(sum, VSET1(scale)));
            }
    }
}

/* The largest of the eight lanes. */
INLINE float hmax_f32x8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* o = o * rescale + sum over j in [lo, hi) of p[j] * values row j, in the order of j: 64 values of o at a time
   (8 or 4 registers) over all the rows, then a vector, then one (head sizes that are not a multiple of 8). */
INLINE void weighted_sum(float *o, float rescale, const float *p, int lo, int hi, const float *values, int64_t dim) {
    enum { W = 64 / LANES };
    const vec r = VSET1(rescale);
    int64_t c = 0;
    for (; c + 64 <= dim; c += 64) {
        vec a[W];
        for (int k = 0; k < W; k++) a[k] = VMUL(VLOAD(o + c + LANES * k), r);
        for (int j = lo; j < hi; j++) {
            vec pj = VSET1(p[j]);
            for (int k = 0; k < W; k++) a[k] = VFMA(pj, VLOAD(values + j * dim + c + LANES * k), a[k]);
        }
        for (int k = 0; k < W; k++) VSTORE(o + c + LANES * k, a[k]);
    }
    for (; c + LANES <= dim; c += LANES) {
        vec a = VMUL(VLOAD(o + c), r);
        for (int j = lo; j < hi; j++) a = VFMA(VSET1(p[j]), VLOAD(values + j * dim + c), a);
        VSTORE(o + c, a);
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

/* The n queries from token tok, head h on (the next head, or the next token's first) over block b. */
INLINE void attend(const llm_attention_tile *t, float *scratch, int32_t tok, int h, int n, int32_t b,
                   const float *keys, const float *values) {
    int64_t dim = t->dim, n_q = (int64_t)t->n_tok * t->n_head;
    float *out = scratch, *max = out + n_q * dim, *sum = max + n_q, *s = sum + n_q;
    int32_t toks[2] = {tok, h + 1 < t->n_head ? tok : tok + 1};
    int heads[2] = {h, h + 1 < t->n_head ? h + 1 : 0};
    const float *q[2];
    for (int k = 0; k < n; k++) q[k] = t->q + toks[k] * t->ldq + heads[k] * dim;
    scores(s, q, n, keys, dim, t->scale);
    for (int k = 0; k < n; k++) {
        int lo, hi;
        int64_t i = (int64_t)toks[k] * t->n_head + heads[k];
        visible(t, toks[k], b, &lo, &hi);
        update(out + i * dim, max + i, sum + i, s + k * B, lo, hi, values, dim, t->softcap);
    }
}

void X86(attention)(const llm_attention_tile *t, float *scratch) {
    int64_t dim = t->dim, n_q = (int64_t)t->n_tok * t->n_head;
    float *out = scratch, *max = out + n_q * dim, *sum = max + n_q;
    memset(out, 0, (size_t)(n_q * dim) * sizeof *out);
    for (int64_t i = 0; i < n_q; i++) max[i] = -INFINITY, sum[i] = 0.0f;
    int32_t last = t->pos + t->n_tok - 1, first = t->window && t->pos >= t->window ? t->pos - t->window + 1 : 0;
    /* The blocks of a head lie a whole block of every head apart (kv_cache.h), in the order of the block table:
       the hardware prefetcher does not follow them, so the block two ahead is fetched into L2 while this one is
       used (measured on Zen 4, decoding at 8192 positions: 30% faster than none, and than four ahead into L1,
       whose 32 KB that evicts from; prompts' tiles alike within the noise). */
    int32_t ahead = 2;
    for (int32_t b = first / B; b <= last / B; b++) {
        const float *keys = t->keys + t->table[b] * t->stride, *values = t->values + t->table[b] * t->stride;
        if (b + ahead <= last / B)
            for (int64_t k = 0; k < dim * B; k += 16) { /* 64-byte lines */
                _mm_prefetch((const char *)(t->keys + t->table[b + ahead] * t->stride + k), _MM_HINT_T1);
                _mm_prefetch((const char *)(t->values + t->table[b + ahead] * t->stride + k), _MM_HINT_T1);
            }
        /* the tokens that see the block, a run: from the first whose position reaches it to the last whose
           window still does */
        int32_t tok = b * B > t->pos ? b * B - t->pos : 0, end = t->n_tok;
        int64_t window_end = (int64_t)b * B + B - 1 + t->window - t->pos; /* int64: a window near INT32_MAX */
        if (t->window && window_end < end) end = (int32_t)window_end;
        int64_t left = (int64_t)(end - tok) * t->n_head; /* their queries, two at a time (sharing the keys) */
        for (int h = 0; left > 0; left -= 2) {
            if (left > 1) attend(t, scratch, tok, h, 2, b, keys, values); /* n a constant in each */
            else attend(t, scratch, tok, h, 1, b, keys, values);
            h += 2;
            while (h >= t->n_head) h -= t->n_head, tok++;
        }
    }
    for (int64_t i = 0; i < n_q; i++) {
        float *o = t->out + i / t->n_head * t->ldo + i % t->n_head * dim;
        __m256 inv = _mm256_set1_ps(1.0f / sum[i]);
        int64_t d = 0;
        for (; d + 8 <= dim; d += 8) _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_loadu_ps(out + i * dim + d), inv));
        for (; d < dim; d++) o[d] = out[i * dim + d] * (1.0f / sum[i]);
    }
}
