/* checks.c: llm_create's checks of a config and of the weights (checks.h). */
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>

#include "checks.h"
#include "kernels.h"

int llm_fail(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

static int check_tensor(const llm_tensor *t, const char *name, int layer, int64_t rows, int64_t cols,
                        int float_only, char *err, size_t errlen) {
    char where[64];
    if (layer >= 0) snprintf(where, sizeof where, "layer %d %s", layer, name);
    else snprintf(where, sizeof where, "%s", name);
    if (!t->data) return llm_fail(err, errlen, LLM_ERR_INVALID, "%s: no data", where);
    if (t->type < 0 || t->type >= LLM_TYPE_COUNT || (float_only && t->type != LLM_F32))
        return llm_fail(err, errlen, LLM_ERR_INVALID, "%s: unsupported type %d", where, t->type);
    if (t->rows != rows || t->cols != cols)
        return llm_fail(err, errlen, LLM_ERR_INVALID, "%s: shape (%lld, %lld), expected (%lld, %lld)", where,
                        (long long)t->rows, (long long)t->cols, (long long)rows, (long long)cols);
    const llm_type_info *type = &llm_types[t->type];
    if (cols % type->block_elems != 0)
        return llm_fail(err, errlen, LLM_ERR_INVALID, "%s: %lld columns is not a whole number of %s blocks of %lld",
                        where, (long long)cols, type->name, (long long)type->block_elems);
    if (type->repacked_from >= 0 && rows % LLM_R8 != 0) /* its kernels read whole groups of rows */
        return llm_fail(err, errlen, LLM_ERR_INVALID, "%s: %lld rows is not a whole number of %s groups of %d rows",
                        where, (long long)rows, type->name, LLM_R8);
    return 0;
}

int llm_check_weights(const llm_config *p, const llm_weights *w, char *err, size_t errlen) {
    int64_t dim = p->dim, hid = p->hidden_dim, q_dim = (int64_t)p->n_heads * p->head_dim;
    int64_t kv_dim = (int64_t)p->n_kv_heads * p->head_dim;
    int rc;
#define CHECK(t, name, layer, rows, cols, float_only) \
    if ((rc = check_tensor(t, name, layer, rows, cols, float_only, err, errlen)) != 0) return rc
#define CHECK_OPTIONAL(L, name, layer, cols) /* f32 vectors the model may lack */ \
    if ((L)->name.data) CHECK(&(L)->name, #name, layer, 1, cols, 1)
    CHECK(&w->token_embd, "token_embd", -1, p->vocab_size, dim, 0);
    CHECK(&w->output_norm, "output_norm", -1, 1, dim, 1);
    if (w->output.data) CHECK(&w->output, "output", -1, p->vocab_size, dim, 0);
    if (!w->layers) return llm_fail(err, errlen, LLM_ERR_INVALID, "no layers given");
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
        CHECK_OPTIONAL(L, bq, l, q_dim);
        CHECK_OPTIONAL(L, bk, l, kv_dim);
        CHECK_OPTIONAL(L, bv, l, kv_dim);
        CHECK_OPTIONAL(L, q_norm, l, p->head_dim);
        CHECK_OPTIONAL(L, k_norm, l, p->head_dim);
        CHECK_OPTIONAL(L, attn_post_norm, l, dim);
        CHECK_OPTIONAL(L, ffn_post_norm, l, dim);
    }
#undef CHECK_OPTIONAL
#undef CHECK
    return 0;
}

/* The family options of llm_config (each 0 where a model does not use it). */
static int check_options(const llm_config *p, char *err, size_t errlen) {
    int32_t rope_dim = p->rope_dim ? p->rope_dim : p->head_dim;
    if (p->rope_dim < 0 || rope_dim > p->head_dim || rope_dim % 2 != 0)
        return llm_fail(err, errlen, LLM_ERR_INVALID, "rope_dim %d (head_dim %d): RoPE rotates an even number of a "
                        "head's dims, at most head_dim (rope_dim 0: head_dim)", p->rope_dim, p->head_dim);
    const struct { const char *name; float value; } factors[] = {
        {"rope_attn_factor", p->rope_attn_factor}, {"embed_scale", p->embed_scale}, {"attn_scale", p->attn_scale},
        {"attn_softcap", p->attn_softcap}, {"final_softcap", p->final_softcap},
        {"residual_scale", p->residual_scale}, {"logit_scale", p->logit_scale},
    };
    for (size_t i = 0; i < sizeof factors / sizeof factors[0]; i++)
        if (!isfinite(factors[i].value) || factors[i].value < 0.0f)
            return llm_fail(err, errlen, LLM_ERR_INVALID, "%s is %g; it must be finite and >= 0 (0: the default)",
                            factors[i].name, (double)factors[i].value);
    /* a cap divides: below the smallest normal float, x / cap overflows where x is not tiny */
    if ((p->attn_softcap != 0.0f && p->attn_softcap < FLT_MIN) ||
        (p->final_softcap != 0.0f && p->final_softcap < FLT_MIN))
        return llm_fail(err, errlen, LLM_ERR_INVALID, "soft-caps %g (attention) and %g (final) must be 0 or at "
                        "least %g", (double)p->attn_softcap, (double)p->final_softcap, (double)FLT_MIN);
    if (p->ffn_activation != LLM_FFN_SILU && p->ffn_activation != LLM_FFN_GELU_TANH)
        return llm_fail(err, errlen, LLM_ERR_INVALID, "unknown ffn_activation %d", p->ffn_activation);
    for (int l = 0; l < p->n_layers; l++) {
        int32_t rope = p->layer_ropes ? p->layer_ropes[l] : LLM_LAYER_ROPE_GLOBAL;
        if (rope != LLM_LAYER_ROPE_GLOBAL && rope != LLM_LAYER_ROPE_LOCAL && rope != LLM_LAYER_ROPE_NONE)
            return llm_fail(err, errlen, LLM_ERR_INVALID, "layer_ropes[%d] is %d, not an llm_layer_rope", l, rope);
        if (rope == LLM_LAYER_ROPE_LOCAL && (!(p->rope_theta_local > 0.0f) || !isfinite(p->rope_theta_local)))
            return llm_fail(err, errlen, LLM_ERR_INVALID, "layer %d uses the local RoPE table, whose base "
                            "rope_theta_local %g must be finite and > 0", l, (double)p->rope_theta_local);
        if (p->layer_windows && p->layer_windows[l] < 0)
            return llm_fail(err, errlen, LLM_ERR_INVALID, "layer_windows[%d] is %d; a window is >= 1 position "
                            "(0: the whole context)", l, p->layer_windows[l]);
    }
    return 0;
}

int llm_check_config(const llm_config *p, int32_t n_ctx, int32_t n_threads, char *err, size_t errlen) {
    int rc;
    if (p->dim < 1 || p->hidden_dim < 1 || p->n_layers < 1 || p->n_heads < 1 || p->n_kv_heads < 1 ||
        p->head_dim < 1 || p->vocab_size < 1)
        return llm_fail(err, errlen, LLM_ERR_INVALID,
                        "config dims must be positive (dim %d, hidden_dim %d, n_layers %d, n_heads %d, "
                        "n_kv_heads %d, head_dim %d, vocab_size %d)", p->dim, p->hidden_dim, p->n_layers,
                        p->n_heads, p->n_kv_heads, p->head_dim, p->vocab_size);
    if (p->n_heads % p->n_kv_heads != 0)
        return llm_fail(err, errlen, LLM_ERR_INVALID, "n_heads %d is not a multiple of n_kv_heads %d",
                        p->n_heads, p->n_kv_heads);
    if (p->rope_style != LLM_ROPE_INTERLEAVED && p->rope_style != LLM_ROPE_HALVES)
        return llm_fail(err, errlen, LLM_ERR_INVALID, "unknown rope_style %d", p->rope_style);
    if (!(p->rope_theta > 0.0f) || !isfinite(p->rope_theta) || !(p->norm_eps >= 0.0f) || !isfinite(p->norm_eps))
        return llm_fail(err, errlen, LLM_ERR_INVALID, "bad rope_theta %g or norm_eps %g", (double)p->rope_theta,
                        (double)p->norm_eps);
    if ((rc = check_options(p, err, errlen)) != 0) return rc;
    int32_t rope_dim = p->rope_dim ? p->rope_dim : p->head_dim;
    if (p->rope_freqs)
        for (int j = 0; j < rope_dim / 2; j++)
            if (!isfinite(p->rope_freqs[j]) || p->rope_freqs[j] < 0.0f)
                return llm_fail(err, errlen, LLM_ERR_INVALID, "rope_freqs[%d] is %g; frequencies must be finite "
                                "and >= 0", j, (double)p->rope_freqs[j]);
    if (n_ctx < 1) return llm_fail(err, errlen, LLM_ERR_INVALID, "n_ctx must be >= 1, got %d", n_ctx);
    if (n_threads < 1 || n_threads > LLM_MAX_THREADS)
        return llm_fail(err, errlen, LLM_ERR_INVALID, "n_threads must be in [1, %d], got %d", LLM_MAX_THREADS,
                        n_threads);
    return 0;
}


int llm_check_sizes(const llm_config *p, const llm_ctx_params *in, llm_ctx_params *out, char *err, size_t errlen) {
    if (!p || !in) return llm_fail(err, errlen, LLM_ERR_INVALID, "config or params is NULL");
    int rc = llm_check_config(p, in->n_ctx, in->n_threads, err, errlen);
    if (rc != 0) return rc;
    if (in->n_batch < 1) return llm_fail(err, errlen, LLM_ERR_INVALID, "n_batch must be >= 1, got %d", in->n_batch);
    if (in->n_seq < 0 || in->n_seq > 65536)
        return llm_fail(err, errlen, LLM_ERR_INVALID, "n_seq must be in [1, 65536] (0: 1), got %d", in->n_seq);
    if (in->n_kv < 0)
        return llm_fail(err, errlen, LLM_ERR_INVALID, "n_kv must be in [0, %d] (0: n_ctx), got %d", INT32_MAX,
                        in->n_kv);
    *out = *in;
    if (out->n_seq == 0) out->n_seq = 1;
    if (out->n_kv == 0) out->n_kv = out->n_ctx;
    if (out->n_batch > out->n_ctx) out->n_batch = out->n_ctx; /* a batch never holds more tokens than the context */
    return 0;
}
