/*
 * kernels.h: the kernels behind the forward pass, and the tables that find them (internal to the library).
 *
 * Two kinds of table, after ggml's type_traits and type_traits_cpu:
 * - llm_types[type] says what a weight type is, whatever the CPU: its block layout, the form its products
 *   want the input vector in (the activation format), and how to turn one of its rows back into floats.
 * - each instruction-set level declares one constant llm_kernels: for every weight type its products (one
 *   token: matvec; a batch: matmul), the quantizer of every activation format, and the vector helpers of
 *   attention and the feed-forward layer. forward.c and products.c call only through the table of the level
 *   picked at run time (llm_kernels_get).
 * Adding a weight type means one row in llm_types, one entry in each level's table, and its kernels, the
 * scalar reference first (kernels_scalar.c).
 */
#ifndef LLMRUN_KERNELS_H
#define LLMRUN_KERNELS_H

#include <math.h>
#include <string.h>

#include "llmrun.h"

/* How a product wants its input: the f32 values as they are, or quantized once per product to 8-bit
   blocks (q8_act below), which lets block weights multiply in integer dot products. */
typedef enum {
    LLM_ACT_F32 = 0,
    LLM_ACT_Q8  = 1, /* 32-value blocks (q8_act): the products of the 32-value weight blocks */
    LLM_ACT_Q8K = 2, /* 256-value blocks with sums per 16 (q8k_act): the K-quants' and IQ4_XS's products */
    LLM_ACT_COUNT
} llm_act_format;

/* out[r - row_begin] = dot(row r of w, x) for r in [row_begin, row_end); w is (rows, cols), x is one token
   in its type's activation format. */
typedef void (*llm_matvec_fn)(float *out, const void *w, const void *x, int64_t row_begin, int64_t row_end,
                              int64_t cols);

/* The same for a batch of n tokens: out[t * ldo + r - row_begin] = dot(row r of w, token t of x), where
   token t of x starts t * ldx bytes in. scratch is the calling thread's own scratch_bytes(cols) bytes. */
typedef void (*llm_matmul_fn)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                              int64_t row_begin, int64_t row_end, int64_t cols, void *scratch);

/* out (cols) = row `row` of w as floats: the embedding lookup. */
typedef void (*llm_get_row_fn)(float *out, const void *w, int64_t row, int64_t cols);

/* out = x (cols f32 values, a multiple of the format's block) in an activation format. */
typedef void (*llm_quantize_fn)(void *out, const float *x, int64_t cols);

/* What a weight type is, on any CPU. */
typedef struct {
    const char    *name;
    int64_t        block_elems; /* values per storage block (1 for the float types) */
    size_t         block_bytes; /* bytes per storage block */
    int32_t        act;         /* llm_act_format: the input its products read */
    llm_get_row_fn get_row;
    int32_t        repacked_from; /* a repacked type (_R8): the type it is repacked from (below); else -1 */
} llm_type_info;

extern const llm_type_info llm_types[LLM_TYPE_COUNT]; /* kernels_scalar.c */

/* How one instruction set computes with a weight type. */
typedef struct {
    llm_matvec_fn matvec; /* one token: decoding */
    llm_matmul_fn matmul; /* a batch of tokens: prompt processing; NULL: matvec one token at a time */
} llm_type_kernels;

/* A tile of attention: the queries of n_tok consecutive tokens of one sequence (token t at position pos + t) and
   n_head query heads that share one key/value head, against that head's keys and values in the KV cache. Query
   (t, h) sees the positions first_t .. pos + t, first_t = 0 without a window, else pos + t - window + 1 (from 0),
   and its output is softmax over them of softcap(scale q.k) (softcap 0: none; else cap * tanh(x / cap)), times
   the values. The positions lie in blocks of LLM_KV_BLOCK (B): positions bB .. bB + B - 1 are block table[b],
   whose keys are dim rows of B floats at keys + table[b] * stride (dimension major: each row one dimension of
   the B positions, so a query's B scores are FMAs of broadcast q values across positions), whose values are B
   rows of dim floats at values + table[b] * stride. */
typedef struct {
    const float   *q;             /* query (t, h): dim floats at q + t * ldq + h * dim */
    float         *out;           /* its output: out + t * ldo + h * dim */
    int64_t        ldq, ldo, dim;
    int32_t        n_tok, n_head, pos, window;
    float          scale, softcap;
    const float   *keys, *values; /* the blocks: see above */
    const int32_t *table;
    int64_t        stride;
} llm_attention_tile;

/* Floats of the scratch that the attention of a tile of n_q = n_tok x n_head queries wants: each query's running
   output, maximum and sum (the online softmax), a copy of the queries in the order the kernel reads them, and the
   scores of a block for a few queries at a time. */
static inline size_t llm_attention_scratch(int64_t n_q, int64_t dim) {
    return (size_t)n_q * (size_t)(2 * dim + 2) + 8 * LLM_KV_BLOCK;
}

/* Vector helpers of the attention and the feed-forward layer. */
typedef struct {
    /* the tile's outputs (above), with scratch the calling thread's llm_attention_scratch(n_tok * n_head, dim)
       floats. The keys go by a block at a time with an online softmax (flash attention): each query's arithmetic
       is the same whatever else is in its tile, so a token's output is the same in a prompt and alone. */
    void (*attention)(const llm_attention_tile *tile, float *scratch);
    void (*swiglu)(float *gate, const float *up, int64_t n); /* gate = silu(gate) * up */
    void (*geglu)(float *gate, const float *up, int64_t n);  /* gate = gelu_tanh(gate) * up (Gemma) */
    void (*softcap)(float *x, int64_t n, float cap);          /* x = cap * tanh(x / cap) (Gemma 2), in place */
} llm_vec_ops;

/* Everything one instruction-set level provides. */
typedef struct {
    llm_type_kernels type[LLM_TYPE_COUNT];
    llm_quantize_fn  quantize[LLM_ACT_COUNT]; /* NULL for LLM_ACT_F32 */
    llm_vec_ops      vec;
    size_t (*scratch_bytes)(int64_t cols);    /* per thread, for the matmul kernels; NULL: none */
} llm_kernels;

/* The levels' tables: kernels_scalar.c, kernels_x86*.c compiled once per x86 level and kernels_arm*.c once per
   arm64 level (each only where the build compiled it: cpu.c refers to them accordingly). */
extern const llm_kernels llm_kernels_scalar;
extern const llm_kernels llm_kernels_avx2, llm_kernels_avx512vnni, llm_kernels_avx512bf16;
extern const llm_kernels llm_kernels_neon, llm_kernels_dotprod, llm_kernels_i8mm;

/* The table of a level this build and CPU can run, else NULL (cpu.c). */
const llm_kernels *llm_kernels_get(int32_t isa);

/* ---------------------------------------------------------------------------------------------------- */
/* GGUF's block layouts (ggml-common.h) */

#define QK 32   /* values per block of Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL */
#define QK_K 256 /* values per super-block of the K-quants and IQ4_XS */
#define K_SCALE_SIZE 12 /* bytes of Q4_K's and Q5_K's packed 6-bit sub-block scales and mins */

/* In every layout below, d (and dmin, m) are IEEE half precision. */

typedef struct {
    uint16_t d;
    int8_t   qs[QK]; /* x = d * q */
} block_q8_0;

typedef struct {
    uint16_t d;
    uint8_t  qs[QK / 2]; /* value j in the low nibble of qs[j], value j + 16 in the high one: x = d * (q - 8) */
} block_q4_0;

typedef struct {
    uint16_t d, m;
    uint8_t  qs[QK / 2]; /* nibbles as Q4_0: x = d * q + m */
} block_q4_1;

typedef struct {
    uint16_t d;
    uint8_t  qh[4];      /* bit j of the little-endian uint32: the fifth (high) bit of value j */
    uint8_t  qs[QK / 2]; /* the low four bits, as Q4_0's nibbles: x = d * (q - 16) */
} block_q5_0;

typedef struct {
    uint16_t d, m;
    uint8_t  qh[4];
    uint8_t  qs[QK / 2]; /* as Q5_0: x = d * q + m */
} block_q5_1;

typedef struct {
    uint16_t d;
    uint8_t  qs[QK / 2]; /* nibbles as Q4_0, each an index into llm_iq4nl_values: x = d * values[q] */
} block_iq4_nl;

/* The 16 levels of IQ4_NL and IQ4_XS: a non-uniform grid, denser near zero where weights are. */
static const int8_t llm_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};

/* Q2_K: 16 sub-blocks of 16 values, x = d * scale * q - dmin * min with 4-bit scale and min per sub-block. */
typedef struct {
    uint8_t  scales[QK_K / 16]; /* low nibble: scale, high nibble: min */
    uint8_t  qs[QK_K / 4];      /* 2-bit values, four per byte */
    uint16_t d, dmin;
} block_q2_K;

/* Q3_K: 16 sub-blocks of 16 values, x = d * (scale - 32) * (q - 4 * !hbit), 6-bit scales packed in 12 bytes. */
typedef struct {
    uint8_t  hmask[QK_K / 8]; /* the high bit of each 3-bit value */
    uint8_t  qs[QK_K / 4];    /* the low 2 bits, four per byte */
    uint8_t  scales[12];
    uint16_t d;
} block_q3_K;

/* Q4_K: 8 sub-blocks of 32 values, x = d * scale * q - dmin * min, 6-bit scales and mins packed in 12 bytes. */
typedef struct {
    uint16_t d, dmin;
    uint8_t  scales[K_SCALE_SIZE];
    uint8_t  qs[QK_K / 2];
} block_q4_K;

/* Q5_K: as Q4_K with a fifth bit per value in qh. */
typedef struct {
    uint16_t d, dmin;
    uint8_t  scales[K_SCALE_SIZE];
    uint8_t  qh[QK_K / 8];
    uint8_t  qs[QK_K / 2];
} block_q5_K;

/* Q6_K: 16 sub-blocks of 16 values, x = d * scale * (q - 32) with signed 8-bit scales. */
typedef struct {
    uint8_t  ql[QK_K / 2]; /* low 4 bits */
    uint8_t  qh[QK_K / 4]; /* high 2 bits */
    int8_t   scales[QK_K / 16];
    uint16_t d;
} block_q6_K;

/* IQ4_XS: 8 sub-blocks of 32 IQ4_NL-style values, x = d * (scale - 32) * values[q], 6-bit scales split into
   low nibbles (scales_l) and high 2-bit pairs (scales_h). */
typedef struct {
    uint16_t d;
    uint16_t scales_h;
    uint8_t  scales_l[QK_K / 64];
    uint8_t  qs[QK_K / 2];
} block_iq4_xs;

_Static_assert(sizeof(block_q8_0) == 34, "Q8_0 blocks are 34 bytes");
_Static_assert(sizeof(block_q4_0) == 18, "Q4_0 blocks are 18 bytes");
_Static_assert(sizeof(block_q4_1) == 20, "Q4_1 blocks are 20 bytes");
_Static_assert(sizeof(block_q5_0) == 22, "Q5_0 blocks are 22 bytes");
_Static_assert(sizeof(block_q5_1) == 24, "Q5_1 blocks are 24 bytes");
_Static_assert(sizeof(block_iq4_nl) == 18, "IQ4_NL blocks are 18 bytes");
_Static_assert(sizeof(block_q2_K) == 84, "Q2_K blocks are 84 bytes");
_Static_assert(sizeof(block_q3_K) == 110, "Q3_K blocks are 110 bytes");
_Static_assert(sizeof(block_q4_K) == 144, "Q4_K blocks are 144 bytes");
_Static_assert(sizeof(block_q5_K) == 176, "Q5_K blocks are 176 bytes");
_Static_assert(sizeof(block_q6_K) == 210, "Q6_K blocks are 210 bytes");
_Static_assert(sizeof(block_iq4_xs) == 136, "IQ4_XS blocks are 136 bytes");

/* LLM_ACT_Q8: activations quantized to 8 bits per 32-value block. They never leave the library, so they are
   laid out for the products: all the values, then the blocks' f32 scales, then per block d * (sum of q),
   which lets a product with unsigned weights q_w - offset take the offset off once per block. */
typedef struct {
    int8_t *qs;   /* (cols) x = d * q */
    float  *d;    /* (cols / 32) */
    float  *dsum; /* (cols / 32) */
} q8_act;

static inline size_t q8_act_bytes(int64_t cols) { return (size_t)cols + 2 * sizeof(float) * (size_t)(cols / QK); }

static inline q8_act q8_act_view(const void *buf, int64_t cols) {
    int8_t *qs = (int8_t *)buf;
    float *d = (float *)(qs + cols); /* cols is a multiple of 32: the floats stay aligned */
    return (q8_act){qs, d, d + cols / QK};
}

/* LLM_ACT_Q8K: activations quantized to 8 bits per 256-value block, for the products of 256-value weight
   blocks, whose sub-block mins and offsets need the sums of the activation's q over each 16 values. Laid
   out as q8_act: all the values, then the blocks' f32 scales, then the int16 sums per 16 values. */
typedef struct {
    int8_t  *qs;    /* (cols) x = d * q */
    float   *d;     /* (cols / 256) */
    int16_t *bsums; /* (cols / 16) bsums[i] = sum of qs[16 i .. 16 i + 15] */
} q8k_act;

static inline size_t q8k_act_bytes(int64_t cols) {
    return (size_t)cols + sizeof(float) * (size_t)((cols + QK_K - 1) / QK_K) + sizeof(int16_t) * (size_t)((cols + 15) / 16);
}

static inline q8k_act q8k_act_view(const void *buf, int64_t cols) {
    int8_t *qs = (int8_t *)buf;
    float *d = (float *)(qs + cols); /* cols is a multiple of 256: the floats stay aligned */
    return (q8k_act){qs, d, (int16_t *)(d + cols / QK_K)};
}

/* 127 / amax, the factor that takes a block of activations whose largest magnitude is amax to 8 bits; 0 for a
   block so small (amax below ~3.7e-37) that the factor overflows: such a block quantizes to zeros on every
   level, instead of inf times x meeting the conversion to int8 (undefined in C, INT_MIN in SIMD). */
static inline float llm_act_inv_scale(float amax) {
    float id = 127.0f / amax;
    return amax > 0.0f && isfinite(id) ? id : 0.0f;
}

/* Bytes of one token's input of `cols` values in an activation format. */
static inline size_t llm_act_bytes(int32_t act, int64_t cols) {
    if (act == LLM_ACT_Q8) return q8_act_bytes(cols);
    if (act == LLM_ACT_Q8K) return q8k_act_bytes(cols);
    return (size_t)cols * sizeof(float);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Half and bfloat16 to float, exactly (portable bit manipulation). */

static inline float llm_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0x1f) bits = sign | 0x7f800000 | (mant << 13); /* inf, nan */
    else if (exp != 0) bits = sign | ((exp + 112) << 23) | (mant << 13);
    else if (mant == 0) bits = sign; /* zero */
    else { /* subnormal: normalize */
        exp = 113;
        while (!(mant & 0x400)) {
            mant <<= 1;
            exp--;
        }
        bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline float llm_bf16_to_fp32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* ---------------------------------------------------------------------------------------------------- */
/* The repacked block types (_R8, llm_repack in repack.c): rows in groups of 8, a group's blocks one after
 * another in column order, block b of the group holding block b of its 8 rows in 8 * block_bytes bytes (the
 * source type's bytes: a row costs what it did). Row r of a group is its lane. The x86 batch kernels read a vector
 * of "four consecutive values of each of the 8 rows, one row per 32-bit lane" straight from it:
 *   d[8]   the rows' fp16 scales (offset 0), then for Q4_1 and Q5_1 m[8], their fp16 mins (offset 16);
 *   qh     Q5_0, Q5_1: 8 little-endian uint32, lane r's bit 8 k + g = row r's fifth bit of value 4 g + k (so
 *          that the bits of values 4 g .. 4 g + 3 land on bit 4 of the lane's four bytes by one shift);
 *   qs     Q8_0: 256 bytes, byte 32 g + 4 r + k = row r's value 4 g + k (signed, as stored);
 *          the nibble types: 128 bytes, byte 32 j + 4 r + k = row r's qs[4 j + k] (low nibble: value
 *          4 j + k, high nibble: value 16 + 4 j + k, as in the source block). */

enum { LLM_R8 = 8 }; /* rows per group */

typedef struct {
    size_t m, qh, qs; /* offsets in a group's block (0 where the type has no such part) */
} llm_r8_layout;

static inline llm_r8_layout llm_r8_layout_of(int32_t base) {
    switch (base) {
    case LLM_Q4_1: return (llm_r8_layout){16, 0, 32};
    case LLM_Q5_0: return (llm_r8_layout){0, 16, 48};
    case LLM_Q5_1: return (llm_r8_layout){16, 32, 64};
    default: return (llm_r8_layout){0, 0, 16}; /* Q8_0, Q4_0, IQ4_NL */
    }
}

/* Where the parts of a source block are (kernels.h's block structs): d first, then m, qh, qs as the type
   has them. */
typedef struct {
    size_t m, qh, qs; /* offsets in the source block */
    int    has_m, has_qh, q8;
} llm_r8_parts_t;

static inline llm_r8_parts_t llm_r8_parts(int32_t base) {
    switch (base) {
    case LLM_Q8_0: return (llm_r8_parts_t){0, 0, 2, 0, 0, 1};
    case LLM_Q4_1: return (llm_r8_parts_t){2, 0, 4, 1, 0, 0};
    case LLM_Q5_0: return (llm_r8_parts_t){0, 2, 6, 0, 1, 0};
    case LLM_Q5_1: return (llm_r8_parts_t){2, 4, 8, 1, 1, 0};
    default: return (llm_r8_parts_t){0, 0, 2, 0, 0, 0}; /* Q4_0, IQ4_NL */
    }
}

/* The fifth bits of one row's block (bit j: value j) <-> its lane's word in the group (bit 8 k + g: value
   4 g + k). */
static inline uint32_t llm_r8_qh_to_lane(uint32_t qh) {
    uint32_t lane = 0;
    for (int j = 0; j < QK; j++) lane |= ((qh >> j) & 1u) << (8 * (j % 4) + j / 4);
    return lane;
}

static inline uint32_t llm_r8_lane_to_qh(uint32_t lane) {
    uint32_t qh = 0;
    for (int j = 0; j < QK; j++) qh |= ((lane >> (8 * (j % 4) + j / 4)) & 1u) << j;
    return qh;
}

/* Row `lane`'s block between its source layout and the group's block: packing reads the source block
   `from` into the group's block `to`, unpacking the group's block `from` into a source block `to`. */
static inline void llm_r8_move(int32_t base, int lane, int unpack, const uint8_t *from, uint8_t *to) {
    llm_r8_parts_t p = llm_r8_parts(base);
    llm_r8_layout r = llm_r8_layout_of(base);
#define PART(n, src_off, grp_off) \
    memcpy(to + (unpack ? (src_off) : (grp_off)), from + (unpack ? (grp_off) : (src_off)), n)
    PART(2, 0, 2 * (size_t)lane);
    if (p.has_m) PART(2, p.m, r.m + 2 * (size_t)lane);
    if (p.has_qh) {
        uint32_t v;
        memcpy(&v, from + (unpack ? r.qh + 4 * (size_t)lane : p.qh), 4);
        v = unpack ? llm_r8_lane_to_qh(v) : llm_r8_qh_to_lane(v);
        memcpy(to + (unpack ? p.qh : r.qh + 4 * (size_t)lane), &v, 4);
    }
    int words = p.q8 ? QK / 4 : QK / 8; /* 32-bit words of values: eight of Q8_0's bytes, four of nibbles */
    for (int g = 0; g < words; g++) PART(4, p.qs + 4 * (size_t)g, r.qs + 32 * (size_t)g + 4 * (size_t)lane);
#undef PART
}

/* The repacked float types (LLM_F32_R8, LLM_F16_R8, LLM_BF16_R8): group g of 8 rows is a (cols, 8) matrix,
 * the transpose of its rows, at g * 8 * cols values: value k of row 8 g + l is its value 8 k + l. A vector of
 * 8 consecutive values holds one column of the group, the form a product wants that keeps a row's sum in one
 * lane: each row's product with a token is one chain of fused multiply-adds in increasing k (fmaf's rounding),
 * on every level, for a token alone or in a batch. */
static inline int64_t llm_r8f_index(int64_t row, int64_t k, int64_t cols) {
    return (row / LLM_R8) * LLM_R8 * cols + k * LLM_R8 + row % LLM_R8;
}

/* Block b (of cols / 32) of row `row` of an R8 matrix w of type `type`, in its source type's block layout:
   the inverse of llm_repack (repack.c), for get_row and the scalar reference. */
static inline void llm_r8_block(int32_t type, const void *w, int64_t row, int64_t b, int64_t cols, void *block) {
    int32_t base = llm_types[type].repacked_from;
    size_t bb = llm_types[base].block_bytes, row_bytes = (size_t)(cols / QK) * bb;
    const uint8_t *grp = (const uint8_t *)w + (size_t)(row / LLM_R8) * LLM_R8 * row_bytes; /* the row's group */
    grp += (size_t)b * LLM_R8 * bb;
    llm_r8_move(base, (int)(row % LLM_R8), 1, grp, block);
}

#endif /* LLMRUN_KERNELS_H */
