/*
 * kernels_x86_kquants_low.c: Q2_K, Q3_K and IQ4_XS against 256-value activations (LLM_ACT_Q8K), for one x86
 * level (kernels_x86.h). The scalar references and the layouts' story are in kernels_scalar.c.
 *
 * Every product first spells a weight super-block out into vectors (unpack below): its 256 values as bytes,
 * eight vectors of 32, and its sub-block scales as 16-bit lanes lined up with the pair sums of those bytes.
 * The dot product with a token is then, per 32 values, one multiply-add of bytes into 16-bit pair sums
 * (maddubs: unsigned weight bytes times the token's signed bytes) and one multiply-add of those pair sums by
 * the scales into 32-bit sums (madd; with VNNI, vpdpwssd does it and the accumulation in one). The unsigned
 * bytes are the stored values: Q2_K's 0..3, Q3_K's 0..7 (value + 4). What the stored values add (Q2_K's
 * mins, Q3_K's 4) comes off once per super-block through the token's sums per 16 values (bsums). IQ4_XS's
 * values are signed (the table), so its signs move onto the token's bytes as in dot_i8.
 *
 * A batch shares the unpacking among tokens: with VNNI sixteen rows' super-blocks are laid out with the
 * rows in the lanes of 512-bit vectors and their scales folded into the bytes where they fit (pack16), then
 * run past all the tokens (tile16); without VNNI (and for the last rows % 16) a row's super-block is
 * unpacked once for RN tokens (row_tile). The products one token at a time (matvec) read the blocks in place.
 */
#include <math.h>

#include "kernels_x86.h"

typedef enum { KIND_Q2_K, KIND_Q3_K, KIND_IQ4_XS } low_kind;

static size_t block_bytes(low_kind kind) {
    return kind == KIND_Q2_K ? sizeof(block_q2_K) : kind == KIND_Q3_K ? sizeof(block_q3_K) : sizeof(block_iq4_xs);
}

/* ---------------------------------------------------------------------------------------------------- */
/* a super-block spelled out */

typedef struct {
    __m256i q[8];  /* values 32 k .. 32 k + 31 as bytes: Q2_K 0..3, Q3_K 0..7 (value + 4), IQ4_XS signed */
    __m256i sc[8]; /* int16 scales for the 16 pair sums of q[k]: lanes 0-7 (values 32 k .. 32 k + 15) carry
                      the scale of sub-block 2 k, lanes 8-15 that of sub-block 2 k + 1 */
    __m256i bsum_weights; /* int16 per 16 values, what the token's bsums are multiplied by and taken off:
                             Q2_K's mins (times dmin), Q3_K's scales times 4 (times d); IQ4_XS: unused */
    float d, dmin;
} superblock;

/* sc[k] from the 16 int16 sub-block scales of `scales` in order (s0..s7 | s8..s15): each 128-bit lane picks
   its scale with a byte shuffle, from a copy of the scales' half that holds it. */
INLINE void spread_scales(__m256i scales, __m256i sc[8]) {
    __m256i halves[2] = {_mm256_permute4x64_epi64(scales, 0x44), _mm256_permute4x64_epi64(scales, 0xee)};
    for (int k = 0; k < 8; k++) {
        int s = 4 * (k % 4); /* byte offset of scale 2 k within its half; 2 k + 1 follows */
        __m256i pick = _mm256_setr_epi8(s, s + 1, s, s + 1, s, s + 1, s, s + 1, s, s + 1, s, s + 1, s, s + 1, s, s + 1,
                                        s + 2, s + 3, s + 2, s + 3, s + 2, s + 3, s + 2, s + 3, s + 2, s + 3, s + 2,
                                        s + 3, s + 2, s + 3, s + 2, s + 3);
        sc[k] = _mm256_shuffle_epi8(halves[k / 4], pick);
    }
}

INLINE float fp16(uint16_t h) { return _cvtsh_ss(h); }

/* Q2_K: value 128 n + 32 j + l is bits 2 j, 2 j + 1 of qs[32 n + l]; scale and min in the nibbles of
   scales[i]. */
INLINE void unpack_q2_K(const block_q2_K *b, superblock *u) {
    const __m256i three = _mm256_set1_epi8(3);
    for (int n = 0; n < 2; n++) {
        __m256i bits = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * n));
        for (int j = 0; j < 4; j++) u->q[4 * n + j] = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * j), three);
    }
    __m128i packed = _mm_loadu_si128((const __m128i *)b->scales), low4 = _mm_set1_epi8(15);
    spread_scales(_mm256_cvtepu8_epi16(_mm_and_si128(packed, low4)), u->sc);
    u->bsum_weights = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), low4));
    u->d = fp16(b->d);
    u->dmin = fp16(b->dmin);
}

/* Q3_K: the low two bits as Q2_K's, the third (stored value + 4 has it set when the value is >= 0) is bit
   4 n + j of hmask[l], moved to bit 2. The 16 six-bit scales: the four bytes of scales i .. i + 3 are built
   at once in a 32-bit word (low nibbles from scales[0..7], top bits from scales[8..11]). */
INLINE void unpack_q3_K(const block_q3_K *b, superblock *u) {
    const __m256i three = _mm256_set1_epi8(3), four = _mm256_set1_epi8(4);
    __m256i high = _mm256_loadu_si256((const __m256i *)b->hmask);
    for (int n = 0; n < 2; n++) {
        __m256i bits = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * n));
        for (int j = 0; j < 4; j++) {
            int bit = 4 * n + j; /* to bit 2 of each byte: a 16-bit shift, masked, moves each byte's own bit */
            __m256i h = bit >= 2 ? _mm256_srli_epi16(high, bit - 2) : _mm256_slli_epi16(high, 2 - bit);
            u->q[4 * n + j] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 2 * j), three),
                                              _mm256_and_si256(h, four));
        }
    }
    uint32_t a[3], s[4];
    memcpy(a, b->scales, sizeof a);
    for (int g = 0; g < 4; g++) /* scales 4 g .. 4 g + 3: nibble g / 2 of a[g % 2], top bits at 2 g of a[2] */
        s[g] = ((a[g % 2] >> (4 * (g / 2))) & 0x0f0f0f0f) | ((a[2] >> (2 * g)) & 0x03030303) << 4;
    __m128i stored = _mm_setr_epi32((int)s[0], (int)s[1], (int)s[2], (int)s[3]);
    __m256i scales = _mm256_cvtepi8_epi16(_mm_sub_epi8(stored, _mm_set1_epi8(32)));
    spread_scales(scales, u->sc);
    u->bsum_weights = _mm256_slli_epi16(scales, 2);
    u->d = fp16(b->d);
    u->dmin = 0.0f;
}

/* IQ4_XS: sub-block i is an IQ4_NL block over qs[16 i ..], its nibbles looked up in the table with a byte
   shuffle; one six-bit scale per 32 values, so both halves of sc[i] carry scale i. */
INLINE void unpack_iq4_xs(const block_iq4_xs *b, superblock *u) {
    const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)llm_iq4nl_values));
    for (int i = 0; i < 8; i++) {
        u->q[i] = _mm256_shuffle_epi8(table, unpack_q4_0(b->qs + 16 * i));
        int low = (b->scales_l[i / 2] >> (4 * (i % 2))) & 15, high = (b->scales_h >> (2 * i)) & 3;
        u->sc[i] = _mm256_set1_epi16((int16_t)((low | high << 4) - 32));
    }
    u->bsum_weights = _mm256_setzero_si256();
    u->d = fp16(b->d);
    u->dmin = 0.0f;
}

INLINE void unpack(const void *block, superblock *u, low_kind kind) {
    if (kind == KIND_Q2_K) unpack_q2_K(block, u);
    else if (kind == KIND_Q3_K) unpack_q3_K(block, u);
    else unpack_iq4_xs(block, u);
}

/* acc + the products of adjacent int16 lanes, summed in pairs into int32 lanes */
INLINE __m256i madd16(__m256i acc, __m256i a, __m256i b) {
#ifdef __AVX512VNNI__
    return _mm256_dpwssd_epi32(acc, a, b);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}

/* sum over sub-blocks of scale * sum(stored q_w * q_x), less for Q3_K 4 * scale * sum(q_x): eight int32
   lanes. Bounds: a pair sum is at most 2 * 127 * 127 (IQ4_XS), under the 16 bits maddubs saturates at. */
INLINE __m256i superblock_dot(const superblock *u, const int8_t *x, const int16_t *bsums, low_kind kind) {
    __m256i acc[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()}; /* two chains: half the latency */
    for (int k = 0; k < 8; k++) {
        __m256i xv = _mm256_loadu_si256((const __m256i *)(x + 32 * k)), pairs;
        if (kind == KIND_IQ4_XS) /* |q_w| times q_x with q_w's sign */
            pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(u->q[k]), _mm256_sign_epi8(xv, u->q[k]));
        else pairs = _mm256_maddubs_epi16(u->q[k], xv);
        acc[k % 2] = madd16(acc[k % 2], pairs, u->sc[k]);
    }
    __m256i sum = _mm256_add_epi32(acc[0], acc[1]);
    if (kind == KIND_Q3_K)
        sum = _mm256_sub_epi32(sum, _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)bsums), u->bsum_weights));
    return sum;
}

/* acc + d_x * (the super-block's dot product with one token), in eight float lanes */
INLINE __m256 superblock_acc(__m256 acc, const superblock *u, const int8_t *x, const int16_t *bsums, float dx,
                             low_kind kind) {
    __m256i dot = superblock_dot(u, x, bsums, kind);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(u->d * dx), acc);
    if (kind == KIND_Q2_K) { /* - dmin * sum of min * bsum */
        __m256i mins = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)bsums), u->bsum_weights);
        acc = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mins), _mm256_set1_ps(u->dmin * dx), acc);
    }
    return acc;
}

/* ---------------------------------------------------------------------------------------------------- */
/* one token */

INLINE void matvec(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols,
                   low_kind kind) {
    q8k_act x = q8k_act_view(xq, cols);
    int64_t nb = cols / QK_K;
    size_t bb = block_bytes(kind);
    for (int64_t r = row_begin; r < row_end; r++) {
        const char *row = (const char *)w + (size_t)r * nb * bb;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            superblock u;
            unpack(row + b * bb, &u, kind);
            acc = superblock_acc(acc, &u, x.qs + b * QK_K, x.bsums + b * 16, x.d[b], kind);
        }
        out[r - row_begin] = hsum_f32x8(acc);
    }
}

void X86(matvec_q2_K)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols) {
    matvec(out, w, xq, row_begin, row_end, cols, KIND_Q2_K);
}

void X86(matvec_q3_K)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols) {
    matvec(out, w, xq, row_begin, row_end, cols, KIND_Q3_K);
}

void X86(matvec_iq4_xs)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end,
                        int64_t cols) {
    matvec(out, w, xq, row_begin, row_end, cols, KIND_IQ4_XS);
}

/* ---------------------------------------------------------------------------------------------------- */
/* a batch, one row at a time: a row's super-block is unpacked once for RN tokens (without VNNI, small
   batches, and the last rows % 16 of the sixteen-row kernel below), each token with matvec's arithmetic
 *
 * Batched decoding (one token per sequence, a few sequences) multiplies each weight matrix by n = 2..8
 * tokens, where the sixteen-row kernel, which packs the rows per call, costs about as much per token as
 * matvec; the row tiles cost less, and give every token bit for bit matvec's result (kernels_x86_int8.c's
 * small-batch path says why that matters): with VNNI, batches of up to small_n tokens take them. */

enum { RN = 8 };

/* out[token + j][row - row_begin] for j < rn */
INLINE void row_tile(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t row, int64_t token,
                     int64_t row_begin, int64_t cols, low_kind kind, int rn) {
    int64_t nb = cols / QK_K;
    size_t bb = block_bytes(kind);
    const char *wr = (const char *)w + (size_t)row * nb * bb;
    q8k_act xa[RN];
    __m256 acc[RN];
    for (int j = 0; j < rn; j++) {
        xa[j] = q8k_act_view((const char *)x + (size_t)(token + j) * ldx, cols);
        acc[j] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b++) {
        superblock u;
        unpack(wr + b * bb, &u, kind);
        for (int j = 0; j < rn; j++)
            acc[j] = superblock_acc(acc[j], &u, xa[j].qs + b * QK_K, xa[j].bsums + b * 16, xa[j].d[b], kind);
    }
    for (int j = 0; j < rn; j++) out[(token + j) * ldo + (row - row_begin)] = hsum_f32x8(acc[j]);
}

INLINE void matmul_by_rows(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                           int64_t row_begin, int64_t row_end, int64_t cols, low_kind kind) {
    for (int64_t r = row_begin; r < row_end; r++) {
        int64_t t = 0;
        for (; t + RN <= n; t += RN) row_tile(out, ldo, w, x, ldx, r, t, row_begin, cols, kind, RN);
        switch (n - t) { /* the last n % RN tokens together too, their count a constant */
#define TAIL_CASE(k) \
    case k: row_tile(out, ldo, w, x, ldx, r, t, row_begin, cols, kind, k); break;
            TAIL_CASE(1) TAIL_CASE(2) TAIL_CASE(3) TAIL_CASE(4) TAIL_CASE(5) TAIL_CASE(6) TAIL_CASE(7)
#undef TAIL_CASE
        }
    }
}

#ifdef __AVX512VNNI__
/* ---------------------------------------------------------------------------------------------------- */
/* a batch, sixteen rows at a time (VNNI): the rows in the lanes of 512-bit vectors
 *
 * As Q4_0's eight-row kernel (kernels_x86_int8.c): the same super-block of sixteen rows is laid out (on the
 * stack) so that a vector holds four consecutive values of each row, one row per 32-bit lane, and one
 * vpdpbusd against four bytes of a token, broadcast, adds to all sixteen rows' sums. The bytes must be
 * unsigned, and the sub-block scales should not cost a multiply per sub-block, so where they fit the
 * values are stored already multiplied by their scale:
 *   Q2_K:   scale * q, 0..45;
 *   Q3_K:   scale * value + 124, 0..252 (scale -32..31 times value -4..3 is -124..128), and 124 times the
 *           sum of the token's 256 values comes off once;
 *   IQ4_XS: value + 128, 1..241 (scale times value needs 13 bits): per sub-block of 32 values the sum
 *           starts at -128 times the token's sum over it, and is multiplied by the rows' scales.
 * Q2_K's mins multiply the token's bsums, two sub-blocks at a time (vpdpwssd). The super-block's sums then
 * scale by d_w d_x into per-token sums over the super-blocks: nothing needs the scratch buffer, and a row
 * group is read from memory once for all the tokens. 512-bit vectors do the work of two 256-bit ones in
 * one instruction, which halves the broadcasts and the instructions the core must decode.
 * Without VNNI the 16-bit pair sums of maddubs would overflow for Q3_K's and IQ4_XS's bytes and save
 * nothing for Q2_K's, so that level takes the row tiles.
 */

enum { RN16 = 8 }; /* tokens per pass over a packed super-block: 8 accumulators, of 32 vector registers */

typedef struct {
    __m512i v[64];   /* group g: values 4 g .. 4 g + 3 of each row, row r in 32-bit lane r (bytes as above) */
    __m512i mins[8]; /* Q2_K: lane r = the int16 pair (min 2 k, min 2 k + 1) of row r */
    __m512i ls[8];   /* IQ4_XS: lane r = scale of sub-block i of row r (int32) */
    __m512  d, dmin; /* lane r: row r's */
} packed16;

/* The bytes q times the 16-bit lanes of sc (each lane's scale for both its bytes), modulo 256. */
INLINE __m256i mul_bytes(__m256i q, __m256i sc) {
    __m256i even = _mm256_mullo_epi16(q, sc), odd = _mm256_mullo_epi16(_mm256_srli_epi16(q, 8), sc);
    return _mm256_or_si256(_mm256_and_si256(even, _mm256_set1_epi16(0xff)), _mm256_slli_epi16(odd, 8));
}

INLINE __m512i join(__m256i low, __m256i high) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
}

/* Super-block b of rows [row, row + 16) into p: each half of eight rows transposed as 256-bit vectors,
   the halves joined. */
INLINE void pack16(packed16 *p, const void *w, int64_t row, int64_t b, int64_t nb, low_kind kind) {
    size_t bb = block_bytes(kind);
    __m256i bytes[2][8][8], mins[2][8]; /* [half][k][r]: values 32 k .. 32 k + 31 of row 8 half + r */
    float d[16], dmin[16];
    int32_t ls[8][16];
    for (int r = 0; r < 16; r++) {
        superblock u;
        unpack((const char *)w + ((size_t)(row + r) * nb + b) * bb, &u, kind);
        for (int k = 0; k < 8; k++) {
            __m256i *out = &bytes[r / 8][k][r % 8];
            if (kind == KIND_Q2_K) *out = mul_bytes(u.q[k], u.sc[k]);
            else if (kind == KIND_Q3_K)
                *out = _mm256_add_epi8(mul_bytes(_mm256_sub_epi8(u.q[k], _mm256_set1_epi8(4)), u.sc[k]),
                                       _mm256_set1_epi8(124));
            else {
                *out = _mm256_xor_si256(u.q[k], _mm256_set1_epi8((char)0x80)); /* + 128 */
                ls[k][r] = (int16_t)_mm256_extract_epi16(u.sc[k], 0);
            }
        }
        mins[r / 8][r % 8] = u.bsum_weights;
        d[r] = u.d;
        dmin[r] = u.dmin;
    }
    for (int k = 0; k < 8; k++) {
        transpose8x8_i32(bytes[0][k]);
        transpose8x8_i32(bytes[1][k]);
        for (int g = 0; g < 8; g++) p->v[8 * k + g] = join(bytes[0][k][g], bytes[1][k][g]);
    }
    if (kind == KIND_Q2_K) {
        transpose8x8_i32(mins[0]);
        transpose8x8_i32(mins[1]);
        for (int k = 0; k < 8; k++) p->mins[k] = join(mins[0][k], mins[1][k]);
    }
    if (kind == KIND_IQ4_XS)
        for (int i = 0; i < 8; i++) p->ls[i] = _mm512_loadu_si512(ls[i]);
    p->d = _mm512_loadu_ps(d);
    p->dmin = _mm512_loadu_ps(dmin);
}

INLINE __m512i bcast4(const void *p) {
    int32_t four;
    memcpy(&four, p, sizeof four);
    return _mm512_set1_epi32(four);
}

/* sums[j] (sixteen rows) += the products of the packed super-block b with tokens token + j, j < rn; the
   next n_next tokens' values are fetched meanwhile (a prompt's activations are more than the L2 cache holds) */
INLINE void tile16(__m512 *sums, const packed16 *p, const void *x, size_t ldx, int64_t token, int64_t b,
                   int64_t cols, low_kind kind, int rn, int64_t n_next) {
    q8k_act xa[RN16];
    /* the tokens' values of super-block b, copied side by side: one base address for all the broadcasts
       below (eight pointers would not stay in registers) */
    _Alignas(64) int32_t xq[RN16][QK_K / 4]; /* four bytes a word: the broadcasts' operands */
    __m512i acc[RN16];
    for (int j = 0; j < rn; j++) {
        xa[j] = q8k_act_view((const char *)x + (size_t)(token + j) * ldx, cols);
        memcpy(xq[j], xa[j].qs + b * QK_K, QK_K);
    }
    for (int64_t j = 0; j < n_next; j++) {
        const char *next = (const char *)x + (size_t)(token + rn + j) * ldx + b * QK_K;
        for (int line = 0; line < QK_K; line += 64) _mm_prefetch(next + line, _MM_HINT_T0);
    }
    if (kind == KIND_IQ4_XS) {
        __m512i sum[RN16];
        for (int j = 0; j < rn; j++) sum[j] = _mm512_setzero_si512();
        for (int i = 0; i < 8; i++) {
            for (int j = 0; j < rn; j++) {
                const int16_t *bs = xa[j].bsums + b * 16 + 2 * i;
                acc[j] = _mm512_set1_epi32(-128 * (bs[0] + bs[1]));
            }
#pragma GCC unroll 8
            for (int g = 8 * i; g < 8 * i + 8; g++) {
                __m512i wv = p->v[g];
                for (int j = 0; j < rn; j++) acc[j] = _mm512_dpbusd_epi32(acc[j], wv, _mm512_set1_epi32(xq[j][g]));
            }
            for (int j = 0; j < rn; j++) sum[j] = _mm512_add_epi32(sum[j], _mm512_mullo_epi32(acc[j], p->ls[i]));
        }
        for (int j = 0; j < rn; j++) acc[j] = sum[j];
    } else {
        for (int j = 0; j < rn; j++) {
            int32_t start = 0;
            if (kind == KIND_Q3_K) { /* the 124 offset: 124 times the sum of the token's 256 values */
                __m256i bs = _mm256_loadu_si256((const __m256i *)(xa[j].bsums + b * 16));
                start = -124 * hsum_i32x8(_mm256_madd_epi16(bs, _mm256_set1_epi16(1)));
            }
            acc[j] = _mm512_set1_epi32(start);
        }
#pragma GCC unroll 4
        for (int g = 0; g < 64; g++) {
            __m512i wv = p->v[g];
            for (int j = 0; j < rn; j++) acc[j] = _mm512_dpbusd_epi32(acc[j], wv, _mm512_set1_epi32(xq[j][g]));
        }
    }
    for (int j = 0; j < rn; j++) {
        __m512 dx = _mm512_set1_ps(xa[j].d[b]);
        __m512 sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[j]), _mm512_mul_ps(p->d, dx), sums[j]);
        if (kind == KIND_Q2_K) {
            __m512i m = _mm512_setzero_si512();
            for (int k = 0; k < 8; k++) m = _mm512_dpwssd_epi32(m, p->mins[k], bcast4(xa[j].bsums + b * 16 + 2 * k));
            sum = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(m), _mm512_mul_ps(p->dmin, dx), sum);
        }
        sums[j] = sum;
    }
}

enum { TOKEN_BLOCK = 512 }; /* tokens whose sums a row group keeps (32 KiB on the stack) */

/* Sixteen rows at a time, super-block by super-block, each packed once and run past up to TOKEN_BLOCK
   tokens, whose sums stay in a small buffer: the output's rows, ldo floats apart, would all fall in the
   same few sets of the L1 cache. The last rows % 16 by the row tiles. */
INLINE void matmul16(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                     int64_t row_begin, int64_t row_end, int64_t cols, low_kind kind) {
    int64_t nb = cols / QK_K, r = row_begin;
    __m512 sums[TOKEN_BLOCK];
    for (; r + 16 <= row_end; r += 16)
        for (int64_t t0 = 0; t0 < n; t0 += TOKEN_BLOCK) {
            int64_t nt = n - t0 < TOKEN_BLOCK ? n - t0 : TOKEN_BLOCK;
            for (int64_t t = 0; t < nt; t++) sums[t] = _mm512_setzero_ps();
            for (int64_t b = 0; b < nb; b++) {
                packed16 p;
                pack16(&p, w, r, b, nb, kind);
                int64_t t = 0;
                for (; t + RN16 <= nt; t += RN16) {
                    int64_t n_next = nt - (t + RN16) < RN16 ? nt - (t + RN16) : RN16;
                    tile16(sums + t, &p, x, ldx, t0 + t, b, cols, kind, RN16, n_next);
                }
                for (; t < nt; t++) tile16(sums + t, &p, x, ldx, t0 + t, b, cols, kind, 1, 0);
            }
            for (int64_t t = 0; t < nt; t++) _mm512_storeu_ps(out + (t0 + t) * ldo + (r - row_begin), sums[t]);
        }
    matmul_by_rows(out + (r - row_begin), ldo, w, x, ldx, n, r, row_end, cols, kind);
}

/* matmul16 out of line, per type: inlined beside the small batches' row tiles it ran 15% slower (IQ4_XS, on
   Zen 4). */
#define MATMUL16(name, KIND)                                                                                       \
    static __attribute__((noinline)) void matmul16_##name(float *out, int64_t ldo, const void *w, const void *x, \
                                                           size_t ldx, int64_t n, int64_t row_begin,               \
                                                           int64_t row_end, int64_t cols) {                        \
        matmul16(out, ldo, w, x, ldx, n, row_begin, row_end, cols, KIND);                                          \
    }
MATMUL16(q2_K, KIND_Q2_K)
MATMUL16(q3_K, KIND_Q3_K)
MATMUL16(iq4_xs, KIND_IQ4_XS)
#undef MATMUL16

/* The most tokens the row tiles take with VNNI: on Zen 4 they beat the sixteen-row kernel up to 4 tokens
   (Q2_K, Q3_K: twice as fast at 2 to 4; IQ4_XS up to 3, 1.5x) and lose to it at 8 (by 15% for Q2_K and
   Q3_K, 2x for IQ4_XS). */
INLINE int small_n(low_kind kind) { return kind == KIND_IQ4_XS ? 3 : 4; }

INLINE void matmul(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n, int64_t row_begin,
                   int64_t row_end, int64_t cols, low_kind kind) {
    if (n <= small_n(kind)) matmul_by_rows(out, ldo, w, x, ldx, n, row_begin, row_end, cols, kind);
    else if (kind == KIND_Q2_K) matmul16_q2_K(out, ldo, w, x, ldx, n, row_begin, row_end, cols);
    else if (kind == KIND_Q3_K) matmul16_q3_K(out, ldo, w, x, ldx, n, row_begin, row_end, cols);
    else matmul16_iq4_xs(out, ldo, w, x, ldx, n, row_begin, row_end, cols);
}
#else
#define matmul matmul_by_rows
#endif

void X86(matmul_q2_K)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    (void)scratch;
    matmul(out, ldo, w, x, ldx, n, row_begin, row_end, cols, KIND_Q2_K);
}

void X86(matmul_q3_K)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    (void)scratch;
    matmul(out, ldo, w, x, ldx, n, row_begin, row_end, cols, KIND_Q3_K);
}

void X86(matmul_iq4_xs)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                        int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    (void)scratch;
    matmul(out, ldo, w, x, ldx, n, row_begin, row_end, cols, KIND_IQ4_XS);
}
