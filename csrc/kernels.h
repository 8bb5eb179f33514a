/*
 * kernels.h: the per-weight-type kernels behind the forward pass (internal to the library).
 *
 * Each weight type has a trait table: how its rows are laid out and the functions that compute with
 * them, chosen once for the instruction set picked at run time. forward.c only ever calls through a
 * table, so adding a type (F16, Q8_0, ...) means adding a table, not editing the transformer.
 */
#ifndef LLMRUN_KERNELS_H
#define LLMRUN_KERNELS_H

#include "llmrun.h"

/* out[r - row_begin] = dot(row r of w, x) for r in [row_begin, row_end); w is (rows, cols). */
typedef void (*llm_matvec_fn)(float *out, const void *w, const float *x, int64_t row_begin,
                              int64_t row_end, int64_t cols);

/* out = row `row` of w as floats (cols values): the embedding lookup. */
typedef void (*llm_get_row_fn)(float *out, const void *w, int64_t row, int64_t cols);

typedef struct {
    const char    *name;
    int64_t        block_elems; /* values per storage block (1 for plain float types) */
    size_t         block_bytes; /* bytes per storage block */
    llm_matvec_fn  matvec;
    llm_get_row_fn get_row;
} llm_type_traits;

/* Vector helpers the attention uses, picked for the same instruction set. */
typedef struct {
    float (*dot)(const float *a, const float *b, int64_t n);      /* sum a*b */
    void (*axpy)(float *y, float a, const float *x, int64_t n);   /* y += a*x */
} llm_vec_ops;

/* Fill in the traits of `type` for instruction set `isa`; 0, or LLM_ERR_INVALID if either is unknown. */
int llm_type_traits_get(int32_t type, int32_t isa, llm_type_traits *out);
void llm_vec_ops_get(int32_t isa, llm_vec_ops *out);

/* Per-type entry points (kernels_<type>.c). */
int llm_f32_traits(int32_t isa, llm_type_traits *out);

#endif /* LLMRUN_KERNELS_H */
