/*
 * kv_cache.h: the KV cache's pool of blocks and the sequences' block tables (the bookkeeping beside forward.c,
 * which only reads and writes rows through llm_kv_key / llm_kv_value).
 *
 * Layers are grouped by their sliding window: the layers without one (or with one >= n_ctx) form one group, each
 * distinct window its own. A group has a pool of blocks, each holding LLM_KV_BLOCK positions of every layer of
 * the group (keys and values), a reference count per block and a free list (a stack of block ids). A sequence
 * has, per group, a table of ceil(n_ctx / B) block ids (-1: none): position p lives in row p % B of block
 * table[p / B]. Blocks are taken as a sequence grows and given back when it is cleared or rewound; two sequences
 * share blocks after llm_seq_copy, and a shared block is copied before it is written (copy on write).
 *
 * Pool sizes: the full group has ceil(n_kv / B) blocks. A group of window w has min(that, n_seq x
 * (ceil((w + n_batch - 1) / B) + 2)) blocks, and after each batch gives back, per sequence, the blocks whose every
 * position is below length - w + 1 (no later query sees them): what a sequence holds there is a subset of the block
 * indices it holds in the full group, and a batch of n_batch tokens needs at most ceil((w + n_batch - 1) / B) + 1
 * of them. `oldest` then says from where the sequence can be continued (llm_seq_resume_min).
 */
#ifndef LLMRUN_KV_CACHE_H
#define LLMRUN_KV_CACHE_H

#include "llmrun.h"

typedef struct {
    int32_t  window;   /* the sliding window, 0: the whole context */
    int32_t  n_layers; /* layers in the group */
    int32_t  n_blocks; /* blocks of the pool */
    int32_t  n_free;   /* free[0..n_free) are the free blocks */
    int32_t *free;     /* (n_blocks) a stack of free block ids */
    int32_t *refs;     /* (n_blocks) sequences holding each block */
    int32_t *tables;   /* (n_seq, blocks_per_seq) each sequence's block of each B positions, -1: none */
    int32_t *oldest;   /* (n_seq) the oldest position the group still holds for each sequence (0 for the full group) */
    float   *keys;     /* (n_layers, n_blocks, B, kv_dim) */
    float   *values;   /* likewise */
} llm_kv_group;

typedef struct {
    int32_t       n_seq, n_ctx, n_batch, blocks_per_seq;
    int64_t       kv_dim;
    int32_t       n_groups;
    llm_kv_group *groups;      /* (n_groups) */
    int32_t      *layer_group; /* (n_layers) the group of each layer */
    int32_t      *layer_index; /* (n_layers) its index among its group's layers */
    int32_t      *length;      /* (n_seq) positions each sequence holds */
    /* a batch's sequences, found by llm_kv_batch_begin and used again by llm_kv_batch_end */
    int32_t      *first;       /* (n_seq) the batch's first position of each sequence, -1: not in the batch */
    int32_t      *next;        /* (n_seq) the position its next entry must have */
    int32_t      *touched;     /* (n_batch) the batch's sequences */
    int32_t       n_touched;
    llm_batch_entry *entries;  /* (n_batch) llm_forward's batches */
} llm_kv;

/* The bytes llm_kv_create allocates (one allocation), or -1 where they overflow; a config with n_seq, n_kv, n_ctx
   and n_batch already checked (n_batch <= n_ctx, n_kv >= 1). */
int64_t llm_kv_bytes(const llm_config *p, int32_t n_ctx, int32_t n_seq, int32_t n_kv, int32_t n_batch);

/* An empty cache, or NULL when out of memory. */
llm_kv *llm_kv_create(const llm_config *p, int32_t n_ctx, int32_t n_seq, int32_t n_kv, int32_t n_batch);
void    llm_kv_free(llm_kv *kv);

/* Checks a batch (every entry, then the blocks it needs) and, if it passes, prepares the blocks it writes:
   rewinds, new blocks, copies of shared ones. LLM_ERR_INVALID / LLM_ERR_KV_FULL with a message change nothing. */
int  llm_kv_batch_begin(llm_kv *kv, const llm_batch_entry *e, int32_t n, int32_t vocab_size, char *err,
                        size_t errlen);
/* After the forward pass: the sequences' new lengths; windowed groups give back what no query will see. */
void llm_kv_batch_end(llm_kv *kv);

/* The sequence operations of llmrun.h. */
int     llm_kv_keep(llm_kv *kv, int32_t seq, int32_t n, char *err, size_t errlen);
int     llm_kv_copy(llm_kv *kv, int32_t src, int32_t dst, int32_t n, char *err, size_t errlen);
int32_t llm_kv_resume_min(const llm_kv *kv, int32_t seq);
void    llm_kv_blocks(const llm_kv *kv, int64_t *used, int64_t *total);

/* The block of layer `layer` that holds position pos of sequence seq: its first row (B rows, kv_dim apart). */
static inline float *llm_kv_block(const llm_kv *kv, int layer, int32_t seq, int32_t pos, int values) {
    const llm_kv_group *g = &kv->groups[kv->layer_group[layer]];
    int64_t block = g->tables[(int64_t)seq * kv->blocks_per_seq + pos / LLM_KV_BLOCK];
    int64_t at = ((int64_t)kv->layer_index[layer] * g->n_blocks + block) * LLM_KV_BLOCK * kv->kv_dim;
    return (values ? g->values : g->keys) + at;
}

/* The row of position pos (sequence seq, layer `layer`): keys (values 0) or values (1). */
static inline float *llm_kv_row(const llm_kv *kv, int layer, int32_t seq, int32_t pos, int values) {
    return llm_kv_block(kv, layer, seq, pos, values) + (int64_t)(pos % LLM_KV_BLOCK) * kv->kv_dim;
}

/* The end (exclusive, at most last + 1) of a run of positions from `at` on whose rows lie one after another in
   layer `layer`'s storage: the rest of at's block, and from a block's start on, the blocks with consecutive ids
   (adjacent in the storage; a sequence grown alone takes them so). The kernels then see the rows in pieces that
   start where the blocks do, whichever ids the blocks got: a token's arithmetic does not depend on its neighbours. */
static inline int32_t llm_kv_run_end(const llm_kv *kv, int layer, int32_t seq, int32_t at, int32_t last) {
    const llm_kv_group *g = &kv->groups[kv->layer_group[layer]];
    const int32_t *table = g->tables + (int64_t)seq * kv->blocks_per_seq;
    int64_t b = at / LLM_KV_BLOCK;
    while (at % LLM_KV_BLOCK == 0 && (b + 1) * LLM_KV_BLOCK <= last && table[b + 1] == table[b] + 1) b++;
    return (b + 1) * LLM_KV_BLOCK <= last ? (int32_t)((b + 1) * LLM_KV_BLOCK) : last + 1;
}

/* The window of layer `layer` (0: none). */
static inline int32_t llm_kv_window(const llm_kv *kv, int layer) { return kv->groups[kv->layer_group[layer]].window; }

#endif /* LLMRUN_KV_CACHE_H */
