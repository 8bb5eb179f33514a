/*
 * repack.c: the 32-value block types repacked at load time (llm_repack, llmrun.h) and read back block by
 * block (llm_r8_block, kernels.h, which spells the layout out).
 *
 * Each block is moved, never recomputed: scales, mins and values keep their bits, so a repacked matrix
 * holds exactly the values of its source and the products' integer sums are the same numbers.
 */
#include <stdint.h>
#include <string.h>

#include "kernels.h"

/* The repacked type of a source type, or -1. */
static int32_t repacked_type(int32_t type) {
    switch (type) {
    case LLM_Q8_0: return LLM_Q8_0_R8;
    case LLM_Q4_0: return LLM_Q4_0_R8;
    case LLM_Q4_1: return LLM_Q4_1_R8;
    case LLM_Q5_0: return LLM_Q5_0_R8;
    case LLM_Q5_1: return LLM_Q5_1_R8;
    case LLM_IQ4_NL: return LLM_IQ4_NL_R8;
    default: return -1;
    }
}

/* Where the parts of a source block are (kernels.h's block structs): d first, then m, qh, qs as the type
   has them. */
typedef struct {
    size_t m, qh, qs;
    int    has_m, has_qh, q8;
} block_parts;

static block_parts parts_of(int32_t base) {
    switch (base) {
    case LLM_Q8_0: return (block_parts){0, 0, 2, 0, 0, 1};
    case LLM_Q4_1: return (block_parts){2, 0, 4, 1, 0, 0};
    case LLM_Q5_0: return (block_parts){0, 2, 6, 0, 1, 0};
    case LLM_Q5_1: return (block_parts){2, 4, 8, 1, 1, 0};
    default: return (block_parts){0, 0, 2, 0, 0, 0}; /* Q4_0, IQ4_NL */
    }
}

/* The fifth bits of one row's block (bit j: value j) <-> its lane's word in the group (bit 8 k + g: value
   4 g + k). */
static uint32_t qh_to_lane(uint32_t qh) {
    uint32_t lane = 0;
    for (int j = 0; j < QK; j++) lane |= ((qh >> j) & 1u) << (8 * (j % 4) + j / 4);
    return lane;
}

static uint32_t lane_to_qh(uint32_t lane) {
    uint32_t qh = 0;
    for (int j = 0; j < QK; j++) qh |= ((lane >> (8 * (j % 4) + j / 4)) & 1u) << j;
    return qh;
}

/* Row `lane`'s block between its source layout and the group's block: packing reads the source block
   `from` into the group's block `to`, unpacking the group's block `from` into a source block `to`. */
static void move_block(int32_t base, int lane, int unpack, const uint8_t *from, uint8_t *to) {
    block_parts p = parts_of(base);
    llm_r8_layout r = llm_r8_layout_of(base);
#define PART(n, src_off, grp_off) memcpy(to + (unpack ? (src_off) : (grp_off)), from + (unpack ? (grp_off) : (src_off)), n)
    PART(2, 0, 2 * (size_t)lane);
    if (p.has_m) PART(2, p.m, r.m + 2 * (size_t)lane);
    if (p.has_qh) {
        uint32_t v;
        memcpy(&v, from + (unpack ? r.qh + 4 * (size_t)lane : p.qh), 4);
        v = unpack ? lane_to_qh(v) : qh_to_lane(v);
        memcpy(to + (unpack ? p.qh : r.qh + 4 * (size_t)lane), &v, 4);
    }
    int words = p.q8 ? QK / 4 : QK / 8; /* 32-bit words of values: eight of Q8_0's bytes, four of nibbles */
    for (int g = 0; g < words; g++) PART(4, p.qs + 4 * (size_t)g, r.qs + 32 * (size_t)g + 4 * (size_t)lane);
#undef PART
}

int llm_repack(int32_t type, const void *w, int64_t rows, int64_t cols, void *out, int32_t *out_type) {
    int32_t r8 = type >= 0 && type < LLM_TYPE_COUNT ? repacked_type(type) : -1;
    if (r8 < 0 || !w || !out || !out_type || rows <= 0 || rows % LLM_R8 != 0 || cols <= 0 || cols % QK != 0)
        return LLM_ERR_INVALID;
    size_t bb = llm_types[type].block_bytes;
    int64_t nb = cols / QK;
    size_t row_bytes = (size_t)nb * bb;
    for (int64_t g = 0; g < rows / LLM_R8; g++) {
        uint8_t *dst = (uint8_t *)out + (size_t)g * LLM_R8 * row_bytes;
        for (int64_t b = 0; b < nb; b++, dst += LLM_R8 * bb)
            for (int lane = 0; lane < LLM_R8; lane++) {
                const uint8_t *src = (const uint8_t *)w + (size_t)(g * LLM_R8 + lane) * row_bytes + (size_t)b * bb;
                move_block(type, lane, 0, src, dst);
            }
    }
    *out_type = r8;
    return 0;
}

void llm_r8_block(int32_t type, const void *w, int64_t row, int64_t b, int64_t cols, void *block) {
    int32_t base = llm_types[type].repacked_from;
    size_t bb = llm_types[base].block_bytes, row_bytes = (size_t)(cols / QK) * bb;
    const uint8_t *grp = (const uint8_t *)w + (size_t)(row / LLM_R8) * LLM_R8 * row_bytes + (size_t)b * LLM_R8 * bb;
    move_block(base, (int)(row % LLM_R8), 1, grp, block);
}
