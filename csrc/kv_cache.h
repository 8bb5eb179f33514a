/*
 * kv_cache.h: where each layer keeps the keys and values of past positions (the bookkeeping forward.c's
 * attention reads through, kept out of the math).
 *
 * A layer without a sliding window keeps a row per position of the context. A layer with a window w keeps a
 * ring of R = min(n_ctx, w + n_batch - 1) rows, position p in row p % R: a batch of n <= n_batch tokens from
 * pos needs positions pos - w + 1 .. pos + n - 1, at most w + n_batch - 1 of them, so writing a batch never
 * overwrites a key that the batch reads, and a long context costs window-size memory on that layer.
 */
#ifndef LLMRUN_KV_CACHE_H
#define LLMRUN_KV_CACHE_H

#include "llmrun.h"

typedef struct {
    int32_t window;    /* the sliding window, 0: the whole context */
    int32_t rows;      /* rows of the layer's cache: n_ctx, or the ring's R */
    int64_t first_row; /* where the layer's rows start in the context's (total rows, kv_dim) caches */
    int32_t oldest;    /* the oldest position the rows still hold (the ring drops older ones) */
} llm_kv_layer;

/* The rows of a layer's cache that hold positions first..last (last - first < rows): `n0` rows from `start`,
   then `n1` rows from row 0 where the run wraps around the ring. */
typedef struct {
    int32_t start, n0, n1;
} llm_kv_span;

/* Rows layer l keeps for this config and sizes (n_batch <= n_ctx). */
int32_t llm_kv_rows(const llm_config *p, int layer, int32_t n_ctx, int32_t n_batch);

/* Fills kv[0..n_layers) for a fresh cache; returns the total rows of all layers. */
int64_t llm_kv_plan(llm_kv_layer *kv, const llm_config *p, int32_t n_ctx, int32_t n_batch);

llm_kv_span llm_kv_span_of(const llm_kv_layer *kv, int32_t first, int32_t last);

/* Records that positions pos..end-1 were written (pos == 0: the sequence started over). */
void llm_kv_advance(llm_kv_layer *kv, int n_layers, int32_t pos, int32_t end);

/* The earliest position a forward may continue from (llm_ctx_resume_min): every windowed layer must still
   hold the window - 1 positions before it. */
int32_t llm_kv_resume_min(const llm_kv_layer *kv, int n_layers);

#endif /* LLMRUN_KV_CACHE_H */
