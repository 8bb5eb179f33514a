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
 *     llm_ctx_params sizes = { .n_ctx = 512, .n_seq = 1, .n_batch = 64, .n_threads = 2, .isa = LLM_ISA_AUTO };
 *     char err[256];
 *     llm_ctx *ctx;
 *     if (llm_create(&cfg, &w, &sizes, &ctx, err, sizeof err) != 0) { puts(err); return; }
 *     int32_t prompt[] = { 1, 403, 407 };
 *     float logits[512];                        // (vocab_size) for the last token
 *     if (llm_forward(ctx, prompt, 3, 0, logits, 0) != 0) puts(llm_last_error(ctx));
 *     llm_free(ctx);
 *
 * Several sequences (users) at once: create the context with n_seq > 1 and give llm_batch entries of
 * (token, sequence, position): a step of generation for four users is one llm_batch of four entries, and
 * each weight matrix is read once for all of them. The KV cache is a pool of blocks that the sequences
 * take as they grow (see llm_ctx_params.n_kv).
 */
#ifndef LLMRUN_H
#define LLMRUN_H

#include <stddef.h>
#include <stdint.h>

/* Limits. */
enum {
    LLM_MAX_THREADS = 512, /* threads one context may use (the caller included) */
    LLM_KV_BLOCK    = 32,  /* positions per block of the KV cache's pool */
};

/* Error codes (0 is success). */
enum {
    LLM_ERR_INVALID = -1, /* an argument is out of range or inconsistent */
    LLM_ERR_NOMEM   = -2, /* an allocation failed */
    LLM_ERR_THREAD  = -3, /* a worker thread could not be started */
    LLM_ERR_KV_FULL = -4, /* the KV cache's block pool has no free block for the batch; nothing was changed */
};

/* Weight storage types. The block types use GGUF's layouts (ggml-common.h), so GGUF files are used in
   place; csrc/kernels.h spells each block out. A row is a whole number of blocks: 32 values for Q8_0 to
   IQ4_NL, 256 for the K-quants and IQ4_XS.
   The _R8 types are the 32-value block types and the float types repacked at load time (llm_repack): each
   group of 8 rows interleaved block by block (a float type's block is one value: value k of the 8 rows, then
   value k + 1 of them ...), in the form the batched products read, so that no product repacks weights per
   call. Same blocks per row and bytes per block as the type they come from (llm_type_layout and every size
   computed from it hold); their rows are a multiple of 8, and no file holds them. */
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
    LLM_Q8_0_R8 = 15,
    LLM_Q4_0_R8 = 16,
    LLM_Q4_1_R8 = 17,
    LLM_Q5_0_R8 = 18,
    LLM_Q5_1_R8 = 19,
    LLM_IQ4_NL_R8 = 20,
    LLM_F32_R8  = 21,
    LLM_F16_R8  = 22,
    LLM_BF16_R8 = 23,
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
    LLM_ISA_NEON       = 3,  /* arm64 ARMv8.0 Advanced SIMD (every arm64 CPU) */
    LLM_ISA_DOTPROD    = 4,  /* ... and the dot product extension (sdot: 8-bit dot products in one instruction) */
    LLM_ISA_I8MM       = 5,  /* ... and the 8-bit matrix multiply (smmla: a 2x8 by 8x2 product, prompt batches) */
    LLM_ISA_AVX512BF16 = 6,  /* x86-64 avx512vnni and AVX512_BF16: bfloat16 weights multiply in vdpbf16ps, their
                                input rounded to bfloat16 */
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
                                     window - 1 positions before it, and the layer keeps only the KV blocks
                                     its window still needs (llm_ctx_params.n_kv); 0 (or a window >= n_ctx): the
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

/* The sizes of a context. */
typedef struct {
    int32_t n_ctx;     /* positions one sequence may hold (0..n_ctx-1) */
    int32_t n_seq;     /* sequences the context holds at once, ids 0..n_seq-1; 0: 1 */
    int32_t n_kv;      /* positions the KV cache's block pool holds for all sequences together, rounded up to
                          whole blocks of LLM_KV_BLOCK; 0: n_ctx (one sequence of the whole context). The
                          sequences take blocks as they grow and give them back when cleared or rewound, so
                          8 sequences of a 4096 context need not reserve 8 x 4096 positions. A layer with a
                          sliding window keeps only the blocks its window still needs (its pool holds
                          min(the pool's blocks, n_seq x (ceil((window + n_batch - 1) / LLM_KV_BLOCK) + 2))). */
    int32_t n_batch;   /* the most tokens one batch holds (each weight matrix is read once per batch) */
    int32_t n_threads; /* threads of the pool, the caller included */
    int32_t isa;       /* llm_isa: LLM_ISA_AUTO or a forced level (tests) */
} llm_ctx_params;

/*
 * Checks the config, the sizes and every tensor's type and shape, then allocates the KV cache's block pool,
 * activations for batches of up to n_batch tokens and a pool of n_threads threads. The weights are borrowed:
 * they must outlive the context. On failure *out is NULL and err holds the reason.
 */
int llm_create(const llm_config *config, const llm_weights *weights, const llm_ctx_params *params, llm_ctx **out,
               char *err, size_t errlen);

/* One token of a batch: the sequence it extends, its position there, and whether its output is wanted. */
typedef struct {
    int32_t token;
    int32_t seq;    /* [0, n_seq) */
    int32_t pos;    /* [0, n_ctx) */
    int32_t output; /* non-zero: this token's logits (and/or final hidden state) are written */
} llm_batch_entry;

/*
 * Runs n <= n_batch tokens of any sequences through the layers together: each weight matrix is read once for
 * all of them, and each token attends to the cache of its own sequence only (up to its own position). Some
 * sequences may bring a chunk of a prompt, others one decode token.
 * The entries of one sequence come in the order of their positions, consecutive (p, p+1, ...), not
 * necessarily next to each other in the array. The first, p, continues the sequence (p == its length), rewinds
 * it (p < its length: positions p.. are dropped first) or starts it over (p == 0); p must not be below
 * llm_seq_resume_min. Their keys and values go into the sequence's blocks: blocks are taken from the pool as
 * the sequence grows, and a block shared with another sequence (llm_seq_copy) is copied before it is written.
 * logits: NULL, or (n_outputs, vocab_size) floats, a row per entry with output != 0 in the order of the entries;
 * hidden: NULL, or (n_outputs, dim) floats, those entries' final hidden states after the final norm (what the
 * classifier reads: embeddings). The classifier runs only where logits are wanted.
 * Every entry is checked before anything runs: LLM_ERR_INVALID (a bad token, sequence or position, n out of
 * range) and LLM_ERR_KV_FULL (the pool lacks the blocks) leave every sequence as it was.
 */
int llm_batch(llm_ctx *ctx, const llm_batch_entry *entries, int32_t n, float *logits, float *hidden);

/*
 * One sequence's tokens[0..n_tokens) at positions pos..pos+n_tokens-1 in sequence 0 (any n_tokens: batches of
 * up to n_batch). pos continues the sequence (any pos from llm_seq_resume_min up to its length), rewinds it or
 * starts over (0); other positions are refused.
 * logits: NULL for none, else (vocab_size) floats for the last token, or (n_tokens, vocab_size) when
 * all_logits is non-zero; the classifier runs only for the tokens whose logits are asked for.
 * If the pool runs out midway (LLM_ERR_KV_FULL), the sequence holds the batches computed before.
 */
int llm_forward(llm_ctx *ctx, const int32_t *tokens, int32_t n_tokens, int32_t pos, float *logits,
                int32_t all_logits);

/*
 * The same pass in sequence 0, for embeddings: hidden receives (n_tokens, dim) floats, every token's final
 * hidden state after the final norm; the classifier is not run. LLM_ERR_INVALID for a NULL hidden.
 */
int llm_forward_hidden(llm_ctx *ctx, const int32_t *tokens, int32_t n_tokens, int32_t pos, float *hidden);

/* Sequence operations. Each returns 0, or LLM_ERR_INVALID for a bad sequence id or length (message in ctx). */

/* Keeps the first n positions of sequence seq (n <= its length) and gives the blocks of the rest back to the
   pool; n = 0 clears it. */
int llm_seq_keep(llm_ctx *ctx, int32_t seq, int32_t n);

/* Sequence dst becomes the first n positions of sequence src (what dst held is dropped first): a shared system
   prompt, or n > 1 choices of one prompt. Nothing is computed or copied: the two share src's blocks, and
   whichever writes into a shared block later copies that block first. n <= src's length, and n == 0 or
   n >= llm_seq_resume_min(src) (a sliding-window layer must still hold the window before n). */
int llm_seq_copy(llm_ctx *ctx, int32_t src, int32_t dst, int32_t n);

/* The positions sequence seq holds (0..length-1); LLM_ERR_INVALID for a bad id. */
int32_t llm_seq_length(const llm_ctx *ctx, int32_t seq);

/* The earliest position from which sequence seq can be continued or rewound: a sliding-window layer keeps
   only the blocks its window still needs, so a forward at pos needs the window before pos still there.
   0 while nothing has been dropped (always, for a model without windows); LLM_ERR_INVALID for a bad id. */
int32_t llm_seq_resume_min(const llm_ctx *ctx, int32_t seq);

/* The KV pool's blocks in use by any sequence and its blocks in all, summed over the layer groups (the layers
   without a window share one pool; each distinct window has its own). 0 or LLM_ERR_INVALID. */
int llm_kv_usage(const llm_ctx *ctx, int64_t *blocks_used, int64_t *blocks_total);

/* The bytes llm_create would allocate for this config and these sizes (the KV pool, activations, buffers),
   without allocating anything: front ends check it against the machine's memory first. It grows with n_kv
   (and n_ctx). LLM_ERR_INVALID for a bad config or size, LLM_ERR_NOMEM for sizes no memory could hold. */
int64_t llm_ctx_bytes(const llm_config *config, const llm_ctx_params *params);

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

/* The attention of n_tok consecutive tokens (token t at position pos + t), n_head query heads each, sharing one
   key/value head, as the forward pass computes it with the given instruction set, for tests: q and out are
   (n_tok, n_head, dim), k and v (n_pos, dim) the keys and values of positions 0 .. n_pos - 1 (pos + n_tok <= n_pos).
   Query (t, h) sees positions pos + t - window + 1 (window 0: 0) .. pos + t; scores are scale * q.k, soft-capped
   (cap * tanh(x / cap)) where softcap > 0. 0, LLM_ERR_NOMEM, or LLM_ERR_INVALID for an unknown instruction set, NULL
   buffers or sizes out of range. */
int llm_attention(int32_t isa, const float *q, int32_t n_tok, int32_t n_head, int64_t dim, const float *k,
                  const float *v, int32_t n_pos, int32_t pos, int32_t window, float scale, float softcap, float *out);

/* out = rows of x (rows, cols) stored as `type`, one of the block types (Q8_0 to IQ4_XS): the bytes ggml's
   reference quantizers (what llama-quantize uses without an importance matrix) write for the same values.
   out holds rows * cols / block_elems * block_bytes bytes (llm_type_layout). Rows are independent, so callers
   may split them among threads. 0, or LLM_ERR_INVALID for a float or unknown type, a cols that is not a
   whole number of the type's blocks, or NULL buffers. Inputs must be finite. */
int llm_quantize(int32_t type, const float *x, int64_t rows, int64_t cols, void *out);

/* out = w (rows, cols) of `type` repacked, *out_type its repacked type (LLM_Q8_0_R8 for LLM_Q8_0 ...): the
   same number of bytes (llm_type_layout of either type), rows interleaved in groups of 8. Rows are
   independent per group of 8, so callers may split them among threads in multiples of 8 (w and out offset
   alike). 0, or LLM_ERR_INVALID (out and *out_type untouched: the caller keeps w as it is) for a type without
   a repacked form (the 256-value blocks, a repacked type), rows not a positive multiple of 8,
   a cols that is not a whole number of the type's blocks, or NULL pointers. */
int llm_repack(int32_t type, const void *w, int64_t rows, int64_t cols, void *out, int32_t *out_type);

#endif /* LLMRUN_H */
