/*
 * kernels_x86.c: the table of one x86 level (kernels.h), compiled once per level like the kernels it lists
 * (kernels_x86.h). The embedding lookup and the weight types' layouts are the same on every level
 * (llm_types, kernels_scalar.c).
 */
#include "kernels_x86.h"

#ifdef __AVX512BF16__ /* the avx512bf16 level: bfloat16 weights multiply in the CPU's bfloat16 dot product */
#define BF16_KERNELS {X86(matvec_bf16_native), X86(matmul_bf16_native)}
#define SCRATCH_BYTES X86(matmul_scratch_bytes_bf16)
#else
#define BF16_KERNELS {X86(matvec_bf16), X86(matmul_bf16)}
#define SCRATCH_BYTES X86(matmul_scratch_bytes)
#endif

/* Every batched kernel of the level shares a thread's scratch: the largest of their needs. */
static size_t scratch_bytes(int64_t cols) {
    size_t others = SCRATCH_BYTES(cols), floats = X86(matmul_scratch_bytes_float_r8)();
    return others > floats ? others : floats;
}

const llm_kernels X86(llm_kernels) = {
    .type = {
        [LLM_F32]  = {X86(matvec_f32), X86(matmul_f32)},
        [LLM_F16]  = {X86(matvec_f16), X86(matmul_f16)},
        [LLM_BF16] = BF16_KERNELS,
        [LLM_Q8_0] = {X86(matvec_q8_0), X86(matmul_q8_0)},
        [LLM_Q4_0] = {X86(matvec_q4_0), X86(matmul_q4_0)},
        [LLM_Q4_1] = {X86(matvec_q4_1), X86(matmul_q4_1)},
        [LLM_Q5_0] = {X86(matvec_q5_0), X86(matmul_q5_0)},
        [LLM_Q5_1] = {X86(matvec_q5_1), X86(matmul_q5_1)},
        [LLM_IQ4_NL] = {X86(matvec_iq4_nl), X86(matmul_iq4_nl)},
        [LLM_Q4_K] = {X86(matvec_q4_K), X86(matmul_q4_K)},
        [LLM_Q5_K] = {X86(matvec_q5_K), X86(matmul_q5_K)},
        [LLM_Q6_K] = {X86(matvec_q6_K), X86(matmul_q6_K)},
        [LLM_Q2_K] = {X86(matvec_q2_K), X86(matmul_q2_K)},
        [LLM_Q3_K] = {X86(matvec_q3_K), X86(matmul_q3_K)},
        [LLM_IQ4_XS] = {X86(matvec_iq4_xs), X86(matmul_iq4_xs)},
        [LLM_Q8_0_R8] = {X86(matvec_q8_0_r8), X86(matmul_q8_0_r8)},
        [LLM_Q4_0_R8] = {X86(matvec_q4_0_r8), X86(matmul_q4_0_r8)},
        [LLM_Q4_1_R8] = {X86(matvec_q4_1_r8), X86(matmul_q4_1_r8)},
        [LLM_Q5_0_R8] = {X86(matvec_q5_0_r8), X86(matmul_q5_0_r8)},
        [LLM_Q5_1_R8] = {X86(matvec_q5_1_r8), X86(matmul_q5_1_r8)},
        [LLM_IQ4_NL_R8] = {X86(matvec_iq4_nl_r8), X86(matmul_iq4_nl_r8)},
        [LLM_F32_R8]  = {X86(matvec_f32_r8), X86(matmul_f32_r8)},
        [LLM_F16_R8]  = {X86(matvec_f16_r8), X86(matmul_f16_r8)},
        [LLM_BF16_R8] = {X86(matvec_bf16_r8), X86(matmul_bf16_r8)},
    },
    .quantize = {[LLM_ACT_Q8] = X86(quantize_q8_act), [LLM_ACT_Q8K] = X86(quantize_q8k_act)},
    .vec = {.attention = X86(attention), .swiglu = X86(swiglu), .geglu = X86(geglu), .softcap = X86(softcap)},
    .scratch_bytes = scratch_bytes,
};
