/* attention.c: llm_attention (llmrun.h), the attention kernels of a level run on plain arrays of keys and values,
   for tests: the arrays go into blocks laid out as the KV cache lays them out (kv_cache.h), in reverse order of
   the positions, so that a kernel that followed the positions instead of the block table would be caught. */
#include <stdlib.h>

#include "kernels.h"

int llm_attention(int32_t isa, const float *q, int32_t n_tok, int32_t n_head, int64_t dim, const float *k,
                  const float *v, int32_t n_pos, int32_t pos, int32_t window, float scale, float softcap, float *out) {
    enum { B = LLM_KV_BLOCK };
    if (isa == LLM_ISA_AUTO) isa = llm_isa_best();
    const llm_kernels *kernels = llm_kernels_get(isa);
    if (!kernels || !q || !k || !v || !out || n_tok < 1 || n_head < 1 || dim < 1 || dim > 4096 || pos < 0 ||
        window < 0 || n_pos > (1 << 20) || (int64_t)n_tok * n_head > (1 << 16) || (int64_t)pos + n_tok > n_pos)
        return LLM_ERR_INVALID;
    if (window >= n_pos) window = 0; /* a window that holds every position is none (as llm_config's) */
    int32_t n_blocks = (n_pos + B - 1) / B;
    size_t block = (size_t)B * (size_t)dim;
    float *keys = calloc((size_t)n_blocks * block, sizeof *keys), *values = calloc((size_t)n_blocks * block, sizeof *values);
    float *scratch = malloc(llm_attention_scratch((int64_t)n_tok * n_head, dim) * sizeof *scratch);
    int32_t *table = malloc((size_t)n_blocks * sizeof *table);
    int rc = keys && values && scratch && table ? 0 : LLM_ERR_NOMEM;
    for (int32_t b = 0; rc == 0 && b < n_blocks; b++) table[b] = n_blocks - 1 - b;
    for (int32_t p = 0; rc == 0 && p < n_pos; p++) {
        float *kb = keys + (size_t)table[p / B] * block, *vb = values + (size_t)table[p / B] * block;
        for (int64_t d = 0; d < dim; d++) {
            kb[d * B + p % B] = k[(size_t)p * dim + d];
            vb[(p % B) * dim + d] = v[(size_t)p * dim + d];
        }
    }
    if (rc == 0) {
        llm_attention_tile tile = {q, out, n_head * dim, n_head * dim, dim, n_tok, n_head, pos, window, scale,
                                   softcap, keys, values, table, (int64_t)block};
        kernels->vec.attention(&tile, scratch);
    }
    free(keys);
    free(values);
    free(scratch);
    free(table);
    return rc;
}
