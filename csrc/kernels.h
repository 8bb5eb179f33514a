/*
 * kernels.h: the per-weight-type kernels behind the forward pass (internal to the library).
 *
 * Each weight type has a trait table: how its rows are laid out and the functions that compute with
 * them, chosen once for the instruction set picked at run time. forward.c only ever calls through a
 * table, so adding a type (F16, Q8_0, ...) means adding a table, not editing the transformer.
 */
#ifndef LLMRUN_KERNELS_H
#define LLMRUN_KERNELS_H

#include <string.h>

#include "llmrun.h"

/* out[r - row_begin] = dot(row r of w, x) for r in [row_begin, row_end); w is (rows, cols). */
typedef void (*llm_matvec_fn)(float *out, const void *w, const void *x, int64_t row_begin,
                              int64_t row_end, int64_t cols);

/* The same for a batch of n tokens: out[t * ldo + r - row_begin] = dot(row r of w, token t of x), where
   token t of x starts t * ldx bytes in (f32 values, or what quantize_x made of them). scratch is the
   calling thread's own llm_matmul_scratch_bytes(cols) bytes, for weights repacked on the way. */
typedef void (*llm_matmul_fn)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                              int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);

/* out = row `row` of w as floats (cols values): the embedding lookup. */
typedef void (*llm_get_row_fn)(float *out, const void *w, int64_t row, int64_t cols);

/* Turns an f32 vector (cols values, a multiple of 32) into the form a product's matvec reads. */
typedef void (*llm_quantize_fn)(void *out, const float *x, int64_t cols);

typedef struct {
    const char     *name;
    int64_t         block_elems; /* values per storage block (1 for plain float types) */
    size_t          block_bytes; /* bytes per storage block */
    llm_matvec_fn   matvec;      /* x is f32, or what quantize_x made of it */
    llm_get_row_fn  get_row;
    llm_quantize_fn quantize_x;  /* NULL: matvec reads f32 x. Block types all take block_q8_act blocks of
                                    x, so one quantized copy of x serves every block type in a product. */
    llm_matmul_fn   matmul;      /* NULL: a batch goes through matvec one token at a time */
} llm_type_traits;

/* Vector helpers of the attention and the feed-forward layer, picked for the same instruction set. rows
   are `dim` floats each, `stride` floats apart (the KV cache's rows of one head). */
typedef struct {
    /* out[s] = scale * dot(q, row s) for s < n_rows: a query's attention scores */
    void (*scores)(float *out, const float *q, const float *rows, int64_t stride, int64_t n_rows, int64_t dim,
                   float scale);
    /* out = sum over s < n_rows of weights[s] * row s: the attention's weighted sum of values */
    void (*weighted_sum)(float *out, const float *weights, const float *rows, int64_t stride, int64_t n_rows,
                         int64_t dim);
    void (*softmax)(float *x, int64_t n);                              /* in place */
    void (*swiglu)(float *gate, const float *up, int64_t n);          /* gate = silu(gate) * up */
} llm_vec_ops;

/* Fill in the traits of `type` for instruction set `isa`; 0, or LLM_ERR_INVALID if either is unknown. */
int llm_type_traits_get(int32_t type, int32_t isa, llm_type_traits *out);
void llm_vec_ops_get(int32_t isa, llm_vec_ops *out);

/* The matrix-matrix kernel of a type for an instruction set, or NULL (kernels_matmul.c). */
llm_matmul_fn llm_matmul_get(int32_t type, int32_t isa);
size_t llm_matmul_scratch_bytes(int64_t cols);

/* Per-type entry points (kernels_<type>.c). */
int llm_f32_traits(int32_t isa, llm_type_traits *out);
int llm_f16_traits(int32_t isa, llm_type_traits *out);
int llm_bf16_traits(int32_t isa, llm_type_traits *out);
int llm_q8_0_traits(int32_t isa, llm_type_traits *out);
int llm_q4_0_traits(int32_t isa, llm_type_traits *out);

/* ---------------------------------------------------------------------------------------------------- */
/* GGUF's block layouts (ggml-common.h) */

#define QK 32 /* values per Q8_0 / Q4_0 block */

typedef struct {
    uint16_t d;      /* scale, IEEE half precision */
    int8_t   qs[QK]; /* x = d * q */
} block_q8_0;

typedef struct {
    uint16_t d;          /* scale, IEEE half precision */
    uint8_t  qs[QK / 2]; /* value j in the low nibble of qs[j], value j + 16 in the high one: x = d * (q - 8) */
} block_q4_0;

/* Activations quantized to 8 bits per 32-value block, for the Q8_0 and Q4_0 products. They never leave
   the library, so they are laid out for the products: all the values, then the blocks' f32 scales, then
   per block d * (sum of q), which lets a product with unsigned weights q_w - offset take the offset off
   once per block. q8_act_bytes(cols) bytes in all. */
typedef struct {
    int8_t *qs;   /* (cols) x = d * q */
    float  *d;    /* (cols / 32) */
    float  *dsum; /* (cols / 32) */
} q8_act;

static inline size_t q8_act_bytes(int64_t cols) { return (size_t)cols + 2 * sizeof(float) * (size_t)(cols / QK); }

static inline q8_act q8_act_view(const void *buf, int64_t cols) {
    int8_t *qs = (int8_t *)buf;
    float *d = (float *)(qs + cols); /* cols is a multiple of 32: the floats stay aligned */
    return (q8_act){qs, d, d + cols / QK};
}

_Static_assert(sizeof(block_q8_0) == 34, "Q8_0 blocks are 34 bytes");
_Static_assert(sizeof(block_q4_0) == 18, "Q4_0 blocks are 18 bytes");



/* Half and bfloat16 to float, exactly (portable bit manipulation). */
static inline float llm_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0x1f) bits = sign | 0x7f800000 | (mant << 13); /* inf, nan */
    else if (exp != 0) bits = sign | ((exp + 112) << 23) | (mant << 13);
    else if (mant == 0) bits = sign; /* zero */
    else { /* subnormal: normalize */
        exp = 113;
        while (!(mant & 0x400)) {
            mant <<= 1;
            exp--;
        }
        bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline float llm_bf16_to_fp32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

#endif /* LLMRUN_KERNELS_H */
