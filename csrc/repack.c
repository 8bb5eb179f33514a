/*
 * repack.c: the 32-value block types and the float types repacked at load time (llm_repack, llmrun.h): the
 * blocks with kernels.h's llm_r8_move (which the types' get_row uses to read them back), the floats by
 * transposing each group of 8 rows (kernels.h's llm_r8f_index).
 *
 * Each block or value is moved, never recomputed: scales, mins and values keep their bits, so a repacked
 * matrix holds exactly the values of its source (and the block types' integer sums are the same numbers).
 */
#include <stdint.h>
#include <string.h>

#include "kernels.h"

/* The repacked type of a source type (llm_types' repacked_from, read backwards), or -1. */
static int32_t repacked_type(int32_t type) {
    for (int32_t t = 0; t < LLM_TYPE_COUNT; t++)
        if (llm_types[t].repacked_from == type) return t;
    return -1;
}

/* Rows [0, rows) of w into out, for one source type (a constant in each call below, so that the block
   mover's offsets fold into plain word copies). */
static inline __attribute__((always_inline)) void repack_rows(int32_t type, const uint8_t *w, int64_t rows,
                                                              int64_t cols, uint8_t *out) {
    size_t bb = llm_types[type].block_bytes;
    int64_t nb = cols / QK;
    size_t row_bytes = (size_t)nb * bb;
    for (int64_t g = 0; g < rows / LLM_R8; g++) {
        uint8_t *dst = out + (size_t)g * LLM_R8 * row_bytes;
        const uint8_t *src = w + (size_t)g * LLM_R8 * row_bytes;
        for (int64_t b = 0; b < nb; b++, dst += LLM_R8 * bb)
            for (int lane = 0; lane < LLM_R8; lane++) llm_r8_move(type, lane, 0, src + lane * row_bytes + b * bb, dst);
    }
}

/* Rows [0, rows) of a float matrix w (values of `size` bytes) into out: each group of 8 rows transposed, a
   column of the group (the 8 rows' value k) after another. */
static inline __attribute__((always_inline)) void transpose_groups(const uint8_t *w, int64_t rows, int64_t cols,
                                                                   size_t size, uint8_t *out) {
    size_t row_bytes = (size_t)cols * size;
    for (int64_t g = 0; g < rows / LLM_R8; g++) {
        const uint8_t *src = w + (size_t)g * LLM_R8 * row_bytes;
        uint8_t *dst = out + (size_t)g * LLM_R8 * row_bytes;
        for (size_t k = 0; k < (size_t)cols; k++, dst += LLM_R8 * size)
            for (size_t lane = 0; lane < LLM_R8; lane++)
                memcpy(dst + lane * size, src + lane * row_bytes + k * size, size);
    }
}

int llm_repack(int32_t type, const void *w, int64_t rows, int64_t cols, void *out, int32_t *out_type) {
    int32_t r8 = type >= 0 && type < LLM_TYPE_COUNT ? repacked_type(type) : -1;
    if (r8 < 0 || !w || !out || !out_type || rows <= 0 || rows % LLM_R8 != 0 || cols <= 0 ||
        cols % llm_types[type].block_elems != 0)
        return LLM_ERR_INVALID;
    switch (type) {
    case LLM_Q8_0: repack_rows(LLM_Q8_0, w, rows, cols, out); break;
    case LLM_Q4_0: repack_rows(LLM_Q4_0, w, rows, cols, out); break;
    case LLM_Q4_1: repack_rows(LLM_Q4_1, w, rows, cols, out); break;
    case LLM_Q5_0: repack_rows(LLM_Q5_0, w, rows, cols, out); break;
    case LLM_Q5_1: repack_rows(LLM_Q5_1, w, rows, cols, out); break;
    case LLM_IQ4_NL: repack_rows(LLM_IQ4_NL, w, rows, cols, out); break;
    case LLM_F32: transpose_groups(w, rows, cols, sizeof(float), out); break;
    case LLM_F16:
    case LLM_BF16: transpose_groups(w, rows, cols, sizeof(uint16_t), out); break;
    }
    *out_type = r8;
    return 0;
}
