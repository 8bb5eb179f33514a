/*
 * products.c: see products.h.
 *
 * Up to three products sharing one input (q, k, v or gate, up), over a batch of n tokens. Their rows
 * are cut into chunks (numbered across the products) and each thread owns a contiguous run of chunks,
 * which it works through front to back: one long linear stream through the weights, which is what the
 * memory prefetchers serve best. A thread that has finished its run takes chunks from the back of
 * another's, so a thread that falls behind (its core taken by another process) delays no one.
 */
#include "products.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#define CHUNK_BYTES (1024 * 1024) /* weight bytes per chunk of a product (one token) */
#define MIN_ROWS    128           /* rows per chunk of a batch's product of a repacked float type (below) */

/* A thread's run of chunks of the current product, alone on its cache line. */
typedef struct {
    _Alignas(64) _Atomic uint64_t range; /* chunks [front, back) still unclaimed: front << 32 | back */
} chunk_run;

struct llm_products {
    const llm_kernels *kernels;
    llm_pool          *pool;
    chunk_run         *chunk_runs;             /* (n_threads) */
    void              *act[LLM_ACT_COUNT];     /* the input of the current products in each quantized
                                                  activation format: n_batch rows (NULL for f32) */
    char              *scratch;                /* (n_threads) buffers of the matmul kernels, scratch_bytes apart */
    size_t             scratch_bytes;
};

typedef struct {
    const llm_products *p;
    int64_t        n;                   /* tokens */
    const void    *x[LLM_ACT_COUNT];    /* their input in each activation format the products read */
    size_t         ldx[LLM_ACT_COUNT];  /* ... its rows this many bytes apart */
    int            n_jobs;
    struct {
        float            *out; /* (n, w->rows), rows ldo floats apart */
        int64_t           ldo;
        const llm_tensor *w;
        int64_t           chunk_rows, n_chunks;
    } job[LLM_MAX_PRODUCTS];
} matmul_task;

static int64_t claim_chunk(chunk_run *runs, int ith, int nth) {
    uint64_t r = atomic_load_explicit(&runs[ith].range, memory_order_relaxed);
    while ((r >> 32) < (r & 0xffffffff)) /* our own run, from the front */
        if (atomic_compare_exchange_weak_explicit(&runs[ith].range, &r, r + (UINT64_C(1) << 32),
                                                  memory_order_relaxed, memory_order_relaxed))
            return (int64_t)(r >> 32);
    for (int k = 1; k < nth; k++) { /* then the others', from the back */
        chunk_run *other = &runs[(ith + k) % nth];
        r = atomic_load_explicit(&other->range, memory_order_relaxed);
        while ((r >> 32) < (r & 0xffffffff))
            if (atomic_compare_exchange_weak_explicit(&other->range, &r, r - 1, memory_order_relaxed,
                                                      memory_order_relaxed))
                return (int64_t)(r & 0xffffffff) - 1;
    }
    return -1;
}

static void matmul_worker(void *arg, int ith, int nth) {
    const matmul_task *t = arg;
    for (int64_t chunk; (chunk = claim_chunk(t->p->chunk_runs, ith, nth)) >= 0;) {
        int j = 0;
        while (chunk >= t->job[j].n_chunks) chunk -= t->job[j++].n_chunks;
        const llm_tensor *w = t->job[j].w;
        const llm_type_kernels *k = &t->p->kernels->type[w->type];
        int32_t act = llm_types[w->type].act;
        int64_t begin = chunk * t->job[j].chunk_rows;
        int64_t end = begin + t->job[j].chunk_rows < w->rows ? begin + t->job[j].chunk_rows : w->rows;
        float *out = t->job[j].out + begin;
        if (t->n == 1) k->matvec(out, w->data, t->x[act], begin, end, w->cols);
        else if (k->matmul)
            k->matmul(out, t->job[j].ldo, w->data, t->x[act], t->ldx[act], t->n, begin, end, w->cols,
                      t->p->scratch + (size_t)ith * t->p->scratch_bytes);
        else /* no batched kernel (the portable reference): token by token */
            for (int64_t i = 0; i < t->n; i++)
                k->matvec(out + i * t->job[j].ldo, w->data, (const char *)t->x[act] + i * t->ldx[act], begin, end,
                          w->cols);
    }
}

/* Rows per chunk of a product. One token: about CHUNK_BYTES of weights (small enough to share out a
   straggler's work), at least four chunks per thread. A batch does n times the arithmetic per weight,
   so its chunks are smaller: about a quarter of CHUNK_BYTES, which stays in the core's cache while the
   batch's tokens go past it. Whole multiples of 16 rows either way. The repacked float types' batch kernels
   (kernels_x86_float_r8.c) block their weights themselves and copy the batch's tokens once per call: their
   chunks have at least MIN_ROWS rows, which keeps that copy a small part of a call's work (TinyLlama's 2048 x
   5632 F32 matrix in chunks of 16 rows: 62 GFLOP/s on Zen 3, of 128 rows: 81). */
static int64_t chunk_rows(const llm_tensor *w, int64_t n, int nth) {
    const llm_type_info *type = &llm_types[w->type];
    int64_t row_bytes = (w->cols / type->block_elems) * (int64_t)type->block_bytes;
    int64_t target = n == 1 ? CHUNK_BYTES : CHUNK_BYTES / 4;
    int64_t n_chunks = w->rows * row_bytes / target;
    if (n_chunks < 4 * nth) n_chunks = 4 * nth;
    int64_t rows = (w->rows + n_chunks - 1) / n_chunks;
    if (n > 1 && type->block_elems == 1 && type->repacked_from >= 0 && rows < MIN_ROWS) rows = MIN_ROWS;
    return (rows + 15) / 16 * 16;
}

/* The tokens' rows in a quantized activation format, the rows shared out among threads. */
typedef struct {
    llm_quantize_fn quantize;
    const float    *x;
    int64_t         ldx;
    void           *xq;
    size_t          ldxq;
    int64_t         cols, n;
    atomic_int      next; /* the next row to claim: tasks share out their work dynamically (threadpool.h) */
} quantize_task;

static void quantize_worker(void *arg, int ith, int nth) {
    (void)ith, (void)nth;
    quantize_task *q = arg;
    for (int t; (t = atomic_fetch_add_explicit(&q->next, 1, memory_order_relaxed)) < q->n;)
        q->quantize((char *)q->xq + t * q->ldxq, q->x + t * q->ldx, q->cols);
}

void llm_products_run(llm_products *c, int64_t n, const float *x, int64_t ldx, const llm_product *products,
                      int n_products) {
    matmul_task t = {.p = c, .n = n, .x = {[LLM_ACT_F32] = x}, .ldx = {[LLM_ACT_F32] = (size_t)ldx * sizeof(float)},
                     .n_jobs = n_products};
    int nth = llm_pool_size(c->pool);
    int64_t total = 0;
    for (int j = 0; j < n_products; j++) {
        const llm_tensor *w = products[j].w;
        int32_t act = llm_types[w->type].act;
        if (!t.x[act]) { /* once per format, for all the products that read it */
            t.x[act] = c->act[act];
            t.ldx[act] = llm_act_bytes(act, w->cols);
            quantize_task q = {c->kernels->quantize[act], x, ldx, c->act[act], t.ldx[act], w->cols, n, 0};
            if (n == 1) quantize_worker(&q, 0, 1);
            else llm_pool_run(c->pool, quantize_worker, &q);
        }
        t.job[j].out = products[j].out;
        t.job[j].ldo = products[j].ldo;
        t.job[j].w = w;
        t.job[j].chunk_rows = chunk_rows(w, n, nth);
        t.job[j].n_chunks = (w->rows + t.job[j].chunk_rows - 1) / t.job[j].chunk_rows;
        total += t.job[j].n_chunks;
    }
    for (int i = 0; i < nth; i++) /* thread i owns chunks [total * i / nth, total * (i + 1) / nth) */
        atomic_store_explicit(&c->chunk_runs[i].range,
                              (uint64_t)(total * i / nth) << 32 | (uint64_t)(total * (i + 1) / nth),
                              memory_order_relaxed);
    llm_pool_run(c->pool, matmul_worker, &t); /* publishing the task orders the stores above */
}

/* The sizes of a products' buffers: one place for llm_products_create and llm_products_bytes. */
typedef struct {
    size_t chunk_runs, act[LLM_ACT_COUNT], scratch_per_thread, scratch;
} products_sizes;

static products_sizes sizes_of(const llm_kernels *kernels, int nth, int64_t max_cols, int32_t n_batch) {
    products_sizes z = {.chunk_runs = (size_t)nth * sizeof(chunk_run)};
    for (int32_t act = 0; act < LLM_ACT_COUNT; act++) /* f32 input is read where it is */
        z.act[act] = act == LLM_ACT_F32 ? 0 : (size_t)n_batch * llm_act_bytes(act, max_cols);
    z.scratch_per_thread = kernels->scratch_bytes ? (kernels->scratch_bytes(max_cols) + 63) / 64 * 64 : 0;
    z.scratch = (size_t)nth * z.scratch_per_thread + 64;
    return z; /* bounded by llm_create's checks (int32 sizes): no overflow on 64-bit size_t */
}

size_t llm_products_bytes(const llm_kernels *kernels, int n_threads, int64_t max_cols, int32_t n_batch) {
    products_sizes z = sizes_of(kernels, n_threads, max_cols, n_batch);
    size_t total = sizeof(llm_products) + z.chunk_runs + z.scratch;
    for (int32_t act = 0; act < LLM_ACT_COUNT; act++) total += z.act[act];
    return total;
}

int llm_products_create(const llm_kernels *kernels, llm_pool *pool, int64_t max_cols, int32_t n_batch,
                        llm_products **out) {
    int nth = llm_pool_size(pool);
    products_sizes z = sizes_of(kernels, nth, max_cols, n_batch);
    llm_products *p = calloc(1, sizeof *p);
    *out = NULL;
    if (!p) return LLM_ERR_NOMEM;
    p->kernels = kernels;
    p->pool = pool;
    p->chunk_runs = aligned_alloc(_Alignof(chunk_run), z.chunk_runs);
    int ok = p->chunk_runs != NULL;
    for (int32_t act = 0; act < LLM_ACT_COUNT; act++)
        if (z.act[act]) ok = ok && (p->act[act] = malloc(z.act[act])) != NULL;
    p->scratch_bytes = z.scratch_per_thread;
    p->scratch = aligned_alloc(64, z.scratch);
    if (!ok || !p->scratch) {
        llm_products_free(p);
        return LLM_ERR_NOMEM;
    }
    for (int i = 0; i < nth; i++) atomic_init(&p->chunk_runs[i].range, 0);
    *out = p;
    return 0;
}

void llm_products_free(llm_products *p) {
    if (!p) return;
    free(p->chunk_runs);
    for (int32_t act = 0; act < LLM_ACT_COUNT; act++) free(p->act[act]);
    free(p->scratch);
    free(p);
}

/* The library's own product path (products above, on a pool of just the calling thread), so that tests and
   benchmarks measure exactly what the forward pass runs. */
int llm_matmul(int32_t type, int32_t isa, const void *w, int64_t rows, int64_t cols, const float *x, int64_t n,
               float *out) {
    if (isa == LLM_ISA_AUTO) isa = llm_isa_best();
    const llm_kernels *kernels = llm_kernels_get(isa);
    if (!kernels || type < 0 || type >= LLM_TYPE_COUNT || !kernels->type[type].matvec) return LLM_ERR_INVALID;
    if (!w || !x || !out || rows < 0 || cols < 0 || n < 1 || n > INT32_MAX) return LLM_ERR_INVALID;
    if (cols % llm_types[type].block_elems != 0) return LLM_ERR_INVALID;
    if (llm_types[type].repacked_from >= 0 && rows % LLM_R8 != 0) return LLM_ERR_INVALID; /* whole groups of rows */
    if (rows == 0) return 0;
    for (int32_t act = 0; act < LLM_ACT_COUNT; act++) /* the quantized copies of x must be addressable */
        if ((size_t)n > SIZE_MAX / (llm_act_bytes(act, cols) + 1)) return LLM_ERR_NOMEM;
    llm_pool *pool;
    llm_products *p;
    int rc = llm_pool_create(1, &pool);
    if (rc != 0) return rc;
    if ((rc = llm_products_create(kernels, pool, cols, (int32_t)n, &p)) == 0) {
        llm_tensor weights = {w, type, rows, cols};
        llm_products_run(p, n, x, cols, &(llm_product){out, rows, &weights}, 1);
        llm_products_free(p);
    }
    llm_pool_free(pool);
    return rc;
}
