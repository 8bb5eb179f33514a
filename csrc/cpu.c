/*
 * cpu.c: which instruction sets this CPU has, and the dispatch from (type, isa) to kernels.
 *
 * A built package must run on any CPU of its architecture, so the library is compiled for the baseline
 * and the AVX2 kernels carry their own target attributes; the choice happens here, at run time.
 */
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
    default: return NULL;
    }
}

int32_t llm_isa_supported(int32_t isa) {
    int32_t best = llm_isa_best();
    return isa == LLM_ISA_SCALAR || (isa >= LLM_ISA_SCALAR && isa < LLM_ISA_COUNT && isa <= best);
}

const char *llm_type_name(int32_t type) {
    llm_type_traits t;
    return llm_type_traits_get(type, LLM_ISA_SCALAR, &t) == 0 ? t.name : NULL;
}

int llm_type_layout(int32_t type, int64_t *block_elems, int64_t *block_bytes) {
    llm_type_traits t;
    if (llm_type_traits_get(type, LLM_ISA_SCALAR, &t) != 0) return LLM_ERR_INVALID;
    if (block_elems) *block_elems = t.block_elems;
    if (block_bytes) *block_bytes = (int64_t)t.block_bytes;
    return 0;
}

int llm_type_traits_get(int32_t type, int32_t isa, llm_type_traits *out) {
    if (!llm_isa_supported(isa)) return LLM_ERR_INVALID;
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
