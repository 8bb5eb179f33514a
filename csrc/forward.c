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
    llm_kv            *kv;       /* the KV cache's block pools and the sequences' tables (kv_cache.h) */
    int32_t           *layer_ropes; /* (n_layers) llm_layer_rope of each layer */
    int32_t            n_ctx;    /* positions one sequence may hold */
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
    float *att; /* (n_threads, attention_scratch) each thread's scratch of the attention */
    void (*ffn_activation)(float *gate, const float *up, int64_t n); /* SwiGLU's or GeGLU's kernel */
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

/* ---------------------------------------------------------------------------------------------------- */
/* attention, shared out among the threads */

/* Queries that share a pass over the keys: enough that reading a block of keys and values (from L2 or L3) costs
   little beside their arithmetic on it (measured: 32 to 64 and more all run near the kernel's peak, 16 short of it). */
enum { TILE_QUERIES = 64 };

typedef struct {
    llm_ctx               *c;
    const llm_batch_entry *e;
    int                    layer, n;
    int                    heads;      /* query heads per work item: a key/value head's group, or a part of it */
    int                    tile;       /* entries per chunk: TILE_QUERIES / group tokens, at least one */
    int                    per_chunk;  /* work items per chunk: kv heads x parts of the group */
    atomic_int             next;       /* the next work item to claim */
} attention_task;

/* Tokens of a tile, and the floats of each thread's scratch: a tile's tokens and a whole group of query heads. */
static int tile_tokens(const llm_config *p) {
    int group = p->n_heads / p->n_kv_heads;
    return group < TILE_QUERIES ? TILE_QUERIES / group : 1;
}

static size_t attention_scratch(const llm_config *p) {
    return llm_attention_scratch((int64_t)tile_tokens(p) * (p->n_heads / p->n_kv_heads), p->head_dim);
}

/* A work item is a chunk of `tile` batch entries and a key/value head with `heads` of its query heads; the chunk's
   runs of consecutive entries of one sequence (consecutive positions) are tiles, whose queries each read the keys
   and values of their head once (kernels.h llm_attention_tile). The longest chunks (the last: causal) go first. */
static void attention_worker(void *arg, int ith, int nth) {
    (void)nth;
    attention_task *t = arg;
    llm_ctx *c = t->c;
    const llm_config *p = &c->cfg;
    int hd = p->head_dim, q_dim = p->n_heads * hd, group = p->n_heads / p->n_kv_heads;
    int n_chunks = (t->n + t->tile - 1) / t->tile, parts = (group + t->heads - 1) / t->heads;
    float *scratch = c->att + (size_t)ith * attention_scratch(p);
    for (int i; (i = atomic_fetch_add_explicit(&t->next, 1, memory_order_relaxed)) < n_chunks * t->per_chunk;) {
        int chunk = n_chunks - 1 - i / t->per_chunk, kv_head = i % t->per_chunk / parts;
        int h = kv_head * group + i % t->per_chunk % parts * t->heads; /* its first query head */
        int n_head = t->heads < kv_head * group + group - h ? t->heads : kv_head * group + group - h;
        int chunk_end = (chunk + 1) * t->tile < t->n ? (chunk + 1) * t->tile : t->n;
        for (int s = chunk * t->tile, end; s < chunk_end; s = end) {
            for (end = s + 1; end < chunk_end && t->e[end].seq == t->e[s].seq;) end++;
            llm_attention_tile tile = {
                .q = c->q + (size_t)s * q_dim + (size_t)h * hd, .out = c->xb + (size_t)s * c->xb_width + (size_t)h * hd,
                .ldq = q_dim, .ldo = c->xb_width, .dim = hd, .n_tok = end - s, .n_head = n_head, .pos = t->e[s].pos,
                .window = llm_kv_window(c->kv, t->layer), .scale = p->attn_scale, .softcap = p->attn_softcap};
            llm_kv_head(c->kv, t->layer, t->e[s].seq, kv_head, &tile);
            c->kernels->vec.attention(&tile, scratch);
        }
    }
}

/* xb = softmax(attn_scale q k^T) v for each query head of the n entries, over the keys and values of layer l's
   cache of each one's sequence up to its own position (causal), within the layer's window if it has one. A
   group of query heads is split where there would be fewer than two items per thread (decoding; not further:
   each part reads the head's keys and values again). */
static void attention(llm_ctx *c, int layer, const llm_batch_entry *e, int n) {
    const llm_config *p = &c->cfg;
    int group = p->n_heads / p->n_kv_heads, heads = group, tile = tile_tokens(p), n_chunks = (n + tile - 1) / tile;
    while (heads > 1 && n_chunks * p->n_kv_heads * ((group + heads - 1) / heads) < 2 * llm_pool_size(c->pool))
        heads = (heads + 1) / 2;
    attention_task task = {c, e, layer, n, heads, tile, p->n_kv_heads * ((group + heads - 1) / heads), 0};
    llm_pool_run(c->pool, attention_worker, &task);
}

/* ---------------------------------------------------------------------------------------------------- */
/* the forward pass */

/* n <= n_batch entries (tokens of any sequences, their blocks ready: kv_cache.h) through every layer together;
   for the entries with output set, in their order: logits (unless NULL) and final-normed states (unless NULL). */
static void forward_batch(llm_ctx *c, const llm_batch_entry *e, int n, float *logits, float *states) {
    const llm_config *p = &c->cfg;
    int64_t dim = p->dim, q_dim = (int64_t)p->n_heads * p->head_dim, kv_dim = (int64_t)p->n_kv_heads * p->head_dim;
    int64_t hidden = p->hidden_dim, wide = c->xb_width;
    float *x = c->x, *xb = c->xb, *xb2 = c->xb2, *hb = c->hb, *hb2 = c->hb2, *q = c->q, *k = c->k, *v = c->v;

    const llm_tensor *embedding = &c->w.token_embd;
    for (int t = 0; t < n; t++) { /* x (n, dim) = the tokens' rows of the embedding, times embed_scale */
        llm_types[embedding->type].get_row(x + t * dim, embedding->data, e[t].token, dim);
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
            if (rotation) { /* at the token's position in its sequence */
                rope(c, rotation, qt, p->n_heads, e[t].pos);
                rope(c, rotation, kt, p->n_kv_heads, e[t].pos);
            }
            llm_kv_store(c->kv, l, e[t].seq, e[t].pos, kt, vt); /* into its sequence's block */
        }
        attention(c, l, e, n);                                                  /* xb (n, q_dim) */
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

    /* the final norm of the output entries, packed into xb's rows (and copied out as states: embeddings) */
    int64_t n_out = 0;
    for (int t = 0; t < n; t++) {
        if (!e[t].output) continue;
        rmsnorm(xb + n_out * wide, x + t * dim, c->w.output_norm.data, p->dim, p->norm_eps);
        if (states) memcpy(states + n_out * dim, xb + n_out * wide, (size_t)dim * sizeof *xb);
        n_out++;
    }
    if (!logits || !n_out) return; /* the classifier only runs where logits are wanted */
    const llm_tensor *classifier = c->w.output.data ? &c->w.output : &c->w.token_embd;
    llm_products_run(c->products, n_out, xb, wide, &(llm_product){logits, p->vocab_size, classifier}, 1);
    int64_t n_logits = n_out * p->vocab_size;
    scale(logits, n_logits, p->logit_scale); /* Granite */
    if (p->final_softcap) c->kernels->vec.softcap(logits, n_logits, p->final_softcap); /* Gemma 2 */
}

int llm_batch(llm_ctx *c, const llm_batch_entry *entries, int32_t n, float *logits, float *hidden) {
    if (!c) return LLM_ERR_INVALID;
    c->err[0] = '\0';
    int rc = llm_kv_batch_begin(c->kv, entries, n, c->cfg.vocab_size, c->err, sizeof c->err);
    if (rc != 0) return rc;
    forward_batch(c, entries, n, logits, hidden);
    llm_kv_batch_end(c->kv);
    return 0;
}

/* llm_forward and llm_forward_hidden: check, then run the tokens in sequence 0 in batches of up to n_batch. */
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
    if (pos > c->kv->length[0])
        return llm_fail(c->err, sizeof c->err, LLM_ERR_INVALID, "position %d is past the cache, which holds positions "
                        "0..%d: a forward continues the sequence or starts over at 0", pos, c->kv->length[0] - 1);
    int32_t resume_min = llm_kv_resume_min(c->kv, 0);
    if (pos != 0 && pos < resume_min)
        return llm_fail(c->err, sizeof c->err, LLM_ERR_INVALID, "position %d needs keys that the sliding-window "
                        "layers' caches have dropped: continue from position %d or later, or start over at 0", pos,
                        resume_min);
    for (int32_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= c->cfg.vocab_size)
            return llm_fail(c->err, sizeof c->err, LLM_ERR_INVALID, "token %d at index %d is outside [0, %d)",
                            tokens[i], i, c->cfg.vocab_size);
    llm_batch_entry *e = c->kv->entries;
    for (int32_t i = 0; i < n_tokens; i += c->n_batch) {
        int n = n_tokens - i < c->n_batch ? n_tokens - i : c->n_batch;
        for (int t = 0; t < n; t++) /* outputs: every token's states, logits of all tokens or of the last one */
            e[t] = (llm_batch_entry){tokens[i + t], 0, pos + i + t, hidden || all_logits || i + t == n_tokens - 1};
        float *out = logits && (all_logits || i + n == n_tokens) ? logits + (all_logits ? (size_t)i * c->cfg.vocab_size : 0)
                                                                  : NULL;
        int rc = llm_batch(c, e, n, out, hidden ? hidden + (size_t)i * c->cfg.dim : NULL);
        if (rc != 0) return rc;
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

/* The sequence operations (kv_cache.c). */
int llm_seq_keep(llm_ctx *c, int32_t seq, int32_t n) {
    return c ? llm_kv_keep(c->kv, seq, n, c->err, sizeof c->err) : LLM_ERR_INVALID;
}

int llm_seq_copy(llm_ctx *c, int32_t src, int32_t dst, int32_t n) {
    return c ? llm_kv_copy(c->kv, src, dst, n, c->err, sizeof c->err) : LLM_ERR_INVALID;
}

int32_t llm_seq_length(const llm_ctx *c, int32_t seq) {
    return c && seq >= 0 && seq < c->kv->n_seq ? c->kv->length[seq] : LLM_ERR_INVALID;
}

int32_t llm_seq_resume_min(const llm_ctx *c, int32_t seq) {
    return c && seq >= 0 && seq < c->kv->n_seq ? llm_kv_resume_min(c->kv, seq) : LLM_ERR_INVALID;
}

int llm_kv_usage(const llm_ctx *c, int64_t *used, int64_t *total) {
    if (!c || !used || !total) return LLM_ERR_INVALID;
    llm_kv_blocks(c->kv, used, total);
    return 0;
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
enum { N_BUFFERS = 13 };
typedef struct {
    float **ptr;
    size_t  rows, cols; /* 0 rows: not needed (left NULL) */
} float_buffer;

static void plan_buffers(llm_ctx *c, const llm_config *p, int32_t n_ctx, int32_t n_batch, int32_t n_threads,
                         float_buffer out[N_BUFFERS]) {
    size_t nb = (size_t)n_batch, ctx = (size_t)n_ctx, dim = (size_t)p->dim, hidden = (size_t)p->hidden_dim;
    size_t q_dim = (size_t)p->n_heads * (size_t)p->head_dim, kv_dim = (size_t)p->n_kv_heads * (size_t)p->head_dim;
    size_t wide = dim > q_dim ? dim : q_dim, half = (size_t)(p->rope_dim ? p->rope_dim : p->head_dim) / 2;
    size_t local = uses_local_rope(p) ? ctx : 0, nth = (size_t)n_threads, att = attention_scratch(p);
    float_buffer plan[N_BUFFERS] = {
        {&c->x, nb, dim}, {&c->xb, nb, wide}, {&c->xb2, nb, dim}, {&c->hb, nb, hidden}, {&c->hb2, nb, hidden},
        {&c->q, nb, q_dim}, {&c->k, nb, kv_dim}, {&c->v, nb, kv_dim}, {&c->att, nth, att},
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

int64_t llm_ctx_bytes(const llm_config *p, const llm_ctx_params *params) {
    llm_ctx_params s;
    if (llm_check_sizes(p, params, &s, NULL, 0) != 0) return LLM_ERR_INVALID;
    llm_ctx sizes_only; /* plan_buffers wants somewhere to point; nothing is allocated */
    float_buffer plan[N_BUFFERS];
    plan_buffers(&sizes_only, p, s.n_ctx, s.n_batch, s.n_threads, plan);
    /* The products' scratch is sized for the best level: a context on a forced lower level needs no more. */
    int64_t kv = llm_kv_bytes(p, s.n_ctx, s.n_seq, s.n_kv, s.n_batch);
    size_t per_layer = sizeof(llm_layer) + sizeof(int32_t); /* layers, layer_ropes */
    size_t total = sizeof(llm_ctx) + (size_t)p->n_layers * per_layer +
                   llm_products_bytes(llm_kernels_get(llm_isa_best()), s.n_threads, widest_input(p), s.n_batch);
    if (kv < 0 || total > (size_t)INT64_MAX - (size_t)kv) return LLM_ERR_NOMEM;
    total += (size_t)kv;
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

int llm_create(const llm_config *p, const llm_weights *w, const llm_ctx_params *params, llm_ctx **out, char *err,
               size_t errlen) {
    int rc;
    llm_ctx_params s;
    if (err && errlen) err[0] = '\0';
    if (!out) return llm_fail(err, errlen, LLM_ERR_INVALID, "out is NULL");
    *out = NULL;
    if (!p || !w) return llm_fail(err, errlen, LLM_ERR_INVALID, "config or weights is NULL");
    if ((rc = llm_check_sizes(p, params, &s, err, errlen)) != 0) return rc;
    if ((rc = llm_check_weights(p, w, err, errlen)) != 0) return rc;
    int32_t n_ctx = s.n_ctx, n_batch = s.n_batch, n_threads = s.n_threads, isa = s.isa;
    if (llm_kv_bytes(p, n_ctx, s.n_seq, s.n_kv, n_batch) < 0)
        return llm_fail(err, errlen, LLM_ERR_NOMEM, "a KV pool of %d positions for %d sequences of %d is too large "
                        "for this machine's address space", s.n_kv, s.n_seq, n_ctx);
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
    c->kv = llm_kv_create(p, n_ctx, s.n_seq, s.n_kv, n_batch);
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
        return llm_fail(err, errlen, LLM_ERR_NOMEM, "out of memory allocating the KV pool of %d positions and the "
                        "buffers of a context of %d", s.n_kv, n_ctx);
    }
    memcpy(c->layers, w->layers, n_layers * sizeof *c->layers);
    c->w.layers = c->layers;
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

const char *llm_last_error(const llm_ctx *c) { return c ? c->err : "no context"; }

int32_t llm_ctx_isa(const llm_ctx *c) { return c ? c->isa : LLM_ERR_INVALID; }

void llm_free(llm_ctx *c) {
    if (!c) return;
    llm_products_free(c->products);
    llm_pool_free(c->pool);
    free(c->layers);
    llm_kv_free(c->kv);
    free(c->layer_ropes);
    float_buffer plan[N_BUFFERS]; /* the buffers llm_create allocated (NULL where it did not get that far) */
    plan_buffers(c, &c->cfg, c->n_ctx, c->n_batch, 1, plan);
    for (int i = 0; i < N_BUFFERS; i++) free(*plan[i].ptr);
    free(c);
}
