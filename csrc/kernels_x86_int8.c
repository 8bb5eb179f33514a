/*
 * kernels_x86_int8.c: the 32-value block weights (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL) against 8-bit
 * activations (LLM_ACT_Q8), for one x86 level (kernels_x86.h).
 *
 * A product quantizes its input once (quantize_q8_act); then every block pair is a 32-term integer dot
 * product scaled by d_w * d_x: integer multiply-adds do four times the work of f32 FMAs per instruction, and
 * the weights are read as they are stored. Unsigned weight values are multiplied as they are and their
 * offset comes off once per block: sum (q - 8) x = sum q x - 8 sum x for Q4_0, where the activations carry
 * d_x * sum q_x; a min (Q4_1, Q5_1) adds on the same sum. With VNNI one instruction (vpdpbusd) does a
 * block's multiply-adds; without it two do.
 */
#include <math.h>

#include "kernels_x86.h"

/* ---------------------------------------------------------------------------------------------------- */
/* the activations */

/* Whether 32 values are all finite: v * 0 is 0 for a finite v and NaN for inf or NaN, and a sum with a NaN
   is NaN (max, which the scale comes from, passes NaN over). */
INLINE int all_finite(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
    __m256 zero = _mm256_setzero_ps();
    __m256 z = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(v0, zero), _mm256_mul_ps(v1, zero)),
                             _mm256_add_ps(_mm256_mul_ps(v2, zero), _mm256_mul_ps(v3, zero)));
    return _mm256_movemask_ps(_mm256_cmp_ps(z, z, _CMP_UNORD_Q)) == 0;
}

void X86(quantize_q8_act)(void *out, const float *x, int64_t cols) {
    q8_act y = q8_act_view(out, cols);
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < cols / QK; b++, x += QK) {
        __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
        __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
        __m256 amax = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign_bit, v0), _mm256_andnot_ps(sign_bit, v1)),
                                    _mm256_max_ps(_mm256_andnot_ps(sign_bit, v2), _mm256_andnot_ps(sign_bit, v3)));
        __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(amax, 1), _mm256_castps256_ps128(amax));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float max = _mm_cvtss_f32(m4);
        if (!all_finite(v0, v1, v2, v3)) { /* inf or NaN in x: let it reach the logits, as the reference does */
            memset(y.qs + b * QK, 0, QK);
            y.d[b] = y.dsum[b] = NAN;
            continue;
        }
        __m256 id = _mm256_set1_ps(llm_act_inv_scale(max));
        /* scale, round to nearest even, narrow 32 -> 16 -> 8 bits; the packs interleave 128-bit lanes,
           which the final permutation undoes */
        __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, id), _MM_FROUND_TO_NEAREST_INT));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, id), _MM_FROUND_TO_NEAREST_INT));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, id), _MM_FROUND_TO_NEAREST_INT));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, id), _MM_FROUND_TO_NEAREST_INT));
        __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(y.qs + b * QK), packed);
        y.d[b] = max / 127.0f;
        y.dsum[b] = y.d[b] * (float)hsum_i32x8(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* the blocks
 *
 * Every kernel below is written once over a block_kind, which the compiler folds away in each type's
 * wrapper. A block's 32 values come out of block_values as 32 bytes in value order, in the form the
 * integer dot products want:
 * - Q8_0: signed, as stored;
 * - Q4_0, Q4_1: the nibbles, unsigned 0..15; Q5_0, Q5_1: unsigned 0..31, the fifth bits (qh) spread onto
 *   the bytes with vector ops;
 * - IQ4_NL: the nibbles looked up in the 16 levels by a byte shuffle (one pshufb for 32 values). With VNNI
 *   the table holds the levels + 128 (unsigned 1..241, multiplied by vpdpbusd as they are); without it the
 *   levels themselves, signed, since the 16-bit pair sums of maddubs would saturate on 241 * 127 * 2.
 * value_offset says what the unsigned forms exceed the real values by (Q4_0 8, Q5_0 16, IQ4_NL + 128); it
 * comes off once per block against the activations' dsum = d_x * sum q_x. Q4_1 and Q5_1 add their min the
 * same way: sum (d q + m) d_x q_x = d d_x sum q q_x + m dsum.
 */

typedef enum { KIND_Q8_0, KIND_Q4_0, KIND_Q4_1, KIND_Q5_0, KIND_Q5_1, KIND_IQ4_NL } block_kind;

static size_t block_bytes(block_kind kind) {
    switch (kind) {
    case KIND_Q8_0: return sizeof(block_q8_0);
    case KIND_Q4_0: return sizeof(block_q4_0);
    case KIND_Q4_1: return sizeof(block_q4_1);
    case KIND_Q5_0: return sizeof(block_q5_0);
    case KIND_Q5_1: return sizeof(block_q5_1);
    case KIND_IQ4_NL: return sizeof(block_iq4_nl);
    }
    return 0;
}

/* Whether a block carries a min m after its scale d (x = d q + m). */
INLINE int has_min(block_kind kind) { return kind == KIND_Q4_1 || kind == KIND_Q5_1; }

/* Whether block_values are signed bytes (else unsigned, value_offset above the real values). */
INLINE int signed_values(block_kind kind) {
#ifdef __AVX512VNNI__
    return kind == KIND_Q8_0;
#else
    return kind == KIND_Q8_0 || kind == KIND_IQ4_NL;
#endif
}

INLINE int value_offset(block_kind kind) {
    switch (kind) {
    case KIND_Q4_0: return 8;
    case KIND_Q5_0: return 16;
    case KIND_IQ4_NL: return signed_values(kind) ? 0 : 128;
    default: return 0;
    }
}

/* v (32 nibbles in value order) with bit 4 set in byte j where bit j of the little-endian 32 bits at qh is set:
   the Q5 types' fifth bits, spread with vector ops. */
INLINE __m256i with_fifth_bits(__m256i v, const uint8_t *qh) {
    uint32_t bits;
    memcpy(&bits, qh, sizeof bits);
#ifdef __AVX512BW__
    return _mm256_or_si256(v, _mm256_maskz_mov_epi8((__mmask32)bits, _mm256_set1_epi8(0x10))); /* a byte mask */
#else
    /* byte j takes byte j / 8 of the bits, then is all ones iff bit j % 8 is set: every other bit is set
       by the OR, whose byte k within each eight is ~(1 << k) */
    __m256i m = _mm256_shuffle_epi8(_mm256_set1_epi32((int32_t)bits),
                                    _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303));
    m = _mm256_cmpeq_epi8(_mm256_or_si256(m, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)), _mm256_set1_epi8(-1));
    return _mm256_or_si256(v, _mm256_and_si256(m, _mm256_set1_epi8(0x10)));
#endif
}

/* The IQ4_NL levels (+ 128 where they are used unsigned) in both 128-bit lanes, for the byte shuffle. */
INLINE __m256i iq4nl_table(void) {
    __m256i levels = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)llm_iq4nl_values));
    return signed_values(KIND_IQ4_NL) ? levels : _mm256_xor_si256(levels, _mm256_set1_epi8((char)0x80));
}

/* The values of a block as bytes (see above). */
INLINE __m256i block_values(const void *block, block_kind kind) {
    const uint8_t *p = block;
    switch (kind) {
    case KIND_Q8_0: return _mm256_loadu_si256((const __m256i *)(p + 2));
    case KIND_Q4_0: return unpack_q4_0(p + 2);
    case KIND_Q4_1: return unpack_q4_0(p + 4);
    case KIND_Q5_0: return with_fifth_bits(unpack_q4_0(p + 6), p + 2);
    case KIND_Q5_1: return with_fifth_bits(unpack_q4_0(p + 8), p + 4);
    case KIND_IQ4_NL: return _mm256_shuffle_epi8(iq4nl_table(), unpack_q4_0(p + 2));
    }
    return _mm256_setzero_si256();
}

/* sum q_w q_x of one block as eight int32 lanes (q_w in block_values' form, offset included). */
INLINE __m256i block_dot(const void *block, const int8_t *x, block_kind kind) {
    __m256i xv = _mm256_loadu_si256((const __m256i *)x);
    if (signed_values(kind)) return dot_i8(block_values(block, kind), xv);
    return dot4_u8i8(_mm256_setzero_si256(), block_values(block, kind), xv);
}

/* A block's scale d, and for Q4_1 and Q5_1 its min m (the fp16 after d). */
INLINE float block_scale(const void *block) {
    uint16_t d;
    memcpy(&d, block, sizeof d);
    return _cvtsh_ss(d);
}

INLINE float block_min(const void *block) { return block_scale((const uint8_t *)block + sizeof(uint16_t)); }

/* ---------------------------------------------------------------------------------------------------- */
/* one token: out[r] = sum over blocks b of d_w[b] * (d_x[b] * sum(q_w q_x) - offset * dsum[b]) + m[b] * dsum[b],
   eight blocks at a time so that their scales cost one vector multiply */

INLINE void matvec(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols,
                   block_kind kind) {
    q8_act x = q8_act_view(xq, cols);
    int64_t nb = cols / QK;
    size_t bb = block_bytes(kind);
    float offset = (float)value_offset(kind);
    for (int64_t r = row_begin; r < row_end; r++) {
        const char *row = (const char *)w + (size_t)r * nb * bb;
        __m256 acc = _mm256_setzero_ps(), acc_offset = _mm256_setzero_ps(), acc_min = _mm256_setzero_ps();
        int64_t b = 0;
        for (; b + 8 <= nb; b += 8) {
            __m256i s[8];
            for (int k = 0; k < 8; k++) s[k] = block_dot(row + (b + k) * bb, x.qs + (b + k) * QK, kind);
            __m256 dw, m, dsum = _mm256_loadu_ps(x.dsum + b);
            if (has_min(kind)) scales_mins8(row + b * bb, bb, &dw, &m);
            else dw = scales8(row + b * bb, bb);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8x8(s)), _mm256_mul_ps(dw, _mm256_loadu_ps(x.d + b)), acc);
            if (value_offset(kind)) acc_offset = _mm256_fmadd_ps(dw, dsum, acc_offset);
            if (has_min(kind)) acc_min = _mm256_fmadd_ps(m, dsum, acc_min);
        }
        float sum = hsum_f32x8(acc);
        if (value_offset(kind)) sum -= offset * hsum_f32x8(acc_offset);
        if (has_min(kind)) sum += hsum_f32x8(acc_min);
        for (; b < nb; b++) { /* the last nb % 8 blocks, one at a time */
            const char *block = row + b * bb;
            float dot = x.d[b] * (float)hsum_i32x8(block_dot(block, x.qs + b * QK, kind));
            sum += block_scale(block) * (dot - offset * x.dsum[b]);
            if (has_min(kind)) sum += block_min(block) * x.dsum[b];
        }
        out[r - row_begin] = sum;
    }
}

void X86(matvec_q8_0)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols) {
    matvec(out, w, xq, row_begin, row_end, cols, KIND_Q8_0);
}

void X86(matvec_q4_0)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols) {
    matvec(out, w, xq, row_begin, row_end, cols, KIND_Q4_0);
}

void X86(matvec_q4_1)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols) {
    matvec(out, w, xq, row_begin, row_end, cols, KIND_Q4_1);
}

void X86(matvec_q5_0)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols) {
    matvec(out, w, xq, row_begin, row_end, cols, KIND_Q5_0);
}

void X86(matvec_q5_1)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols) {
    matvec(out, w, xq, row_begin, row_end, cols, KIND_Q5_1);
}

void X86(matvec_iq4_nl)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                        int64_t cols) {
    matvec(out, w, xq, row_begin, row_end, cols, KIND_IQ4_NL);
}

/* ---------------------------------------------------------------------------------------------------- */
/* a small batch: matvec for several tokens at once
 *
 * Batched decoding (one token per sequence, a few sequences) multiplies each weight matrix by n = 2..8
 * tokens. The batch kernels below repack each group of rows per call, which pays off over hundreds of
 * tokens but costs about as much per token as matvec when n is small: then n sequences would decode little
 * faster than one after another. Here the rows are walked as matvec walks them, eight blocks at a time,
 * each weight block decoded (block_values) and its scales converted once for all the tokens, and every
 * token keeps its own accumulators with exactly matvec's arithmetic (the integer dot products are exact,
 * the float steps are matvec's, in its order): a token's result is bit for bit the one matvec gives it
 * alone, so a batched decode step yields the tokens each sequence would get on its own. */

enum { SMALL_N = 8, SMALL_GROUP = 4 }; /* the most tokens the path takes (above, the repacking kernels win); the
                                          most at a time (more accumulators than that spill from the registers) */

/* Eight consecutive 32-byte blocks, 32-bit lane k of every vector from block k: vector g holds bytes
   4 g .. 4 g + 3 of each block. A dot-product step then adds to each block's own lane, so that after the
   eight steps lane k is block k's sum, which matvec gathers with sum8x8 (and the integer sums are exact
   either way). */
INLINE void blocks_in_lanes(__m256i v[8]) { transpose8x8_i32(v); }

/* blocks_in_lanes(block_values of eight blocks) for the nibble types (Q4_0, Q4_1, IQ4_NL), from the stored
   bytes (qs0: the first block's qs, bb bytes from block to block): value bytes 4 g .. 4 g + 3 are the low
   nibbles of qs[4 g .. 4 g + 3] (g < 4) or the high ones of qs[4 (g - 4) ..], so the eight blocks' 16-byte qs
   need only a 4 x 4 transposition of their 32-bit words in each 128-bit half (blocks 0-3 in the low half,
   4-7 in the high), then the nibbles split: half the instructions of decoding the blocks one by one and
   transposing 8 x 8 words. */
INLINE void nibbles_in_lanes(const uint8_t *qs0, size_t bb, block_kind kind, __m256i v[8]) {
    __m256i p[4];
    for (int k = 0; k < 4; k++)
        p[k] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(qs0 + k * bb))),
                                       _mm_loadu_si128((const __m128i *)(qs0 + (k + 4) * bb)), 1);
    __m256i t0 = _mm256_unpacklo_epi32(p[0], p[1]), t1 = _mm256_unpackhi_epi32(p[0], p[1]);
    __m256i t2 = _mm256_unpacklo_epi32(p[2], p[3]), t3 = _mm256_unpackhi_epi32(p[2], p[3]);
    __m256i words[4] = {_mm256_unpacklo_epi64(t0, t2), _mm256_unpackhi_epi64(t0, t2), _mm256_unpacklo_epi64(t1, t3),
                        _mm256_unpackhi_epi64(t1, t3)}; /* words[j]: word j of each block */
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    for (int j = 0; j < 4; j++) {
        v[j] = _mm256_and_si256(words[j], low4);
        v[j + 4] = _mm256_and_si256(_mm256_srli_epi16(words[j], 4), low4);
    }
    if (kind == KIND_IQ4_NL)
        for (int g = 0; g < 8; g++) v[g] = _mm256_shuffle_epi8(iq4nl_table(), v[g]);
}

/* Past SMALL_GROUP tokens a row is walked once per group of tokens: the first pass keeps its decoded
   weights (in lanes) and scales in a buffer, per eight blocks 256 bytes of values, then the eight scales
   and mins as f32, and the later passes read them back instead of decoding again. */
enum { DECODE, DECODE_KEEP, READ_KEPT };
enum { PREFETCH_BYTES = 4096 };
enum { KEPT_GROUP_BYTES = 8 * QK + 16 * sizeof(float) };

/* out[t * ldo] (t < nt, a constant in each instantiation) = row . token t: xa the tokens' activations,
   xl their full groups of eight blocks in lanes; `weights` DECODE, DECODE_KEEP (into kept) or READ_KEPT. */
INLINE void row_n(float *out, int64_t ldo, const char *row, const q8_act *xa, const uint8_t *const *xl, int nt,
                  int64_t nb, uint8_t *kept, int weights, block_kind kind) {
    size_t bb = block_bytes(kind);
    float offset = (float)value_offset(kind);
    __m256 acc[SMALL_GROUP], acc_offset[SMALL_GROUP], acc_min[SMALL_GROUP];
    for (int t = 0; t < nt; t++)
        acc[t] = _mm256_setzero_ps(), acc_offset[t] = _mm256_setzero_ps(), acc_min[t] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8, kept += KEPT_GROUP_BYTES) {
        /* the eight blocks' values in lanes; signed ones as block_dot's dot_i8 takes them: |w|, and w
           for the signs it moves onto the activations */
        __m256i wv[8], wu[8];
        __m256 dw, m = _mm256_setzero_ps();
        if (weights == READ_KEPT) {
            for (int k = 0; k < 8; k++) wv[k] = _mm256_loadu_si256((const __m256i *)(kept + 32 * k));
            dw = _mm256_loadu_ps((const float *)(kept + 8 * QK));
            if (has_min(kind)) m = _mm256_loadu_ps((const float *)(kept + 8 * QK) + 8);
        } else {
            /* the weights stream from memory at a few bytes per instruction: ask for them well ahead */
            for (size_t off = 0; off < 8 * bb; off += 64) _mm_prefetch(row + b * bb + PREFETCH_BYTES + off, _MM_HINT_T0);
            if (kind == KIND_Q4_0 || kind == KIND_IQ4_NL) {
                nibbles_in_lanes((const uint8_t *)row + b * bb + 2, bb, kind, wv);
            } else if (kind == KIND_Q4_1) {
                nibbles_in_lanes((const uint8_t *)row + b * bb + 4, bb, kind, wv);
            } else {
                for (int k = 0; k < 8; k++) wv[k] = block_values(row + (b + k) * bb, kind);
                blocks_in_lanes(wv);
            }
            if (has_min(kind)) scales_mins8(row + b * bb, bb, &dw, &m);
            else dw = scales8(row + b * bb, bb);
            if (weights == DECODE_KEEP) {
                for (int k = 0; k < 8; k++) _mm256_storeu_si256((__m256i *)(kept + 32 * k), wv[k]);
                _mm256_storeu_ps((float *)(kept + 8 * QK), dw);
                if (has_min(kind)) _mm256_storeu_ps((float *)(kept + 8 * QK) + 8, m);
            }
        }
        for (int k = 0; k < 8; k++) wu[k] = signed_values(kind) ? _mm256_sign_epi8(wv[k], wv[k]) : wv[k];
        for (int t = 0; t < nt; t++) {
            const uint8_t *xg = xl[t] + b * QK;
            __m256i s[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()}; /* two chains in flight */
            for (int k = 0; k < 8; k++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(xg + k * 32));
                s[k % 2] = dot4_u8i8(s[k % 2], wu[k], signed_values(kind) ? _mm256_sign_epi8(xv, wv[k]) : xv);
            }
            __m256 dsum = _mm256_loadu_ps(xa[t].dsum + b);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(s[0], s[1])),
                                     _mm256_mul_ps(dw, _mm256_loadu_ps(xa[t].d + b)), acc[t]);
            if (value_offset(kind)) acc_offset[t] = _mm256_fmadd_ps(dw, dsum, acc_offset[t]);
            if (has_min(kind)) acc_min[t] = _mm256_fmadd_ps(m, dsum, acc_min[t]);
        }
    }
    float sum[SMALL_GROUP];
    for (int t = 0; t < nt; t++) {
        sum[t] = hsum_f32x8(acc[t]);
        if (value_offset(kind)) sum[t] -= offset * hsum_f32x8(acc_offset[t]);
        if (has_min(kind)) sum[t] += hsum_f32x8(acc_min[t]);
    }
    for (; b < nb; b++) { /* the last nb % 8 blocks, one at a time */
        const char *block = row + b * bb;
        __m256i wv = block_values(block, kind);
        __m256i wu = signed_values(kind) ? _mm256_sign_epi8(wv, wv) : wv;
        float d = block_scale(block), mn = has_min(kind) ? block_min(block) : 0.0f;
        for (int t = 0; t < nt; t++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(xa[t].qs + b * QK));
            __m256i dot = dot4_u8i8(_mm256_setzero_si256(), wu, signed_values(kind) ? _mm256_sign_epi8(xv, wv) : xv);
            float dx = xa[t].d[b] * (float)hsum_i32x8(dot);
            sum[t] += d * (dx - offset * xa[t].dsum[b]);
            if (has_min(kind)) sum[t] += mn * xa[t].dsum[b];
        }
    }
    for (int t = 0; t < nt; t++) out[t * ldo] = sum[t];
}

/* n <= SMALL_N tokens: the activations laid out in lanes into `scratch` (once per call, for all the rows),
   then row by row, SMALL_GROUP tokens at a time, row_n with the count a constant. */
INLINE void matmul_small(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                         int64_t row_begin, int64_t row_end, int64_t cols, void *scratch, block_kind kind) {
    int64_t nb = cols / QK, ng = nb / 8;
    q8_act xa[SMALL_N];
    const uint8_t *xl[SMALL_N];
    uint8_t *dst = scratch;
    for (int64_t t = 0; t < n; t++) {
        xa[t] = q8_act_view((const char *)x + (size_t)t * ldx, cols);
        xl[t] = dst;
        for (int64_t g = 0; g < ng; g++, dst += 8 * QK) {
            __m256i v[8];
            for (int k = 0; k < 8; k++) v[k] = _mm256_loadu_si256((const __m256i *)(xa[t].qs + (8 * g + k) * QK));
            blocks_in_lanes(v);
            for (int k = 0; k < 8; k++) _mm256_storeu_si256((__m256i *)(dst + k * 32), v[k]);
        }
    }
    uint8_t *kept = dst;
    size_t row_bytes = (size_t)nb * block_bytes(kind);
    for (int64_t r = row_begin; r < row_end; r++) {
        const char *row = (const char *)w + (size_t)r * row_bytes;
        float *o = out + (r - row_begin);
        if (n <= SMALL_GROUP) {
            switch (n) {
            case 1: row_n(o, ldo, row, xa, xl, 1, nb, kept, DECODE, kind); break;
            case 2: row_n(o, ldo, row, xa, xl, 2, nb, kept, DECODE, kind); break;
            case 3: row_n(o, ldo, row, xa, xl, 3, nb, kept, DECODE, kind); break;
            case 4: row_n(o, ldo, row, xa, xl, 4, nb, kept, DECODE, kind); break;
            }
            continue;
        }
        row_n(o, ldo, row, xa, xl, SMALL_GROUP, nb, kept, DECODE_KEEP, kind);
        o += SMALL_GROUP * ldo;
        switch (n - SMALL_GROUP) { /* SMALL_N - SMALL_GROUP at most */
        case 1: row_n(o, ldo, row, xa + SMALL_GROUP, xl + SMALL_GROUP, 1, nb, kept, READ_KEPT, kind); break;
        case 2: row_n(o, ldo, row, xa + SMALL_GROUP, xl + SMALL_GROUP, 2, nb, kept, READ_KEPT, kind); break;
        case 3: row_n(o, ldo, row, xa + SMALL_GROUP, xl + SMALL_GROUP, 3, nb, kept, READ_KEPT, kind); break;
        case 4: row_n(o, ldo, row, xa + SMALL_GROUP, xl + SMALL_GROUP, 4, nb, kept, READ_KEPT, kind); break;
        }
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* a batch, one row at a time: tiles of RM rows x RN tokens, 32 values of a row in a vector (Q8_0 without
   VNNI, and the last rows % 8 of the eight-row kernels below). The values are made signed (offset off) and
   multiplied by dot_i8; a min adds m * dsum per block beside the vector sums. */

enum { RM = 2, RN = 4 };

INLINE void row_tile(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t row, int64_t token,
                     int64_t row_begin, int64_t cols, block_kind kind, int rm, int rn) {
    int64_t nb = cols / QK;
    size_t bb = block_bytes(kind);
    const char *wr[RM];
    q8_act xa[RN];
    for (int i = 0; i < rm; i++) wr[i] = (const char *)w + (size_t)(row + i) * nb * bb;
    for (int j = 0; j < rn; j++) xa[j] = q8_act_view((const char *)x + (size_t)(token + j) * ldx, cols);
    __m256 acc[RM][RN];
    float acc_min[RM][RN];
    for (int i = 0; i < rm; i++)
        for (int j = 0; j < rn; j++) acc[i][j] = _mm256_setzero_ps(), acc_min[i][j] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        __m256i wv[RM];
        __m256 dw[RM];
        for (int i = 0; i < rm; i++) {
            wv[i] = _mm256_sub_epi8(block_values(wr[i] + b * bb, kind), _mm256_set1_epi8((char)value_offset(kind)));
            dw[i] = _mm256_set1_ps(block_scale(wr[i] + b * bb));
        }
        for (int j = 0; j < rn; j++) {
            __m256i xq = _mm256_loadu_si256((const __m256i *)(xa[j].qs + b * QK));
            __m256 dx = _mm256_set1_ps(xa[j].d[b]);
            for (int i = 0; i < rm; i++) {
                acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_i8(wv[i], xq)), _mm256_mul_ps(dw[i], dx), acc[i][j]);
                if (has_min(kind)) acc_min[i][j] += block_min(wr[i] + b * bb) * xa[j].dsum[b];
            }
        }
    }
    for (int i = 0; i < rm; i++)
        for (int j = 0; j < rn; j++)
            out[(token + j) * ldo + (row + i - row_begin)] = hsum_f32x8(acc[i][j]) + acc_min[i][j];
}

INLINE void matmul_by_rows(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                           int64_t row_begin, int64_t row_end, int64_t cols, block_kind kind) {
    int64_t r = row_begin;
    for (; r + RM <= row_end; r += RM) {
        int64_t t = 0;
        for (; t + RN <= n; t += RN) row_tile(out, ldo, w, x, ldx, r, t, row_begin, cols, kind, RM, RN);
        for (; t < n; t++) row_tile(out, ldo, w, x, ldx, r, t, row_begin, cols, kind, RM, 1);
    }
    for (; r < row_end; r++)
        for (int64_t t = 0; t < n; t++) row_tile(out, ldo, w, x, ldx, r, t, row_begin, cols, kind, 1, 1);
}

/* ---------------------------------------------------------------------------------------------------- */
/* a batch, eight rows at a time: the rows in the vector lanes
 *
 * The row tiles above put 32 values of one row in a vector, so every block costs a scale multiply and a sum
 * across lanes per row and token. Here a group of eight rows is first repacked (into the caller's scratch
 * buffer, once for all the tokens) so that a vector holds four consecutive values of each of the eight rows,
 * one row per 32-bit lane. A dot-product step against four bytes of a token, broadcast to all lanes, then
 * adds to all eight rows' sums at once; after the block's eight such steps the eight rows' scales (and mins)
 * apply with one vector multiply. The weights are repacked in block_values' form, Q8_0's as unsigned bytes
 * value + 128, since the step multiplies unsigned by signed bytes; offset * (the token block's sum) comes off
 * once per block. Without VNNI the step's 16-bit pair sums would overflow for Q8_0's 0..255: there, Q8_0
 * batches take the row tiles; IQ4_NL's signed levels there move their signs onto the token's bytes (dot_i8's
 * trick, the absolute values taken once per group for all the tokens).
 */

#ifdef __AVX512VNNI__
enum { RN8 = 12 }; /* tokens per pass over a packed group */
#else
enum { RN8 = 4 };
#endif

/* Per block of a packed group: eight groups of 32 bytes (four values x eight rows), then the eight rows'
   scales as f32, then (Q4_1, Q5_1) their mins. */
INLINE size_t packed_block_bytes(block_kind kind) { return 8 * QK + (has_min(kind) ? 16 : 8) * sizeof(float); }

/* A packed group of rows, or the small-batch path's SMALL_N tokens in lanes and one row's kept weights (the
   smaller, but said here). The K-quants' small batches (kernels_x86_kquants.c) keep a row's unpacked
   super-blocks here, in at most 8 bytes per value: SMALL_N * cols covers them. */
size_t X86(matmul_scratch_bytes)(int64_t cols) {
    size_t packed = (size_t)(cols / QK) * packed_block_bytes(KIND_Q4_1);
    size_t small = (size_t)(SMALL_N * cols) + (size_t)(cols / (8 * QK)) * KEPT_GROUP_BYTES;
    return packed > small ? packed : small;
}

/* What the packed values exceed the real ones by. */
INLINE int packed_offset(block_kind kind) { return kind == KIND_Q8_0 ? 128 : value_offset(kind); }

/* Rows [row, row + 8) of w into the packed layout at dst. */
INLINE void repack8(uint8_t *dst, const void *w, int64_t row, int64_t nb, block_kind kind) {
    size_t bb = block_bytes(kind), row_bytes = (size_t)nb * bb;
    for (int64_t b = 0; b < nb; b++, dst += packed_block_bytes(kind)) {
        __m256i v[8];
        float d[8], m[8];
        for (int r = 0; r < 8; r++) {
            const char *block = (const char *)w + (size_t)(row + r) * row_bytes + (size_t)b * bb;
            d[r] = block_scale(block);
            if (has_min(kind)) m[r] = block_min(block);
            v[r] = block_values(block, kind);
            if (kind == KIND_Q8_0) v[r] = _mm256_xor_si256(v[r], _mm256_set1_epi8((char)0x80)); /* + 128 */
        }
        transpose8x8_i32(v);
        for (int g = 0; g < 8; g++) _mm256_storeu_si256((__m256i *)(dst + g * 32), v[g]);
        memcpy(dst + 8 * QK, d, sizeof d);
        if (has_min(kind)) memcpy(dst + 8 * QK + sizeof d, m, sizeof m);
    }
}

/* out[token + j][row_out .. row_out + 8) for j < rn from a packed eight-row group. */
INLINE void tile8(float *out, int64_t ldo, const uint8_t *packed, const void *x, size_t ldx, int64_t token,
                  int64_t row_out, int64_t nb, block_kind kind, int rn) {
    /* signed packed values: IQ4_NL without VNNI (Q8_0 without VNNI takes the row tiles) */
    const int is_signed = kind != KIND_Q8_0 && signed_values(kind);
    const float offset = (float)packed_offset(kind);
    q8_act xa[RN8];
    __m256 acc[RN8];
    for (int j = 0; j < rn; j++) {
        xa[j] = q8_act_view((const char *)x + (size_t)(token + j) * ldx, nb * QK);
        acc[j] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = packed + b * packed_block_bytes(kind);
        __m256i s[RN8];
        for (int j = 0; j < rn; j++) s[j] = _mm256_setzero_si256();
        for (int g = 0; g < 8; g++) {
            __m256i wv = _mm256_loadu_si256((const __m256i *)(p + g * 32));
            __m256i wabs = is_signed ? _mm256_abs_epi8(wv) : wv;
            for (int j = 0; j < rn; j++) {
                int32_t four;
                memcpy(&four, xa[j].qs + b * QK + g * 4, sizeof four);
                __m256i xv = _mm256_set1_epi32(four);
                s[j] = dot4_u8i8(s[j], wabs, is_signed ? _mm256_sign_epi8(xv, wv) : xv);
            }
        }
        const float *dw_m = (const float *)(p + 8 * QK); /* the eight scales, then the eight mins */
        __m256 dw = _mm256_loadu_ps(dw_m);
        for (int j = 0; j < rn; j++) {
            __m256 dot = _mm256_mul_ps(_mm256_set1_ps(xa[j].d[b]), _mm256_cvtepi32_ps(s[j]));
            if (offset != 0.0f) dot = _mm256_sub_ps(dot, _mm256_set1_ps(offset * xa[j].dsum[b]));
            acc[j] = _mm256_fmadd_ps(dw, dot, acc[j]);
            if (has_min(kind)) /* + m * dsum */
                acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(dw_m + 8), _mm256_set1_ps(xa[j].dsum[b]), acc[j]);
        }
    }
    for (int j = 0; j < rn; j++) _mm256_storeu_ps(out + (token + j) * ldo + row_out, acc[j]);
}

/* Eight rows at a time (repacked once, then run past all n tokens, RN8 at a time); the last rows % 8 by
   the row tiles. */
INLINE void matmul_by_eight_rows(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                                 int64_t row_begin, int64_t row_end, int64_t cols, void *scratch, block_kind kind) {
    int64_t nb = cols / QK, r = row_begin;
    for (; r + 8 <= row_end; r += 8) {
        repack8(scratch, w, r, nb, kind);
        int64_t t = 0;
        for (; t + RN8 <= n; t += RN8) tile8(out, ldo, scratch, x, ldx, t, r - row_begin, nb, kind, RN8);
        for (; t < n; t++) tile8(out, ldo, scratch, x, ldx, t, r - row_begin, nb, kind, 1);
    }
    matmul_by_rows(out + (r - row_begin), ldo, w, x, ldx, n, r, row_end, cols, kind);
}

void X86(matmul_q8_0)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    if (n <= SMALL_N) {
        matmul_small(out, ldo, w, x, ldx, n, row_begin, row_end, cols, scratch, KIND_Q8_0);
        return;
    }
#ifdef __AVX512VNNI__
    matmul_by_eight_rows(out, ldo, w, x, ldx, n, row_begin, row_end, cols, scratch, KIND_Q8_0);
#else
    (void)scratch;
    matmul_by_rows(out, ldo, w, x, ldx, n, row_begin, row_end, cols, KIND_Q8_0);
#endif
}

void X86(matmul_q4_0)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    if (n <= SMALL_N) {
        matmul_small(out, ldo, w, x, ldx, n, row_begin, row_end, cols, scratch, KIND_Q4_0);
        return;
    }
    matmul_by_eight_rows(out, ldo, w, x, ldx, n, row_begin, row_end, cols, scratch, KIND_Q4_0);
}

void X86(matmul_q4_1)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    if (n <= SMALL_N) {
        matmul_small(out, ldo, w, x, ldx, n, row_begin, row_end, cols, scratch, KIND_Q4_1);
        return;
    }
    matmul_by_eight_rows(out, ldo, w, x, ldx, n, row_begin, row_end, cols, scratch, KIND_Q4_1);
}

void X86(matmul_q5_0)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    if (n <= SMALL_N) {
        matmul_small(out, ldo, w, x, ldx, n, row_begin, row_end, cols, scratch, KIND_Q5_0);
        return;
    }
    matmul_by_eight_rows(out, ldo, w, x, ldx, n, row_begin, row_end, cols, scratch, KIND_Q5_0);
}

void X86(matmul_q5_1)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    if (n <= SMALL_N) {
        matmul_small(out, ldo, w, x, ldx, n, row_begin, row_end, cols, scratch, KIND_Q5_1);
        return;
    }
    matmul_by_eight_rows(out, ldo, w, x, ldx, n, row_begin, row_end, cols, scratch, KIND_Q5_1);
}

void X86(matmul_iq4_nl)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                        int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    if (n <= SMALL_N) {
        matmul_small(out, ldo, w, x, ldx, n, row_begin, row_end, cols, scratch, KIND_IQ4_NL);
        return;
    }
    matmul_by_eight_rows(out, ldo, w, x, ldx, n, row_begin, row_end, cols, scratch, KIND_IQ4_NL);
}
