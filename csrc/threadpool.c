/*
 * threadpool.c: see threadpool.h. A task is published by bumping `generation`; each worker remembers
 * the last generation it ran, so it can tell a new task from the one it just finished.
 */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
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

/* How many polls a worker spends waiting for the next task before it sleeps (a fraction of a ms). */
#define SPIN_POLLS 20000

typedef struct {
    llm_pool *pool;
    int       ith;
} worker_arg;

struct llm_pool {
    int               n_threads;
    int               n_started; /* workers actually running (n_threads - 1 once created) */
    pthread_t        *threads;
    worker_arg       *args;
    pthread_mutex_t   mutex;
    pthread_cond_t    wake;
    atomic_uint       generation; /* bumped once per task */
    atomic_int        n_done;     /* workers finished with the current task */
    atomic_int        stop;
    llm_task_fn       fn; /* the current task, published by the release of `generation` */
    void             *arg;
};

/* Waits until the pool's generation differs from `seen` (or the pool stops); returns it. */
static unsigned wait_for_task(llm_pool *pool, unsigned seen) {
    for (int i = 0; i < SPIN_POLLS; i++) {
        unsigned g = atomic_load_explicit(&pool->generation, memory_order_acquire);
        if (g != seen) return g;
        cpu_relax();
    }
    pthread_mutex_lock(&pool->mutex);
    unsigned g;
    while ((g = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen &&
           !atomic_load(&pool->stop))
        pthread_cond_wait(&pool->wake, &pool->mutex);
    pthread_mutex_unlock(&pool->mutex);
    return g;
}

static void *worker_main(void *p) {
    worker_arg *wa = p;
    llm_pool *pool = wa->pool;
    unsigned seen = 0;
    for (;;) {
        seen = wait_for_task(pool, seen);
        if (atomic_load(&pool->stop)) break;
        pool->fn(pool->arg, wa->ith, pool->n_threads);
        atomic_fetch_add_explicit(&pool->n_done, 1, memory_order_release);
    }
    return NULL;
}

int llm_pool_create(int n_threads, llm_pool **out) {
    *out = NULL;
    if (n_threads < 1) return LLM_ERR_INVALID;
    llm_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return LLM_ERR_NOMEM;
    pool->n_threads = n_threads;
    atomic_init(&pool->generation, 0);
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

void llm_pool_run(llm_pool *pool, llm_task_fn fn, void *arg) {
    if (pool->n_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    atomic_store_explicit(&pool->n_done, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    /* Sleeping workers check the generation under the mutex, so this broadcast cannot be missed. */
    pthread_mutex_lock(&pool->mutex);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    fn(arg, 0, pool->n_threads);
    while (atomic_load_explicit(&pool->n_done, memory_order_acquire) < pool->n_threads - 1) cpu_relax();
}

int llm_pool_size(const llm_pool *pool) { return pool->n_threads; }

void llm_pool_free(llm_pool *pool) {
    if (!pool) return;
    atomic_store(&pool->stop, 1);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    pthread_mutex_lock(&pool->mutex);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    for (int i = 1; i <= pool->n_started; i++) pthread_join(pool->threads[i], NULL);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->mutex);
    free(pool->threads);
    free(pool->args);
    free(pool);
}
