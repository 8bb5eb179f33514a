/*
 * kernels_arm.c: the table of one arm64 level (kernels.h), compiled once per level like the kernels it lists
 * (kernels_arm.h).
 *
 * The weight types and vector helpers without a NEON kernel yet run the scalar reference's: a C initializer
 * cannot copy a function pointer out of another table (llm_kernels_scalar's entries are not constant
 * expressions), so each such entry is a one-line forwarder to the scalar table's function, called once per
 * product's row range, not per value. Their batched products stay NULL, as in the scalar table: one token at
 * a time through the matvec.
 */
#include "kernels_arm.h"

/* The scalar reference's matvec of type `t`, under this level's name. */
#define SCALAR_MATVEC(name, t)                                                                                         \
    static void ARM(scalar_matvec_##name)(float *out, const void *w, const void *x, int64_t row_begin,                 \
                                          int64_t row_end, int64_t cols) {                                             \
        llm_kernels_scalar.type[t].matvec(out, w, x, row_begin, row_end, cols);                                        \
    }

SCALAR_MATVEC(q3_K, LLM_Q3_K)
SCALAR_MATVEC(q8_0_r8, LLM_Q8_0_R8)
SCALAR_MATVEC(q4_0_r8, LLM_Q4_0_R8)
SCALAR_MATVEC(q4_1_r8, LLM_Q4_1_R8)
SCALAR_MATVEC(q5_0_r8, LLM_Q5_0_R8)
SCALAR_MATVEC(q5_1_r8, LLM_Q5_1_R8)
SCALAR_MATVEC(iq4_nl_r8, LLM_IQ4_NL_R8)
SCALAR_MATVEC(f32_r8, LLM_F32_R8)
SCALAR_MATVEC(f16_r8, LLM_F16_R8)
SCALAR_MATVEC(bf16_r8, LLM_BF16_R8)

static void ARM(scalar_attention)(const llm_attention_tile *tile, float *scratch) {
    llm_kernels_scalar.vec.attention(tile, scratch);
}

static void ARM(scalar_swiglu)(float *gate, const float *up, int64_t n) { llm_kernels_scalar.vec.swiglu(gate, up, n); }

static void ARM(scalar_geglu)(float *gate, const float *up, int64_t n) { llm_kernels_scalar.vec.geglu(gate, up, n); }

static void ARM(scalar_softcap)(float *x, int64_t n, float cap) { llm_kernels_scalar.vec.softcap(x, n, cap); }

const llm_kernels ARM(llm_kernels) = {
    .type = {
        [LLM_F32]  = {ARM(matvec_f32), ARM(matmul_f32)},
        [LLM_F16]  = {ARM(matvec_f16), ARM(matmul_f16)},
        [LLM_BF16] = {ARM(matvec_bf16), ARM(matmul_bf16)},
        [LLM_Q8_0] = {ARM(matvec_q8_0), ARM(matmul_q8_0)},
        [LLM_Q4_0] = {ARM(matvec_q4_0), ARM(matmul_q4_0)},
        [LLM_Q4_1] = {ARM(matvec_q4_1), ARM(matmul_q4_1)},
        [LLM_Q5_0] = {ARM(matvec_q5_0), ARM(matmul_q5_0)},
        [LLM_Q5_1] = {ARM(matvec_q5_1), ARM(matmul_q5_1)},
        [LLM_IQ4_NL] = {ARM(matvec_iq4_nl), ARM(matmul_iq4_nl)},
        [LLM_Q4_K] = {ARM(matvec_q4_K), NULL},
        [LLM_Q5_K] = {ARM(matvec_q5_K), NULL},
        [LLM_Q6_K] = {ARM(matvec_q6_K), NULL},
        [LLM_Q2_K] = {ARM(matvec_q2_K), NULL},
        [LLM_Q3_K] = {ARM(scalar_matvec_q3_K), NULL},
        [LLM_IQ4_XS] = {ARM(matvec_iq4_xs), NULL},
        /* the repacked forms (llm_repack): load() keeps the file's layout on arm64 (model.py REPACKING_LEVELS) */
        [LLM_Q8_0_R8] = {ARM(scalar_matvec_q8_0_r8), NULL},
        [LLM_Q4_0_R8] = {ARM(scalar_matvec_q4_0_r8), NULL},
        [LLM_Q4_1_R8] = {ARM(scalar_matvec_q4_1_r8), NULL},
        [LLM_Q5_0_R8] = {ARM(scalar_matvec_q5_0_r8), NULL},
        [LLM_Q5_1_R8] = {ARM(scalar_matvec_q5_1_r8), NULL},
        [LLM_IQ4_NL_R8] = {ARM(scalar_matvec_iq4_nl_r8), NULL},
        [LLM_F32_R8]  = {ARM(scalar_matvec_f32_r8), NULL},
        [LLM_F16_R8]  = {ARM(scalar_matvec_f16_r8), NULL},
        [LLM_BF16_R8] = {ARM(scalar_matvec_bf16_r8), NULL},
    },
    .quantize = {[LLM_ACT_Q8] = ARM(quantize_q8_act), [LLM_ACT_Q8K] = ARM(quantize_q8k_act)},
    .vec = {ARM(scalar_attention), ARM(scalar_swiglu), ARM(scalar_geglu), ARM(scalar_softcap)},
    .scratch_bytes = NULL,
};
