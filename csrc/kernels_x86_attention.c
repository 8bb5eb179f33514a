/*
 * kernels_x86_attention.c: the attention of a tile of queries (kernels.h, llm_attention_tile), the
 * flash-attention recipe on the KV cache's blocks. The tile's queries share their keys and values: each block of
 * B = 32 positions is read from memory once for all of them (a prompt's tile: 64 queries, its tokens times the
 * query heads of one key/value head) and stays in L1 while they use it, where attending one query at a time read
 * every key and value row once per query, (prompt length)^2 rows per head from L2 or L3.
 *
 * Per block and query: the B scores (the keys are stored dimension major, so a query's value in dimension d is
 * broadcast and multiplied into B positions with an FMA per vector, no horizontal sums), the soft-cap, the mask
 * (causal, window), then the online softmax: the running maximum m grows to cover the block, the running sum and
 * output are rescaled by e^(m_old - m_new), and the block's e^(s - m) and their weighted values are added. The
 * output is divided by the sum at the end. Every step of a query's arithmetic is the same whatever else is in its
 * tile (the lanes of the scores are independent FMA chains, the weighted sum runs over the positions in order): a
 * token's result is bit for bit the same in a prompt as alone.
 */
#include <math.h>

#include "kernels_x86.h"

enum { B = LLM_KV_BLOCK };
_Static_assert(LLM_KV_BLOCK == 32, "a block's scores are whole vectors: four of eight lanes, two of sixteen");

/* The scores, the softmax and the weighted sum in the level's widest vectors: AVX-512's 16 lanes (two registers per
   block, 32 registers: two chains of FMAs per score, which leaves room for four queries' whole blocks, 16
   accumulators, where four chains allowed one vector of four queries' at a time, 1.12-1.18x faster attention in a
   prompt on Zen 5 with the softmax in 16 lanes as well; a query alone keeps four FMAs in flight), else AVX2's 8
   (four per block, 16 registers: one chain per score, which leaves room for three queries' whole blocks, 12
   accumulators, where two chains allowed one vector of four queries' at a time, 1.10-1.17x faster attention in a
   prompt on Zen 3; a query alone still keeps its block's four vectors in flight). vmask says which lanes of a
   vector of scores a query sees: a mask register with AVX-512, all ones or zeros in each lane with AVX2. GROUP is the
   queries per group (below), ACC the accumulators a group's scores and weighted sums keep in registers (with AVX2 12
   of the 16, the rest for a row of keys or values and the group's broadcast query values or weights). */
#ifdef __AVX512F__
typedef __m512 vec;
enum { LANES = 16, CHAINS = 2, GROUP = 4, ACC = 16 };
#define VLOAD _mm512_loadu_ps
#define VSTORE _mm512_storeu_ps
#define VFMA _mm512_fmadd_ps
#define VSET1 _mm512_set1_ps
#define VZERO _mm512_setzero_ps
#define VADD _mm512_add_ps
#define VMUL _mm512_mul_ps
#define VSUB _mm512_sub_ps
#define VMAX _mm512_max_ps
#define VEXP exp16
#define VHMAX _mm512_reduce_max_ps
#define VHSUM _mm512_reduce_add_ps
typedef __mmask16 vmask;
#define VSELECT(m, x, other) _mm512_mask_blend_ps(m, other, x) /* x where m, else other */
/* The lanes of a block's vector k whose positions are in [lo, hi). */
INLINE vmask lanes_seen(int k, int lo, int hi) {
    uint32_t seen = (uint32_t)(((1ull << hi) - 1) & ~((1ull << lo) - 1));
    return (vmask)(seen >> (LANES * k));
}
#else
typedef __m256 vec;
enum { LANES = 8, CHAINS = 1, GROUP = 3, ACC = 12 };
#define VLOAD _mm256_loadu_ps
#define VSTORE _mm256_storeu_ps
#define VFMA _mm256_fmadd_ps
#define VSET1 _mm256_set1_ps
#define VZERO _mm256_setzero_ps
#define VADD _mm256_add_ps
#define VMUL _mm256_mul_ps
#define VSUB _mm256_sub_ps
#define VMAX _mm256_max_ps
#define VEXP exp8
#define VHMAX hmax_f32x8
#define VHSUM hsum_f32x8
typedef __m256 vmask;
#define VSELECT(m, x, other) _mm256_blendv_ps(other, x, m)
INLINE vmask lanes_seen(int k, int lo, int hi) {
    __m256i j = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(LANES * k));
    return _mm256_castsi256_ps(_mm256_and_si256(_mm256_cmpgt_epi32(j, _mm256_set1_epi32(lo - 1)),
                                                _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), j)));
}
/* The largest of the eight lanes. */
INLINE float hmax_f32x8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}
#endif
enum { NV = B / LANES }; /* vectors of a block's scores */


/* A query's values in the order the scores read them: dimension c * part + d (chain c's d-th, part = dim / CHAINS)
   at d * CHAINS + c, the rest (dim % CHAINS) where they are, so that one pointer per query reaches all its chains. */
INLINE void interleave_chains(float *qc, const float *q, int64_t dim) {
    int64_t part = dim / CHAINS;
    for (int64_t d = 0; d < part; d++)
        for (int c = 0; c < CHAINS; c++) qc[d * CHAINS + c] = q[c * part + d];
    for (int64_t d = CHAINS * part; d < dim; d++) qc[d] = q[d];
}

/* s[i * B + j] = scale * dot(q[i], keys[:, j]) for the n (1 to GROUP, a constant where this is inlined) queries,
   q[i] as interleave_chains lays it out. Each lane is the sum of CHAINS FMA chains, each over its part of the
   dimensions in order (the last part takes what does not divide): the same arithmetic for a query whichever
   queries it is computed with, and four independent chains in flight even for one query (decoding a model without
   grouped-query attention): AVX2's four vectors of a block, AVX-512's two vectors' two chains. The queries go
   through as many vectors of the block at a time as ACC accumulators allow (one query: the whole block); the rows
   of keys they share are loaded once for all of them. */
INLINE void scores(float *s, const float *const q[GROUP], int n, const float *keys, int64_t dim, float scale) {
    int64_t part = dim / CHAINS;
    int pass = ACC / (n * CHAINS) < NV ? ACC / (n * CHAINS) : NV; /* vectors per pass */
    if (pass < 1) pass = 1;
    for (int at = 0; at < B; at += pass * LANES) {
        vec a[GROUP][NV][CHAINS];
        for (int i = 0; i < n; i++)
            for (int v = 0; v < pass; v++)
                for (int c = 0; c < CHAINS; c++) a[i][v][c] = VZERO();
        for (int64_t d = 0; d < part; d++)
            for (int v = 0; v < pass; v++) {
                vec x[CHAINS];
                for (int c = 0; c < CHAINS; c++) x[c] = VLOAD(keys + (c * part + d) * B + at + LANES * v);
                for (int i = 0; i < n; i++)
                    for (int c = 0; c < CHAINS; c++) a[i][v][c] = VFMA(VSET1(q[i][d * CHAINS + c]), x[c], a[i][v][c]);
            }
        for (int64_t d = CHAINS * part; d < dim; d++) /* the rest, into the last chain */
            for (int v = 0; v < pass; v++)
                for (int i = 0; i < n; i++)
                    a[i][v][CHAINS - 1] =
                        VFMA(VSET1(q[i][d]), VLOAD(keys + d * B + at + LANES * v), a[i][v][CHAINS - 1]);
        for (int i = 0; i < n; i++)
            for (int v = 0; v < pass; v++) {
                vec sum = a[i][v][0];
                for (int c = 1; c < CHAINS; c++) sum = VADD(sum, a[i][v][c]);
                VSTORE(s + i * B + at + LANES * v, VMUL(sum, VSET1(scale)));
            }
    }
}

/* For each of the n queries (a constant where this is inlined) that see the same rows [lo, hi) of the block:
   o[i] = o[i] * rescale[i] + sum over j in [lo, hi) of p[i][j] * values row j, in the order of j. Every value of
   an output is its own chain (a multiply, then the FMAs in the order of j), so the queries go together and the
   values in any slices: W vectors of each query's output at a time (all n x W in registers, each row's W vectors
   loaded once for the n queries; W a power of two, which head sizes are multiples of), then one vector, then one
   value (head sizes that are not a multiple of 8). */
INLINE void weighted_sums(float *const o[GROUP], const float rescale[GROUP], const float *const p[GROUP], int n,
                          int lo, int hi, const float *values, int64_t dim) {
    enum { W_MAX = 64 / LANES };
    /* the largest power of two with n x W within ACC, as one expression: GCC folds it to a constant for each n,
       which it did not for a halving loop (W at run time: the accumulators spilled, 3x slower) */
    const int W = ACC / n >= W_MAX ? W_MAX : ACC / n >= 4 ? 4 : ACC / n >= 2 ? 2 : 1;
    int64_t c = 0;
    for (; c + W * LANES <= dim; c += W * LANES) {
        vec a[GROUP][W_MAX];
        for (int i = 0; i < n; i++)
            for (int k = 0; k < W; k++) a[i][k] = VMUL(VLOAD(o[i] + c + LANES * k), VSET1(rescale[i]));
        for (int j = lo; j < hi; j++) {
            vec v[W_MAX];
            for (int k = 0; k < W; k++) v[k] = VLOAD(values + j * dim + c + LANES * k);
            for (int i = 0; i < n; i++) {
                vec pj = VSET1(p[i][j]);
                for (int k = 0; k < W; k++) a[i][k] = VFMA(pj, v[k], a[i][k]);
            }
        }
        for (int i = 0; i < n; i++)
            for (int k = 0; k < W; k++) VSTORE(o[i] + c + LANES * k, a[i][k]);
    }
    for (int i = 0; i < n; i++) {
        int64_t d = c;
        for (; d + LANES <= dim; d += LANES) {
            vec a = VMUL(VLOAD(o[i] + d), VSET1(rescale[i]));
            for (int j = lo; j < hi; j++) a = VFMA(VSET1(p[i][j]), VLOAD(values + j * dim + d), a);
            VSTORE(o[i] + d, a);
        }
        for (; d < dim; d++) {
            float a = o[i][d] * rescale[i];
            for (int j = lo; j < hi; j++) a = fmaf(p[i][j], values[j * dim + d], a);
            o[i][d] = a;
        }
    }
}

/* One query's online-softmax step over a block whose scores s (B) it sees in [lo, hi): s becomes e^(s - m_new),
   0 outside [lo, hi); the running maximum *max and sum *sum move to the new maximum, and the factor e^(m_old -
   m_new) that its output must be rescaled by is returned (weighted_sums applies it). */
INLINE float softmax_step(float *max, float *sum, float *s, int lo, int hi, float softcap) {
    if (softcap) X86(softcap)(s, B, softcap); /* Gemma 2 */
    vmask keep[NV];
    vec v[NV], vmax = VSET1(-INFINITY);
    for (int k = 0; k < NV; k++) {
        keep[k] = lanes_seen(k, lo, hi);
        v[k] = VSELECT(keep[k], VLOAD(s + LANES * k), VSET1(-INFINITY));
        vmax = VMAX(vmax, v[k]);
    }
    float m = VHMAX(vmax);
    m = *max > m ? *max : m;
    /* e^(m_old - m): exp8 of 0 is 1 exactly, so the output is not rescaled while the maximum stays */
    float rescale = *max == -INFINITY ? 0.0f : _mm256_cvtss_f32(exp8(_mm256_set1_ps(*max - m)));
    vec vm = VSET1(m), vsum = VZERO();
    for (int k = 0; k < NV; k++) {
        vec p = VSELECT(keep[k], VEXP(VSUB(v[k], vm)), VZERO());
        VSTORE(s + LANES * k, p);
        vsum = VADD(vsum, p);
    }
    *sum = *sum * rescale + VHSUM(vsum);
    *max = m;
    return rescale;
}

/* The positions [lo, hi) of block b that token tok of the tile sees (lo >= hi: none). */
INLINE void visible(const llm_attention_tile *t, int32_t tok, int32_t b, int *lo, int *hi) {
    int32_t to = t->pos + tok, from = t->window && to >= t->window ? to - t->window + 1 : 0;
    *lo = from > b * B ? from - b * B : 0;
    *hi = to < b * B + B ? to - b * B + 1 : B;
}

/* The n queries i0 .. i0 + n - 1 of the tile (query i: token i / n_head, head i % n_head) over block b, all of
   which see its positions [lo, hi). */
INLINE void attend(const llm_attention_tile *t, float *scratch, int64_t i0, int n, int lo, int hi,
                   const float *keys, const float *values) {
    int64_t dim = t->dim, n_q = (int64_t)t->n_tok * t->n_head;
    float *out = scratch, *max = out + n_q * dim, *sum = max + n_q, *qc = sum + n_q, *s = qc + n_q * dim;
    const float *q[GROUP], *p[GROUP];
    float *o[GROUP], rescale[GROUP];
    for (int k = 0; k < n; k++) {
        int64_t i = i0 + k;
        q[k] = qc + i * dim;
        o[k] = out + i * dim;
        p[k] = s + k * B;
    }
    scores(s, q, n, keys, dim, t->scale);
    for (int k = 0; k < n; k++) rescale[k] = softmax_step(max + i0 + k, sum + i0 + k, s + k * B, lo, hi, t->softcap);
    weighted_sums(o, rescale, p, n, lo, hi, values, dim);
}

void X86(attention)(const llm_attention_tile *t, float *scratch) {
    int64_t dim = t->dim, n_q = (int64_t)t->n_tok * t->n_head;
    float *out = scratch, *max = out + n_q * dim, *sum = max + n_q, *qc = sum + n_q;
    memset(out, 0, (size_t)(n_q * dim) * sizeof *out);
    for (int64_t i = 0; i < n_q; i++) {
        max[i] = -INFINITY, sum[i] = 0.0f;
        interleave_chains(qc + i * dim, t->q + i / t->n_head * t->ldq + i % t->n_head * dim, dim);
    }
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
        /* their queries, in groups of up to GROUP consecutive ones that see the same positions of the block (the
           heads of a token; the tokens below the diagonal block), which share each load of its keys and values */
        for (int64_t i = (int64_t)tok * t->n_head, i_end = (int64_t)end * t->n_head; i < i_end;) {
            int lo, hi, n = 1;
            visible(t, (int32_t)(i / t->n_head), b, &lo, &hi);
            for (int lo2, hi2; n < GROUP && i + n < i_end; n++) {
                visible(t, (int32_t)((i + n) / t->n_head), b, &lo2, &hi2);
                if (lo2 != lo || hi2 != hi) break;
            }
            switch (n) { /* n a constant in each */
            case 4: attend(t, scratch, i, GROUP >= 4 ? 4 : 1, lo, hi, keys, values); break; /* AVX-512 only */
            case 3: attend(t, scratch, i, 3, lo, hi, keys, values); break;
            case 2: attend(t, scratch, i, 2, lo, hi, keys, values); break;
            default: attend(t, scratch, i, 1, lo, hi, keys, values); break;
            }
            i += n;
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
