/*
 * kv_cache.h: the KV cache's pool of blocks and the sequences' block tables (the bookkeeping beside forward.c,
 * which writes a position's keys and values with llm_kv_store and reads a head's blocks through llm_kv_head).
 *
 * Layers are grouped by their sliding window: the layers without one (or with one >= n_ctx) form one group, each
 * distinct window its own. A group has a pool of blocks, each holding LLM_KV_BLOCK positions of every layer of
 * the group (keys and values), a reference count per block and a free list (a stack of block ids). A sequence
 * has, per group, a table of ceil(n_ctx / B) block ids (-1: none): position p lives in row p % B of block
 * table[p / B]. Blocks are taken as a sequence grows and given back when it is cleared or rewound; two sequences
 * share blocks after llm_seq_copy, and a shared block is copied before it is written (copy on write).
 *
 * A block of one layer holds, per key/value head, its keys as head_dim rows of B floats (dimension major: the
 * attention kernels broadcast a query's values across B positions, kernels.h llm_attention_tile), then per head
 * its values as B rows of head_dim floats: keys (n_kv_heads, head_dim, B), values (n_kv_heads, B, head_dim).
 *
 * Pool sizes: the full group has ceil(n_kv / B) blocks. A group of window w has min(that, n_seq x
 * (ceil((w + n_batch - 1) / B) + 2)) blocks, and after each batch gives back, per sequence, the blocks whose every
 * position is below length - w + 1 (no later query sees them): what a sequence holds there is a subset of the block
 * indices it holds in the full group, and a batch of n_batch tokens needs at most ceil((w + n_batch - 1) / B) + 1
 * of them. `oldest` then says from where the sequence can be continued (llm_seq_resume_min).
 */
#ifndef LLMRUN_KV_CACHE_H
#define LLMRUN_KV_CACHE_H

#include "kernels.h"

typedef struct {
    int32_t  window;   /* the sliding window, 0: the whole context */
    int32_t  n_layers; /* layers in the group */
    int32_t  n_blocks; /* blocks of the pool */
    int32_t  n_free;   /* free[0..n_free) are the free blocks */
    int32_t *free;     /* (n_blocks) a stack of free block ids */
    int32_t *refs;     /* (n_blocks) sequences holding each block */
    int32_t *tables;   /* (n_seq, blocks_per_seq) each sequence's block of each B positions, -1: none */
    int32_t *oldest;   /* (n_seq) the oldest position the group still holds for each sequence (0 for the full group) */
    float   *keys;     /* (n_layers, n_blocks, n_kv_heads, head_dim, B) */
    float   *values;   /* (n_layers, n_blocks, n_kv_heads, B, head_dim) */
} llm_kv_group;

typedef struct {
    int32_t       n_seq, n_ctx, n_batch, blocks_per_seq;
    int64_t       kv_dim, head_dim;
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

/* Where block `block` of layer `layer` starts in its group's keys (and values): B x kv_dim floats each. */
static inline int64_t llm_kv_block_at(const llm_kv *kv, const llm_kv_group *g, int layer, int64_t block) {
    return ((int64_t)kv->layer_index[layer] * g->n_blocks + block) * LLM_KV_BLOCK * kv->kv_dim;
}

/* Stores position pos's keys k and values v (kv_dim floats each: head after head) of sequence seq, layer `layer`. */
static inline void llm_kv_store(const llm_kv *kv, int layer, int32_t seq, int32_t pos, const float *k,
                                const float *v) {
    const llm_kv_group *g = &kv->groups[kv->layer_group[layer]];
    int64_t at = llm_kv_block_at(kv, g, layer, g->tables[(int64_t)seq * kv->blocks_per_seq + pos / LLM_KV_BLOCK]);
    int64_t row = pos % LLM_KV_BLOCK, hd = kv->head_dim, head = LLM_KV_BLOCK * hd;
    for (int64_t h = 0; h < kv->kv_dim / hd; h++) {
        float *keys = g->keys + at + h * head + row, *values = g->values + at + h * head + row * hd;
        for (int64_t d = 0; d < hd; d++) keys[d * LLM_KV_BLOCK] = k[h * hd + d];
        memcpy(values, v + h * hd, (size_t)hd * sizeof *v);
    }
}

/* Points tile's keys, values, table and stride at key/value head `head` of sequence seq in layer `layer`. */
static inline void llm_kv_head(const llm_kv *kv, int layer, int32_t seq, int head, llm_attention_tile *tile) {
    const llm_kv_group *g = &kv->groups[kv->layer_group[layer]];
    int64_t at = llm_kv_block_at(kv, g, layer, 0) + (int64_t)head * LLM_KV_BLOCK * kv->head_dim;
    tile->keys = g->keys + at;
    tile->values = g->values + at;
    tile->table = g->tables + (int64_t)seq * kv->blocks_per_seq;
    tile->stride = LLM_KV_BLOCK * kv->kv_dim;
}

/* The window of layer `layer` (0: none). */
static inline int32_t llm_kv_window(const llm_kv *kv, int layer) { return kv->groups[kv->layer_group[layer]].window; }

#endif /* LLMRUN_KV_CACHE_H */
