/* kv_cache.c: the KV cache's block pools, the sequences' block tables and a batch's checks (kv_cache.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checks.h"
#include "kv_cache.h"

enum { B = LLM_KV_BLOCK };

/* Layer l's window as the cache sees it: 0 where it masks nothing (none, or >= n_ctx). */
static int32_t effective_window(const llm_config *p, int l, int32_t n_ctx) {
    int32_t w = p->layer_windows ? p->layer_windows[l] : 0;
    return w > 0 && w < n_ctx ? w : 0;
}

/* The first layer whose window is layer l's: the layers of one group share it. */
static int group_leader(const llm_config *p, int l, int32_t n_ctx) {
    int leader = 0;
    while (effective_window(p, leader, n_ctx) != effective_window(p, l, n_ctx)) leader++;
    return leader;
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* *total += count * size, 0 when that overflows (the running total stays within INT64_MAX). */
static int add_bytes(int64_t *total, int64_t count, int64_t size) {
    int64_t bytes;
    if (__builtin_mul_overflow(count, size, &bytes) || __builtin_add_overflow(*total, bytes, total)) return 0;
    return 1;
}

/* Where each array of the cache lies in one allocation of the returned size (-1: overflow); with base != NULL
   the pointers are set (the memory is zeroed). llm_kv_bytes and llm_kv_create both read this one plan. */
static int64_t layout(const llm_config *p, int32_t n_ctx, int32_t n_seq, int32_t n_kv, int32_t n_batch, char *base) {
    int64_t kv_dim = (int64_t)p->n_kv_heads * p->head_dim, bps = ceil_div(n_ctx, B), full = ceil_div(n_kv, B);
    int n_groups = 0;
    for (int l = 0; l < p->n_layers; l++) n_groups += group_leader(p, l, n_ctx) == l;
    int64_t at = 0;
    llm_kv *kv = (llm_kv *)base;
    int ok = add_bytes(&at, 1, sizeof(llm_kv));
    int64_t groups_at = at;
    ok = ok && add_bytes(&at, n_groups, sizeof(llm_kv_group));
#define ARRAY(field, count, type) /* (count) of type, at `at` */ \
    do {                                                          \
        if (base) (field) = (type *)(base + at);                  \
        ok = ok && add_bytes(&at, count, sizeof(type));           \
    } while (0)
    llm_kv unused, *k = base ? kv : &unused;
    ARRAY(k->layer_group, p->n_layers, int32_t);
    ARRAY(k->layer_index, p->n_layers, int32_t);
    ARRAY(k->length, n_seq, int32_t);
    ARRAY(k->first, n_seq, int32_t);
    ARRAY(k->next, n_seq, int32_t);
    ARRAY(k->touched, n_batch, int32_t);
    ARRAY(k->entries, n_batch, llm_batch_entry);
    for (int l = 0, g = 0; l < p->n_layers && ok; l++) {
        if (group_leader(p, l, n_ctx) != l) continue;
        llm_kv_group scratch, *G = base ? (llm_kv_group *)(base + groups_at) + g : &scratch;
        G->window = effective_window(p, l, n_ctx);
        G->n_layers = 0;
        for (int m = l; m < p->n_layers; m++) G->n_layers += group_leader(p, m, n_ctx) == l;
        int64_t blocks = full;
        if (G->window && n_seq * (ceil_div((int64_t)G->window + n_batch - 1, B) + 2) < blocks)
            blocks = n_seq * (ceil_div((int64_t)G->window + n_batch - 1, B) + 2);
        if (blocks > INT32_MAX) return -1;
        G->n_blocks = G->n_free = (int32_t)blocks;
        int64_t floats;
        ok = ok && !__builtin_mul_overflow((int64_t)G->n_layers * blocks * B, kv_dim, &floats);
        ARRAY(G->free, blocks, int32_t);
        ARRAY(G->refs, blocks, int32_t);
        ARRAY(G->tables, (int64_t)n_seq * bps, int32_t);
        ARRAY(G->oldest, n_seq, int32_t);
        ARRAY(G->keys, floats, float);
        ARRAY(G->values, floats, float);
        g++;
    }
#undef ARRAY
    if (!ok || (uint64_t)at > SIZE_MAX) return -1;
    if (base) {
        *kv = (llm_kv){n_seq, n_ctx, n_batch, (int32_t)bps, kv_dim, p->head_dim, n_groups,
                       (llm_kv_group *)(base + groups_at),
                       k->layer_group, k->layer_index, k->length, k->first, k->next, k->touched, 0, k->entries};
        for (int l = 0; l < p->n_layers; l++) {
            int leader = group_leader(p, l, n_ctx), g = 0, index = 0;
            for (int m = 0; m < leader; m++) g += group_leader(p, m, n_ctx) == m;
            for (int m = leader; m < l; m++) index += group_leader(p, m, n_ctx) == leader;
            kv->layer_group[l] = g;
            kv->layer_index[l] = index;
        }
        for (int32_t s = 0; s < n_seq; s++) kv->first[s] = -1;
        for (int g = 0; g < n_groups; g++) {
            llm_kv_group *G = &kv->groups[g];
            for (int32_t i = 0; i < G->n_blocks; i++) G->free[i] = G->n_blocks - 1 - i; /* block 0 on top */
            for (int64_t i = 0; i < (int64_t)n_seq * bps; i++) G->tables[i] = -1;
        }
    }
    return at;
}

int64_t llm_kv_bytes(const llm_config *p, int32_t n_ctx, int32_t n_seq, int32_t n_kv, int32_t n_batch) {
    return layout(p, n_ctx, n_seq, n_kv, n_batch, NULL);
}

llm_kv *llm_kv_create(const llm_config *p, int32_t n_ctx, int32_t n_seq, int32_t n_kv, int32_t n_batch) {
    int64_t bytes = layout(p, n_ctx, n_seq, n_kv, n_batch, NULL);
    char *base = bytes > 0 ? calloc(1, (size_t)bytes) : NULL;
    if (base) layout(p, n_ctx, n_seq, n_kv, n_batch, base);
    return (llm_kv *)base;
}

void llm_kv_free(llm_kv *kv) { free(kv); }

/* ---------------------------------------------------------------------------------------------------- */
/* blocks */

static int32_t *table_of(const llm_kv *kv, const llm_kv_group *g, int32_t seq) {
    return g->tables + (int64_t)seq * kv->blocks_per_seq;
}

static void release(llm_kv_group *g, int32_t *slot) {
    if (*slot >= 0 && --g->refs[*slot] == 0) g->free[g->n_free++] = *slot;
    *slot = -1;
}

static int32_t take(llm_kv_group *g) {
    int32_t id = g->free[--g->n_free];
    g->refs[id] = 1;
    return id;
}

/* Gives back sequence seq's blocks from block index `from` on (it holds none past its length). */
static void drop_from(llm_kv *kv, int32_t seq, int64_t from) {
    for (int gi = 0; gi < kv->n_groups; gi++) {
        llm_kv_group *g = &kv->groups[gi];
        int32_t *table = table_of(kv, g, seq);
        for (int64_t b = from; b < ceil_div(kv->length[seq], B); b++) release(g, &table[b]);
        if (from == 0) g->oldest[seq] = 0;
    }
}

/* Block b of sequence seq made writable: taken if absent, copied (every layer of the group) if shared. */
static void own_block(llm_kv *kv, llm_kv_group *g, int32_t seq, int64_t b) {
    int32_t *slot = &table_of(kv, g, seq)[b], old = *slot;
    if (old >= 0 && g->refs[old] == 1) return;
    *slot = take(g);
    if (old < 0) return;
    size_t block = (size_t)B * (size_t)kv->kv_dim;
    for (int64_t l = 0; l < g->n_layers; l++) {
        memcpy(g->keys + (l * g->n_blocks + *slot) * block, g->keys + (l * g->n_blocks + old) * block,
               block * sizeof(float));
        memcpy(g->values + (l * g->n_blocks + *slot) * block, g->values + (l * g->n_blocks + old) * block,
               block * sizeof(float));
    }
    g->refs[old]--;
}

/* ---------------------------------------------------------------------------------------------------- */
/* a batch */

/* LLM_ERR_KV_FULL where a group lacks the blocks the batch's sequences need (counted before any changes: new blocks
   past each sequence's kept blocks, copies of shared blocks to be written, less the blocks a rewind frees). */
static int check_blocks(const llm_kv *kv, char *err, size_t errlen) {
    for (int gi = 0; gi < kv->n_groups; gi++) {
        const llm_kv_group *g = &kv->groups[gi];
        int64_t free = g->n_free, need = 0;
        for (int32_t i = 0; i < kv->n_touched; i++) {
            int32_t s = kv->touched[i], p = kv->first[s];
            const int32_t *table = table_of(kv, g, s);
            int64_t kept = ceil_div(p, B); /* blocks a rewind to p keeps (the last one partly) */
            for (int64_t b = kept; b < ceil_div(kv->length[s], B); b++) free += table[b] >= 0 && g->refs[table[b]] == 1;
            for (int64_t b = p / B; b <= (kv->next[s] - 1) / B; b++)
                need += b >= kept || table[b] < 0 || g->refs[table[b]] > 1;
        }
        if (need > free) {
            char group[48] = "";
            if (g->window) snprintf(group, sizeof group, " of the layers with window %d", g->window);
            return llm_fail(err, errlen, LLM_ERR_KV_FULL, "the KV pool%s is full: %lld more blocks of %d positions "
                            "are needed, %lld are free (%d in all)", group, (long long)need, B, (long long)free,
                            g->n_blocks);
        }
    }
    return 0;
}

/* Entry i against the sequences' state and the entries before it. */
static int check_entry(llm_kv *kv, const llm_batch_entry *e, int32_t i, int32_t vocab, char *err, size_t errlen) {
    int32_t s = e->seq, pos = e->pos;
    if (e->token < 0 || e->token >= vocab)
        return llm_fail(err, errlen, LLM_ERR_INVALID, "entry %d: token %d is outside [0, %d)", i, e->token, vocab);
    if (s < 0 || s >= kv->n_seq)
        return llm_fail(err, errlen, LLM_ERR_INVALID, "entry %d: sequence %d is outside [0, %d)", i, s, kv->n_seq);
    if (pos < 0 || pos >= kv->n_ctx)
        return llm_fail(err, errlen, LLM_ERR_INVALID, "entry %d: position %d is outside the context [0, %d)", i,
                        pos, kv->n_ctx);
    if (kv->first[s] >= 0) {
        if (pos != kv->next[s])
            return llm_fail(err, errlen, LLM_ERR_INVALID, "entry %d: position %d of sequence %d does not follow "
                            "position %d", i, pos, s, kv->next[s] - 1);
        kv->next[s]++;
        return 0;
    }
    if (pos > kv->length[s])
        return llm_fail(err, errlen, LLM_ERR_INVALID, "entry %d: position %d is past the cache of sequence %d, which "
                        "holds positions 0..%d: a batch continues a sequence, rewinds it or starts over at 0", i, pos,
                        s, kv->length[s] - 1);
    int32_t resume_min = llm_kv_resume_min(kv, s);
    if (pos != 0 && pos < resume_min)
        return llm_fail(err, errlen, LLM_ERR_INVALID, "entry %d: position %d of sequence %d needs keys that the "
                        "sliding-window layers' caches have dropped: continue from position %d or later, or start "
                        "over at 0", i, pos, s, resume_min);
    kv->first[s] = pos;
    kv->next[s] = pos + 1;
    kv->touched[kv->n_touched++] = s;
    return 0;
}

int llm_kv_batch_begin(llm_kv *kv, const llm_batch_entry *e, int32_t n, int32_t vocab, char *err, size_t errlen) {
    if (!e) return llm_fail(err, errlen, LLM_ERR_INVALID, "entries is NULL");
    if (n < 1 || n > kv->n_batch)
        return llm_fail(err, errlen, LLM_ERR_INVALID, "n is %d; a batch holds 1 to %d entries (n_batch)", n,
                        kv->n_batch);
    kv->n_touched = 0;
    int rc = 0;
    for (int32_t i = 0; i < n && rc == 0; i++) rc = check_entry(kv, &e[i], i, vocab, err, errlen);
    if (rc == 0) rc = check_blocks(kv, err, errlen);
    if (rc != 0) { /* nothing changed: forget the batch */
        for (int32_t i = 0; i < kv->n_touched; i++) kv->first[kv->touched[i]] = -1;
        kv->n_touched = 0;
        return rc;
    }
    for (int32_t i = 0; i < kv->n_touched; i++) {
        int32_t s = kv->touched[i], p = kv->first[s];
        drop_from(kv, s, ceil_div(p, B)); /* a rewind (or a start over, p == 0) */
        kv->length[s] = p;
        for (int gi = 0; gi < kv->n_groups; gi++)
            for (int64_t b = p / B; b <= (kv->next[s] - 1) / B; b++) own_block(kv, &kv->groups[gi], s, b);
    }
    return 0;
}

void llm_kv_batch_end(llm_kv *kv) {
    for (int32_t i = 0; i < kv->n_touched; i++) {
        int32_t s = kv->touched[i];
        kv->length[s] = kv->next[s];
        kv->first[s] = -1;
        for (int gi = 0; gi < kv->n_groups; gi++) {
            llm_kv_group *g = &kv->groups[gi];
            int64_t seen = (int64_t)kv->length[s] - g->window + 1; /* no later query looks below it */
            if (!g->window || seen / B * B <= g->oldest[s]) continue;
            int32_t *table = table_of(kv, g, s);
            for (int64_t b = g->oldest[s] / B; b < seen / B; b++) release(g, &table[b]);
            g->oldest[s] = (int32_t)(seen / B * B);
        }
    }
    kv->n_touched = 0;
}

/* ---------------------------------------------------------------------------------------------------- */
/* sequence operations */

static int check_seq(const llm_kv *kv, int32_t seq, const char *name, char *err, size_t errlen) {
    if (seq < 0 || seq >= kv->n_seq)
        return llm_fail(err, errlen, LLM_ERR_INVALID, "%s %d is outside [0, %d)", name, seq, kv->n_seq);
    return 0;
}

int llm_kv_keep(llm_kv *kv, int32_t seq, int32_t n, char *err, size_t errlen) {
    int rc = check_seq(kv, seq, "sequence", err, errlen);
    if (rc) return rc;
    if (n < 0 || n > kv->length[seq])
        return llm_fail(err, errlen, LLM_ERR_INVALID, "n %d is outside [0, %d]: sequence %d holds %d positions", n,
                        kv->length[seq], seq, kv->length[seq]);
    drop_from(kv, seq, ceil_div(n, B));
    kv->length[seq] = n;
    return 0;
}

int llm_kv_copy(llm_kv *kv, int32_t src, int32_t dst, int32_t n, char *err, size_t errlen) {
    int rc = check_seq(kv, src, "src", err, errlen);
    if (rc || (rc = check_seq(kv, dst, "dst", err, errlen))) return rc;
    if (src == dst) return llm_fail(err, errlen, LLM_ERR_INVALID, "cannot copy sequence %d onto itself", src);
    if (n < 0 || n > kv->length[src])
        return llm_fail(err, errlen, LLM_ERR_INVALID, "n %d is outside [0, %d]: sequence %d holds %d positions", n,
                        kv->length[src], src, kv->length[src]);
    int32_t resume_min = llm_kv_resume_min(kv, src);
    if (n != 0 && n < resume_min)
        return llm_fail(err, errlen, LLM_ERR_INVALID, "n %d: sequence %d's sliding-window layers no longer hold "
                        "the keys before position %d (copy n >= %d, or 0)", n, src, n, resume_min);
    drop_from(kv, dst, 0);
    for (int gi = 0; gi < kv->n_groups; gi++) {
        llm_kv_group *g = &kv->groups[gi];
        int32_t *from = table_of(kv, g, src), *to = table_of(kv, g, dst);
        g->oldest[dst] = n ? g->oldest[src] : 0;
        for (int64_t b = g->oldest[dst] / B; b < ceil_div(n, B); b++)
            if ((to[b] = from[b]) >= 0) g->refs[to[b]]++;
    }
    kv->length[dst] = n;
    return 0;
}

int32_t llm_kv_resume_min(const llm_kv *kv, int32_t seq) {
    int32_t min = 0;
    for (int gi = 0; gi < kv->n_groups; gi++) {
        const llm_kv_group *g = &kv->groups[gi];
        /* a token at pos attends to pos - window + 1 ..: those must not be older than what the group holds */
        int32_t need = g->oldest[seq] > 0 ? g->oldest[seq] + g->window - 1 : 0;
        min = need > min ? need : min;
    }
    return min;
}

void llm_kv_blocks(const llm_kv *kv, int64_t *used, int64_t *total) {
    *used = *total = 0;
    for (int gi = 0; gi < kv->n_groups; gi++) {
        *used += kv->groups[gi].n_blocks - kv->groups[gi].n_free;
        *total += kv->groups[gi].n_blocks;
    }
}
