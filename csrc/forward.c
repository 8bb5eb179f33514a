/*
 * forward.c: the transformer. Given token ids and their positions, run the Llama architecture
 * (RMSNorm, rotary position embeddings, grouped-query attention over a KV cache, SwiGLU feed-forward)
 * and produce the logits of the next token. Weights are borrowed; everything else lives in llm_ctx.
 * The other families' options (llm_config: Gemma's norms after each block, soft-caps, GeGLU and sliding
 * windows, Qwen3's QK-norm, partial rotary, Granite's multipliers ...) are steps of the same layer loop.
 *
 * The matrix products go through the kernels of each tensor's type (kernels.h, products.h) and are
 * split across the thread pool by rows; this file only says *what* is computed, in the order the math
 * does it. A batch of n tokens goes through each layer together: every activation is a matrix with a row
 * per token, and each weight matrix is read once per batch.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "checks.h"
#include "kernels.h"
#include "kv_cache.h"
#include "products.h"
#include "threadpool.h"

typedef struct {
    float *cos, *sin; /* (n_ctx, rope_dim / 2) the rotation of each dimension pair at each position */
} rope_table;

struct llm_ctx {
    llm_config         cfg;      /* the caller's, each zero option replaced by its value (attn_scale ...) */
    llm_weights        w;
    llm_layer         *layers;   /* our copy of the caller's layer table */
    llm_kv_layer      *kv;       /* (n_layers) where each layer keeps its keys and values */
    int32_t           *layer_ropes; /* (n_layers) llm_layer_rope of each layer */
    int32_t            n_ctx;    /* positions the KV cache holds */
    int32_t            written;  /* the cache holds the sequence's positions 0..written-1 (rings: the latest) */
    const int32_t     *starts;   /* (n) packed texts of this batch: where each token's text begins; NULL: one text */
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
    float *hb;  /* (n_batch, hidden_dim) gate, then the activation's output */
    float *hb2; /* (n_batch, hidden_dim) up projection */
    float *q;   /* (n_batch, q_dim) queries */
    float *k;   /* (n_batch, kv_dim) keys, on their way into the cache */
    float *v;   /* (n_batch, kv_dim) values, likewise */
    float *att; /* (n_threads, n_ctx) attention scores, a row per thread */
    float *att_part; /* (n_threads, head_dim) the weighted sum over the second run of a wrapped ring */
    void (*ffn_activation)(float *gate, const float *up, int64_t n); /* SwiGLU's or GeGLU's kernel */

    float *key_cache;       /* (sum of the layers' rows, kv_dim): kv[l] says where layer l's are */
    float *value_cache;     /* likewise */
    rope_table rope_global; /* rope_theta or rope_freqs, times rope_attn_factor */
    rope_table rope_local;  /* base rope_theta_local (NULL where no layer uses it) */

    char err[256];
};

/* ---------------------------------------------------------------------------------------------------- */
/* the building blocks */

static void rmsnorm(float *out, const float *x, const float *weight, int n, float eps) {
    float ss = 0.0f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float scale = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = 0; i < n; i++) out[i] = weight[i] * (scale * x[i]);
}

/* Rotates the first rope_dim dims of each head, pair j by the angle pos * freq_j of table t (freq_j =
   theta^(-2j / rope_dim) for plain RoPE); the other dims pass unrotated (partial rotary). */
static void rope(const llm_ctx *c, const rope_table *t, float *vec, int n_heads, int pos) {
    int half = c->cfg.rope_dim / 2;
    const float *cos_t = t->cos + (size_t)pos * half, *sin_t = t->sin + (size_t)pos * half;
    /* interleaved pairs (2j, 2j+1), or halves (j, j + rope_dim/2) */
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

static void scale(float *x, int64_t n, float s) {
    if (s == 1.0f) return; /* most models: no pass over the logits or the residual for nothing */
    for (int64_t i = 0; i < n; i++) x[i] *= s;
}

/* RMSNorm of each head_dim-wide head of vec, where the model has a norm (Qwen3, Gemma 3: QK-norm). */
static void head_norms(float *vec, int n_heads, const llm_tensor *norm, const llm_config *p) {
    for (int h = 0; norm->data && h < n_heads; h++)
        rmsnorm(vec + (size_t)h * p->head_dim, vec + (size_t)h * p->head_dim, norm->data, p->head_dim, p->norm_eps);
}

/* x += residual_scale * out for each of n tokens: a block's output joins the residual stream, RMS-normed
   first where the model has a norm after the block (Gemma 2, 3). */
static void add_block(const llm_config *p, float *x, float *out, const llm_tensor *post_norm, int n) {
    for (int64_t t = 0; t < n; t++) {
        if (post_norm->data) rmsnorm(out + t * p->dim, out + t * p->dim, post_norm->data, p->dim, p->norm_eps);
        scale(out + t * p->dim, p->dim, p->residual_scale);
        add(x + t * p->dim, out + t * p->dim, p->dim);
    }
}

/* The rotary table of layer l: the model's, the local one, or none (NULL). */
static const rope_table *layer_rope(const llm_ctx *c, int l) {
    int32_t kind = c->layer_ropes[l];
    return kind == LLM_LAYER_ROPE_NONE ? NULL : kind == LLM_LAYER_ROPE_LOCAL ? &c->rope_local : &c->rope_global;
}

/* Where layer l keeps the key (or value) of a position: its row of the layer's rows (kv_cache.h). */
static float *kv_row(const llm_ctx *c, float *cache, int layer, int32_t position) {
    size_t kv_dim = (size_t)c->cfg.n_kv_heads * c->cfg.head_dim;
    const llm_kv_layer *kv = &c->kv[layer];
    return cache + ((size_t)kv->first_row + (size_t)(position % kv->rows)) * kv_dim;
}

/* ---------------------------------------------------------------------------------------------------- */
/* attention, shared out among the threads */

typedef struct {
    llm_ctx   *c;
    int        layer, pos, n;
    atomic_int next; /* the next (token, head) pair to claim */
} attention_task;

/* Each (token, query head) pair attends over positions first..pos+token of its key/value head (first: 0, or
   the start of the layer's window); the pairs are shared out among the threads, each with its own row of
   scores. On a ring the positions lie in one run of rows or, wrapped, two: one softmax over both. */
static void attention_worker(void *arg, int ith, int nth) {
    (void)nth;
    attention_task *t = arg;
    llm_ctx *c = t->c;
    const llm_config *p = &c->cfg;
    const llm_vec_ops *vec = &c->kernels->vec;
    int hd = p->head_dim, q_dim = p->n_heads * hd, kv_dim = p->n_kv_heads * hd, group = p->n_heads / p->n_kv_heads;
    int32_t window = c->kv[t->layer].window;
    float *att = c->att + (size_t)ith * c->n_ctx, *part = c->att_part + (size_t)ith * hd;
    const float *keys = kv_row(c, c->key_cache, t->layer, 0), *values = kv_row(c, c->value_cache, t->layer, 0);
    for (int i; (i = atomic_fetch_add_explicit(&t->next, 1, memory_order_relaxed)) < t->n * p->n_heads;) {
        int token = i / p->n_heads, h = i % p->n_heads, last = t->pos + token;
        int first = window && last >= window ? last - window + 1 : 0;
        if (c->starts && first < c->starts[token]) first = c->starts[token]; /* packed: its own text only */
        llm_kv_span rows = llm_kv_span_of(&c->kv[t->layer], first, last);
        const float *q = c->q + (size_t)token * q_dim + (size_t)h * hd;
        size_t head = (size_t)(h / group) * hd, run0 = (size_t)rows.start * kv_dim + head; /* run1: row 0 */
        vec->scores(att, q, keys + run0, kv_dim, rows.n0, hd, p->attn_scale);
        vec->scores(att + rows.n0, q, keys + head, kv_dim, rows.n1, hd, p->attn_scale);
        if (p->attn_softcap) vec->softcap(att, rows.n0 + rows.n1, p->attn_softcap); /* Gemma 2 */
        vec->softmax(att, rows.n0 + rows.n1);
        float *out = c->xb + (size_t)token * c->xb_width + (size_t)h * hd;
        vec->weighted_sum(out, att, values + run0, kv_dim, rows.n0, hd);
        if (rows.n1) {
            vec->weighted_sum(part, att + rows.n0, values + head, kv_dim, rows.n1, hd);
            add(out, part, hd);
        }
    }
}

/* xb = softmax(attn_scale q k^T) v for each query head of the n tokens at positions pos.., over the keys and
   values of layer l's cache up to each token's own position (causal), within the layer's window if it has one. */
static void attention(llm_ctx *c, int layer, int32_t pos, int n) {
    attention_task task = {c, layer, pos, n, 0};
    llm_pool_run(c->pool, attention_worker, &task);
}

/* ---------------------------------------------------------------------------------------------------- */
/* the forward pass */

/* n <= n_batch tokens at positions pos.. through every layer together; logits for the last token, for
   all of them (all_logits), or none (logits == NULL); with states, every token's final-normed state too. */
static void forward_batch(llm_ctx *c, const int32_t *tokens, int n, int32_t pos, float *logits, int all_logits,
                          float *states) {
    const llm_config *p = &c->cfg;
    int64_t dim = p->dim, q_dim = (int64_t)p->n_heads * p->head_dim, kv_dim = (int64_t)p->n_kv_heads * p->head_dim;
    int64_t hidden = p->hidden_dim, wide = c->xb_width;
    float *x = c->x, *xb = c->xb, *xb2 = c->xb2, *hb = c->hb, *hb2 = c->hb2, *q = c->q, *k = c->k, *v = c->v;

    const llm_tensor *embedding = &c->w.token_embd;
    for (int t = 0; t < n; t++) { /* x (n, dim) = the tokens' rows of the embedding, times embed_scale */
        llm_types[embedding->type].get_row(x + t * dim, embedding->data, tokens[t], dim);
        scale(x + t * dim, dim, p->embed_scale);
    }

    for (int l = 0; l < p->n_layers; l++) {
        const llm_layer *L = &c->layers[l];
        const rope_table *rotation = layer_rope(c, l); /* NULL: this layer has no RoPE */

        /* attention block: x += residual_scale * post_norm(attention(rmsnorm(x)) Wo) */
        for (int t = 0; t < n; t++) /* xb (n, dim) */
            rmsnorm(xb + t * wide, x + t * dim, L->attn_norm.data, p->dim, p->norm_eps);
        llm_product qkv[] = {{q, q_dim, &L->wq}, {k, kv_dim, &L->wk}, {v, kv_dim, &L->wv}};
        llm_products_run(c->products, n, xb, wide, qkv, 3); /* q (n, q_dim), k and v (n, kv_dim) */
        for (int t = 0; t < n; t++) {
            float *qt = q + t * q_dim, *kt = k + t * kv_dim, *vt = v + t * kv_dim;
            add_bias(qt, &L->bq); /* Qwen2 */
            add_bias(kt, &L->bk);
            add_bias(vt, &L->bv);
            head_norms(qt, p->n_heads, &L->q_norm, p); /* Qwen3, Gemma 3 */
            head_norms(kt, p->n_kv_heads, &L->k_norm, p);
            if (rotation) { /* at the token's position in its own text */
                int at = pos + t - (c->starts ? c->starts[t] : 0);
                rope(c, rotation, qt, p->n_heads, at);
                rope(c, rotation, kt, p->n_kv_heads, at);
            }
            /* into the position's row of the cache (a ring's rows wrap, so row by row) */
            memcpy(kv_row(c, c->key_cache, l, pos + t), kt, (size_t)kv_dim * sizeof *kt);
            memcpy(kv_row(c, c->value_cache, l, pos + t), vt, (size_t)kv_dim * sizeof *vt);
        }
        attention(c, l, pos, n);                                                /* xb (n, q_dim) */
        llm_products_run(c->products, n, xb, wide, &(llm_product){xb2, dim, &L->wo}, 1); /* xb2 (n, dim) */
        add_block(p, x, xb2, &L->attn_post_norm, n);

        /* feed-forward block: x += residual_scale * post_norm((act(xb W_gate) * xb W_up) W_down), xb = rmsnorm(x);
           act: SiLU (SwiGLU) or the tanh GELU (GeGLU) */
        for (int t = 0; t < n; t++) /* xb (n, dim) */
            rmsnorm(xb + t * wide, x + t * dim, L->ffn_norm.data, p->dim, p->norm_eps);
        llm_product gate_up[] = {{hb, hidden, &L->w_gate}, {hb2, hidden, &L->w_up}};
        llm_products_run(c->products, n, xb, wide, gate_up, 2);                /* hb, hb2 (n, hidden) */
        for (int t = 0; t < n; t++) c->ffn_activation(hb + t * hidden, hb2 + t * hidden, hidden);
        llm_products_run(c->products, n, hb, hidden, &(llm_product){xb2, dim, &L->w_down}, 1); /* xb2 (n, dim) */
        add_block(p, x, xb2, &L->ffn_post_norm, n);
    }

    if (states) /* embeddings: (n, dim) after the final norm, no classifier */
        for (int t = 0; t < n; t++) rmsnorm(states + t * dim, x + t * dim, c->w.output_norm.data, p->dim, p->norm_eps);
    if (!logits) return;
    int first = all_logits ? 0 : n - 1; /* the final norm and the classifier only run where logits are wanted */
    for (int t = first; t < n; t++) rmsnorm(x + t * dim, x + t * dim, c->w.output_norm.data, p->dim, p->norm_eps);
    const llm_tensor *classifier = c->w.output.data ? &c->w.output : &c->w.token_embd;
    llm_products_run(c->products, n - first, x + first * dim, dim, &(llm_product){logits, p->vocab_size, classifier}, 1);
    int64_t n_logits = (int64_t)(n - first) * p->vocab_size;
    scale(logits, n_logits, p->logit_scale); /* Granite */
    if (p->final_softcap) c->kernels->vec.softcap(logits, n_logits, p->final_softcap); /* Gemma 2 */
}

/* llm_forward and llm_forward_hidden: check, then run the tokens in batches of up to n_batch. */
static int run(llm_ctx *c, const int32_t *tokens, int32_t n_tokens, int32_t pos, float *logits, int32_t all_logits,
               float *hidden) {
    if (!c) return LLM_ERR_INVALID;
    c->err[0] = '\0';
    if (!tokens) return llm_fail(c->err, sizeof c->err, LLM_ERR_INVALID, "tokens is NULL");
    if (n_tokens < 1)
        return llm_fail(c->err, sizeof c->err, LLM_ERR_INVALID, "n_tokens must be >= 1, got %d", n_tokens);
    if (pos < 0 || pos > c->n_ctx - n_tokens)
        return llm_fail(c->err, sizeof c->err, LLM_ERR_INVALID, "positions %d..%lld do not fit the context of %d",
                        pos, (long long)pos + n_tokens - 1, c->n_ctx);
    if (pos > c->written)
        return llm_fail(c->err, sizeof c->err, LLM_ERR_INVALID, "position %d is past the cache, which holds positions "
                        "0..%d: a forward continues the sequence or starts over at 0", pos, c->written - 1);
    int32_t resume_min = llm_kv_resume_min(c->kv, c->cfg.n_layers);
    if (pos != 0 && pos < resume_min)
        return llm_fail(c->err, sizeof c->err, LLM_ERR_INVALID, "position %d needs keys that the sliding-window "
                        "layers' caches have dropped: continue from position %d or later, or start over at 0", pos,
                        resume_min);
    for (int32_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= c->cfg.vocab_size)
            return llm_fail(c->err, sizeof c->err, LLM_ERR_INVALID, "token %d at index %d is outside [0, %d)",
                            tokens[i], i, c->cfg.vocab_size);
    for (int32_t i = 0; i < n_tokens; i += c->n_batch) {
        int n = n_tokens - i < c->n_batch ? n_tokens - i : c->n_batch;
        float *out = NULL;
        if (logits && all_logits) out = logits + (size_t)i * c->cfg.vocab_size;
        else if (logits && i + n == n_tokens) out = logits;
        forward_batch(c, tokens + i, n, pos + i, out, all_logits, hidden ? hidden + (size_t)i * c->cfg.dim : NULL);
        llm_kv_advance(c->kv, c->cfg.n_layers, pos + i, pos + i + n);
        c->written = pos + i + n;
    }
    return 0;
}

int llm_forward(llm_ctx *c, const int32_t *tokens, int32_t n_tokens, int32_t pos, float *logits,
                int32_t all_logits) {
    return run(c, tokens, n_tokens, pos, logits, all_logits, NULL);
}

int llm_forward_hidden(llm_ctx *c, const int32_t *tokens, int32_t n_tokens, int32_t pos, float *hidden) {
    if (c && !hidden) return llm_fail(c->err, sizeof c->err, LLM_ERR_INVALID, "hidden is NULL");
    return run(c, tokens, n_tokens, pos, NULL, 0, hidden);
}

int llm_forward_hidden_packed(llm_ctx *c, const int32_t *tokens, int32_t n_tokens, const int32_t *text_starts,
                              float *hidden) {
    if (!c) return LLM_ERR_INVALID;
    if (!text_starts) return llm_fail(c->err, sizeof c->err, LLM_ERR_INVALID, "text_starts is NULL");
    if (n_tokens > c->n_batch)
        return llm_fail(c->err, sizeof c->err, LLM_ERR_INVALID, "%d packed tokens do not fit one batch of %d",
                        n_tokens, c->n_batch);
    for (int32_t t = 0; t < n_tokens; t++) /* a text starts at its first token and runs on unbroken */
        if (text_starts[t] != t && (t == 0 || text_starts[t] != text_starts[t - 1]))
            return llm_fail(c->err, sizeof c->err, LLM_ERR_INVALID, "text_starts[%d] is %d: a token's text starts "
                            "at the token itself or where its predecessor's does", t, text_starts[t]);
    c->starts = text_starts;
    int rc = llm_forward_hidden(c, tokens, n_tokens, 0, hidden);
    c->starts = NULL;
    if (rc == 0) c->written = 0; /* the cache holds no one sequence: the next forward starts at 0 */
    return rc;
}

/* ---------------------------------------------------------------------------------------------------- */
/* creation */

/* Whether any layer uses the local RoPE table (which is then built). */
static int uses_local_rope(const llm_config *p) {
    for (int l = 0; p->layer_ropes && l < p->n_layers; l++)
        if (p->layer_ropes[l] == LLM_LAYER_ROPE_LOCAL) return 1;
    return 0;
}

/* The context's float buffers, each (rows, cols) floats: the one list that llm_create allocates and
   llm_ctx_bytes counts. c may be a scratch struct when only the sizes are wanted. */
enum { N_BUFFERS = 16 };
typedef struct {
    float **ptr;
    size_t  rows, cols; /* 0 rows: not needed (left NULL) */
} float_buffer;

static void plan_buffers(llm_ctx *c, const llm_config *p, int32_t n_ctx, int32_t n_batch, int32_t n_threads,
                         float_buffer out[N_BUFFERS]) {
    size_t nb = (size_t)n_batch, ctx = (size_t)n_ctx, dim = (size_t)p->dim, hidden = (size_t)p->hidden_dim;
    size_t q_dim = (size_t)p->n_heads * (size_t)p->head_dim, kv_dim = (size_t)p->n_kv_heads * (size_t)p->head_dim;
    size_t wide = dim > q_dim ? dim : q_dim, half = (size_t)(p->rope_dim ? p->rope_dim : p->head_dim) / 2;
    size_t kv_rows = 0, local = uses_local_rope(p) ? ctx : 0, hd = (size_t)p->head_dim, nth = (size_t)n_threads;
    for (int l = 0; l < p->n_layers; l++) kv_rows += (size_t)llm_kv_rows(p, l, n_ctx, n_batch); /* < 2^62 */
    float_buffer plan[N_BUFFERS] = {
        {&c->x, nb, dim}, {&c->xb, nb, wide}, {&c->xb2, nb, dim}, {&c->hb, nb, hidden}, {&c->hb2, nb, hidden},
        {&c->q, nb, q_dim}, {&c->k, nb, kv_dim}, {&c->v, nb, kv_dim}, {&c->att, nth, ctx}, {&c->att_part, nth, hd},
        {&c->key_cache, kv_rows, kv_dim}, {&c->value_cache, kv_rows, kv_dim},
        {&c->rope_global.cos, ctx, half}, {&c->rope_global.sin, ctx, half},
        {&c->rope_local.cos, local, half}, {&c->rope_local.sin, local, half},
    };
    memcpy(out, plan, sizeof plan);
}

/* Bytes of a (rows, cols) float buffer into *bytes; 0 if that overflows. */
static int buffer_bytes(const float_buffer *b, size_t *bytes) {
    if (b->cols && b->rows > SIZE_MAX / sizeof(float) / b->cols) return 0;
    *bytes = b->rows * b->cols * sizeof(float);
    return 1;
}

/* The longest row a product reads: the normed input (dim or q_dim) or the FFN's hidden layer. */
static int64_t widest_input(const llm_config *p) {
    int64_t q_dim = (int64_t)p->n_heads * p->head_dim, wide = p->dim > q_dim ? p->dim : q_dim;
    return wide > p->hidden_dim ? wide : p->hidden_dim;
}

int64_t llm_ctx_bytes(const llm_config *p, int32_t n_ctx, int32_t n_batch, int32_t n_threads) {
    if (!p || llm_check_config(p, n_ctx, n_threads, NULL, 0) != 0 || n_batch < 1) return LLM_ERR_INVALID;
    if (n_batch > n_ctx) n_batch = n_ctx;
    llm_ctx sizes_only; /* plan_buffers wants somewhere to point; nothing is allocated */
    float_buffer plan[N_BUFFERS];
    plan_buffers(&sizes_only, p, n_ctx, n_batch, n_threads, plan);
    /* The products' scratch is sized for the best level: a context on a forced lower level needs no more. */
    size_t per_layer = sizeof(llm_layer) + sizeof(llm_kv_layer) + sizeof(int32_t); /* layers, kv, layer_ropes */
    size_t total = sizeof(llm_ctx) + (size_t)p->n_layers * per_layer +
                   llm_products_bytes(llm_kernels_get(llm_isa_best()), n_threads, widest_input(p), n_batch);
    for (int i = 0; i < N_BUFFERS; i++) {
        size_t bytes;
        if (!buffer_bytes(&plan[i], &bytes) || total > (size_t)INT64_MAX - bytes) return LLM_ERR_NOMEM;
        total += bytes;
    }
    return (int64_t)total;
}

/* cos and sin of each position's angle pos * freq_j, times `factor`; freq_j from freqs, else theta^(-2j / rope_dim). */
static void fill_rope_table(rope_table *t, int32_t n_ctx, int rope_dim, const float *freqs, double theta,
                            double factor) {
    int half = rope_dim / 2;
    for (int j = 0; j < half; j++) {
        double freq = freqs ? (double)freqs[j] : pow(theta, -2.0 * j / rope_dim);
        for (int32_t pos = 0; pos < n_ctx; pos++) {
            t->cos[(size_t)pos * half + j] = (float)(factor * cos(pos * freq));
            t->sin[(size_t)pos * half + j] = (float)(factor * sin(pos * freq));
        }
    }
}

/* The config with each zero option replaced by the value it stands for (llmrun.h), so the loop computes each
   step the same way for every family. */
static llm_config with_defaults(const llm_config *p) {
    llm_config c = *p;
    c.rope_dim = c.rope_dim ? c.rope_dim : c.head_dim;
    c.rope_attn_factor = c.rope_attn_factor ? c.rope_attn_factor : 1.0f;
    c.embed_scale = c.embed_scale ? c.embed_scale : 1.0f;
    c.attn_scale = c.attn_scale ? c.attn_scale : 1.0f / sqrtf((float)c.head_dim);
    c.residual_scale = c.residual_scale ? c.residual_scale : 1.0f;
    c.logit_scale = c.logit_scale ? c.logit_scale : 1.0f;
    c.rope_freqs = NULL; /* borrowed only until llm_create returns, like the layer arrays */
    c.layer_ropes = c.layer_windows = NULL;
    return c;
}

int llm_create(const llm_config *p, const llm_weights *w, int32_t n_ctx, int32_t n_batch, int32_t n_threads,
               int32_t isa, llm_ctx **out, char *err, size_t errlen) {
    int rc;
    if (err && errlen) err[0] = '\0';
    if (!out) return llm_fail(err, errlen, LLM_ERR_INVALID, "out is NULL");
    *out = NULL;
    if (!p || !w) return llm_fail(err, errlen, LLM_ERR_INVALID, "config or weights is NULL");
    if ((rc = llm_check_config(p, n_ctx, n_threads, err, errlen)) != 0) return rc;
    if (n_batch < 1) return llm_fail(err, errlen, LLM_ERR_INVALID, "n_batch must be >= 1, got %d", n_batch);
    if (n_batch > n_ctx) n_batch = n_ctx; /* a batch never holds more tokens than the context */
    if ((rc = llm_check_weights(p, w, err, errlen)) != 0) return rc;
    if (isa == LLM_ISA_AUTO) isa = llm_isa_best();
    const llm_kernels *kernels = llm_kernels_get(isa);
    if (!kernels) return llm_fail(err, errlen, LLM_ERR_INVALID, "instruction set %d is not available on this CPU", isa);

    llm_ctx *c = calloc(1, sizeof *c);
    if (!c) return llm_fail(err, errlen, LLM_ERR_NOMEM, "out of memory");
    c->cfg = with_defaults(p);
    c->w = *w;
    c->n_ctx = n_ctx;
    c->n_batch = n_batch;
    c->isa = isa;
    c->kernels = kernels;
    c->ffn_activation = p->ffn_activation == LLM_FFN_GELU_TANH ? kernels->vec.geglu : kernels->vec.swiglu;

    size_t dim = (size_t)p->dim, q_dim = (size_t)p->n_heads * p->head_dim, n_layers = (size_t)p->n_layers;
    c->xb_width = (int64_t)(dim > q_dim ? dim : q_dim);
    c->layers = malloc(n_layers * sizeof *c->layers);
    c->kv = malloc(n_layers * sizeof *c->kv);
    c->layer_ropes = calloc(n_layers, sizeof *c->layer_ropes); /* zeros: LLM_LAYER_ROPE_GLOBAL */
    int ok = c->layers && c->kv && c->layer_ropes;
    float_buffer plan[N_BUFFERS];
    plan_buffers(c, p, n_ctx, n_batch, n_threads, plan);
    for (int i = 0; i < N_BUFFERS && ok; i++) {
        size_t bytes;
        ok = buffer_bytes(&plan[i], &bytes) && (bytes == 0 || (*plan[i].ptr = calloc(1, bytes)) != NULL);
    }
    if (!ok) {
        llm_free(c);
        return llm_fail(err, errlen, LLM_ERR_NOMEM, "out of memory allocating the KV cache for %d positions", n_ctx);
    }
    memcpy(c->layers, w->layers, n_layers * sizeof *c->layers);
    c->w.layers = c->layers;
    llm_kv_plan(c->kv, p, n_ctx, n_batch);
    if (p->layer_ropes) memcpy(c->layer_ropes, p->layer_ropes, n_layers * sizeof *c->layer_ropes);
    fill_rope_table(&c->rope_global, n_ctx, c->cfg.rope_dim, p->rope_freqs, p->rope_theta, c->cfg.rope_attn_factor);
    if (c->rope_local.cos) fill_rope_table(&c->rope_local, n_ctx, c->cfg.rope_dim, NULL, p->rope_theta_local, 1.0);
    if ((rc = llm_pool_create(n_threads, &c->pool)) != 0) {
        llm_free(c);
        return llm_fail(err, errlen, rc, rc == LLM_ERR_NOMEM ? "out of memory" : "could not start %d threads",
                        n_threads);
    }
    if ((rc = llm_products_create(kernels, c->pool, widest_input(p), n_batch, &c->products)) != 0) {
        llm_free(c);
        return llm_fail(err, errlen, rc, "out of memory");
    }
    *out = c;
    return 0;
}

int32_t llm_ctx_resume_min(const llm_ctx *c) { return c ? llm_kv_resume_min(c->kv, c->cfg.n_layers) : LLM_ERR_INVALID; }

const char *llm_last_error(const llm_ctx *c) { return c ? c->err : "no context"; }

int32_t llm_ctx_isa(const llm_ctx *c) { return c ? c->isa : LLM_ERR_INVALID; }

void llm_free(llm_ctx *c) {
    if (!c) return;
    llm_products_free(c->products);
    llm_pool_free(c->pool);
    free(c->layers);
    free(c->kv);
    free(c->layer_ropes);
    float_buffer plan[N_BUFFERS]; /* the buffers llm_create allocated (NULL where it did not get that far) */
    plan_buffers(c, &c->cfg, c->n_ctx, c->n_batch, 1, plan);
    for (int i = 0; i < N_BUFFERS; i++) free(*plan[i].ptr);
    free(c);
}
