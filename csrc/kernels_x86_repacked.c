/*
 * kernels_x86_repacked.c: the repacked 32-value block types (_R8: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL;
 * kernels.h spells the layout out) against 8-bit activations (LLM_ACT_Q8), for one x86 level.
 *
 * A group of 8 rows stores, per block, the rows' scales side by side and their values so that one 32-byte
 * load (and for the nibble types an AND or a shift) gives "values 4 g .. 4 g + 3 of each of the 8 rows, one
 * row per 32-bit lane". A dot-product step against four bytes of a token broadcast to all lanes then adds to
 * all 8 rows' sums at once; after the block's 8 steps the 8 scales (and mins) apply in one vector multiply.
 * kernels_x86_int8.c builds this form per call, per group of rows, for every batch; here it is built once, at
 * load time (llm_repack), and every product, one token or many, reads it as it is.
 *
 * One kernel for every n: a token's arithmetic is the same whichever tile it is in and whatever its lane
 * width (with AVX-512 two groups, 16 rows, fill a 512-bit vector; each lane does the same operations), so a
 * token's result never depends on its batch, n = 1 (decoding) included.
 *
 * The products' integer forms, as in kernels_x86_int8.c: unsigned values (nibbles, Q5's 0..31; with VNNI
 * Q8_0's values + 128 and IQ4_NL's levels + 128) multiplied by the signed activations, the offset taken off
 * per block against dsum = d_x * sum q_x; without VNNI Q8_0 and IQ4_NL stay signed and move their signs
 * onto the activations (dot_i8's trick), since maddubs' 16-bit pair sums would saturate on values to 255.
 */
#include "kernels_x86.h"

/* Whether a type's values multiply as signed bytes (sign trick) or unsigned. */
INLINE int r8_signed(int32_t base) {
#ifdef __AVX512VNNI__
    (void)base;
    return 0;
#else
    return base == LLM_Q8_0 || base == LLM_IQ4_NL;
#endif
}

/* What the unsigned values exceed the real ones by (0 for the signed forms and the types with a min). */
INLINE int r8_offset(int32_t base) {
    switch (base) {
    case LLM_Q4_0: return 8;
    case LLM_Q5_0: return 16;
    case LLM_Q8_0:
    case LLM_IQ4_NL: return r8_signed(base) ? 0 : 128;
    default: return 0;
    }
}

INLINE int r8_has_min(int32_t base) { return base == LLM_Q4_1 || base == LLM_Q5_1; }

/* A group's block: the 8 rows' blocks of the source type (a constant the compiler folds, unlike llm_types). */
INLINE size_t r8_block_bytes(int32_t base) {
    switch (base) {
    case LLM_Q8_0: return LLM_R8 * sizeof(block_q8_0);
    case LLM_Q4_1: return LLM_R8 * sizeof(block_q4_1);
    case LLM_Q5_0: return LLM_R8 * sizeof(block_q5_0);
    case LLM_Q5_1: return LLM_R8 * sizeof(block_q5_1);
    default: return LLM_R8 * sizeof(block_q4_0); /* Q4_0, IQ4_NL */
    }
}

/* The 8 rows' values 4 g .. 4 g + 3 of the group's block at blk (lane r: row r) in the form above, in W-bit
   vectors: r8_values (256 bits) here, r8_values16 (two groups, 512 bits) below. One definition, so that each
   lane of the wider one does exactly what the narrower one does. LOAD(at): the 32 bytes at offset `at` of the
   block (with 16 rows, of both groups' blocks, joined); BCAST128: a 128-bit value into every 128-bit lane. */
#define DEFINE_R8_VALUES(name, W, PARAMS, LOAD, BCAST128)                                                     \
    INLINE __m##W##i name PARAMS {                                                                          \
        llm_r8_layout lay = llm_r8_layout_of(base);                                                         \
        if (base == LLM_Q8_0) {                                                                             \
            __m##W##i v = LOAD(lay.qs + 32 * (size_t)g);                                                    \
            return r8_signed(base) ? v : _mm##W##_xor_si##W(v, _mm##W##_set1_epi8((char)0x80)); /* + 128 */ \
        }                                                                                                   \
        __m##W##i w = LOAD(lay.qs + 32 * (size_t)(g & 3));                                                  \
        __m##W##i v = _mm##W##_and_si##W(g < 4 ? w : _mm##W##_srli_epi16(w, 4), _mm##W##_set1_epi8(0x0f)); \
        if (base == LLM_Q5_0 || base == LLM_Q5_1) { /* bit 8 k + g of each lane's word to bit 4 of byte k */\
            __m##W##i qh = LOAD(lay.qh);                                                                    \
            qh = g <= 4 ? _mm##W##_slli_epi32(qh, 4 - g) : _mm##W##_srli_epi32(qh, g - 4);                  \
            v = _mm##W##_or_si##W(v, _mm##W##_and_si##W(qh, _mm##W##_set1_epi8(0x10)));                    \
        }                                                                                                   \
        if (base == LLM_IQ4_NL) {                                                                           \
            __m##W##i levels = BCAST128(_mm_loadu_si128((const __m128i *)llm_iq4nl_values));                \
            if (!r8_signed(base)) levels = _mm##W##_xor_si##W(levels, _mm##W##_set1_epi8((char)0x80));     \
            v = _mm##W##_shuffle_epi8(levels, v);                                                           \
        }                                                                                                   \
        return v;                                                                                           \
    }

#define R8_LOAD8(at) _mm256_loadu_si256((const __m256i *)(blk + (at)))
DEFINE_R8_VALUES(r8_values, 256, (const uint8_t *blk, int g, int32_t base), R8_LOAD8, _mm256_broadcastsi128_si256)

/* The four activation bytes of token x's block b that meet values 4 g .. 4 g + 3, as an int32. */
INLINE int32_t r8_four(const q8_act *x, int64_t b, int g) {
    int32_t four;
    memcpy(&four, x->qs + b * QK + 4 * g, sizeof four);
    return four;
}

/* Without VNNI, how many of a block's steps (4 values each) one 16-bit sum of maddubs's pair sums holds before
   it is widened to 32 bits: unsigned 4-bit values (<= 15) times activations (|x| <= 127) make pairs of at most
   3810 and eight of them fit; 5-bit values (<= 31) 7874, four; the 8-bit forms fill 16 bits in one step. The
   integer sums are exact either way (nothing saturates): only the instructions change, a maddubs and an add
   per step instead of maddubs, madd and add, which halves the multiplies of the 4-bit types. */
#ifndef __AVX512VNNI__
INLINE int r8_steps_per_i16(int32_t base) {
    switch (base) {
    case LLM_Q4_0:
    case LLM_Q4_1: return 8;
    case LLM_Q5_0:
    case LLM_Q5_1: return 4;
    default: return 1;
    }
}
#endif

/* Tokens per pass over a group's blocks: their accumulators stay in registers (32 vector registers with
   AVX-512, beside tile16's 8 of a block's values; 16 without, beside tile8's sums). */
#ifdef __AVX512VNNI__
enum { R8_RN = 12 };
#else
enum { R8_RN = 4 };
#endif

/* Where the group of 8 rows that starts at row `row` begins. */
INLINE const uint8_t *r8_group(const void *w, int64_t row, int64_t nb, int32_t base) {
    return (const uint8_t *)w + (size_t)(row / LLM_R8) * (size_t)nb * r8_block_bytes(base);
}

/* out[(token + j) * ldo + i] for rows i < 8 of the group at grp and tokens j < rn. */
INLINE void tile8(float *out, int64_t ldo, const uint8_t *grp, const q8_act *xa, int64_t nb, int32_t base, int rn) {
    const size_t gb = r8_block_bytes(base); /* a group's block */
    const float offset = (float)r8_offset(base);
    __m256 acc[R8_RN];
    for (int j = 0; j < rn; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = grp + (size_t)b * gb;
        /* few tokens: two chains of vpdpbusd (5 cycles each) per token, so that one token's steps overlap;
           the integer sums are exact either way. Without VNNI the chain is a 1-cycle add: one is enough. */
        __m256i s[R8_RN], s2[R8_RN];
#ifdef __AVX512VNNI__
        const int two = rn <= 4;
#else
        const int two = 0;
#endif
        for (int j = 0; j < rn; j++) s[j] = s2[j] = _mm256_setzero_si256();
#ifndef __AVX512VNNI__
        const int per_i16 = r8_steps_per_i16(base);
        __m256i p[R8_RN]; /* 16-bit sums of the last steps (r8_steps_per_i16) */
        for (int j = 0; j < rn; j++) p[j] = _mm256_setzero_si256(); /* step 0 sets them; GCC cannot see it */
#endif
        for (int g = 0; g < 8; g++) {
            __m256i v = r8_values(blk, g, base);
            __m256i u = r8_signed(base) ? _mm256_sign_epi8(v, v) : v;
            for (int j = 0; j < rn; j++) {
                __m256i xv = _mm256_set1_epi32(r8_four(&xa[j], b, g));
                if (r8_signed(base)) xv = _mm256_sign_epi8(xv, v);
#ifdef __AVX512VNNI__
                if (two && (g & 1)) s2[j] = dot4_u8i8(s2[j], u, xv);
                else s[j] = dot4_u8i8(s[j], u, xv);
#else
                __m256i pairs = _mm256_maddubs_epi16(u, xv);
                p[j] = g % per_i16 == 0 ? pairs : _mm256_add_epi16(p[j], pairs);
                /* one sum per token in a register: left free, GCC reorders the integer adds into a tree that
                   keeps all 32 of a block's maddubs live at once and spills them to the stack */
                IN_REGISTER(p[j]);
                if (g % per_i16 == per_i16 - 1)
                    s[j] = _mm256_add_epi32(s[j], _mm256_madd_epi16(p[j], _mm256_set1_epi16(1)));
#endif
            }
        }
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)blk));
        for (int j = 0; j < rn; j++) {
            __m256i sum = two ? _mm256_add_epi32(s[j], s2[j]) : s[j];
            __m256 dot = _mm256_mul_ps(_mm256_set1_ps(xa[j].d[b]), _mm256_cvtepi32_ps(sum));
            if (offset != 0.0f) dot = _mm256_sub_ps(dot, _mm256_set1_ps(offset * xa[j].dsum[b]));
            acc[j] = _mm256_fmadd_ps(dw, dot, acc[j]);
            if (r8_has_min(base)) /* + m * dsum */
                acc[j] = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(blk + 16))),
                                         _mm256_set1_ps(xa[j].dsum[b]), acc[j]);
        }
    }
    for (int j = 0; j < rn; j++) _mm256_storeu_ps(out + j * ldo, acc[j]);
}

#ifdef __AVX512VNNI__
/* tile8 for two groups at once, 16 rows in a 512-bit vector (rows 0-7 in the low half, from grp, rows 8-15
   in the high half, from grp + group_bytes): per lane the same operations as tile8, so the same bits. */

/* 32 bytes at offset `at` of the block at blk (low half) and of the next group's (high half). */
INLINE __m512i r8_pair(const uint8_t *blk, size_t group_bytes, size_t at) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(blk + at))),
                              _mm256_loadu_si256((const __m256i *)(blk + group_bytes + at)), 1);
}

/* r8_values for the 16 rows, joined before the nibbles are split: the steps g and g + 4 of the nibble types
   share one join (the unrolled block computes each once), where joining r8_values' results took one per step,
   on the vector pipes vpdpbusd needs. */
#define R8_LOAD16(at) r8_pair(blk, group_bytes, at)
DEFINE_R8_VALUES(r8_values16, 512, (const uint8_t *blk, size_t group_bytes, int g, int32_t base), R8_LOAD16,
                 _mm512_broadcast_i32x4)

INLINE __m512 r8_halves16(const uint8_t *p, size_t group_bytes) { /* 8 fp16 at p, 8 at p + group_bytes */
    __m256i h = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p)),
                                        _mm_loadu_si128((const __m128i *)(p + group_bytes)), 1);
    return _mm512_cvtph_ps(h);
}

/* The block's 8 steps of values stay in registers (8 of the 32) while the tokens go past them one at a time,
   each token's steps in two chains of vpdpbusd (its sum is ready 4 steps after it starts, and the next
   token's chains overlap it). Stepping through the tokens within each step instead, as tile8 does, needs
   one sum per token live across the block: 12 of them with their 12 accumulators left GCC too few
   registers, and it copied the sums from register to register each step; this order ran 1.2-1.5x faster
   on AMD Zen 5 (llm_matmul, Q4_0 at 530-560 GOPS of 890 peak). The integer sums are exact in any order: the
   same bits as before, and as tile8. */
INLINE void tile16(float *out, int64_t ldo, const uint8_t *grp, const q8_act *xa, int64_t nb, int32_t base, int rn) {
    const size_t gb = r8_block_bytes(base), group_bytes = (size_t)nb * gb;
    const float offset = (float)r8_offset(base);
    __m512 acc[R8_RN];
    for (int j = 0; j < rn; j++) acc[j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = grp + (size_t)b * gb;
        __m512i v[8];
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++) v[g] = r8_values16(blk, group_bytes, g, base);
        __m512 dw = r8_halves16(blk, group_bytes);
        __m512 m = r8_has_min(base) ? r8_halves16(blk + 16, group_bytes) : _mm512_setzero_ps();
#pragma GCC unroll 16
        for (int j = 0; j < rn; j++) {
            __m512i s = _mm512_setzero_si512(), s2 = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int g = 0; g < 8; g += 2) {
                s = _mm512_dpbusd_epi32(s, v[g], _mm512_set1_epi32(r8_four(&xa[j], b, g)));
                s2 = _mm512_dpbusd_epi32(s2, v[g + 1], _mm512_set1_epi32(r8_four(&xa[j], b, g + 1)));
            }
            __m512i sum = _mm512_add_epi32(s, s2);
            __m512 dot = _mm512_mul_ps(_mm512_set1_ps(xa[j].d[b]), _mm512_cvtepi32_ps(sum));
            if (offset != 0.0f) dot = _mm512_sub_ps(dot, _mm512_set1_ps(offset * xa[j].dsum[b]));
            acc[j] = _mm512_fmadd_ps(dw, dot, acc[j]);
            if (r8_has_min(base)) acc[j] = _mm512_fmadd_ps(m, _mm512_set1_ps(xa[j].dsum[b]), acc[j]);
        }
    }
    for (int j = 0; j < rn; j++) _mm512_storeu_ps(out + j * ldo, acc[j]);
}
#endif

/* Tokens [t, t + rn) against rows [r, r + 8 or 16). */
INLINE void tile(float *out, int64_t ldo, const void *w, const q8_act *xa, int64_t r, int64_t nb, int32_t base,
                 int rows, int rn) {
#ifdef __AVX512VNNI__
    if (rows == 16) {
        tile16(out, ldo, r8_group(w, r, nb, base), xa, nb, base, rn);
        return;
    }
#endif
    (void)rows;
    tile8(out, ldo, r8_group(w, r, nb, base), xa, nb, base, rn);
}

/* Tokens [t, t + rn) of x against rows [r, r + rows). */
INLINE void tokens_tile(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t t, int64_t r,
                        int64_t cols, int32_t base, int rows, int rn) {
    q8_act xa[R8_RN];
    for (int j = 0; j < rn; j++) xa[j] = q8_act_view((const char *)x + (size_t)(t + j) * ldx, cols);
    tile(out + t * ldo, ldo, w, xa, r, cols / QK, base, rows, rn);
}

/* Bytes of activations a pass over the rows keeps close: with the rows' weights (a batch's chunk is about
   256 KiB, products.c) they stay in a core's L2 cache (1 MiB and more on the CPUs with AVX-512, 256 KiB to
   1 MiB on the older AVX2 ones: there, what spills is re-read from L3 at a cost the tiles amortize). */
#define R8_TOKEN_BYTES (384 * 1024)

/* out[t * ldo + r - row_begin] for tokens t < n, rows [row_begin, row_end) (both multiples of 8: the row
   groups are whole); 16 rows at a time where the level has 512-bit vectors and n > 8. The tokens go in
   runs whose activations stay in L2 (R8_TOKEN_BYTES), each run past all the rows; within a run past each
   group of rows R8_RN at a time, then what is left in at most three tiles (8, 4, then 1 to 3 tokens; without AVX-512
   R8_RN is 4), so that a small batch (a few sequences decoding together) reads the weights once or twice,
   not once per token. A token's arithmetic is the same in any tile: the runs and tiles change no result. */
INLINE void matmul_r8(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, int32_t base) {
#ifdef __AVX512VNNI__
    /* 16 rows (two groups, two streams of weights) halve the instructions per weight, which a batch needs;
       a few tokens are bound by memory instead, where one stream (8 rows) measured up to 1.8x faster than
       two from DRAM (matrices past the L3 cache, e.g. the output: the prefetchers serve one stream best) */
    const int wide = n <= 8 ? 8 : 16;
#else
    const int wide = LLM_R8;
#endif
    int64_t run = n;
    if (n > R8_RN && ldx > 0 && (size_t)n * ldx > R8_TOKEN_BYTES) {
        run = (int64_t)(R8_TOKEN_BYTES / ldx) / R8_RN * R8_RN;
        if (run < R8_RN) run = R8_RN;
    }
    for (int64_t t0 = 0; t0 < n; t0 += run) {
        int64_t t_end = t0 + run < n ? t0 + run : n;
        for (int64_t r = row_begin; r < row_end;) {
            int rows = r + wide <= row_end ? wide : LLM_R8;
            float *o = out + (r - row_begin);
            int64_t t = t0;
            for (; t + R8_RN <= t_end; t += R8_RN) tokens_tile(o, ldo, w, x, ldx, t, r, cols, base, rows, R8_RN);
            if (R8_RN > 8 && t + 8 <= t_end) tokens_tile(o, ldo, w, x, ldx, t, r, cols, base, rows, 8), t += 8;
            if (R8_RN > 4 && t + 4 <= t_end) tokens_tile(o, ldo, w, x, ldx, t, r, cols, base, rows, 4), t += 4;
            switch (t_end - t) {
            case 3: tokens_tile(o, ldo, w, x, ldx, t, r, cols, base, rows, 3); break;
            case 2: tokens_tile(o, ldo, w, x, ldx, t, r, cols, base, rows, 2); break;
            case 1: tokens_tile(o, ldo, w, x, ldx, t, r, cols, base, rows, 1); break;
            }
            r += rows;
        }
    }
}

#define R8_KERNELS(name, BASE)                                                                                     \
    void X86(matvec_##name##_r8)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,    \
                                 int64_t cols) {                                                                   \
        matmul_r8(out, 0, w, xq, 0, 1, row_begin, row_end, cols, BASE);                                            \
    }                                                                                                              \
    void X86(matmul_##name##_r8)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,     \
                                 int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {                \
        (void)scratch;                                                                                             \
        matmul_r8(out, ldo, w, x, ldx, n, row_begin, row_end, cols, BASE);                                         \
    }
R8_KERNELS(q8_0, LLM_Q8_0)
R8_KERNELS(q4_0, LLM_Q4_0)
R8_KERNELS(q4_1, LLM_Q4_1)
R8_KERNELS(q5_0, LLM_Q5_0)
R8_KERNELS(q5_1, LLM_Q5_1)
R8_KERNELS(iq4_nl, LLM_IQ4_NL)
