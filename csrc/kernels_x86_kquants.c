/*
 * kernels_x86_kquants.c: the K-quants Q4_K, Q5_K and Q6_K against 256-value 8-bit activations
 * (LLM_ACT_Q8K), and that format's quantizer, for one x86 level (kernels_x86.h).
 *
 * A K-quant super-block holds 256 values in sub-blocks of 32 (Q4_K, Q5_K) or 16 (Q6_K), each with a small
 * integer scale under the block's fp16 d: x = d * sc * q - dmin * m (Q4_K, Q5_K: a 6-bit scale and min per
 * sub-block), x = d * sc * (q - 32) (Q6_K: a signed 8-bit scale). Every product first unpacks a super-block
 * into its 256 values as unsigned bytes (0..15, 0..31, 0..63) and, per 16 values, the integer scale and the
 * integer multiplier of the mins (Q4_K, Q5_K: the sub-block's min; Q6_K: its scale, times 32 * d). Then
 *   sum over values of x_w * x_a = d_a * (d * sum_v sc_v q_v q_a,v - dmin * sum_i mn_i bsum_i),
 * where bsum_i is the activation's sum of q over values 16 i .. 16 i + 15, computed once by the quantizer.
 * Both sums are exact integer arithmetic (unsigned weights times signed activations, the multiply-add
 * instructions' native form); floats enter once per super-block (one token: matvec) or once per sub-block
 * (a batch: matmul, where a vector holds many rows and their scales differ).
 */
#include <math.h>

#include "kernels_x86.h"

/* ---------------------------------------------------------------------------------------------------- */
/* the activations: per 256 values d = max|x| / 127, q = x * (127 / max|x|) rounded to nearest even, and
   the sums of q per 16; the same bytes as the scalar quantize_q8k_act */

void X86(quantize_q8k_act)(void *out, const float *x, int64_t cols) {
    q8k_act y = q8k_act_view(out, cols);
    const __m256 sign_bit = _mm256_set1_ps(-0.0f), zero = _mm256_setzero_ps();
    for (int64_t b = 0; b < cols / QK_K; b++, x += QK_K) {
        int8_t *q = y.qs + b * QK_K;
        int16_t *bsums = y.bsums + b * (QK_K / 16);
        /* max passes NaN over, so finiteness is looked for separately: v * 0 is 0 unless v is inf or NaN */
        __m256 amax = zero, probe = zero;
        for (int i = 0; i < QK_K; i += 8) {
            __m256 v = _mm256_loadu_ps(x + i);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_bit, v));
            probe = _mm256_add_ps(probe, _mm256_mul_ps(v, zero));
        }
        if (_mm256_movemask_ps(_mm256_cmp_ps(probe, probe, _CMP_UNORD_Q))) { /* as the scalar: NaN reaches out */
            memset(q, 0, QK_K);
            memset(bsums, 0, QK_K / 16 * sizeof(int16_t));
            y.d[b] = NAN;
            continue;
        }
        __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(amax, 1), _mm256_castps256_ps128(amax));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        float max = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        __m256 id = _mm256_set1_ps(llm_act_inv_scale(max));
        for (int c = 0; c < QK_K; c += 32) {
            __m256i i[4];
            for (int k = 0; k < 4; k++)
                i[k] = _mm256_cvtps_epi32(
                    _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + c + 8 * k), id), _MM_FROUND_TO_NEAREST_INT));
            /* narrow 32 -> 16 -> 8 bits; the packs interleave 128-bit lanes, which the permutation undoes */
            __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
            packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(q + c), packed);
            /* the sums of values c .. c + 15 (i[0], i[1]) and c + 16 .. c + 31 (i[2], i[3]) */
            __m256i pairs = _mm256_hadd_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
            __m128i s = _mm_add_epi32(_mm256_castsi256_si128(pairs), _mm256_extracti128_si256(pairs, 1));
            s = _mm_hadd_epi32(s, s);
            bsums[c / 16] = (int16_t)_mm_cvtsi128_si32(s);
            bsums[c / 16 + 1] = (int16_t)_mm_extract_epi32(s, 1);
        }
        y.d[b] = max / 127.0f;
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* the super-blocks */

typedef enum { KIND_Q4_K, KIND_Q5_K, KIND_Q6_K } kquant_kind;

static size_t kquant_block_bytes(kquant_kind kind) {
    return kind == KIND_Q4_K ? sizeof(block_q4_K) : kind == KIND_Q5_K ? sizeof(block_q5_K) : sizeof(block_q6_K);
}

/* A super-block unpacked: value v = d * sc[v / 16] * q[v] - dmin * mn[v / 16], with the sum over its 16
   values of mn * x_a taken from the activation's bsums. */
typedef struct {
    __m256i q[8]; /* the 256 values as unsigned bytes, 32 per vector, in order */
    __m256i sc;   /* 16 int16: the scale of each 16 values */
    __m256i mn;   /* 16 int16: the min multiplier of each 16 values */
    float   d, dmin;
} ksuper;

INLINE float fp16(uint16_t h) { return _cvtsh_ss(h); }

/* Q4_K's and Q5_K's eight 6-bit scales (bytes 0-7) and mins (8-15) from their 12 packed bytes. Sub-blocks
   0-3 keep theirs in the low six bits of bytes 0-3 (scales) and 4-7 (mins); 4-7 have their low four bits in
   the nibbles of bytes 8-11 and their top two bits in the spare top bits of bytes 0-3 and 4-7. */
INLINE __m128i k4_scales_mins(const uint8_t *packed) {
#ifdef __AVX512VNNI__
    /* The same words in vector lanes: the scalar form's four GPR-to-vector inserts and eleven scalar steps
       cost Q4_K 5-8% of its one-token time on Zen 4. a[3] is the next field's (qs or qh), unused. */
    __m128i a = _mm_loadu_si128((const __m128i *)packed);
    __m128i p = _mm_shuffle_epi32(a, _MM_SHUFFLE(2, 1, 2, 0)); /* a0, a2, a1, a2 */
    __m128i q = _mm_shuffle_epi32(a, _MM_SHUFFLE(1, 1, 0, 0)); /* -, a0, -, a1 */
    __m128i lo = _mm_and_si128(_mm_srlv_epi32(p, _mm_setr_epi32(0, 0, 0, 4)),
                               _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
    return _mm_or_si128(lo, _mm_and_si128(_mm_srli_epi32(q, 2), _mm_setr_epi32(0, 0x30303030, 0, 0x30303030)));
#else
    uint32_t a[3];
    memcpy(a, packed, sizeof a);
    const uint32_t low6 = 0x3f3f3f3f, low4 = 0x0f0f0f0f, bits45 = 0x30303030;
    return _mm_setr_epi32((int)(a[0] & low6), (int)((a[2] & low4) | ((a[0] >> 2) & bits45)), (int)(a[1] & low6),
                          (int)(((a[2] >> 4) & low4) | ((a[1] >> 2) & bits45)));
#endif
}

/* The scale and min of each 16 values of a Q4_K or Q5_K super-block (each sub-block's twice). */
INLINE void k4_per16(ksuper *s, const uint8_t *packed) {
    __m128i sm = k4_scales_mins(packed);
    s->sc = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7)));
    s->mn = _mm256_cvtepu8_epi16(
        _mm_shuffle_epi8(sm, _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15)));
}

/* Q4_K: sub-blocks 2i and 2i + 1 are the low and high nibbles of qs[32 i .. 32 i + 31]. */
INLINE ksuper unpack_q4_K(const block_q4_K *b) {
    ksuper s;
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    for (int i = 0; i < 4; i++) {
        __m256i q = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * i));
        s.q[2 * i] = _mm256_and_si256(q, low4);
        s.q[2 * i + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
    }
    k4_per16(&s, b->scales);
    s.d = fp16(b->d);
    s.dmin = fp16(b->dmin);
    return s;
}

/* Q5_K: as Q4_K, plus bit j of qh[l] as the fifth bit (16) of value l of sub-block j. */
INLINE ksuper unpack_q5_K(const block_q5_K *b) {
    ksuper s;
    const __m256i low4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
    __m256i qh = _mm256_loadu_si256((const __m256i *)b->qh);
    for (int i = 0; i < 4; i++) {
        __m256i q = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * i));
        /* the 16-bit shifts move bits across bytes, which the masks then drop */
        __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * i), one), 4);
        __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * i + 1), one), 4);
        s.q[2 * i] = _mm256_or_si256(_mm256_and_si256(q, low4), h0);
        s.q[2 * i + 1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), low4), h1);
    }
    k4_per16(&s, b->scales);
    s.d = fp16(b->d);
    s.dmin = fp16(b->dmin);
    return s;
}

/* Q6_K: each 128 values take 64 bytes of ql and 32 of qh; their quarters are ql's low nibbles of bytes
   0-31 and 32-63, then the high nibbles, each with bits 0-1, 2-3, 4-5, 6-7 of qh as bits 4-5. The offset
   32 comes off through the bsums: mn = sc, dmin = 32 d (exact: a power of two). */
INLINE ksuper unpack_q6_K(const block_q6_K *b) {
    ksuper s;
    const __m256i low4 = _mm256_set1_epi8(0x0f), bits45 = _mm256_set1_epi8(0x30);
    for (int h = 0; h < 2; h++) {
        __m256i ql0 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h));
        __m256i ql1 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32));
        __m256i qh = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
        s.q[4 * h] = _mm256_or_si256(_mm256_and_si256(ql0, low4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), bits45));
        s.q[4 * h + 1] =
            _mm256_or_si256(_mm256_and_si256(ql1, low4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), bits45));
        s.q[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4), _mm256_and_si256(qh, bits45));
        s.q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                                         _mm256_and_si256(_mm256_srli_epi16(qh, 2), bits45));
    }
    s.sc = s.mn = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
    s.d = fp16(b->d);
    s.dmin = 32.0f * s.d;
    return s;
}

INLINE ksuper unpack(const void *block, kquant_kind kind) {
    if (kind == KIND_Q4_K) return unpack_q4_K(block);
    if (kind == KIND_Q5_K) return unpack_q5_K(block);
    return unpack_q6_K(block);
}

/* The int16 scales of values 32 k .. 32 k + 15 (in lanes 0-7) and 32 k + 16 .. 32 k + 31 (lanes 8-15), the
   lanes that the pair sums of those values land in. */
INLINE __m256i scales_of_32(__m256i sc, int k) {
    __m256i pair = _mm256_permutevar8x32_epi32(sc, _mm256_set1_epi32(k)); /* every 32 bits: sc[2k], sc[2k+1] */
    return _mm256_shuffle_epi8(pair, _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2,
                                                      3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3));
}

/* ---------------------------------------------------------------------------------------------------- */
/* one token: a row's super-blocks one after the other, as stored */

/* The int16 scales superblock_dot multiplies each 32 values' pair sums by. */
typedef struct {
    __m256i of32[8];
} kscales;

INLINE kscales scales_for_dot(const ksuper *s, kquant_kind kind) {
    kscales k32;
    int16_t sc[16];
    _mm256_storeu_si256((__m256i *)sc, s->sc);
    for (int k = 0; k < 8; k++) /* Q4_K's and Q5_K's scale is the same for all 32 values: a broadcast */
        k32.of32[k] = kind == KIND_Q6_K ? scales_of_32(s->sc, k) : _mm256_set1_epi16(sc[2 * k]);
    return k32;
}

/* sum over a super-block's values of sc * q_w * q_x, in eight int32 lanes. Two accumulators, so that two
   chains of multiply-adds are in flight. (512-bit steps of 64 values were slower on Zen 4 for Q4_K and Q5_K;
   Q6_K, which spends more on unpacking, has its own 512-bit form, q6_K_superblock_dot512.) */
INLINE __m256i superblock_dot(const ksuper *s, const kscales *k32, const int8_t *xb) {
    __m256i acc[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int k = 0; k < 8; k++)
        acc[k % 2] = dot_scaled_u8i8(acc[k % 2], s->q[k], _mm256_loadu_si256((const __m256i *)(xb + 32 * k)),
                                     k32->of32[k]);
    return _mm256_add_epi32(acc[0], acc[1]);
}

/* A super-block's part of a token's row sum (matvec's arithmetic): added to acc (Q4_K, Q5_K) or acc_q6. */
INLINE void superblock_add(__m256 *acc, float *acc_q6, const ksuper *s, const kscales *k32, q8k_act x, int64_t b,
                           kquant_kind kind) {
    __m256i dot = superblock_dot(s, k32, x.qs + b * QK_K);
    __m256i mins = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(x.bsums + b * (QK_K / 16))), s->mn);
    if (kind == KIND_Q6_K) {
        /* The offset comes off in integers, summed over the lanes first (the lanes of dot and mins hold
           different values' sums): the stored values' dot product is 32 * sum sc bsum too big, and a float
           difference of the two would lose the low bits of the small true sum. */
        int32_t sumi = hsum_i32x8(_mm256_sub_epi32(dot, _mm256_slli_epi32(mins, 5)));
        *acc_q6 += (float)sumi * (s->d * x.d[b]);
    } else {
        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(s->d * x.d[b]), *acc);
        *acc = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mins), _mm256_set1_ps(s->dmin * x.d[b]), *acc);
    }
}

INLINE void matvec(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols,
                   kquant_kind kind) {
    q8k_act x = q8k_act_view(xq, cols);
    int64_t nb = cols / QK_K;
    size_t bb = kquant_block_bytes(kind);
    for (int64_t r = row_begin; r < row_end; r++) {
        const char *row = (const char *)w + (size_t)r * nb * bb;
        __m256 acc = _mm256_setzero_ps();
        float acc_q6 = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            ksuper s = unpack(row + b * bb, kind);
            kscales k32 = scales_for_dot(&s, kind);
            superblock_add(&acc, &acc_q6, &s, &k32, x, b, kind);
        }
        out[r - row_begin] = hsum_f32x8(acc) + acc_q6;
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* a small batch: matvec for several tokens at once
 *
 * Batched decoding (one token per sequence, a few sequences) multiplies each weight matrix by n = 2..8
 * tokens, where the batch kernels below, which repack the rows per call, cost about as much per token as
 * matvec. Here the rows are walked as matvec walks them, each super-block unpacked once for all the tokens,
 * and every token keeps its own accumulators with exactly matvec's arithmetic: a token's result is bit for bit
 * the one matvec gives it alone (kernels_x86_int8.c's small-batch path explains why that matters). */

/* the most tokens the path takes; tokens per pass over a row (their accumulators and the unpacked
   super-block in registers: one pass of eight was slower on Zen 4 than two of four) */
enum { SMALL_N = 8, SMALL_GROUP = 4 };

/* Past SMALL_GROUP tokens a row is walked once per group of tokens: the first pass keeps its unpacked
   super-blocks (and their scales for superblock_dot) in the caller's scratch buffer, the later passes read
   them back instead of unpacking again. The buffer holds at least 8 bytes per value of a row
   (matmul_scratch_bytes). */
enum { UNPACK, UNPACK_KEEP, READ_KEPT };
typedef struct {
    ksuper  s;
    kscales k32;
} kept_super;
_Static_assert(sizeof(kept_super) <= 8 * QK_K, "matmul_scratch_bytes keeps 8 bytes per value of a row");

/* out[t * ldo] (t < nt, a constant in each instantiation) = row . token t, with matvec's arithmetic;
   `weights` UNPACK, UNPACK_KEEP (into kept) or READ_KEPT. */
INLINE void row_n(float *out, int64_t ldo, const char *row, const q8k_act *xa, int nt, int64_t nb, kept_super *kept,
                  int weights, kquant_kind kind) {
    size_t bb = kquant_block_bytes(kind);
    __m256 acc[SMALL_GROUP];
    float acc_q6[SMALL_GROUP];
    for (int t = 0; t < nt; t++) acc[t] = _mm256_setzero_ps(), acc_q6[t] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        kept_super k;
        if (weights == READ_KEPT) {
            k = kept[b];
        } else {
            k.s = unpack(row + b * bb, kind);
            k.k32 = scales_for_dot(&k.s, kind);
            if (weights == UNPACK_KEEP) kept[b] = k;
        }
        for (int t = 0; t < nt; t++) superblock_add(&acc[t], &acc_q6[t], &k.s, &k.k32, xa[t], b, kind);
    }
    for (int t = 0; t < nt; t++) out[t * ldo] = hsum_f32x8(acc[t]) + acc_q6[t];
}

void X86(matvec_q4_K)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols) {
    matvec(out, w, xq, row_begin, row_end, cols, KIND_Q4_K);
}

void X86(matvec_q5_K)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols) {
    matvec(out, w, xq, row_begin, row_end, cols, KIND_Q5_K);
}

#ifdef __AVX512VNNI__
/* Q6_K with AVX-512: 64 values per step. A super-block's 128-value halves each unpack from one 64-byte load
   of ql and one 32-byte load of qh, with no shuffling of values: the low nibbles of ql's 64 bytes are values
   0-63 of the half and the high nibbles 64-127; qh's bits 0-1 and 2-3 top up the low nibbles of ql's first
   and second 32 bytes, bits 4-5 and 6-7 the high ones, so qh placed twice, the second copy shifted right by
   two, serves both. The sixteen scales become a step's per-pair scales with one 16-bit permutation. Against
   the 256-bit superblock_dot this halves the instructions that unpack and the shuffles that place scales
   (two per 32 values there), which is where Q6_K's time went; Q4_K and Q5_K unpack too cheaply to gain. */
typedef struct {
    __m512i q[4];     /* the 256 values, 64 per vector */
    __m512i scale[4]; /* per 64 values, the int16 scale of each pair sum's 16 values */
    __m256i sc;       /* the sixteen scales */
} q6_K_unpacked512;

INLINE q6_K_unpacked512 q6_K_unpack512(const block_q6_K *b) {
    q6_K_unpacked512 u;
    const __m512i low4 = _mm512_set1_epi8(0x0f), bits0145 = _mm512_set1_epi8(0x33);
    u.sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
    __m512i sc512 = _mm512_castsi256_si512(u.sc);
    /* 16-bit lane l of a step's pair sums holds values 2 l, 2 l + 1 of its 64: scale 4 j + l / 8 in step j */
    const __m512i per_pair = _mm512_set_epi16(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1,
                                              0, 0, 0, 0, 0, 0, 0, 0);
    for (int h = 0; h < 2; h++) {
        __m512i ql = _mm512_loadu_si512(b->ql + 64 * h);
        __m256i qh = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
        /* each byte's bits 0-1 for the low nibbles, 4-5 for the high; bits 2-3 and 6-7 zero, so that after
           a shift left by four only the wanted two bits reach bits 4-7 */
        __m512i qh2 = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1),
                                       bits0145);
        /* bits 0-3 from ql (low4 selects), 4-7 from qh2; the 16-bit shifts' bits carried across bytes land
           where the other source is selected */
        u.q[2 * h] = _mm512_ternarylogic_epi32(ql, _mm512_slli_epi16(qh2, 4), low4, 0xe4);
        u.q[2 * h + 1] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(ql, 4), qh2, low4, 0xe4);
    }
    for (int j = 0; j < 4; j++)
        u.scale[j] = _mm512_permutexvar_epi16(_mm512_add_epi16(per_pair, _mm512_set1_epi16((short)(4 * j))), sc512);
    return u;
}

INLINE __m256i q6_K_superblock_dot512(const q6_K_unpacked512 *u, const int8_t *xb, const int16_t *bsums) {
    __m512i acc[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
    for (int j = 0; j < 4; j++)
        acc[j % 2] = _mm512_dpwssd_epi32(acc[j % 2], _mm512_maddubs_epi16(u->q[j], _mm512_loadu_si512(xb + 64 * j)),
                                         u->scale[j]);
    __m512i dot = _mm512_add_epi32(acc[0], acc[1]);
    __m256i dot8 = _mm256_add_epi32(_mm512_castsi512_si256(dot), _mm512_extracti64x4_epi64(dot, 1));
    /* the offset 32 off in integers, as superblock_add's comment explains; the caller sums the lanes */
    __m256i mins = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)bsums), u->sc);
    return _mm256_sub_epi32(dot8, _mm256_slli_epi32(mins, 5));
}

/* The lane sums of four vectors, in order. Summing each super-block's lanes on its own (hsum_i32x8, then a
   scalar multiply-add) cost a sixth of the kernel's time; four super-blocks share one shuffle chain and one
   vector multiply-add, and the sums stay exact integers until then. */
INLINE __m128i hsum4_i32x8(__m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i abcd = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}


/* Q6_K with AVX-512, for tokens t < nt (1 for matvec; a constant in each instantiation): each super-block
   unpacked once for all the tokens, each token with the one-token arithmetic (the small-batch path above),
   Q6_GROUP tokens at a time (their four super-blocks' sums in registers). */
enum { Q6_GROUP = 4 };
INLINE void q6_K_matvec512_n(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int nt,
                             int64_t row_begin, int64_t row_end, int64_t cols) {
    q8k_act xa[Q6_GROUP];
    for (int t = 0; t < nt; t++) xa[t] = q8k_act_view((const char *)x + (size_t)t * ldx, cols);
    int64_t nb = cols / QK_K;
    for (int64_t r = row_begin; r < row_end; r++) {
        const block_q6_K *row = (const block_q6_K *)w + r * nb;
        __m128 acc4[Q6_GROUP];
        for (int t = 0; t < nt; t++) acc4[t] = _mm_setzero_ps();
        int64_t b = 0;
        for (; b + 4 <= nb; b += 4) {
            __m256i dot[Q6_GROUP][4];
            for (int k = 0; k < 4; k++) {
                q6_K_unpacked512 u = q6_K_unpack512(row + b + k);
                for (int t = 0; t < nt; t++)
                    dot[t][k] = q6_K_superblock_dot512(&u, xa[t].qs + (b + k) * QK_K, xa[t].bsums + (b + k) * (QK_K / 16));
            }
            __m128 d = _mm_cvtph_ps(_mm_setr_epi16((short)row[b].d, (short)row[b + 1].d, (short)row[b + 2].d,
                                                   (short)row[b + 3].d, 0, 0, 0, 0));
            for (int t = 0; t < nt; t++)
                acc4[t] = _mm_fmadd_ps(_mm_cvtepi32_ps(hsum4_i32x8(dot[t][0], dot[t][1], dot[t][2], dot[t][3])),
                                       _mm_mul_ps(d, _mm_loadu_ps(xa[t].d + b)), acc4[t]);
        }
        float acc[Q6_GROUP];
        for (int t = 0; t < nt; t++) acc[t] = 0.0f;
        for (; b < nb; b++) {
            q6_K_unpacked512 u = q6_K_unpack512(row + b);
            for (int t = 0; t < nt; t++)
                acc[t] += (float)hsum_i32x8(q6_K_superblock_dot512(&u, xa[t].qs + b * QK_K, xa[t].bsums + b * (QK_K / 16))) *
                          (fp16(row[b].d) * xa[t].d[b]);
        }
        for (int t = 0; t < nt; t++) {
            __m128 s = _mm_add_ps(acc4[t], _mm_movehl_ps(acc4[t], acc4[t]));
            out[t * ldo + (r - row_begin)] = _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s))) + acc[t];
        }
    }
}
#endif

void X86(matvec_q6_K)(float *out, const void *w, const void *xq, int64_t row_begin, int64_t row_end, int64_t cols) {
#ifdef __AVX512VNNI__
    q6_K_matvec512_n(out, 0, w, xq, 0, 1, row_begin, row_end, cols);
#else
    matvec(out, w, xq, row_begin, row_end, cols, KIND_Q6_K);
#endif
}

/* n <= SMALL_N tokens, row by row, SMALL_GROUP at a time: row_n (Q6_K with AVX-512: q6_K_matvec512_n,
   Q6_GROUP tokens at a time, each group over all the rows) with the count a constant. */
INLINE void matmul_small(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                         int64_t row_begin, int64_t row_end, int64_t cols, void *scratch, kquant_kind kind) {
#ifdef __AVX512VNNI__
    if (kind == KIND_Q6_K) {
        for (int64_t t = 0; t < n; t += Q6_GROUP) {
            float *o = out + t * ldo;
            const char *xt = (const char *)x + (size_t)t * ldx;
            switch (n - t < Q6_GROUP ? n - t : Q6_GROUP) {
            case 1: q6_K_matvec512_n(o, ldo, w, xt, ldx, 1, row_begin, row_end, cols); break;
            case 2: q6_K_matvec512_n(o, ldo, w, xt, ldx, 2, row_begin, row_end, cols); break;
            case 3: q6_K_matvec512_n(o, ldo, w, xt, ldx, 3, row_begin, row_end, cols); break;
            case 4: q6_K_matvec512_n(o, ldo, w, xt, ldx, 4, row_begin, row_end, cols); break;
            }
        }
        return;
    }
#endif
    q8k_act xa[SMALL_N];
    for (int64_t t = 0; t < n; t++) xa[t] = q8k_act_view((const char *)x + (size_t)t * ldx, cols);
    int64_t nb = cols / QK_K;
    size_t row_bytes = (size_t)nb * kquant_block_bytes(kind);
    kept_super *kept = scratch;
    for (int64_t r = row_begin; r < row_end; r++) {
        const char *row = (const char *)w + (size_t)r * row_bytes;
        float *o = out + (r - row_begin);
        if (n <= SMALL_GROUP) {
            switch (n) {
            case 1: row_n(o, ldo, row, xa, 1, nb, kept, UNPACK, kind); break;
            case 2: row_n(o, ldo, row, xa, 2, nb, kept, UNPACK, kind); break;
            case 3: row_n(o, ldo, row, xa, 3, nb, kept, UNPACK, kind); break;
            case 4: row_n(o, ldo, row, xa, 4, nb, kept, UNPACK, kind); break;
            }
            continue;
        }
        row_n(o, ldo, row, xa, SMALL_GROUP, nb, kept, UNPACK_KEEP, kind);
        o += SMALL_GROUP * ldo;
        switch (n - SMALL_GROUP) { /* SMALL_N - SMALL_GROUP at most */
        case 1: row_n(o, ldo, row, xa + SMALL_GROUP, 1, nb, kept, READ_KEPT, kind); break;
        case 2: row_n(o, ldo, row, xa + SMALL_GROUP, 2, nb, kept, READ_KEPT, kind); break;
        case 3: row_n(o, ldo, row, xa + SMALL_GROUP, 3, nb, kept, READ_KEPT, kind); break;
        case 4: row_n(o, ldo, row, xa + SMALL_GROUP, 4, nb, kept, READ_KEPT, kind); break;
        }
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* a batch: rows in the vector lanes
 *
 * As Q4_0's batched kernel (kernels_x86_int8.c): a group of rows' super-blocks is unpacked once and repacked
 * so that a vector holds four consecutive values of each row of the group, one row per 32-bit lane; a
 * dot-product step against four bytes of a token, broadcast to all lanes, adds to all the rows' sums at
 * once. After each sub-block the rows' d * sc apply with one vector multiply-add, and dmin * m times the
 * token's sum over the sub-block with another (Q6_K's offset comes off in integers first). The repacked
 * super-blocks of a few columns live on the stack (KCHUNK of them, about 11 KiB: in L1 while the tokens go
 * past), so the kernel needs no scratch buffer; each chunk adds its part to the outputs.
 *
 * A group is eight rows (a 256-bit vector) on AVX2 and sixteen (a 512-bit vector) with AVX-512: there one
 * broadcast of four activation bytes feeds twice the rows, and the scale steps cost half as much per row.
 * The few vector operations the tile needs are named below once per width.
 */

#ifdef __AVX512VNNI__
enum { ROWS = 16, KN = 8, KCHUNK = 2 }; /* KN tokens per pass: three accumulators each, in 32 registers */
typedef __m512i rows_i32;
typedef __m512 rows_f32;
INLINE rows_i32 ri_zero(void) { return _mm512_setzero_si512(); }
INLINE rows_i32 ri_load(const uint8_t *p) { return _mm512_loadu_si512(p); }
INLINE rows_i32 ri_dot4(rows_i32 acc, rows_i32 w, int32_t four) {
    return _mm512_dpbusd_epi32(acc, w, _mm512_set1_epi32(four));
}
INLINE rows_i32 ri_sub(rows_i32 a, int32_t b) { return _mm512_sub_epi32(a, _mm512_set1_epi32(b)); }
INLINE rows_f32 rf_cvt(rows_i32 a) { return _mm512_cvtepi32_ps(a); }
INLINE rows_f32 rf_zero(void) { return _mm512_setzero_ps(); }
INLINE rows_f32 rf_set1(float a) { return _mm512_set1_ps(a); }
INLINE rows_f32 rf_load(const float *p) { return _mm512_loadu_ps(p); }
INLINE void rf_store(float *p, rows_f32 v) { _mm512_storeu_ps(p, v); }
INLINE rows_f32 rf_fmadd(rows_f32 a, rows_f32 b, rows_f32 c) { return _mm512_fmadd_ps(a, b, c); }
INLINE rows_f32 rf_fnmadd(rows_f32 a, rows_f32 b, rows_f32 c) { return _mm512_fnmadd_ps(a, b, c); }
#else
enum { ROWS = 8, KN = 4, KCHUNK = 4 };
typedef __m256i rows_i32;
typedef __m256 rows_f32;
INLINE rows_i32 ri_zero(void) { return _mm256_setzero_si256(); }
INLINE rows_i32 ri_load(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
INLINE rows_i32 ri_dot4(rows_i32 acc, rows_i32 w, int32_t four) { return dot4_u8i8(acc, w, _mm256_set1_epi32(four)); }
INLINE rows_i32 ri_sub(rows_i32 a, int32_t b) { return _mm256_sub_epi32(a, _mm256_set1_epi32(b)); }
INLINE rows_f32 rf_cvt(rows_i32 a) { return _mm256_cvtepi32_ps(a); }
INLINE rows_f32 rf_zero(void) { return _mm256_setzero_ps(); }
INLINE rows_f32 rf_set1(float a) { return _mm256_set1_ps(a); }
INLINE rows_f32 rf_load(const float *p) { return _mm256_loadu_ps(p); }
INLINE void rf_store(float *p, rows_f32 v) { _mm256_storeu_ps(p, v); }
INLINE rows_f32 rf_fmadd(rows_f32 a, rows_f32 b, rows_f32 c) { return _mm256_fmadd_ps(a, b, c); }
INLINE rows_f32 rf_fnmadd(rows_f32 a, rows_f32 b, rows_f32 c) { return _mm256_fnmadd_ps(a, b, c); }
#endif

typedef struct {
    uint8_t q[QK_K / 4][4 * ROWS]; /* four values of each row of the group per 4 * ROWS bytes */
    float   dsc[16][ROWS];         /* per sub-block, per row: d * sc */
    float   dmn[8][ROWS];          /* per sub-block, per row: dmin * m (Q4_K, Q5_K) */
} packed_rows;

/* Sub-blocks per super-block in the batched kernel: Q6_K's scales change every 16 values, the others' every 32. */
INLINE int subs_of(kquant_kind kind) { return kind == KIND_Q6_K ? 16 : 8; }

/* Super-block b of rows [row, row + ROWS) into dst, eight rows at a time. */
INLINE void repack(packed_rows *dst, const void *w, int64_t row, int64_t nb, int64_t b, kquant_kind kind) {
    size_t bb = kquant_block_bytes(kind);
    int subs = subs_of(kind), step = 16 / subs;
    for (int h = 0; h < ROWS; h += 8) {
        __m256i v[8][8]; /* [32 values][row] */
        for (int r = 0; r < 8; r++) {
            ksuper s = unpack((const char *)w + ((size_t)(row + h + r) * nb + b) * bb, kind);
            int16_t sc[16], mn[16];
            _mm256_storeu_si256((__m256i *)sc, s.sc);
            _mm256_storeu_si256((__m256i *)mn, s.mn);
            for (int j = 0; j < subs; j++) {
                dst->dsc[j][h + r] = s.d * (float)sc[j * step];
                if (kind != KIND_Q6_K) dst->dmn[j][h + r] = s.dmin * (float)mn[j * step];
            }
            for (int k = 0; k < 8; k++) v[k][r] = s.q[k];
        }
        for (int k = 0; k < 8; k++) { /* values 32 k .. 32 k + 31 of the eight rows: eight groups of four */
            transpose8x8_i32(v[k]);
            for (int g = 0; g < 8; g++) _mm256_storeu_si256((__m256i *)(dst->q[8 * k + g] + 4 * h), v[k][g]);
        }
    }
}

/* The steps g (four values each) of sub-block s. With AVX-512 unrolled: as a loop GCC rotated the KN tokens'
   sums through other registers every step (two copies per vpdpbusd), and unrolling took the Q4_K, Q5_K and Q6_K
   tiles 1.15-1.29x faster on AMD Zen 5 (the count k_ gives the unroller a constant trip count). AVX2 keeps the
   loop: its 16 registers ran Q4_K and Q5_K 0.88x unrolled. */
#ifdef __AVX512VNNI__
#define FOR_STEPS(g, s, groups) _Pragma("GCC unroll 8") for (int k_ = 0, g = (s) * (groups); k_ < (groups); k_++, g++)
#else
#define FOR_STEPS(g, s, groups) for (int g = (s) * (groups); g < ((s) + 1) * (groups); g++)
#endif

/* out[token + j][row_out .. row_out + ROWS) (+)= the products of super-blocks [b0, b0 + nsb) repacked in
   `packed` with tokens token .. token + rn - 1; `first`: store instead of add. */
INLINE void tile(float *out, int64_t ldo, const packed_rows *packed, int64_t b0, int64_t nsb, const void *x,
                 size_t ldx, int64_t token, int64_t row_out, int64_t cols, int first, kquant_kind kind, int rn) {
    int subs = subs_of(kind), groups = QK_K / 4 / subs;
    q8k_act xa[KN];
    rows_f32 acc[KN];
    for (int j = 0; j < rn; j++) {
        xa[j] = q8k_act_view((const char *)x + (size_t)(token + j) * ldx, cols);
        acc[j] = first ? rf_zero() : rf_load(out + (token + j) * ldo + row_out);
    }
    for (int64_t c = 0; c < nsb; c++) {
        const packed_rows *p = packed + c;
        int64_t b = b0 + c;
        /* per token, the sum of its q over each sub-block: Q4_K's and Q5_K's as floats, for their dmin * m;
           Q6_K's times 32 as integers, its offset taken off in integers (the stored values' dot product is
           that much too big, and in floats the difference would lose the low bits) */
        float xsum[KN][8];
        int32_t xsum32[KN][16];
        for (int j = 0; j < rn; j++) {
            __m256i bs = _mm256_loadu_si256((const __m256i *)(xa[j].bsums + b * (QK_K / 16)));
            if (kind == KIND_Q6_K) {
                __m256i lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(bs));
                __m256i hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(bs, 1));
                _mm256_storeu_si256((__m256i *)xsum32[j], _mm256_slli_epi32(lo, 5));
                _mm256_storeu_si256((__m256i *)(xsum32[j] + 8), _mm256_slli_epi32(hi, 5));
            } else {
                _mm256_storeu_ps(xsum[j], _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, _mm256_set1_epi16(1))));
            }
        }
        rows_f32 sum[KN];
        for (int j = 0; j < rn; j++) sum[j] = rf_zero();
        for (int s = 0; s < subs; s++) {
            rows_i32 dot[KN];
            for (int j = 0; j < rn; j++) dot[j] = ri_zero();
            FOR_STEPS (g, s, groups) {
                rows_i32 wv = ri_load(p->q[g]);
                for (int j = 0; j < rn; j++) {
                    int32_t four;
                    memcpy(&four, xa[j].qs + b * QK_K + 4 * g, sizeof four);
                    dot[j] = ri_dot4(dot[j], wv, four);
                }
            }
            rows_f32 dsc = rf_load(p->dsc[s]);
            for (int j = 0; j < rn; j++) {
                if (kind == KIND_Q6_K) {
                    sum[j] = rf_fmadd(rf_cvt(ri_sub(dot[j], xsum32[j][s])), dsc, sum[j]);
                } else {
                    sum[j] = rf_fmadd(rf_cvt(dot[j]), dsc, sum[j]);
                    sum[j] = rf_fnmadd(rf_load(p->dmn[s]), rf_set1(xsum[j][s]), sum[j]);
                }
            }
        }
        for (int j = 0; j < rn; j++) acc[j] = rf_fmadd(sum[j], rf_set1(xa[j].d[b]), acc[j]);
    }
    for (int j = 0; j < rn; j++) rf_store(out + (token + j) * ldo + row_out, acc[j]);
}

/* ROWS rows at a time, KCHUNK super-blocks at a time (repacked once, then run past all n tokens, KN at a
   time); the last rows % ROWS token by token through the matrix-vector kernel. */
INLINE void matmul(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n, int64_t row_begin,
                   int64_t row_end, int64_t cols, kquant_kind kind) {
    int64_t nb = cols / QK_K, r = row_begin;
    packed_rows packed[KCHUNK];
    for (; r + ROWS <= row_end; r += ROWS)
        for (int64_t b0 = 0; b0 < nb; b0 += KCHUNK) {
            int64_t nsb = nb - b0 < KCHUNK ? nb - b0 : KCHUNK;
            for (int64_t c = 0; c < nsb; c++) repack(&packed[c], w, r, nb, b0 + c, kind);
            int64_t t = 0;
            for (; t + KN <= n; t += KN)
                tile(out, ldo, packed, b0, nsb, x, ldx, t, r - row_begin, cols, b0 == 0, kind, KN);
            for (; t < n; t++) tile(out, ldo, packed, b0, nsb, x, ldx, t, r - row_begin, cols, b0 == 0, kind, 1);
        }
    for (int64_t t = 0; r < row_end && t < n; t++)
        matvec(out + t * ldo + (r - row_begin), w, (const char *)x + (size_t)t * ldx, r, row_end, cols, kind);
}

void X86(matmul_q4_K)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    if (n <= SMALL_N) matmul_small(out, ldo, w, x, ldx, n, row_begin, row_end, cols, scratch, KIND_Q4_K);
    else matmul(out, ldo, w, x, ldx, n, row_begin, row_end, cols, KIND_Q4_K);
}

void X86(matmul_q5_K)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    if (n <= SMALL_N) matmul_small(out, ldo, w, x, ldx, n, row_begin, row_end, cols, scratch, KIND_Q5_K);
    else matmul(out, ldo, w, x, ldx, n, row_begin, row_end, cols, KIND_Q5_K);
}

void X86(matmul_q6_K)(float *out, int64_t ldo, const void *w, const void *x, size_t ldx, int64_t n,
                      int64_t row_begin, int64_t row_end, int64_t cols, void *scratch) {
    if (n <= SMALL_N) matmul_small(out, ldo, w, x, ldx, n, row_begin, row_end, cols, scratch, KIND_Q6_K);
    else matmul(out, ldo, w, x, ldx, n, row_begin, row_end, cols, KIND_Q6_K);
}
