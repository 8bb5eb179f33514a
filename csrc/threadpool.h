/*
 * threadpool.h: a persistent pool of worker threads that help the caller with one task at a time.
 *
 * The forward pass dispatches a few tasks per layer (the matrix-vector products, the attention heads).
 * Starting threads for each would cost more than the work, so the workers live as long as the context:
 * they spin briefly waiting for the next task (dispatches within a token are microseconds apart), then
 * sleep on a condition variable (between tokens Python samples; idle threads must not burn a core).
 *
 * A worker that is late for a task (its core was taken by another process) does not hold the caller up:
 * once the caller has finished the task's work, the task closes and late workers skip it. So a task
 * must share out its work dynamically (threads claim pieces from an atomic counter until none are
 * left): any number of threads, at least the caller, may run it.
 */
#ifndef LLMRUN_THREADPOOL_H
#define LLMRUN_THREADPOOL_H

/* A task: each participating thread calls it once; ith is its index (the caller is 0), nth the pool size. */
typedef void (*llm_task_fn)(void *arg, int ith, int nth);

typedef struct llm_pool llm_pool;

/* n_threads counts the caller: n_threads - 1 workers are started. 0 or LLM_ERR_* (no pool on failure). */
int  llm_pool_create(int n_threads, llm_pool **out);
/* Runs fn(arg, i, n) on the caller and on whichever workers join in time; returns when all are done. */
void llm_pool_run(llm_pool *pool, llm_task_fn fn, void *arg);
int  llm_pool_size(const llm_pool *pool);
void llm_pool_free(llm_pool *pool);

#endif /* LLMRUN_THREADPOOL_H */
