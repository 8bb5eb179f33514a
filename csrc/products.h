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

/* One product: out (n, w->rows) = x @ w^T, out's rows ldo floats apart. */
typedef struct {
    float            *out;
    int64_t           ldo;
    const llm_tensor *w;
} llm_product;

#define LLM_MAX_PRODUCTS 3 /* products that share one input (q, k, v) */

typedef struct llm_products llm_products; /* kernels, work-sharing state and buffers */

/* With the kernels of `kernels`, for inputs of up to max_cols values and batches of up to n_batch tokens, on
   `pool` (both borrowed). 0 or LLM_ERR_NOMEM. */
int  llm_products_create(const llm_kernels *kernels, llm_pool *pool, int64_t max_cols, int32_t n_batch,
                         llm_products **out);
void llm_products_free(llm_products *p);

/* The bytes llm_products_create allocates for these sizes (0 if they overflow). */
size_t llm_products_bytes(const llm_kernels *kernels, int n_threads, int64_t max_cols, int32_t n_batch);

/* The n_products (1 to LLM_MAX_PRODUCTS) products of the n tokens of x (rows ldx floats apart), which they
   share: q, k, v or gate, up. Sharing one call means one pass of quantizing x and one dispatch to the pool. */
void llm_products_run(llm_products *p, int64_t n, const float *x, int64_t ldx, const llm_product *products,
                      int n_products);

#endif /* LLMRUN_PRODUCTS_H */
