/*
 * products.h: the matrix products of the forward pass, shared out among the threads of a pool
 * (internal to the library).
 *
 * forward.c says which products to compute (out = x @ w^T over a batch of tokens); this part decides how:
 * it quantizes x once where block weights want 8-bit input, cuts the weights' rows into chunks, lets the
 * threads claim them, and calls each type's matrix-vector (one token) or matrix-matrix kernel.
 */
#ifndef LLMRUN_PRODUCTS_H
#define LLMRUN_PRODUCTS_H

#include "kernels.h"
#include "threadpool.h"

/* One product: out (n, w->rows), its rows ldo floats apart. */
typedef struct {
    float            *out;
    int64_t           ldo;
    const llm_tensor *w;
} llm_product;

#define LLM_NO_PRODUCT ((llm_product){NULL, 0, NULL})

typedef struct llm_products llm_products; /* kernels, work-sharing state and buffers */

/* For inputs of up to max_cols values and batches of up to n_batch tokens, on `pool` (borrowed). */
int  llm_products_create(int32_t isa, llm_pool *pool, int64_t max_cols, int32_t n_batch, llm_products **out);
void llm_products_free(llm_products *p);

/* out_j = x @ w_j^T for up to three products that share their input (q, k, v or gate, up), over the n
   tokens of x (rows ldx floats apart); p1 and p2 may be LLM_NO_PRODUCT. */
void llm_products_run(llm_products *p, int64_t n, const float *x, int64_t ldx, llm_product p0, llm_product p1,
                      llm_product p2);

#endif /* LLMRUN_PRODUCTS_H */
