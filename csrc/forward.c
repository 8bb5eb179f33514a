/*
 * forward.c: the transformer. Given token ids and their positions, run the Llama architecture
 * (RMSNorm, rotary position embeddings, grouped-query attention over a KV cache, SwiGLU feed-forward)
 * and produce the logits of the next token. Weights are borrowed; everything else lives in llm_ctx.
 *
 * The matrix products go through the kernels of each tensor's type (kernels.h) and are split across
 * the thread pool by rows; this file only says *what* is computed, in the order the math does it.
 */
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "threadpool.h"

#define MAX_THREADS 512
#define CHUNK_BYTES (1024 * 1024) /* weight bytes per chunk of a product shared out among threads */

/* A thread's run of chunks of the current product (see matvec), alone on its cache line. */
typedef struct {
    _Alignas(64) _Atomic uint64_t range; /* chunks [front, back) still unclaimed: front << 32 | back */
} chunk_run;

struct llm_ctx {
    llm_config      cfg;
    llm_weights     w;
    llm_layer      *layers;                 /* our copy of the caller's layer table */
    int32_t         n_ctx;                  /* positions the KV cache holds */
    int32_t         isa;
    llm_type_traits traits[LLM_TYPE_COUNT]; /* kernels for each weight type, for `isa` */
    llm_vec_ops     vec;
    llm_pool       *pool;
    chunk_run      *chunk_runs;             /* (n_threads) work sharing state of the current product */

    /* the current wave of activations */
    float *x;    /* (dim) residual stream */
    float *xb;   /* (max(dim, q_dim)) normed input / attention output */
    float *xb2;  /* (dim) output of a block before it is added to the residual */
    float *hb;   /* (hidden_dim) gate, then SwiGLU output */
    float *hb2;  /* (hidden_dim) up projection */
    float *q;    /* (q_dim) queries */
    void  *xq;   /* the input of the current product as 8-bit blocks, for the block-quantized weights */
    float *att;  /* (n_heads, n_ctx) attention scores */

    float *key_cache;   /* (n_layers, n_ctx, kv_dim) */
    float *value_cache; /* (n_layers, n_ctx, kv_dim) */
    float *rope_cos;    /* (n_ctx, head_dim / 2) */
    float *rope_sin;    /* (n_ctx, head_dim / 2) */

    char err[256];
};

static int fail(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* ---------------------------------------------------------------------------------------------------- */
/* the building blocks */

static void rmsnorm(float *out, const float *x, const float *weight, int n, float eps) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float scale = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = 0; i < n; i++) out[i] = weight[i] * (scale * x[i]);
}

static void softmax(float *x, int n) {
    float max = x[0];
    for (int i = 1; i < n; i++) max = x[i] > max ? x[i] : max;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    for (int i = 0; i < n; i++) x[i] /= sum;
}

/* Rotates each head's dimension pairs by angles pos * theta^(-2j / head_dim), j = 0 .. head_dim/2 - 1. */
static void rope(const llm_ctx *c, float *vec, int n_heads, int pos) {
    int half = c->cfg.head_dim / 2;
    const float *cos_t = c->rope_cos + (size_t)pos * half, *sin_t = c->rope_sin + (size_t)pos * half;
    /* interleaved pairs (2j, 2j+1), or halves (j, j + head_dim/2) */
    int stride = c->cfg.rope_style == LLM_ROPE_INTERLEAVED ? 2 : 1;
    int offset = c->cfg.rope_style == LLM_ROPE_INTERLEAVED ? 1 : half;
    for (int h = 0; h < n_heads; h++) {
        float *v = vec + (size_t)h * c->cfg.head_dim;
        for (int j = 0; j < half; j++) {
            float *a = v + j * stride, *b = a + offset;
            float a0 = *a, b0 = *b;
            *a = a0 * cos_t[j] - b0 * sin_t[j];
            *b = a0 * sin_t[j] + b0 * cos_t[j];
        }
    }
}

static float silu(float x) { return x / (1.0f + expf(-x)); }

/* x += bias, where the model has one (bias->data != NULL). */
static void add_bias(float *x, const llm_tensor *bias) {
    const float *b = bias->data;
    if (b)
        for (int64_t i = 0; i < bias->cols; i++) x[i] += b[i];
}

/* ---------------------------------------------------------------------------------------------------- */
/* parallel tasks */

/*
 * Up to three products sharing one input vector (q, k, v or gate, up). Their rows are cut into chunks
 * (numbered across the products) and each thread owns a contiguous run of chunks, which it works
 * through front to back: one long linear stream through the weights, which is what the memory
 * prefetchers serve best. A thread that has finished its run takes chunks from the back of another's,
 * so a thread that falls behind (its core taken by another process) delays no one.
 */
typedef struct {
    const llm_ctx *c;
    const float   *x;  /* the input vector */
    const void    *xq; /* ... as 8-bit blocks (block_q8_act), where a product's weights want that */
    int            n;
    struct {
        float            *out;
        const llm_tensor *w;
        int64_t           chunk_rows, n_chunks;
    } job[3];
} matvec_task;

static int64_t claim_chunk(chunk_run *runs, int ith, int nth) {
    uint64_t r = atomic_load_explicit(&runs[ith].range, memory_order_relaxed);
    while ((r >> 32) < (r & 0xffffffff)) /* our own run, from the front */
        if (atomic_compare_exchange_weak_explicit(&runs[ith].range, &r, r + (UINT64_C(1) << 32),
                                                  memory_order_relaxed, memory_order_relaxed))
            return (int64_t)(r >> 32);
    for (int k = 1; k < nth; k++) { /* then the others', from the back */
        chunk_run *other = &runs[(ith + k) % nth];
        r = atomic_load_explicit(&other->range, memory_order_relaxed);
        while ((r >> 32) < (r & 0xffffffff))
            if (atomic_compare_exchange_weak_explicit(&other->range, &r, r - 1, memory_order_relaxed,
                                                      memory_order_relaxed))
                return (int64_t)(r & 0xffffffff) - 1;
    }
    return -1;
}

static void matvec_worker(void *arg, int ith, int nth) {
    const matvec_task *t = arg;
    for (int64_t chunk; (chunk = claim_chunk(t->c->chunk_runs, ith, nth)) >= 0;) {
        int j = 0;
        while (chunk >= t->job[j].n_chunks) chunk -= t->job[j++].n_chunks;
        const llm_tensor *w = t->job[j].w;
        const llm_type_traits *tr = &t->c->traits[w->type];
        int64_t begin = chunk * t->job[j].chunk_rows;
        int64_t end = begin + t->job[j].chunk_rows < w->rows ? begin + t->job[j].chunk_rows : w->rows;
        tr->matvec(t->job[j].out + begin, w->data, tr->quantize_x ? t->xq : t->x, begin, end, w->cols);
    }
}

static void matvec(const llm_ctx *c, const float *x, float *out0, const llm_tensor *w0, float *out1,
                   const llm_tensor *w1, float *out2, const llm_tensor *w2) {
    matvec_task t = {c, x, c->xq, w2 ? 3 : w1 ? 2 : 1, {{out0, w0, 0, 0}, {out1, w1, 0, 0}, {out2, w2, 0, 0}}};
    int nth = llm_pool_size(c->pool);
    int64_t total = 0;
    int quantized = 0;
    for (int j = 0; j < t.n; j++) {
        const llm_type_traits *tr = &c->traits[t.job[j].w->type];
        if (tr->quantize_x && !quantized) { /* once for all the products that read 8-bit x */
            tr->quantize_x(c->xq, x, t.job[j].w->cols);
            quantized = 1;
        }
        /* chunks of about CHUNK_BYTES of weights (small enough to share out a straggler's work),
           at least four per thread, in whole multiples of 16 rows */
        const llm_tensor *w = t.job[j].w;
        int64_t bytes = w->rows * (w->cols / tr->block_elems) * (int64_t)tr->block_bytes;
        int64_t n_chunks = bytes / CHUNK_BYTES > 4 * nth ? bytes / CHUNK_BYTES : 4 * nth;
        int64_t rows = (w->rows + n_chunks - 1) / n_chunks;
        t.job[j].chunk_rows = (rows + 15) / 16 * 16;
        t.job[j].n_chunks = (w->rows + t.job[j].chunk_rows - 1) / t.job[j].chunk_rows;
        total += t.job[j].n_chunks;
    }
    for (int i = 0; i < nth; i++) /* thread i owns chunks [total * i / nth, total * (i + 1) / nth) */
        atomic_store_explicit(&c->chunk_runs[i].range,
                              (uint64_t)(total * i / nth) << 32 | (uint64_t)(total * (i + 1) / nth),
                              memory_order_relaxed);
    llm_pool_run(c->pool, matvec_worker, &t); /* publishing the task orders the stores above */
}

typedef struct {
    llm_ctx   *c;
    int        layer, pos;
    atomic_int next_head;
} attention_task;

/* Each query head attends over positions 0..pos of its key/value head; heads are split across threads. */
static void attention_worker(void *arg, int ith, int nth) {
    (void)ith, (void)nth;
    attention_task *t = arg;
    llm_ctx *c = t->c;
    const llm_config *p = &c->cfg;
    int hd = p->head_dim, kv_dim = p->n_kv_heads * hd, group = p->n_heads / p->n_kv_heads;
    size_t layer_off = (size_t)t->layer * c->n_ctx * kv_dim;
    float scale = 1.0f / sqrtf((float)hd);
    for (int h; (h = atomic_fetch_add_explicit(&t->next_head, 1, memory_order_relaxed)) < p->n_heads;) {
        const float *q = c->q + (size_t)h * hd;
        float *att = c->att + (size_t)h * c->n_ctx;
        size_t kv_off = layer_off + (size_t)(h / group) * hd;
        for (int s = 0; s <= t->pos; s++)
            att[s] = c->vec.dot(q, c->key_cache + kv_off + (size_t)s * kv_dim, hd) * scale;
        softmax(att, t->pos + 1);
        float *out = c->xb + (size_t)h * hd;
        memset(out, 0, (size_t)hd * sizeof(float));
        for (int s = 0; s <= t->pos; s++)
            c->vec.axpy(out, att[s], c->value_cache + kv_off + (size_t)s * kv_dim, hd);
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* the forward pass */

static void forward_token(llm_ctx *c, int32_t token, int32_t pos, float *logits) {
    const llm_config *p = &c->cfg;
    int dim = p->dim, kv_dim = p->n_kv_heads * p->head_dim;
    float *x = c->x;

    const llm_tensor *emb = &c->w.token_embd;
    c->traits[emb->type].get_row(x, emb->data, token, dim);

    for (int l = 0; l < p->n_layers; l++) {
        const llm_layer *L = &c->layers[l];

        /* attention: the new key and value go straight into this position's cache slot */
        rmsnorm(c->xb, x, L->attn_norm.data, dim, p->norm_eps);
        size_t slot = ((size_t)l * c->n_ctx + pos) * kv_dim;
        float *k = c->key_cache + slot, *v = c->value_cache + slot;
        matvec(c, c->xb, c->q, &L->wq, k, &L->wk, v, &L->wv);
        add_bias(c->q, &L->bq);
        add_bias(k, &L->bk);
        add_bias(v, &L->bv);
        rope(c, c->q, p->n_heads, pos);
        rope(c, k, p->n_kv_heads, pos);
        attention_task at = {c, l, pos, 0};
        llm_pool_run(c->pool, attention_worker, &at);
        matvec(c, c->xb, c->xb2, &L->wo, NULL, NULL, NULL, NULL);
        for (int i = 0; i < dim; i++) x[i] += c->xb2[i];

        /* feed-forward: w_down(silu(w_gate(x)) * w_up(x)) */
        rmsnorm(c->xb, x, L->ffn_norm.data, dim, p->norm_eps);
        matvec(c, c->xb, c->hb, &L->w_gate, c->hb2, &L->w_up, NULL, NULL);
        for (int i = 0; i < p->hidden_dim; i++) c->hb[i] = silu(c->hb[i]) * c->hb2[i];
        matvec(c, c->hb, c->xb2, &L->w_down, NULL, NULL, NULL, NULL);
        for (int i = 0; i < dim; i++) x[i] += c->xb2[i];
    }

    rmsnorm(x, x, c->w.output_norm.data, dim, p->norm_eps);
    if (logits) {
        const llm_tensor *cls = c->w.output.data ? &c->w.output : &c->w.token_embd;
        matvec(c, x, logits, cls, NULL, NULL, NULL, NULL);
    }
}

int llm_forward(llm_ctx *c, const int32_t *tokens, int32_t n_tokens, int32_t pos, float *logits,
                int32_t all_logits) {
    if (!c) return LLM_ERR_INVALID;
    c->err[0] = '\0';
    if (!tokens) return fail(c->err, sizeof c->err, LLM_ERR_INVALID, "tokens is NULL");
    if (n_tokens < 1) return fail(c->err, sizeof c->err, LLM_ERR_INVALID, "n_tokens must be >= 1, got %d", n_tokens);
    if (pos < 0 || pos > c->n_ctx - n_tokens)
        return fail(c->err, sizeof c->err, LLM_ERR_INVALID, "positions %d..%lld do not fit the context of %d",
                    pos, (long long)pos + n_tokens - 1, c->n_ctx);
    for (int32_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= c->cfg.vocab_size)
            return fail(c->err, sizeof c->err, LLM_ERR_INVALID, "token %d at index %d is outside [0, %d)",
                        tokens[i], i, c->cfg.vocab_size);
    /* One token at a time for now; a later change makes the prompt a real batch. */
    for (int32_t i = 0; i < n_tokens; i++) {
        float *out = NULL;
        if (logits && all_logits) out = logits + (size_t)i * c->cfg.vocab_size;
        else if (logits && i == n_tokens - 1) out = logits;
        forward_token(c, tokens[i], pos + i, out);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------------- */
/* creation and checks */

static int check_tensor(const llm_tensor *t, const char *name, int layer, int64_t rows, int64_t cols,
                        int float_only, char *err, size_t errlen) {
    char where[64];
    if (layer >= 0) snprintf(where, sizeof where, "layer %d %s", layer, name);
    else snprintf(where, sizeof where, "%s", name);
    if (!t->data) return fail(err, errlen, LLM_ERR_INVALID, "%s: no data", where);
    if (t->type < 0 || t->type >= LLM_TYPE_COUNT || (float_only && t->type != LLM_F32))
        return fail(err, errlen, LLM_ERR_INVALID, "%s: unsupported type %d", where, t->type);
    if (t->rows != rows || t->cols != cols)
        return fail(err, errlen, LLM_ERR_INVALID, "%s: shape (%lld, %lld), expected (%lld, %lld)", where,
                    (long long)t->rows, (long long)t->cols, (long long)rows, (long long)cols);
    llm_type_traits traits;
    llm_type_traits_get(t->type, LLM_ISA_SCALAR, &traits);
    if (cols % traits.block_elems != 0)
        return fail(err, errlen, LLM_ERR_INVALID, "%s: %lld columns is not a whole number of %s blocks of %lld",
                    where, (long long)cols, traits.name, (long long)traits.block_elems);
    return 0;
}

static int check_weights(const llm_config *p, const llm_weights *w, char *err, size_t errlen) {
    int64_t dim = p->dim, hid = p->hidden_dim, q_dim = (int64_t)p->n_heads * p->head_dim;
    int64_t kv_dim = (int64_t)p->n_kv_heads * p->head_dim;
    int rc;
#define CHECK(t, name, layer, rows, cols, float_only) \
    if ((rc = check_tensor(t, name, layer, rows, cols, float_only, err, errlen)) != 0) return rc
    CHECK(&w->token_embd, "token_embd", -1, p->vocab_size, dim, 0);
    CHECK(&w->output_norm, "output_norm", -1, 1, dim, 1);
    if (w->output.data) CHECK(&w->output, "output", -1, p->vocab_size, dim, 0);
    if (!w->layers) return fail(err, errlen, LLM_ERR_INVALID, "no layers given");
    for (int l = 0; l < p->n_layers; l++) {
        const llm_layer *L = &w->layers[l];
        CHECK(&L->attn_norm, "attn_norm", l, 1, dim, 1);
        CHECK(&L->wq, "wq", l, q_dim, dim, 0);
        CHECK(&L->wk, "wk", l, kv_dim, dim, 0);
        CHECK(&L->wv, "wv", l, kv_dim, dim, 0);
        CHECK(&L->wo, "wo", l, dim, q_dim, 0);
        CHECK(&L->ffn_norm, "ffn_norm", l, 1, dim, 1);
        CHECK(&L->w_gate, "w_gate", l, hid, dim, 0);
        CHECK(&L->w_down, "w_down", l, dim, hid, 0);
        CHECK(&L->w_up, "w_up", l, hid, dim, 0);
        if (L->bq.data) CHECK(&L->bq, "bq", l, 1, q_dim, 1);
        if (L->bk.data) CHECK(&L->bk, "bk", l, 1, kv_dim, 1);
        if (L->bv.data) CHECK(&L->bv, "bv", l, 1, kv_dim, 1);
    }
#undef CHECK
    return 0;
}

static int check_config(const llm_config *p, int32_t n_ctx, int32_t n_threads, char *err, size_t errlen) {
    if (p->dim < 1 || p->hidden_dim < 1 || p->n_layers < 1 || p->n_heads < 1 || p->n_kv_heads < 1 ||
        p->head_dim < 1 || p->vocab_size < 1)
        return fail(err, errlen, LLM_ERR_INVALID,
                    "config dims must be positive (dim %d, hidden_dim %d, n_layers %d, n_heads %d, "
                    "n_kv_heads %d, head_dim %d, vocab_size %d)", p->dim, p->hidden_dim, p->n_layers,
                    p->n_heads, p->n_kv_heads, p->head_dim, p->vocab_size);
    if (p->n_heads % p->n_kv_heads != 0)
        return fail(err, errlen, LLM_ERR_INVALID, "n_heads %d is not a multiple of n_kv_heads %d",
                    p->n_heads, p->n_kv_heads);
    if (p->head_dim % 2 != 0)
        return fail(err, errlen, LLM_ERR_INVALID, "head_dim %d must be even for RoPE", p->head_dim);
    if (p->rope_style != LLM_ROPE_INTERLEAVED && p->rope_style != LLM_ROPE_HALVES)
        return fail(err, errlen, LLM_ERR_INVALID, "unknown rope_style %d", p->rope_style);
    if (!(p->rope_theta > 0.0f) || !isfinite(p->rope_theta) || !(p->norm_eps >= 0.0f) || !isfinite(p->norm_eps))
        return fail(err, errlen, LLM_ERR_INVALID, "bad rope_theta %g or norm_eps %g", (double)p->rope_theta,
                    (double)p->norm_eps);
    if (p->rope_freqs)
        for (int j = 0; j < p->head_dim / 2; j++)
            if (!isfinite(p->rope_freqs[j]) || p->rope_freqs[j] < 0.0f)
                return fail(err, errlen, LLM_ERR_INVALID, "rope_freqs[%d] is %g; frequencies must be finite and >= 0",
                            j, (double)p->rope_freqs[j]);
    if (n_ctx < 1) return fail(err, errlen, LLM_ERR_INVALID, "n_ctx must be >= 1, got %d", n_ctx);
    if (n_threads < 1 || n_threads > MAX_THREADS)
        return fail(err, errlen, LLM_ERR_INVALID, "n_threads must be in [1, %d], got %d", MAX_THREADS, n_threads);
    return 0;
}

/* calloc(a * b * c floats), NULL on overflow or failure. */
static float *alloc_floats(size_t a, size_t b, size_t c) {
    if (b && a > SIZE_MAX / sizeof(float) / b) return NULL;
    if (c && a * b > SIZE_MAX / sizeof(float) / c) return NULL;
    size_t n = a * b * c;
    return calloc(n > 0 ? n : 1, sizeof(float));
}

static void fill_rope_tables(llm_ctx *c, const float *freqs) {
    int half = c->cfg.head_dim / 2;
    for (int j = 0; j < half; j++) {
        double freq = freqs ? (double)freqs[j] : pow((double)c->cfg.rope_theta, -2.0 * j / c->cfg.head_dim);
        for (int32_t pos = 0; pos < c->n_ctx; pos++) {
            c->rope_cos[(size_t)pos * half + j] = (float)cos(pos * freq);
            c->rope_sin[(size_t)pos * half + j] = (float)sin(pos * freq);
        }
    }
}

int llm_create(const llm_config *p, const llm_weights *w, int32_t n_ctx, int32_t n_threads, int32_t isa,
               llm_ctx **out, char *err, size_t errlen) {
    int rc;
    if (err && errlen) err[0] = '\0';
    if (!out) return fail(err, errlen, LLM_ERR_INVALID, "out is NULL");
    *out = NULL;
    if (!p || !w) return fail(err, errlen, LLM_ERR_INVALID, "config or weights is NULL");
    if ((rc = check_config(p, n_ctx, n_threads, err, errlen)) != 0) return rc;
    if ((rc = check_weights(p, w, err, errlen)) != 0) return rc;
    if (isa == LLM_ISA_AUTO) isa = llm_isa_best();
    if (isa < LLM_ISA_SCALAR || isa > llm_isa_best())
        return fail(err, errlen, LLM_ERR_INVALID, "instruction set %d is not available on this CPU", isa);

    llm_ctx *c = calloc(1, sizeof *c);
    if (!c) return fail(err, errlen, LLM_ERR_NOMEM, "out of memory");
    c->cfg = *p;
    c->w = *w;
    c->n_ctx = n_ctx;
    c->isa = isa;
    for (int t = 0; t < LLM_TYPE_COUNT; t++) llm_type_traits_get(t, isa, &c->traits[t]);
    llm_vec_ops_get(isa, &c->vec);

    size_t dim = p->dim, q_dim = (size_t)p->n_heads * p->head_dim, kv_dim = (size_t)p->n_kv_heads * p->head_dim;
    c->layers = malloc((size_t)p->n_layers * sizeof *c->layers);
    c->x = alloc_floats(dim, 1, 1);
    c->xb = alloc_floats(dim > q_dim ? dim : q_dim, 1, 1);
    c->xb2 = alloc_floats(dim, 1, 1);
    c->hb = alloc_floats((size_t)p->hidden_dim, 1, 1);
    c->hb2 = alloc_floats((size_t)p->hidden_dim, 1, 1);
    c->q = alloc_floats(q_dim, 1, 1);
    size_t widest = dim > q_dim ? dim : q_dim; /* the longest vector a product reads */
    widest = widest > (size_t)p->hidden_dim ? widest : (size_t)p->hidden_dim;
    c->xq = malloc(q8_act_bytes((int64_t)widest) + 1);
    c->att = alloc_floats((size_t)p->n_heads, (size_t)n_ctx, 1);
    c->key_cache = alloc_floats((size_t)p->n_layers, (size_t)n_ctx, kv_dim);
    c->value_cache = alloc_floats((size_t)p->n_layers, (size_t)n_ctx, kv_dim);
    c->rope_cos = alloc_floats((size_t)n_ctx, (size_t)p->head_dim / 2, 1);
    c->rope_sin = alloc_floats((size_t)n_ctx, (size_t)p->head_dim / 2, 1);
    if (!c->layers || !c->x || !c->xb || !c->xb2 || !c->hb || !c->hb2 || !c->q || !c->xq || !c->att || !c->key_cache ||
        !c->value_cache || !c->rope_cos || !c->rope_sin) {
        llm_free(c);
        return fail(err, errlen, LLM_ERR_NOMEM, "out of memory allocating the KV cache for %d positions", n_ctx);
    }
    c->chunk_runs = aligned_alloc(_Alignof(chunk_run), (size_t)n_threads * sizeof *c->chunk_runs);
    if (!c->chunk_runs) {
        llm_free(c);
        return fail(err, errlen, LLM_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < n_threads; i++) atomic_init(&c->chunk_runs[i].range, 0);
    memcpy(c->layers, w->layers, (size_t)p->n_layers * sizeof *c->layers);
    c->w.layers = c->layers;
    fill_rope_tables(c, p->rope_freqs);
    c->cfg.rope_freqs = NULL; /* borrowed only until here */
    if ((rc = llm_pool_create(n_threads, &c->pool)) != 0) {
        llm_free(c);
        return fail(err, errlen, rc, rc == LLM_ERR_NOMEM ? "out of memory" : "could not start %d threads",
                    n_threads);
    }
    *out = c;
    return 0;
}

const char *llm_last_error(const llm_ctx *c) { return c ? c->err : "no context"; }

int32_t llm_ctx_isa(const llm_ctx *c) { return c ? c->isa : LLM_ERR_INVALID; }

void llm_free(llm_ctx *c) {
    if (!c) return;
    llm_pool_free(c->pool);
    free(c->chunk_runs);
    free(c->layers);
    free(c->x);
    free(c->xb);
    free(c->xb2);
    free(c->hb);
    free(c->hb2);
    free(c->q);
    free(c->xq);
    free(c->att);
    free(c->key_cache);
    free(c->value_cache);
    free(c->rope_cos);
    free(c->rope_sin);
    free(c);
}
