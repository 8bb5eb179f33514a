/*
 * forward.c: the transformer. Given token ids and their positions, run the Llama architecture
 * (RMSNorm, rotary position embeddings, grouped-query attention over a KV cache, SwiGLU feed-forward)
 * and produce the logits of the next token. Weights are borrowed; everything else lives in llm_ctx.
 *
 * The matrix products go through the kernels of each tensor's type (kernels.h, products.h) and are
 * split across the thread pool by rows; this file only says *what* is computed, in the order the math
 * does it. A batch of n tokens goes through each layer together: every activation is a matrix with a row
 * per token, and each weight matrix is read once per batch.
 */
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "products.h"
#include "threadpool.h"

struct llm_ctx {
    llm_config         cfg;
    llm_weights        w;
    llm_layer         *layers;   /* our copy of the caller's layer table */
    int32_t            n_ctx;    /* positions the KV cache holds */
    int32_t            isa;
    const llm_kernels *kernels;  /* the kernels of `isa` */
    llm_pool          *pool;
    llm_products      *products; /* the matrix products, shared out among the pool's threads */

    /* activations of the current batch: a row per token */
    int32_t n_batch;  /* the most tokens a batch holds */
    int64_t xb_width; /* max(dim, q_dim): the row length of xb */
    float *x;   /* (n_batch, dim) residual stream */
    float *xb;  /* (n_batch, xb_width) normed input of a block; the attention's output */
    float *xb2; /* (n_batch, dim) output of a block before it is added to the residual */
    float *hb;  /* (n_batch, hidden_dim) gate, then SwiGLU output */
    float *hb2; /* (n_batch, hidden_dim) up projection */
    float *q;   /* (n_batch, q_dim) queries */
    float *att; /* (n_threads, n_ctx) attention scores, a row per thread */

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

/* x += bias, where the model has one (bias->data != NULL). */
static void add_bias(float *x, const llm_tensor *bias) {
    const float *b = bias->data;
    if (b)
        for (int64_t i = 0; i < bias->cols; i++) x[i] += b[i];
}

static void add(float *x, const float *y, int n) {
    for (int i = 0; i < n; i++) x[i] += y[i];
}

/* Where layer l keeps the key (or value) of a position: the row of a (n_layers, n_ctx, kv_dim) cache. */
static float *kv_row(const llm_ctx *c, float *cache, int layer, int32_t position) {
    size_t kv_dim = (size_t)c->cfg.n_kv_heads * c->cfg.head_dim;
    return cache + ((size_t)layer * c->n_ctx + (size_t)position) * kv_dim;
}

/* ---------------------------------------------------------------------------------------------------- */
/* attention, shared out among the threads */

typedef struct {
    llm_ctx   *c;
    int        layer, pos, n;
    atomic_int next; /* the next (token, head) pair to claim */
} attention_task;

/* Each (token, query head) pair attends over positions 0..pos+token of its key/value head; the pairs are
   shared out among the threads, each with its own row of scores. */
static void attention_worker(void *arg, int ith, int nth) {
    (void)nth;
    attention_task *t = arg;
    llm_ctx *c = t->c;
    const llm_config *p = &c->cfg;
    int hd = p->head_dim, q_dim = p->n_heads * hd, kv_dim = p->n_kv_heads * hd, group = p->n_heads / p->n_kv_heads;
    float scale = 1.0f / sqrtf((float)hd);
    float *att = c->att + (size_t)ith * c->n_ctx;
    const float *keys = kv_row(c, c->key_cache, t->layer, 0), *values = kv_row(c, c->value_cache, t->layer, 0);
    for (int i; (i = atomic_fetch_add_explicit(&t->next, 1, memory_order_relaxed)) < t->n * p->n_heads;) {
        int token = i / p->n_heads, h = i % p->n_heads, last = t->pos + token;
        const float *q = c->q + (size_t)token * q_dim + (size_t)h * hd;
        size_t kv_head = (size_t)(h / group) * hd;
        c->kernels->vec.scores(att, q, keys + kv_head, kv_dim, last + 1, hd, scale);
        c->kernels->vec.softmax(att, last + 1);
        float *out = c->xb + (size_t)token * c->xb_width + (size_t)h * hd;
        c->kernels->vec.weighted_sum(out, att, values + kv_head, kv_dim, last + 1, hd);
    }
}

/* xb = softmax(q k^T / sqrt(head_dim)) v for each query head of the n tokens at positions pos.., over the
   keys and values of layer l's cache up to each token's own position (causal). */
static void attention(llm_ctx *c, int layer, int32_t pos, int n) {
    attention_task task = {c, layer, pos, n, 0};
    llm_pool_run(c->pool, attention_worker, &task);
}

/* ---------------------------------------------------------------------------------------------------- */
/* the forward pass */

/* n <= n_batch tokens at positions pos.. through every layer together; logits for the last token, for
   all of them (all_logits), or none (logits == NULL). */
static void forward_batch(llm_ctx *c, const int32_t *tokens, int n, int32_t pos, float *logits, int all_logits) {
    const llm_config *p = &c->cfg;
    int64_t dim = p->dim, q_dim = (int64_t)p->n_heads * p->head_dim, kv_dim = (int64_t)p->n_kv_heads * p->head_dim;
    int64_t hidden = p->hidden_dim, wide = c->xb_width;
    float *x = c->x, *xb = c->xb, *xb2 = c->xb2, *hb = c->hb, *hb2 = c->hb2, *q = c->q;

    const llm_tensor *embedding = &c->w.token_embd;
    for (int t = 0; t < n; t++) /* x (n, dim) = the tokens' rows of the embedding */
        llm_types[embedding->type].get_row(x + t * dim, embedding->data, tokens[t], dim);

    for (int l = 0; l < p->n_layers; l++) {
        const llm_layer *L = &c->layers[l];
        /* this batch's keys and values go straight into their positions' rows of the cache */
        float *k = kv_row(c, c->key_cache, l, pos), *v = kv_row(c, c->value_cache, l, pos); /* (n, kv_dim) */

        /* attention block: x += attention(rmsnorm(x)) Wo */
        for (int t = 0; t < n; t++) /* xb (n, dim) */
            rmsnorm(xb + t * wide, x + t * dim, L->attn_norm.data, p->dim, p->norm_eps);
        llm_product qkv[] = {{q, q_dim, &L->wq}, {k, kv_dim, &L->wk}, {v, kv_dim, &L->wv}};
        llm_products_run(c->products, n, xb, wide, qkv, 3); /* q (n, q_dim), k and v (n, kv_dim) */
        for (int t = 0; t < n; t++) {
            add_bias(q + t * q_dim, &L->bq); /* Qwen2 */
            add_bias(k + t * kv_dim, &L->bk);
            add_bias(v + t * kv_dim, &L->bv);
            rope(c, q + t * q_dim, p->n_heads, pos + t);
            rope(c, k + t * kv_dim, p->n_kv_heads, pos + t);
        }
        attention(c, l, pos, n);                                                /* xb (n, q_dim) */
        llm_products_run(c->products, n, xb, wide, &(llm_product){xb2, dim, &L->wo}, 1); /* xb2 (n, dim) */
        for (int t = 0; t < n; t++) add(x + t * dim, xb2 + t * dim, p->dim);

        /* feed-forward block: x += (silu(xb W_gate) * xb W_up) W_down, xb = rmsnorm(x) */
        for (int t = 0; t < n; t++) /* xb (n, dim) */
            rmsnorm(xb + t * wide, x + t * dim, L->ffn_norm.data, p->dim, p->norm_eps);
        llm_product gate_up[] = {{hb, hidden, &L->w_gate}, {hb2, hidden, &L->w_up}};
        llm_products_run(c->products, n, xb, wide, gate_up, 2);                /* hb, hb2 (n, hidden) */
        for (int t = 0; t < n; t++) c->kernels->vec.swiglu(hb + t * hidden, hb2 + t * hidden, hidden);
        llm_products_run(c->products, n, hb, hidden, &(llm_product){xb2, dim, &L->w_down}, 1); /* xb2 (n, dim) */
        for (int t = 0; t < n; t++) add(x + t * dim, xb2 + t * dim, p->dim);
    }

    if (!logits) return;
    int first = all_logits ? 0 : n - 1; /* the final norm and the classifier only run where logits are wanted */
    for (int t = first; t < n; t++) rmsnorm(x + t * dim, x + t * dim, c->w.output_norm.data, p->dim, p->norm_eps);
    const llm_tensor *classifier = c->w.output.data ? &c->w.output : &c->w.token_embd;
    llm_products_run(c->products, n - first, x + first * dim, dim, &(llm_product){logits, p->vocab_size, classifier}, 1);
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
    for (int32_t i = 0; i < n_tokens; i += c->n_batch) {
        int n = n_tokens - i < c->n_batch ? n_tokens - i : c->n_batch;
        float *out = NULL;
        if (logits && all_logits) out = logits + (size_t)i * c->cfg.vocab_size;
        else if (logits && i + n == n_tokens) out = logits;
        forward_batch(c, tokens + i, n, pos + i, out, all_logits);
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
    const llm_type_info *type = &llm_types[t->type];
    if (cols % type->block_elems != 0)
        return fail(err, errlen, LLM_ERR_INVALID, "%s: %lld columns is not a whole number of %s blocks of %lld",
                    where, (long long)cols, type->name, (long long)type->block_elems);
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
    if (n_threads < 1 || n_threads > LLM_MAX_THREADS)
        return fail(err, errlen, LLM_ERR_INVALID, "n_threads must be in [1, %d], got %d", LLM_MAX_THREADS, n_threads);
    return 0;
}

/* The context's float buffers, each (rows, cols) floats: the one list that llm_create allocates and
   llm_ctx_bytes counts. c may be a scratch struct when only the sizes are wanted. */
enum { N_BUFFERS = 11 };
typedef struct {
    float **ptr;
    size_t  rows, cols;
} float_buffer;

static void plan_buffers(llm_ctx *c, const llm_config *p, int32_t n_ctx, int32_t n_batch, int32_t n_threads,
                         float_buffer out[N_BUFFERS]) {
    size_t nb = (size_t)n_batch, ctx = (size_t)n_ctx, dim = (size_t)p->dim, hidden = (size_t)p->hidden_dim;
    size_t q_dim = (size_t)p->n_heads * (size_t)p->head_dim, kv_dim = (size_t)p->n_kv_heads * (size_t)p->head_dim;
    size_t wide = dim > q_dim ? dim : q_dim, half = (size_t)p->head_dim / 2, layers = (size_t)p->n_layers;
    float_buffer plan[N_BUFFERS] = {
        {&c->x, nb, dim}, {&c->xb, nb, wide}, {&c->xb2, nb, dim}, {&c->hb, nb, hidden}, {&c->hb2, nb, hidden},
        {&c->q, nb, q_dim}, {&c->att, (size_t)n_threads, ctx},
        {&c->key_cache, layers * ctx, kv_dim}, {&c->value_cache, layers * ctx, kv_dim}, /* n_layers, n_ctx <= 2^31 */
        {&c->rope_cos, ctx, half}, {&c->rope_sin, ctx, half},
    };
    memcpy(out, plan, sizeof plan);
}

/* Bytes of a (rows, cols) float buffer, or 0 if that overflows. */
static size_t buffer_bytes(const float_buffer *b) {
    if (b->cols && b->rows > SIZE_MAX / sizeof(float) / b->cols) return 0;
    return b->rows * b->cols * sizeof(float);
}

/* The longest row a product reads: the normed input (dim or q_dim) or the FFN's hidden layer. */
static int64_t widest_input(const llm_config *p) {
    int64_t q_dim = (int64_t)p->n_heads * p->head_dim, wide = p->dim > q_dim ? p->dim : q_dim;
    return wide > p->hidden_dim ? wide : p->hidden_dim;
}

int64_t llm_ctx_bytes(const llm_config *p, int32_t n_ctx, int32_t n_batch, int32_t n_threads) {
    if (!p || check_config(p, n_ctx, n_threads, NULL, 0) != 0 || n_batch < 1) return LLM_ERR_INVALID;
    if (n_batch > n_ctx) n_batch = n_ctx;
    llm_ctx sizes_only; /* plan_buffers wants somewhere to point; nothing is allocated */
    float_buffer plan[N_BUFFERS];
    plan_buffers(&sizes_only, p, n_ctx, n_batch, n_threads, plan);
    /* The products' scratch is sized for the best level: a context on a forced lower level needs no more. */
    size_t total = sizeof(llm_ctx) + (size_t)p->n_layers * sizeof(llm_layer) +
                   llm_products_bytes(llm_kernels_get(llm_isa_best()), n_threads, widest_input(p), n_batch);
    for (int i = 0; i < N_BUFFERS; i++) {
        size_t bytes = buffer_bytes(&plan[i]);
        if (bytes == 0 || total > (size_t)INT64_MAX - bytes) return LLM_ERR_NOMEM; /* more than any memory */
        total += bytes;
    }
    return (int64_t)total;
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

int llm_create(const llm_config *p, const llm_weights *w, int32_t n_ctx, int32_t n_batch, int32_t n_threads,
               int32_t isa, llm_ctx **out, char *err, size_t errlen) {
    int rc;
    if (err && errlen) err[0] = '\0';
    if (!out) return fail(err, errlen, LLM_ERR_INVALID, "out is NULL");
    *out = NULL;
    if (!p || !w) return fail(err, errlen, LLM_ERR_INVALID, "config or weights is NULL");
    if ((rc = check_config(p, n_ctx, n_threads, err, errlen)) != 0) return rc;
    if (n_batch < 1) return fail(err, errlen, LLM_ERR_INVALID, "n_batch must be >= 1, got %d", n_batch);
    if (n_batch > n_ctx) n_batch = n_ctx; /* a batch never holds more tokens than the context */
    if ((rc = check_weights(p, w, err, errlen)) != 0) return rc;
    if (isa == LLM_ISA_AUTO) isa = llm_isa_best();
    const llm_kernels *kernels = llm_kernels_get(isa);
    if (!kernels) return fail(err, errlen, LLM_ERR_INVALID, "instruction set %d is not available on this CPU", isa);

    llm_ctx *c = calloc(1, sizeof *c);
    if (!c) return fail(err, errlen, LLM_ERR_NOMEM, "out of memory");
    c->cfg = *p;
    c->w = *w;
    c->n_ctx = n_ctx;
    c->n_batch = n_batch;
    c->isa = isa;
    c->kernels = kernels;

    size_t dim = (size_t)p->dim, q_dim = (size_t)p->n_heads * p->head_dim;
    c->xb_width = (int64_t)(dim > q_dim ? dim : q_dim);
    c->layers = malloc((size_t)p->n_layers * sizeof *c->layers);
    int ok = c->layers != NULL;
    float_buffer plan[N_BUFFERS];
    plan_buffers(c, p, n_ctx, n_batch, n_threads, plan);
    for (int i = 0; i < N_BUFFERS && ok; i++) {
        size_t bytes = buffer_bytes(&plan[i]);
        ok = bytes > 0 && (*plan[i].ptr = calloc(1, bytes)) != NULL;
    }
    if (!ok) {
        llm_free(c);
        return fail(err, errlen, LLM_ERR_NOMEM, "out of memory allocating the KV cache for %d positions", n_ctx);
    }
    memcpy(c->layers, w->layers, (size_t)p->n_layers * sizeof *c->layers);
    c->w.layers = c->layers;
    fill_rope_tables(c, p->rope_freqs);
    c->cfg.rope_freqs = NULL; /* borrowed only until here */
    if ((rc = llm_pool_create(n_threads, &c->pool)) != 0) {
        llm_free(c);
        return fail(err, errlen, rc, rc == LLM_ERR_NOMEM ? "out of memory" : "could not start %d threads",
                    n_threads);
    }
    if ((rc = llm_products_create(kernels, c->pool, widest_input(p), n_batch, &c->products)) != 0) {
        llm_free(c);
        return fail(err, errlen, rc, "out of memory");
    }
    *out = c;
    return 0;
}

int32_t llm_ctx_resume_min(const llm_ctx *c) { return c ? 0 : LLM_ERR_INVALID; } /* no rings yet */

const char *llm_last_error(const llm_ctx *c) { return c ? c->err : "no context"; }

int32_t llm_ctx_isa(const llm_ctx *c) { return c ? c->isa : LLM_ERR_INVALID; }

void llm_free(llm_ctx *c) {
    if (!c) return;
    llm_products_free(c->products);
    llm_pool_free(c->pool);
    free(c->layers);
    free(c->x);
    free(c->xb);
    free(c->xb2);
    free(c->hb);
    free(c->hb2);
    free(c->q);
    free(c->att);
    free(c->key_cache);
    free(c->value_cache);
    free(c->rope_cos);
    free(c->rope_sin);
    free(c);
}
