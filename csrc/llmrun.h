/*
 * llmrun.h: the whole C API of llmrun's kernel library (the contract with Python).
 *
 * The library runs the forward pass of a Llama-family transformer on the CPU. It does not read files,
 * tokenize, sample, print or exit: Python parses the model file, hands the library borrowed pointers to
 * the weights (usually a memory map of the file) and asks for logits. Every function that can fail
 * returns 0 or a negative LLM_ERR_* code and leaves a message in the caller's buffer or the context.
 *
 * Usage (error checks shortened):
 *
 *     llm_config cfg = { .dim = 64, .hidden_dim = 172, .n_layers = 5, .n_heads = 8, .n_kv_heads = 4,
 *                        .head_dim = 8, .vocab_size = 512, .rope_theta = 10000.0f, .norm_eps = 1e-5f,
 *                        .rope_style = LLM_ROPE_INTERLEAVED };
 *     llm_layer layers[5] = { ... };            // each tensor: { data, LLM_F32, rows, cols }
 *     llm_weights w = { .token_embd = ..., .output_norm = ..., .output = { NULL }, .layers = layers };
 *     char err[256];
 *     llm_ctx *ctx;
 *     if (llm_create(&cfg, &w, 512, 64, 2, LLM_ISA_AUTO, &ctx, err, sizeof err) != 0) { puts(err); return; }
 *     int32_t prompt[] = { 1, 403, 407 };
 *     float logits[512];                        // (vocab_size) for the last token
 *     if (llm_forward(ctx, prompt, 3, 0, logits, 0) != 0) puts(llm_last_error(ctx));
 *     llm_free(ctx);
 */
#ifndef LLMRUN_H
#define LLMRUN_H

#include <stddef.h>
#include <stdint.h>

/* Limits. */
enum {
    LLM_MAX_THREADS = 512, /* threads one context may use (the caller included) */
};

/* Error codes (0 is success). */
enum {
    LLM_ERR_INVALID = -1, /* an argument is out of range or inconsistent */
    LLM_ERR_NOMEM   = -2, /* an allocation failed */
    LLM_ERR_THREAD  = -3, /* a worker thread could not be started */
};

/* Weight storage types. The block types use GGUF's layouts (ggml-common.h), so GGUF files are used in
   place; csrc/kernels.h spells each block out. A row is a whole number of blocks: 32 values for Q8_0 to
   IQ4_NL, 256 for the K-quants and IQ4_XS. */
typedef enum {
    LLM_F32  = 0,
    LLM_F16  = 1,
    LLM_BF16 = 2,
    LLM_Q8_0 = 3,
    LLM_Q4_0 = 4,
    LLM_Q4_1 = 5,
    LLM_Q5_0 = 6,
    LLM_Q5_1 = 7,
    LLM_IQ4_NL = 8,
    LLM_Q2_K = 9,
    LLM_Q3_K = 10,
    LLM_Q4_K = 11,
    LLM_Q5_K = 12,
    LLM_Q6_K = 13,
    LLM_IQ4_XS = 14,
    LLM_TYPE_COUNT
} llm_type;

/* A type's name ("q8_0"; NULL for an unknown type) and storage: a row is a whole number of blocks of
   *block_elems values in *block_bytes bytes (1 value in 4 or 2 bytes for the float types). 0, or
   LLM_ERR_INVALID for an unknown type. */
const char *llm_type_name(int32_t type);
int         llm_type_layout(int32_t type, int64_t *block_elems, int64_t *block_bytes);

/* Instruction sets a kernel can be built for; the best one is picked at run time. The codes name levels,
   they do not rank them: ask llm_isa_supported, never compare codes. */
typedef enum {
    LLM_ISA_AUTO       = -1, /* the best the CPU supports */
    LLM_ISA_SCALAR     = 0,  /* portable C, the reference every SIMD kernel is tested against */
    LLM_ISA_AVX2       = 1,  /* x86-64 AVX2 + FMA + F16C */
    LLM_ISA_AVX512VNNI = 2,  /* ... and AVX-512 F/BW/VL + VNNI: 8-bit dot products in one instruction */
    LLM_ISA_COUNT
} llm_isa;

/* How RoPE pairs up the dimensions of a head that it rotates together. */
typedef enum {
    LLM_ROPE_INTERLEAVED = 0, /* (0,1), (2,3), ...: llama2.c and GGUF "llama" */
    LLM_ROPE_HALVES      = 1, /* (0,d/2), (1,d/2+1), ...: Hugging Face checkpoints */
} llm_rope_style;

/* Which rotary table a layer uses (llm_config.layer_ropes). */
typedef enum {
    LLM_LAYER_ROPE_GLOBAL = 0, /* the model's table: rope_theta or rope_freqs, times rope_attn_factor */
    LLM_LAYER_ROPE_LOCAL  = 1, /* plain RoPE of base rope_theta_local (Gemma 3's sliding-window layers) */
    LLM_LAYER_ROPE_NONE   = 2, /* no rotation at all (SmolLM3's every fourth layer) */
} llm_layer_rope;

/* The feed-forward block's activation: out = act(x W_gate) * (x W_up). */
typedef enum {
    LLM_FFN_SILU      = 0, /* SwiGLU: Llama, Mistral, Qwen, Phi-3, SmolLM3, Granite */
    LLM_FFN_GELU_TANH = 1, /* GeGLU with the tanh approximation of GELU: Gemma */
} llm_ffn_activation;

/* A borrowed, row-major matrix (rows, cols); a vector is one row. data == NULL means "absent". */
typedef struct {
    const void *data;
    int32_t     type; /* llm_type */
    int64_t     rows, cols;
} llm_tensor;

typedef struct {
    int32_t dim;        /* width of the residual stream */
    int32_t hidden_dim; /* width of the feed-forward layer */
    int32_t n_layers;
    int32_t n_heads;    /* query heads */
    int32_t n_kv_heads; /* key/value heads; n_heads is a multiple of it (grouped-query attention) */
    int32_t head_dim;
    int32_t vocab_size;
    float   rope_theta; /* RoPE base frequency, 10000 for Llama 2 */
    float   norm_eps;   /* RMSNorm epsilon */
    int32_t rope_style; /* llm_rope_style */
    /* (rope_dim / 2) the rotation frequency of each dimension pair, in radians per position, for models
       whose RoPE is rescaled (Llama 3.1's "llama3", "linear", YaRN, LongRoPE); NULL: rope_theta^(-2j / rope_dim).
       Copied by llm_create. */
    const float *rope_freqs;

    /* The options of the model families beyond Llama. A zeroed field means the Llama behaviour, so a
       config that does not name them is a Llama config. */
    int32_t rope_dim;          /* RoPE rotates the first rope_dim dims of each head (partial rotary, Phi-4-mini:
                                  0.75 * head_dim), pairing them as rope_style says within those dims; rope_freqs
                                  then has rope_dim / 2 entries. 0: head_dim */
    float   rope_attn_factor;  /* cos and sin of the global table are multiplied by it (YaRN's and LongRoPE's
                                  attention factor); 0: 1 */
    float   rope_theta_local;  /* base of the LLM_LAYER_ROPE_LOCAL table; must be > 0 if a layer uses it */
    const int32_t *layer_ropes;   /* (n_layers) llm_layer_rope of each layer; NULL: all global. Copied. */
    const int32_t *layer_windows; /* (n_layers) each layer's sliding window: a token attends to itself and the
                                     window - 1 positions before it, and the layer's KV cache is a ring of
                                     min(n_ctx, window + n_batch - 1) rows; 0 (or a window >= n_ctx): the
                                     whole context. NULL: no windows. Copied. */
    int32_t ffn_activation;    /* llm_ffn_activation */
    float   embed_scale;       /* the embedding rows are multiplied by it (Gemma: sqrt(dim); Granite:
                                  embedding_multiplier); 0: 1 */
    float   attn_scale;        /* q . k is multiplied by it (Gemma: query_pre_attn_scalar^-1/2; Granite:
                                  attention_multiplier); 0: 1 / sqrt(head_dim) */
    float   attn_softcap;      /* attention scores s become cap * tanh(s / cap) before the softmax (Gemma 2);
                                  0: none */
    float   final_softcap;     /* the same on the logits, after logit_scale (Gemma 2); 0: none */
    float   residual_scale;    /* x += residual_scale * (each block's output) (Granite: residual_multiplier);
                                  0: 1 */
    float   logit_scale;       /* the logits are multiplied by it (Granite: 1 / logits_scaling); 0: 1 */
} llm_config;

/* One transformer block. q_dim = n_heads * head_dim, kv_dim = n_kv_heads * head_dim. */
typedef struct {
    llm_tensor attn_norm; /* (1, dim) */
    llm_tensor wq;        /* (q_dim, dim) */
    llm_tensor wk;        /* (kv_dim, dim) */
    llm_tensor wv;        /* (kv_dim, dim) */
    llm_tensor wo;        /* (dim, q_dim) */
    llm_tensor ffn_norm;  /* (1, dim) */
    llm_tensor w_gate;    /* (hidden_dim, dim)  "w1" in llama2.c */
    llm_tensor w_down;    /* (dim, hidden_dim)  "w2" */
    llm_tensor w_up;      /* (hidden_dim, dim)  "w3" */
    llm_tensor bq, bk, bv; /* optional f32 biases (1, q_dim), (1, kv_dim), (1, kv_dim) of the projections
                              (Qwen2); data == NULL: none */
    llm_tensor q_norm, k_norm; /* optional f32 (1, head_dim): RMSNorm of each query / key head before RoPE
                                  (Qwen3, Gemma 3); data == NULL: none */
    llm_tensor attn_post_norm; /* optional f32 (1, dim): the attention block's output is RMS-normed with it
                                  before it joins the residual (Gemma 2, 3); data == NULL: none */
    llm_tensor ffn_post_norm;  /* optional f32 (1, dim): the same for the feed-forward block */
} llm_layer;

typedef struct {
    llm_tensor       token_embd;  /* (vocab_size, dim) */
    llm_tensor       output_norm; /* (1, dim) */
    llm_tensor       output;      /* (vocab_size, dim); data == NULL: tied to token_embd */
    const llm_layer *layers;      /* n_layers entries; copied by llm_create */
} llm_weights;

typedef struct llm_ctx llm_ctx; /* opaque: borrowed weights, KV cache, scratch buffers, thread pool */

/*
 * Checks the config and every tensor's type and shape, then allocates the KV cache for n_ctx positions,
 * activations for batches of up to n_batch tokens and a pool of n_threads threads (the caller counts as
 * one). The weights are borrowed: they must outlive the context. On failure *out is NULL and err holds
 * the reason.
 */
int llm_create(const llm_config *config, const llm_weights *weights, int32_t n_ctx, int32_t n_batch,
               int32_t n_threads, int32_t isa, llm_ctx **out, char *err, size_t errlen);

/*
 * Runs tokens[0..n_tokens) at positions pos..pos+n_tokens-1, writing their keys and values into the
 * cache. pos continues the sequence the cache holds (any pos from llm_ctx_resume_min up to the end of what
 * was written) or starts over (0); other positions are refused. The tokens go through the layers together, in
 * batches of up to n_batch: each weight matrix is read once per batch (matrix-matrix products).
 * logits: NULL for none, else (vocab_size) floats for the last token, or (n_tokens, vocab_size) when
 * all_logits is non-zero; the classifier runs only for the tokens whose logits are asked for.
 */
int llm_forward(llm_ctx *ctx, const int32_t *tokens, int32_t n_tokens, int32_t pos, float *logits,
                int32_t all_logits);

/*
 * The same pass, for embeddings: hidden receives (n_tokens, dim) floats, every token's final hidden state after
 * the final norm (what the classifier would read); the classifier is not run. The cache is written as by
 * llm_forward, and the same positions are accepted. LLM_ERR_INVALID for a NULL hidden.
 */
int llm_forward_hidden(llm_ctx *ctx, const int32_t *tokens, int32_t n_tokens, int32_t pos, float *hidden);

/*
 * The same for several short texts packed into one batch, so each weight matrix is read once for all of them:
 * tokens holds the texts one after another, and text_starts (n_tokens) the index in tokens where each token's
 * text begins (texts [5, 6, 7] and [8, 9]: tokens {5, 6, 7, 8, 9}, text_starts {0, 0, 0, 3, 3}). Each token
 * sits at its position within its own text and attends to its own text only, so every text's states are what
 * llm_forward_hidden gives for it alone. n_tokens <= n_batch (one batch). The cache is overwritten and holds
 * no sequence afterwards: the next llm_forward starts at 0. LLM_ERR_INVALID for a NULL text_starts, too
 * many tokens, or a start that is neither the token's own index nor its predecessor's start.
 */
int llm_forward_hidden_packed(llm_ctx *ctx, const int32_t *tokens, int32_t n_tokens, const int32_t *text_starts,
                              float *hidden);

/* The bytes llm_create would allocate for this config and these sizes (the KV cache, activations, buffers),
   without allocating anything: front ends check it against the machine's memory first. It grows with n_ctx.
   LLM_ERR_INVALID for a bad config or size, LLM_ERR_NOMEM for sizes no memory could hold. */
int64_t llm_ctx_bytes(const llm_config *config, int32_t n_ctx, int32_t n_batch, int32_t n_threads);

/* The earliest position from which llm_forward can continue the sequence the cache holds: a windowed
   layer's ring keeps only the latest keys, so a forward at pos needs the window before pos still there.
   A forward may start at any pos from this one up to the end of what was written, or at 0 (starting over);
   llm_forward refuses others. 0 while nothing has been dropped (always, for a model without windows). */
int32_t llm_ctx_resume_min(const llm_ctx *ctx);

/* The message of the last failed call on ctx ("" if none). */
const char *llm_last_error(const llm_ctx *ctx);

/* The instruction set the context's kernels use (llm_isa). */
int32_t llm_ctx_isa(const llm_ctx *ctx);

void llm_free(llm_ctx *ctx);

/* The best instruction set this CPU supports; whether this build and CPU can run `isa` (1) or not (0);
   the name of an llm_isa value ("avx2"; NULL for an unknown one). */
int32_t     llm_isa_best(void);
int32_t     llm_isa_supported(int32_t isa);
const char *llm_isa_name(int32_t isa);

/*
 * out = x @ w^T on one thread with the given instruction set, for tests and kernel benchmarks: w is
 * (rows, cols) of the given type, x is n tokens of (cols) floats, out is (n, rows). n == 1 is the
 * matrix-vector product that decoding uses; larger n the matrix-matrix product of prompt processing.
 */
int llm_matmul(int32_t type, int32_t isa, const void *w, int64_t rows, int64_t cols, const float *x, int64_t n,
               float *out);

/* out (rows, cols) = the values that rows of w (of the given type) hold, as floats: the row lookup of the
   embedding, for tests and for tools that read weights back. 0, or LLM_ERR_INVALID for an unknown type or
   a cols that is not a whole number of the type's blocks. */
int llm_dequantize(int32_t type, const void *w, int64_t rows, int64_t cols, float *out);

/* gate = act(gate) * up for n values, with the feed-forward activation `activation` (llm_ffn_activation: SwiGLU's
   or GeGLU's step of the forward pass) as the given instruction set computes it, for tests. 0, or LLM_ERR_INVALID
   for an unknown activation or instruction set, NULL buffers or n < 0. */
int llm_ffn_activate(int32_t activation, int32_t isa, float *gate, const float *up, int64_t n);

/* out = rows of x (rows, cols) stored as `type`, one of the block types (Q8_0 to IQ4_XS): the bytes ggml's
   reference quantizers (what llama-quantize uses without an importance matrix) write for the same values.
   out holds rows * cols / block_elems * block_bytes bytes (llm_type_layout). Rows are independent, so callers
   may split them among threads. 0, or LLM_ERR_INVALID for a float or unknown type, a cols that is not a
   whole number of the type's blocks, or NULL buffers. Inputs must be finite. */
int llm_quantize(int32_t type, const float *x, int64_t rows, int64_t cols, void *out);

#endif /* LLMRUN_H */
