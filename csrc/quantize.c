/*
 * quantize.c: f32 rows into GGUF's block types (llm_quantize), writing the bytes llama.cpp's llama-quantize
 * writes for the same input.
 *
 * Each quantizer follows the arithmetic of ggml's reference quantizer for its type (ggml-quants.c, the path
 * llama-quantize takes without an importance matrix: quantize_row_<type>_ref, and for IQ4_NL and IQ4_XS the
 * quantize_iq4_nl / quantize_iq4_xs search with 7 trial scales) operation for operation in float32: the
 * same formulas, the same order of additions, the same integer conversions. Byte identity rests on that,
 * so this file must be compiled without contracting a * b + c into a fused multiply-add (one rounding
 * instead of two): bindings/build_kernel.py compiles the portable sources with -ffp-contract=off.
 *
 * The searches, in words:
 * - Q8_0, Q4_0, Q5_0: one scale per 32 values from the value of largest magnitude; Q4_1, Q5_1: scale and
 *   minimum from the block's range.
 * - Q2_K, Q4_K, Q5_K (scale and minimum per sub-block): fit_scale_min tries a range of scales and keeps the
 *   one with the least weighted error, then the sub-block scales and minima are quantized to 4 or 6 bits
 *   against the super-block's largest, and every value is quantized again with the scales as stored.
 * - Q3_K (signed values, fit_scale_q3: improves one value at a time) and Q6_K (fit_scale_signed: tries
 *   19 scales) do the same with one signed scale per sub-block of 16.
 * - IQ4_NL and IQ4_XS map values to the nearest of 16 fixed levels (fit_scale_iq4, 15 trial scales).
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "kernels.h"

/* A group whose largest magnitude is below this is all zero (ggml's GROUP_MAX_EPS). */
#define ZERO_GROUP 1e-15f

/* ---------------------------------------------------------------------------------------------------- */
/* Scalar helpers */

/* float -> IEEE half, rounding to nearest even: overflow to infinity, NaN to a quiet NaN (0x7e00). */
static uint16_t fp16_from_f32(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000);
    uint32_t mag = bits & 0x7fffffff;
    if (mag > 0x7f800000) return sign | 0x7e00;
    if (mag >= 0x477ff000) return sign | 0x7c00; /* 65520 and above round to infinity */
    uint32_t exp = mag >> 23, mant = mag & 0x7fffff;
    if (exp >= 113) { /* a normal half: keep 10 of the 23 mantissa bits */
        uint32_t h = ((exp - 112) << 10) | (mant >> 13), rest = mant & 0x1fff;
        if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++; /* a carry into the exponent is right */
        return sign | (uint16_t)h;
    }
    if (exp < 102) return sign; /* below half the smallest subnormal (2^-25): zero */
    /* a subnormal half counts units of 2^-24: the value m * 2^(exp - 150) is m >> (126 - exp) units */
    uint32_t m = mant | 0x800000, shift = 126 - exp, h = m >> shift, rest = m & ((1u << shift) - 1),
             half = 1u << (shift - 1);
    if (rest > half || (rest == half && (h & 1))) h++;
    return sign | (uint16_t)h;
}

/* Round to the nearest integer, halves to even, for |v| < 2^22: adding 1.5 * 2^23 leaves the integer in the
   low mantissa bits (ggml's nearest_int; kept exactly so, beyond that range too). */
static inline int nearest_int(float v) {
    float shifted = v + 12582912.f;
    int32_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    return (bits & 0x007fffff) - 0x00400000;
}

static inline int clamp_int(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* The index of the level of `levels` (16, ascending) nearest to v; ties go to the lower level only when it is
   strictly nearer (binary search, as ggml's best_index_int8). */
static int nearest_level(const int8_t *levels, float v) {
    if (v <= levels[0]) return 0;
    if (v >= levels[15]) return 15;
    int lo = 0, hi = 15;
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (v < levels[mid]) hi = mid;
        else lo = mid;
    }
    return v - levels[hi - 1] < levels[hi] - v ? hi - 1 : hi;
}

/* Q4_K's and Q5_K's packed 6-bit scale and min of sub-block j (of 8) from their 12 bytes. */
static void unpack_scale_min(int j, const uint8_t *q, uint8_t *scale, uint8_t *min) {
    if (j < 4) {
        *scale = q[j] & 63;
        *min = q[j + 4] & 63;
    } else {
        *scale = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *min = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* Scale searches (ggml's make_qx_quants, make_q3_quants, make_qkx2_quants, the IQ4 search) */

/* The value of largest magnitude (the first of equals), sign kept: the searches start from the scale that
   puts it on the most negative level, and the super-block scales of Q3_K, Q6_K and IQ4_XS from the largest
   sub-block scale. */
static float signed_max(int n, const float *x) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    return max;
}

/* Signed levels in [-nmax, nmax) for n values with the least x^2-weighted squared error: the scale that
   puts the largest magnitude on -nmax, then 18 nearby ones. L gets level + nmax; returns the scale. */
static float fit_scale_signed(int n, int nmax, const float *x, int8_t *L) {
    float max = signed_max(n, x);
    if (fabsf(max) < ZERO_GROUP) {
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max, sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f, best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1);
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) L[i] = (int8_t)(nmax + clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Q3_K's search: signed levels in [-nmax, nmax), starting from the largest magnitude's scale, then moving
   one value at a time to the level its least-squares scale wants while that lowers the x^2-weighted error
   (up to 5 passes). L gets level + nmax; returns the least-squares scale. */
static float fit_scale_q3(int n, int nmax, const float *x, int8_t *L) {
    float max = signed_max(n, x);
    if (fabsf(max) < ZERO_GROUP) {
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max, sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)l;
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int pass = 0; pass < 5; pass++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float w = x[i] * x[i], slx = sumlx - w * x[i] * L[i];
            if (slx > 0) {
                float sl2 = suml2 - w * L[i] * L[i];
                int new_l = clamp_int(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Levels in [0, nmax] with x = scale * L - min for n values, least weighted error (squared, or absolute with
   use_mad): the range's scale, then nstep + 1 trial scales (nmax + rmin + rdelta * k) / range, each with its
   least-squares scale and min (min kept >= 0, i.e. the offset is never positive). Returns the scale, *the_min
   the min; Laux is scratch of n. */
static float fit_scale_min(int n, int nmax, const float *x, const float *weights, uint8_t *L, float *the_min,
                           uint8_t *Laux, float rmin, float rdelta, int nstep, int use_mad) {
    float min = x[0], max = x[0], sum_w = weights[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; i++) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min), scale = 1 / iscale, best_error = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)clamp_int(nearest_int(iscale * (x[i] - min)), 0, nmax);
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best_error += weights[i] * diff;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = clamp_int(nearest_int(iscale * (x[i] - min)), 0, nmax);
            Laux[i] = (uint8_t)l;
            float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                cur_error += weights[i] * diff;
            }
            if (cur_error < best_error) {
                memcpy(L, Laux, (size_t)n);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* IQ4's search over one group of 32: the scale d (x = d * level) with the least x^2-weighted squared error
   among the largest magnitude's scale refined by least squares and 15 trial scales around it. Lb gets the
   level indices of the first candidate; returns d (0 for an all-zero group, Lb then untouched). */
static float fit_scale_iq4(const float *xb, uint8_t *Lb) {
    const int8_t *values = llm_iq4nl_values;
    enum { N = 32, NTRY = 7 };
    float weight[N], max = signed_max(N, xb);
    for (int j = 0; j < N; j++) weight[j] = xb[j] * xb[j];
    if (fabsf(max) < ZERO_GROUP) return 0;
    float d = -max / values[0], id = 1 / d, sumqx = 0, sumq2 = 0;
    for (int j = 0; j < N; j++) {
        int l = nearest_level(values, id * xb[j]);
        Lb[j] = (uint8_t)l;
        float q = values[l], w = weight[j];
        sumqx += w * q * xb[j];
        sumq2 += w * q * q;
    }
    d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
    float best = d * sumqx;
    for (int itry = -NTRY; itry <= NTRY; itry++) {
        id = (itry + values[0]) / max;
        sumqx = sumq2 = 0;
        for (int j = 0; j < N; j++) {
            float q = values[nearest_level(values, id * xb[j])], w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    return d;
}

/* ---------------------------------------------------------------------------------------------------- */
/* The 32-value types. Each quantizes n_blocks consecutive blocks of x. */

static void quantize_q8_0(void *out, const float *x, int64_t n_blocks) {
    block_q8_0 *y = out;
    for (int64_t i = 0; i < n_blocks; i++, x += QK) {
        float amax = 0;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127, id = d ? 1.0f / d : 0.0f;
        y[i].d = fp16_from_f32(d);
        for (int j = 0; j < QK; j++) y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

/* The scale of Q4_0 and Q5_0: the first value of largest magnitude, sign kept, maps to level 0. */
static float first_max(const float *x) {
    float amax = 0, max = 0;
    for (int j = 0; j < QK; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

static void quantize_q4_0(void *out, const float *x, int64_t n_blocks) {
    block_q4_0 *y = out;
    for (int64_t i = 0; i < n_blocks; i++, x += QK) {
        float d = first_max(x) / -8, id = d ? 1.0f / d : 0.0f;
        y[i].d = fp16_from_f32(d);
        for (int j = 0; j < QK / 2; j++) {
            int lo = (int8_t)(x[j] * id + 8.5f), hi = (int8_t)(x[j + QK / 2] * id + 8.5f);
            y[i].qs[j] = (uint8_t)((lo < 15 ? lo : 15) | (hi < 15 ? hi : 15) << 4);
        }
    }
}

static void quantize_q5_0(void *out, const float *x, int64_t n_blocks) {
    block_q5_0 *y = out;
    for (int64_t i = 0; i < n_blocks; i++, x += QK) {
        float d = first_max(x) / -16, id = d ? 1.0f / d : 0.0f;
        y[i].d = fp16_from_f32(d);
        uint32_t qh = 0;
        for (int j = 0; j < QK / 2; j++) {
            int lo = (int8_t)(x[j] * id + 16.5f), hi = (int8_t)(x[j + QK / 2] * id + 16.5f);
            lo = lo < 31 ? lo : 31;
            hi = hi < 31 ? hi : 31;
            y[i].qs[j] = (uint8_t)((lo & 0xF) | (hi & 0xF) << 4);
            qh |= (uint32_t)(lo >> 4) << j | (uint32_t)(hi >> 4) << (j + QK / 2);
        }
        memcpy(y[i].qh, &qh, sizeof qh);
    }
}

/* The range of a block: Q4_1's and Q5_1's scale is (max - min) / levels, their offset min. */
static void block_range(const float *x, float *min, float *max) {
    *min = FLT_MAX;
    *max = -FLT_MAX;
    for (int j = 0; j < QK; j++) {
        if (x[j] < *min) *min = x[j];
        if (x[j] > *max) *max = x[j];
    }
}

static void quantize_q4_1(void *out, const float *x, int64_t n_blocks) {
    block_q4_1 *y = out;
    for (int64_t i = 0; i < n_blocks; i++, x += QK) {
        float min, max;
        block_range(x, &min, &max);
        float d = (max - min) / 15, id = d ? 1.0f / d : 0.0f;
        y[i].d = fp16_from_f32(d);
        y[i].m = fp16_from_f32(min);
        for (int j = 0; j < QK / 2; j++) {
            int lo = (int8_t)((x[j] - min) * id + 0.5f), hi = (int8_t)((x[j + QK / 2] - min) * id + 0.5f);
            y[i].qs[j] = (uint8_t)((lo < 15 ? lo : 15) | (hi < 15 ? hi : 15) << 4);
        }
    }
}

static void quantize_q5_1(void *out, const float *x, int64_t n_blocks) {
    block_q5_1 *y = out;
    for (int64_t i = 0; i < n_blocks; i++, x += QK) {
        float min, max;
        block_range(x, &min, &max);
        float d = (max - min) / 31, id = d ? 1.0f / d : 0.0f;
        y[i].d = fp16_from_f32(d);
        y[i].m = fp16_from_f32(min);
        uint32_t qh = 0;
        for (int j = 0; j < QK / 2; j++) {
            uint8_t lo = (uint8_t)((x[j] - min) * id + 0.5f), hi = (uint8_t)((x[j + QK / 2] - min) * id + 0.5f);
            y[i].qs[j] = (uint8_t)((lo & 0xF) | (hi & 0xF) << 4);
            qh |= (uint32_t)((lo & 0x10) >> 4) << j | (uint32_t)((hi & 0x10) >> 4) << (j + QK / 2);
        }
        memcpy(y[i].qh, &qh, sizeof qh);
    }
}

/* Packs 32 level indices (0..15) as Q4_0 orders nibbles: value j low, value j + 16 high. */
static void pack_nibbles32(uint8_t *q, const uint8_t *L) {
    for (int j = 0; j < 16; j++) q[j] = (uint8_t)(L[j] | L[16 + j] << 4);
}

static void quantize_iq4_nl(void *out, const float *x, int64_t n_blocks) {
    block_iq4_nl *y = out;
    for (int64_t i = 0; i < n_blocks; i++, x += QK) {
        uint8_t L[QK];
        float d = fit_scale_iq4(x, L);
        y[i].d = fp16_from_f32(d);
        /* the stored scale is the searched one: every value is placed again against it */
        float id = d ? 1 / d : 0;
        for (int j = 0; j < QK; j++) L[j] = (uint8_t)nearest_level(llm_iq4nl_values, id * x[j]);
        pack_nibbles32(y[i].qs, L);
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* The 256-value super-block types */

/* Packs 256 2-bit levels: byte l of each 32-byte group of 128 values holds values l, l + 32, l + 64, l + 96. */
static void pack_2bit(uint8_t *qs, const uint8_t *L) {
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; l++)
            qs[j / 4 + l] = (uint8_t)(L[j + l] | L[j + l + 32] << 2 | L[j + l + 64] << 4 | L[j + l + 96] << 6);
}

static void quantize_q2_k(void *out, const float *x, int64_t n_blocks) {
    block_q2_K *y = out;
    const float q4scale = 15.f;
    for (int64_t i = 0; i < n_blocks; i++, x += QK_K) {
        uint8_t L[QK_K], Laux[16];
        float weights[16], mins[QK_K / 16], scales[QK_K / 16], max_scale = 0, max_min = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            for (int l = 0; l < 16; l++) weights[l] = fabsf(x[16 * j + l]);
            scales[j] = fit_scale_min(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, 1);
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        if (max_scale > 0) {
            float iscale = q4scale / max_scale;
            for (int j = 0; j < QK_K / 16; j++) y[i].scales[j] = (uint8_t)nearest_int(iscale * scales[j]);
            y[i].d = fp16_from_f32(max_scale / q4scale);
        } else {
            for (int j = 0; j < QK_K / 16; j++) y[i].scales[j] = 0;
            y[i].d = fp16_from_f32(0.f);
        }
        if (max_min > 0) {
            float iscale = q4scale / max_min;
            for (int j = 0; j < QK_K / 16; j++) y[i].scales[j] |= (uint8_t)(nearest_int(iscale * mins[j]) << 4);
            y[i].dmin = fp16_from_f32(max_min / q4scale);
        } else {
            y[i].dmin = fp16_from_f32(0.f);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            float d = llm_fp16_to_fp32(y[i].d) * (y[i].scales[j] & 0xF);
            if (!d) continue;
            float dm = llm_fp16_to_fp32(y[i].dmin) * (y[i].scales[j] >> 4);
            for (int l = 0; l < 16; l++) L[16 * j + l] = (uint8_t)clamp_int(nearest_int((x[16 * j + l] + dm) / d), 0, 3);
        }
        pack_2bit(y[i].qs, L);
    }
}

static void quantize_q3_k(void *out, const float *x, int64_t n_blocks) {
    block_q3_K *y = out;
    for (int64_t i = 0; i < n_blocks; i++, x += QK_K) {
        int8_t L[QK_K];
        float scales[QK_K / 16];
        for (int j = 0; j < QK_K / 16; j++) scales[j] = fit_scale_q3(16, 4, x + 16 * j, L + 16 * j);
        float max_scale = signed_max(QK_K / 16, scales);
        /* 6-bit scales + 32: low nibbles in bytes 0-7 (sub-blocks j and j + 8), high pairs in bytes 8-11 */
        memset(y[i].scales, 0, sizeof y[i].scales);
        if (max_scale) {
            float iscale = -32.f / max_scale;
            for (int j = 0; j < QK_K / 16; j++) {
                int8_t l = (int8_t)nearest_int(iscale * scales[j]);
                l = (int8_t)(clamp_int(l, -32, 31) + 32);
                if (j < 8) y[i].scales[j] = l & 0xF;
                else y[i].scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
                l >>= 4;
                y[i].scales[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
            }
            y[i].d = fp16_from_f32(1 / iscale);
        } else {
            y[i].d = fp16_from_f32(0.f);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int8_t sc = (int8_t)(j < 8 ? y[i].scales[j] & 0xF : y[i].scales[j - 8] >> 4);
            sc = (int8_t)((sc | (((y[i].scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
            float d = llm_fp16_to_fp32(y[i].d) * sc;
            if (!d) continue;
            for (int l = 0; l < 16; l++) L[16 * j + l] = (int8_t)(clamp_int(nearest_int(x[16 * j + l] / d), -4, 3) + 4);
        }
        /* the high bit of value j goes to bit j / 32 of hmask[j % 32] */
        memset(y[i].hmask, 0, sizeof y[i].hmask);
        for (int j = 0; j < QK_K; j++) {
            if (L[j] > 3) {
                y[i].hmask[j % 32] |= (uint8_t)(1 << (j / 32));
                L[j] = (int8_t)(L[j] - 4);
            }
        }
        pack_2bit(y[i].qs, (const uint8_t *)L);
    }
}

/* Q4_K's and Q5_K's common part: the sub-block scales and mins of 8 x 32 values, packed in 6 bits against
   the super-block's d and dmin, and the levels 0..nmax of every value against them. */
static void scales_mins_k(const float *x, int nmax, float rmin, int nstep, uint8_t *L, uint16_t *d_out,
                          uint16_t *dmin_out, uint8_t *packed) {
    uint8_t Laux[32];
    float weights[32], mins[QK_K / 32], scales[QK_K / 32], max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++) sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++) weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = fit_scale_min(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep, 0);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f, inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]), lm = (uint8_t)nearest_int(inv_min * mins[j]);
        ls = ls < 63 ? ls : 63;
        lm = lm < 63 ? lm : 63;
        if (j < 4) {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (uint8_t)((ls & 0xF) | (lm & 0xF) << 4);
            packed[j - 4] |= (uint8_t)((ls >> 4) << 6);
            packed[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    *d_out = fp16_from_f32(max_scale / 63.f);
    *dmin_out = fp16_from_f32(max_min / 63.f);
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t sc, m;
        unpack_scale_min(j, packed, &sc, &m);
        float d = llm_fp16_to_fp32(*d_out) * sc;
        if (!d) continue;
        float dm = llm_fp16_to_fp32(*dmin_out) * m;
        for (int l = 0; l < 32; l++) L[32 * j + l] = (uint8_t)clamp_int(nearest_int((x[32 * j + l] + dm) / d), 0, nmax);
    }
}

static void quantize_q4_k(void *out, const float *x, int64_t n_blocks) {
    block_q4_K *y = out;
    for (int64_t i = 0; i < n_blocks; i++, x += QK_K) {
        uint8_t L[QK_K];
        scales_mins_k(x, 15, -1.f, 20, L, &y[i].d, &y[i].dmin, y[i].scales);
        for (int j = 0; j < QK_K; j += 64) /* byte l of each 32: value l low, value l + 32 high */
            for (int l = 0; l < 32; l++) y[i].qs[j / 2 + l] = (uint8_t)(L[j + l] | L[j + l + 32] << 4);
    }
}

static void quantize_q5_k(void *out, const float *x, int64_t n_blocks) {
    block_q5_K *y = out;
    for (int64_t i = 0; i < n_blocks; i++, x += QK_K) {
        uint8_t L[QK_K];
        scales_mins_k(x, 31, -0.5f, 15, L, &y[i].d, &y[i].dmin, y[i].scales);
        /* as Q4_K's nibbles, the fifth bits of values j + 64 k and j + 64 k + 32 in bits 2k, 2k + 1 of qh[j] */
        memset(y[i].qh, 0, sizeof y[i].qh);
        for (int n = 0, k = 0; n < QK_K; n += 64, k++) {
            for (int j = 0; j < 32; j++) {
                int l1 = L[n + j], l2 = L[n + j + 32];
                y[i].qh[j] |= (uint8_t)((l1 > 15) << (2 * k) | (l2 > 15) << (2 * k + 1));
                y[i].qs[n / 2 + j] = (uint8_t)((l1 & 0xF) | (l2 & 0xF) << 4);
            }
        }
    }
}

static void quantize_q6_k(void *out, const float *x, int64_t n_blocks) {
    block_q6_K *y = out;
    for (int64_t i = 0; i < n_blocks; i++, x += QK_K) {
        int8_t L[QK_K];
        float scales[QK_K / 16];
        for (int ib = 0; ib < QK_K / 16; ib++) scales[ib] = fit_scale_signed(16, 32, x + 16 * ib, L + 16 * ib);
        float max_scale = signed_max(QK_K / 16, scales);
        if (fabsf(max_scale) < ZERO_GROUP) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        float iscale = -128.f / max_scale;
        y[i].d = fp16_from_f32(1 / iscale);
        for (int ib = 0; ib < QK_K / 16; ib++) {
            int s = nearest_int(iscale * scales[ib]);
            y[i].scales[ib] = (int8_t)(s < 127 ? s : 127);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            float d = llm_fp16_to_fp32(y[i].d) * y[i].scales[j];
            if (!d) continue;
            for (int l = 0; l < 16; l++) L[16 * j + l] = (int8_t)(clamp_int(nearest_int(x[16 * j + l] / d), -32, 31) + 32);
        }
        /* per 128 values: low nibbles of values l and l + 64 in ql[l], of l + 32 and l + 96 in ql[l + 32];
           the high pairs of l, l + 32, l + 64, l + 96 in qh[l] */
        for (int j = 0; j < QK_K; j += 128) {
            uint8_t *ql = y[i].ql + j / 2, *qh = y[i].qh + j / 4;
            for (int l = 0; l < 32; l++) {
                const uint8_t *q = (const uint8_t *)L + j + l;
                ql[l] = (uint8_t)((q[0] & 0xF) | (q[64] & 0xF) << 4);
                ql[l + 32] = (uint8_t)((q[32] & 0xF) | (q[96] & 0xF) << 4);
                qh[l] = (uint8_t)(q[0] >> 4 | (q[32] >> 4) << 2 | (q[64] >> 4) << 4 | (q[96] >> 4) << 6);
            }
        }
    }
}

static void quantize_iq4_xs(void *out, const float *x, int64_t n_blocks) {
    block_iq4_xs *y = out;
    for (int64_t i = 0; i < n_blocks; i++, x += QK_K) {
        uint8_t L[QK_K];
        float scales[QK_K / 32];
        for (int ib = 0; ib < QK_K / 32; ib++) scales[ib] = fit_scale_iq4(x + 32 * ib, L + 32 * ib);
        float max_scale = signed_max(QK_K / 32, scales);
        /* 6-bit sub-block scales + 32 against d = -max / 32; every value placed again against its scale */
        float d = -max_scale / 32, id = d ? 1 / d : 0.f;
        y[i].d = fp16_from_f32(d);
        y[i].scales_h = 0;
        for (int ib = 0; ib < QK_K / 32; ib++) {
            int l = clamp_int(nearest_int(id * scales[ib]), -32, 31);
            float dl = d * l, idl = dl ? 1 / dl : 0.f;
            for (int j = 0; j < 32; j++) L[32 * ib + j] = (uint8_t)nearest_level(llm_iq4nl_values, idl * x[32 * ib + j]);
            l += 32;
            if (ib % 2 == 0) y[i].scales_l[ib / 2] = (uint8_t)(l & 0xF);
            else y[i].scales_l[ib / 2] |= (uint8_t)((l & 0xF) << 4);
            y[i].scales_h |= (uint16_t)((l >> 4) << (2 * ib));
        }
        for (int ib = 0; ib < QK_K / 32; ib++) pack_nibbles32(y[i].qs + 16 * ib, L + 32 * ib);
    }
}

/* ---------------------------------------------------------------------------------------------------- */

typedef void (*quantize_blocks_fn)(void *out, const float *x, int64_t n_blocks);

static const quantize_blocks_fn QUANTIZERS[LLM_TYPE_COUNT] = {
    [LLM_Q8_0] = quantize_q8_0,     [LLM_Q4_0] = quantize_q4_0, [LLM_Q4_1] = quantize_q4_1,
    [LLM_Q5_0] = quantize_q5_0,     [LLM_Q5_1] = quantize_q5_1, [LLM_IQ4_NL] = quantize_iq4_nl,
    [LLM_Q2_K] = quantize_q2_k,     [LLM_Q3_K] = quantize_q3_k, [LLM_Q4_K] = quantize_q4_k,
    [LLM_Q5_K] = quantize_q5_k,     [LLM_Q6_K] = quantize_q6_k, [LLM_IQ4_XS] = quantize_iq4_xs,
};

int llm_quantize(int32_t type, const float *x, int64_t rows, int64_t cols, void *out) {
    if (type < 0 || type >= LLM_TYPE_COUNT || !QUANTIZERS[type] || rows < 0 || cols <= 0 ||
        cols % llm_types[type].block_elems != 0 || ((!x || !out) && rows > 0))
        return LLM_ERR_INVALID;
    int64_t n_blocks = cols / llm_types[type].block_elems;
    size_t row_bytes = (size_t)n_blocks * llm_types[type].block_bytes;
    for (int64_t r = 0; r < rows; r++) QUANTIZERS[type]((char *)out + (size_t)r * row_bytes, x + r * cols, n_blocks);
    return 0;
}
