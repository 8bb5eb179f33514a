/*
 * threadpool.c: see threadpool.h.
 *
 * One 64-bit word, `state`, tells workers about the current task: its generation (bits 32..63, bumped
 * once per task), whether it is closed to newcomers (bit 16) and how many workers joined (bits 0..15).
 * A worker joins with a compare-and-swap that also checks the generation, so a worker that wakes up
 * very late can never join a task other than the one it saw published.
 */
#define _POSIX_C_SOURCE 200809L /* sched_yield and pthreads under -std=c11 */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "llmrun.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

/* How many polls a thread spends waiting before it sleeps or yields (a fraction of a millisecond). */
#define SPIN_POLLS 20000

#define JOINED_MASK UINT64_C(0xffff)
#define CLOSED      (UINT64_C(1) << 16)
#define GENERATION(state) ((state) >> 32)

typedef struct {
    llm_pool *pool;
    int       ith;
} worker_arg;

struct llm_pool {
    int              n_threads;
    int              n_started; /* workers running */
    pthread_t       *threads;
    worker_arg      *args;
    pthread_mutex_t  mutex;
    pthread_cond_t   wake;
    _Atomic uint64_t state;  /* generation | closed | joined, see above */
    atomic_int       n_done; /* workers that joined the current task and finished it */
    atomic_int       stop;
    llm_task_fn      fn;     /* the current task, published by the release store of `state` */
    void            *arg;
};

/* Waits until a task newer than generation `seen` is published (or the pool stops); returns the state. */
static uint64_t wait_for_task(llm_pool *pool, uint64_t seen) {
    uint64_t s;
    for (int i = 0; i < SPIN_POLLS; i++) {
        s = atomic_load_explicit(&pool->state, memory_order_acquire);
        if (GENERATION(s) != seen || atomic_load_explicit(&pool->stop, memory_order_relaxed)) return s;
        cpu_relax();
    }
    pthread_mutex_lock(&pool->mutex);
    while (GENERATION(s = atomic_load_explicit(&pool->state, memory_order_acquire)) == seen &&
           !atomic_load(&pool->stop))
        pthread_cond_wait(&pool->wake, &pool->mutex);
    pthread_mutex_unlock(&pool->mutex);
    return s;
}

/* Joins the task of generation `gen` unless it has closed (or been replaced); 1 if joined. */
static int try_join(llm_pool *pool, uint64_t gen) {
    uint64_t s = atomic_load_explicit(&pool->state, memory_order_acquire);
    while (GENERATION(s) == gen && !(s & CLOSED))
        if (atomic_compare_exchange_weak_explicit(&pool->state, &s, s + 1, memory_order_acquire,
                                                  memory_order_acquire))
            return 1;
    return 0;
}

static void *worker_main(void *p) {
    worker_arg *wa = p;
    llm_pool *pool = wa->pool;
    uint64_t seen = 0;
    for (;;) {
        seen = GENERATION(wait_for_task(pool, seen));
        if (atomic_load(&pool->stop)) break;
        if (!try_join(pool, seen)) continue;
        pool->fn(pool->arg, wa->ith, pool->n_threads);
        atomic_fetch_add_explicit(&pool->n_done, 1, memory_order_release);
    }
    return NULL;
}

int llm_pool_create(int n_threads, llm_pool **out) {
    *out = NULL;
    if (n_threads < 1 || n_threads > (int)JOINED_MASK) return LLM_ERR_INVALID;
    llm_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return LLM_ERR_NOMEM;
    pool->n_threads = n_threads;
    atomic_init(&pool->state, 0);
    atomic_init(&pool->n_done, 0);
    atomic_init(&pool->stop, 0);
    if (pthread_mutex_init(&pool->mutex, NULL) != 0) {
        free(pool);
        return LLM_ERR_THREAD;
    }
    if (pthread_cond_init(&pool->wake, NULL) != 0) {
        pthread_mutex_destroy(&pool->mutex);
        free(pool);
        return LLM_ERR_THREAD;
    }
    pool->threads = calloc((size_t)n_threads, sizeof *pool->threads);
    pool->args = calloc((size_t)n_threads, sizeof *pool->args);
    if (!pool->threads || !pool->args) {
        llm_pool_free(pool);
        return LLM_ERR_NOMEM;
    }
    for (int i = 1; i < n_threads; i++) {
        pool->args[i] = (worker_arg){pool, i};
        if (pthread_create(&pool->threads[i], NULL, worker_main, &pool->args[i]) != 0) {
            llm_pool_free(pool);
            return LLM_ERR_THREAD;
        }
        pool->n_started++;
    }
    *out = pool;
    return 0;
}

/* Publishes a new generation (with the given flags) and wakes sleeping workers. */
static void publish(llm_pool *pool, uint64_t flags) {
    uint64_t gen = GENERATION(atomic_load_explicit(&pool->state, memory_order_relaxed)) + 1;
    atomic_store_explicit(&pool->state, (gen << 32) | flags, memory_order_release);
    /* Sleeping workers check the state under the mutex, so this broadcast cannot be missed. */
    pthread_mutex_lock(&pool->mutex);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
}

void llm_pool_run(llm_pool *pool, llm_task_fn fn, void *arg) {
    if (pool->n_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    atomic_store_explicit(&pool->n_done, 0, memory_order_relaxed);
    publish(pool, 0);
    fn(arg, 0, pool->n_threads);
    /* The work is shared out dynamically, so it is all done or claimed now: close the task to latecomers
       and wait for those who joined. Spin first (they finish within microseconds), then yield: on a busy
       machine a worker may have lost its core, and spinning would keep it from getting one back. */
    uint64_t joined = atomic_fetch_or_explicit(&pool->state, CLOSED, memory_order_acq_rel) & JOINED_MASK;
    for (int i = 0; (uint64_t)atomic_load_explicit(&pool->n_done, memory_order_acquire) < joined; i++) {
        if (i < SPIN_POLLS) cpu_relax();
        else sched_yield();
    }
}

int llm_pool_size(const llm_pool *pool) { return pool->n_threads; }

void llm_pool_free(llm_pool *pool) {
    if (!pool) return;
    atomic_store(&pool->stop, 1);
    publish(pool, CLOSED);
    for (int i = 1; i <= pool->n_started; i++) pthread_join(pool->threads[i], NULL);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->mutex);
    free(pool->threads);
    free(pool->args);
    free(pool);
}
