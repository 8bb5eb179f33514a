/*
 * threadpool.h: a persistent pool of worker threads that run one task at a time, all together.
 *
 * The forward pass dispatches a few tasks per layer (the matrix-vector products, the attention heads).
 * Starting threads for each would cost more than the work, so the workers live as long as the context:
 * they spin briefly waiting for the next task (dispatches within a token are microseconds apart), then
 * sleep on a condition variable (between tokens Python samples; idle threads must not burn a core).
 */
#ifndef LLMRUN_THREADPOOL_H
#define LLMRUN_THREADPOOL_H

/* A task: thread ith of nth does its share of the work described by arg. */
typedef void (*llm_task_fn)(void *arg, int ith, int nth);

typedef struct llm_pool llm_pool;

/* n_threads counts the caller: n_threads - 1 workers are started. 0 or LLM_ERR_* (no pool on failure). */
int  llm_pool_create(int n_threads, llm_pool **out);
/* Runs fn(arg, i, n) for i in [0, n) with the caller as thread 0; returns when all have finished. */
void llm_pool_run(llm_pool *pool, llm_task_fn fn, void *arg);
int  llm_pool_size(const llm_pool *pool);
void llm_pool_free(llm_pool *pool);

#endif /* LLMRUN_THREADPOOL_H */
