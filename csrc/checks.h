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
int llm_check_weights(const llm_config *p, const llm_weights *w, char *err, size_t errlen);

#endif /* LLMRUN_CHECKS_H */
