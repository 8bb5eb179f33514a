/* kv_cache.c: each layer's rows of the KV cache and the ring of a windowed layer (kv_cache.h). */
#include "kv_cache.h"

int32_t llm_kv_rows(const llm_config *p, int layer, int32_t n_ctx, int32_t n_batch) {
    int64_t window = p->layer_windows ? p->layer_windows[layer] : 0;
    int64_t ring = window + n_batch - 1; /* int64: a window near INT32_MAX */
    return window > 0 && ring < n_ctx ? (int32_t)ring : n_ctx;
}

int64_t llm_kv_plan(llm_kv_layer *kv, const llm_config *p, int32_t n_ctx, int32_t n_batch) {
    int64_t total = 0;
    for (int l = 0; l < p->n_layers; l++) {
        int32_t rows = llm_kv_rows(p, l, n_ctx, n_batch);
        /* a ring as long as the context never wraps: the layer then behaves as a window on a full cache */
        kv[l] = (llm_kv_layer){p->layer_windows ? p->layer_windows[l] : 0, rows, total, 0};
        total += rows;
    }
    return total;
}

llm_kv_span llm_kv_span_of(const llm_kv_layer *kv, int32_t first, int32_t last) {
    int32_t start = first % kv->rows, end = last % kv->rows; /* the rows of first and last */
    if (start <= end) return (llm_kv_span){start, end - start + 1, 0};
    return (llm_kv_span){start, kv->rows - start, end + 1};
}

void llm_kv_advance(llm_kv_layer *kv, int n_layers, int32_t pos, int32_t end) {
    for (int l = 0; l < n_layers; l++) {
        /* The rows now hold pos..end-1, and before pos what they held that no new position replaced: row r
           of the ring lost every position below end - rows. A restart (pos 0) forgets the old sequence. */
        int32_t oldest = pos == 0 ? 0 : kv[l].oldest, lost = end - kv[l].rows;
        kv[l].oldest = lost > oldest ? lost : oldest;
    }
}

int32_t llm_kv_resume_min(const llm_kv_layer *kv, int n_layers) {
    int32_t min = 0;
    for (int l = 0; l < n_layers; l++) {
        /* a token at pos attends to pos - window + 1 ..: those must not be older than what the ring holds */
        int32_t need = kv[l].oldest > 0 ? kv[l].oldest + kv[l].window - 1 : 0;
        min = need > min ? need : min;
    }
    return min;
}
