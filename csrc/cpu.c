/*
 * cpu.c: which instruction sets this CPU has, and the dispatch from (type, isa) to kernels.
 *
 * A built package must run on any CPU of its architecture, so the library is compiled for the baseline
 * and the AVX2 kernels carry their own target attributes; the choice happens here, at run time.
 */
#include <stdlib.h>

#include "kernels.h"

int32_t llm_isa_best(void) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c"))
        return LLM_ISA_SCALAR;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
        return LLM_ISA_AVX512VNNI;
    return LLM_ISA_AVX2;
#endif
    return LLM_ISA_SCALAR;
}

const char *llm_isa_name(int32_t isa) {
    switch (isa) {
    case LLM_ISA_SCALAR: return "scalar";
    case LLM_ISA_AVX2: return "avx2";
    case LLM_ISA_AVX512VNNI: return "avx512vnni";
    default: return "unknown";
    }
}

int llm_type_traits_get(int32_t type, int32_t isa, llm_type_traits *out) {
    if (isa < LLM_ISA_SCALAR || isa > llm_isa_best()) return LLM_ERR_INVALID;
    int rc;
    switch (type) {
    case LLM_F32: rc = llm_f32_traits(isa, out); break;
    case LLM_F16: rc = llm_f16_traits(isa, out); break;
    case LLM_BF16: rc = llm_bf16_traits(isa, out); break;
    case LLM_Q8_0: rc = llm_q8_0_traits(isa, out); break;
    case LLM_Q4_0: rc = llm_q4_0_traits(isa, out); break;
    default: return LLM_ERR_INVALID;
    }
    out->matmul = llm_matmul_get(type, isa);
    return rc;
}

int llm_matmul(int32_t type, int32_t isa, const void *w, int64_t rows, int64_t cols, const float *x, int64_t n,
               float *out) {
    llm_type_traits traits;
    if (isa == LLM_ISA_AUTO) isa = llm_isa_best();
    if (!w || !x || !out || rows < 0 || cols < 0 || n < 1) return LLM_ERR_INVALID;
    if (llm_type_traits_get(type, isa, &traits) != 0) return LLM_ERR_INVALID;
    if (cols % traits.block_elems != 0) return LLM_ERR_INVALID;
    const void *in = x;
    size_t ldx = (size_t)cols * sizeof(float);
    void *xq = NULL;
    if (traits.quantize_x) { /* the tokens as the products read them */
        ldx = q8_act_bytes(cols);
        if ((size_t)n > SIZE_MAX / (ldx + 1) || !(xq = malloc((size_t)n * ldx + 1))) return LLM_ERR_NOMEM;
        for (int64_t t = 0; t < n; t++) traits.quantize_x((char *)xq + (size_t)t * ldx, x + t * cols, cols);
        in = xq;
    }
    if (n == 1) traits.matvec(out, w, in, 0, rows, cols);
    else if (traits.matmul) {
        void *scratch = malloc(llm_matmul_scratch_bytes(cols) + 1);
        if (!scratch) {
            free(xq);
            return LLM_ERR_NOMEM;
        }
        traits.matmul(out, rows, w, in, ldx, n, 0, rows, cols, scratch);
        free(scratch);
    } else
        for (int64_t t = 0; t < n; t++) traits.matvec(out + t * rows, w, (const char *)in + (size_t)t * ldx, 0, rows, cols);
    free(xq);
    return 0;
}
