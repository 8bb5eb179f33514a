/*
 * checks.h: what llm_create verifies before it allocates anything (internal to the library): the config's
 * sizes and family options, and every weight tensor's type and shape. Each failure returns LLM_ERR_INVALID
 * with a message that names the field or tensor and the value at fault.
 */
#ifndef LLMRUN_CHECKS_H
#define LLMRUN_CHECKS_H

#include "llmrun.h"

/* Writes the printf-style message into err (when err and errlen allow) and returns code. */
int llm_fail(char *err, size_t errlen, int code, const char *fmt, ...);

int llm_check_config(const llm_config *p, int32_t n_ctx, int32_t n_threads, char *err, size_t errlen);
/* The sizes of a context checked (the config too), with each default resolved: n_seq 0 -> 1, n_kv 0 -> n_ctx,
   n_batch > n_ctx -> n_ctx. */
int llm_check_sizes(const llm_config *p, const llm_ctx_params *in, llm_ctx_params *out, char *err, size_t errlen);
int llm_check_weights(const llm_config *p, const llm_weights *w, char *err, size_t errlen);

#endif /* LLMRUN_CHECKS_H */
