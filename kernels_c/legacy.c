/* 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (reference notes 1.1, 2.2, 2.3, 3.1).
 *
 * Bit-exact code: three rounding styles live here, each where ggml uses it: truncation after
 * adding 8.5/16.5/0.5 (the _ref paths), roundf = half away from zero (Q8_0), and RNE through
 * qk_nearest_int (the imatrix searches). Float expressions keep ggml's order.
 */
#include <math.h>

#include "qkernels.h"

#define QK 32

/* qs[j] = q[j] | q[j+16] << 4: low nibbles hold the first half of the block. The 5-bit types mask
 * the levels to 4 bits (mask 0x0f); ggml's 4-bit types OR them unmasked (mask 0xff). */
static void pack_nibbles(const uint8_t *q, uint8_t *qs, unsigned mask) {
    for (int j = 0; j < QK / 2; ++j) qs[j] = (uint8_t)((q[j] & mask) | ((q[j + QK / 2] & mask) << 4));
}

/* Bit 4 of q[j] goes to bit j of a little-endian uint32 (5-bit types). */
static void pack_high_bits(const uint8_t *q, uint8_t *qh) {
    uint32_t h = 0;
    for (int j = 0; j < QK; ++j) h |= (uint32_t)((q[j] & 0x10u) >> 4) << j;
    for (int b = 0; b < 4; ++b) qh[b] = (uint8_t)(h >> (8 * b));
}

/* Row-wide sigma2 of the legacy imatrix paths: sequential sum of x^2 over the whole row / n. */
static float row_sigma2(const float *x, int64_t n) {
    float sum_x2 = 0;
    for (int64_t j = 0; j < n; ++j) sum_x2 += x[j] * x[j];
    return sum_x2 / n;
}

static void imatrix_weights(const float *x, const float *qw, float sigma2, float *w) {
    for (int j = 0; j < QK; ++j) w[j] = qw[j] * sqrtf(sigma2 + x[j] * x[j]);
}

/* Symmetric reference path (Q4_0: half = 8, Q5_0: half = 16): d = signed max / -half, and
 * q = min(2*half-1, trunc(x/d + half + 0.5)). Returns d. */
static float symmetric_ref(const float *x, int half, uint8_t *q) {
    float amax = 0, max = 0;
    for (int j = 0; j < QK; ++j) {
        if (amax < fabsf(x[j])) {  /* strict: the first of equal |x| wins */
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    const float d = max / -half;
    const float id = d ? 1.0f / d : 0.0f;
    const float bias = (float)half + 0.5f;
    for (int j = 0; j < QK; ++j) q[j] = (uint8_t)QK_MIN(2 * half - 1, (int8_t)(x[j] * id + bias));
    return d;
}

/* Asymmetric reference path (Q4_1: nmax = 15, Q5_1: nmax = 31): d = (max - min)/nmax,
 * q = trunc((x - min)/d + 0.5), clamped to 15 for Q4_1 only (as in ggml). Returns d. */
static float asymmetric_ref(const float *x, int nmax, uint8_t *q, float *min_out) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < QK; ++j) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / nmax;
    const float id = d ? 1.0f / d : 0.0f;
    for (int j = 0; j < QK; ++j) {
        const float v = (x[j] - min) * id;
        q[j] = nmax == 15 ? (uint8_t)QK_MIN(15, (int8_t)(v + 0.5f)) : (uint8_t)(v + 0.5f);
    }
    *min_out = min;
    return d;
}

/* Up to 4 consecutive blocks (nb) of a symmetric type (Q4_0: half = 8, Q5_0: half = 16):
 * d[k] and levels q[32k + j] in 0..2*half-1. With an imatrix (qw = its slice for these blocks):
 * make_qx_quants with weights qw*sqrt(sigma2 + x^2), four blocks at a time. */
static void blocks_symmetric(const float *x, const float *qw, float sigma2, int half, int nb, float *d,
                             uint8_t *q) {
    if (!qw) {
        for (int k = 0; k < nb; ++k) d[k] = symmetric_ref(x + QK * k, half, q + QK * k);
        return;
    }
    float w[4 * QK];
    int8_t L[4 * QK];
    for (int k = 0; k < nb; ++k) imatrix_weights(x + QK * k, qw + QK * k, sigma2, w + QK * k);
    if (nb == 4) {
        qk_make_qx_quants_4(QK, half, x, L, w, d);
    } else {
        for (int k = 0; k < nb; ++k) d[k] = qk_make_qx_quants(QK, half, x + QK * k, L + QK * k, w + QK * k);
    }
    for (int j = 0; j < nb * QK; ++j) q[j] = (uint8_t)L[j];
}

/* Up to 4 consecutive blocks of an asymmetric type (Q4_1: nmax = 15, Q5_1: nmax = 31): d[k], the
 * stored offset m[k] and levels. With an imatrix: make_qkx3_quants(-0.9, 0.05, 36). */
static void blocks_asymmetric(const float *x, const float *qw, float sigma2, int nmax, int nb, float *d,
                              float *m, uint8_t *q) {
    if (!qw) {
        for (int k = 0; k < nb; ++k) d[k] = asymmetric_ref(x + QK * k, nmax, q + QK * k, m + k);
        return;
    }
    float w[4 * QK], the_min[4];
    for (int k = 0; k < nb; ++k) imatrix_weights(x + QK * k, qw + QK * k, sigma2, w + QK * k);
    if (nb == 4) {
        qk_make_qkx_quants_4(QK, nmax, x, w, q, d, the_min, -0.9f, 0.05f, 36);
    } else {
        for (int k = 0; k < nb; ++k)
            d[k] = qk_make_qkx_quants(QK, nmax, x + QK * k, w + QK * k, q + QK * k, the_min + k, -0.9f, 0.05f, 36);
    }
    for (int k = 0; k < nb; ++k) m[k] = -the_min[k];
}

/* Write block i of a legacy 4/5-bit row from d, m (asymmetric types) and levels q[32]. */
static void store_block(int type, void *y, int64_t i, float d, float m, const uint8_t *q) {
    switch (type) {
    case QK_Q4_0: {
        qk_block_q4_0 *b = (qk_block_q4_0 *)y + i;
        b->d = qk_fp32_to_fp16(d);
        pack_nibbles(q, b->qs, 0xff);
        break;
    }
    case QK_Q4_1: {
        qk_block_q4_1 *b = (qk_block_q4_1 *)y + i;
        b->d = qk_fp32_to_fp16(d);
        b->m = qk_fp32_to_fp16(m);
        pack_nibbles(q, b->qs, 0xff);
        break;
    }
    case QK_Q5_0: {
        qk_block_q5_0 *b = (qk_block_q5_0 *)y + i;
        b->d = qk_fp32_to_fp16(d);
        pack_high_bits(q, b->qh);
        pack_nibbles(q, b->qs, 0x0f);
        break;
    }
    default: {
        qk_block_q5_1 *b = (qk_block_q5_1 *)y + i;
        b->d = qk_fp32_to_fp16(d);
        b->m = qk_fp32_to_fp16(m);
        pack_high_bits(q, b->qh);
        pack_nibbles(q, b->qs, 0x0f);
        break;
    }
    }
}

/* The four legacy 4/5-bit types share one row loop: blocks in groups of four, then packing. */
static void quantize_row_legacy(const float *x, void *y, int64_t n, const float *imatrix, int type) {
    const int five_bit = type == QK_Q5_0 || type == QK_Q5_1;
    const int with_min = type == QK_Q4_1 || type == QK_Q5_1;
    const float sigma2 = imatrix ? row_sigma2(x, n) : 0;
    const int64_t nb = n / QK;
    for (int64_t ib = 0; ib < nb; ib += 4) {
        const int group = (int)QK_MIN(4, nb - ib);
        const float *qw = imatrix ? imatrix + QK * ib : NULL;
        float d[4], m[4] = {0};
        uint8_t q[4 * QK];
        if (with_min) blocks_asymmetric(x + QK * ib, qw, sigma2, five_bit ? 31 : 15, group, d, m, q);
        else blocks_symmetric(x + QK * ib, qw, sigma2, five_bit ? 16 : 8, group, d, q);
        for (int k = 0; k < group; ++k) store_block(type, y, ib + k, d[k], m[k], q + QK * k);
    }
}

void qk_quantize_row_q4_0(const float *x, void *y, int64_t n, const float *imatrix) {
    quantize_row_legacy(x, y, n, imatrix, QK_Q4_0);
}

void qk_quantize_row_q4_1(const float *x, void *y, int64_t n, const float *imatrix) {
    quantize_row_legacy(x, y, n, imatrix, QK_Q4_1);
}

void qk_quantize_row_q5_0(const float *x, void *y, int64_t n, const float *imatrix) {
    quantize_row_legacy(x, y, n, imatrix, QK_Q5_0);
}

void qk_quantize_row_q5_1(const float *x, void *y, int64_t n, const float *imatrix) {
    quantize_row_legacy(x, y, n, imatrix, QK_Q5_1);
}

/* roundf (half away from zero), inline for |v| < 2^31: v - trunc(v) is exact there, so comparing
 * it with +-0.5 decides the rounding exactly (checked against roundf for every such float). */
static inline int round_half_away(float v) {
    if (!(fabsf(v) < 0x1p31f)) return (int)roundf(v);  /* inf/NaN when d is subnormal: as ggml */
    const int t = (int)v;
    const float r = v - (float)t;
    return t + (r >= 0.5f) - (r <= -0.5f);
}

/* Q8_0 ignores the imatrix: id = 1/(amax/127), not 127/amax; q = roundf(x*id) (half away from 0). */
void qk_quantize_row_q8_0(const float *x, void *vy, int64_t n, const float *imatrix) {
    qk_block_q8_0 *y = vy;
    (void)imatrix;
    for (int64_t ib = 0; ib < n / QK; ++ib) {
        const float *xb = x + QK * ib;
        float amax = 0;
        for (int j = 0; j < QK; ++j) amax = QK_MAX(amax, fabsf(xb[j]));
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[ib].d = qk_fp32_to_fp16(d);
        for (int j = 0; j < QK; ++j) y[ib].qs[j] = (int8_t)round_half_away(xb[j] * id);
    }
}

/* ---- dequantization (ggml dequantize_row_*: int value converted to float, then * d [+ m]) --- */

static void unpack_nibbles(const uint8_t *qs, int *q) {
    for (int j = 0; j < QK / 2; ++j) {
        q[j] = qs[j] & 0x0f;
        q[j + QK / 2] = qs[j] >> 4;
    }
}

static void unpack_high_bits(const uint8_t *qh, int *q) {
    const uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
    for (int j = 0; j < QK; ++j) q[j] |= (int)((h >> j) & 1u) << 4;
}

void qk_dequantize_row_q4_0(const void *vx, float *y, int64_t n) {
    const qk_block_q4_0 *x = vx;
    for (int64_t ib = 0; ib < n / QK; ++ib, y += QK) {
        const float d = qk_fp16_to_fp32(x[ib].d);
        int q[QK];
        unpack_nibbles(x[ib].qs, q);
        for (int j = 0; j < QK; ++j) y[j] = (q[j] - 8) * d;
    }
}

void qk_dequantize_row_q4_1(const void *vx, float *y, int64_t n) {
    const qk_block_q4_1 *x = vx;
    for (int64_t ib = 0; ib < n / QK; ++ib, y += QK) {
        const float d = qk_fp16_to_fp32(x[ib].d), m = qk_fp16_to_fp32(x[ib].m);
        int q[QK];
        unpack_nibbles(x[ib].qs, q);
        for (int j = 0; j < QK; ++j) y[j] = q[j] * d + m;
    }
}

void qk_dequantize_row_q5_0(const void *vx, float *y, int64_t n) {
    const qk_block_q5_0 *x = vx;
    for (int64_t ib = 0; ib < n / QK; ++ib, y += QK) {
        const float d = qk_fp16_to_fp32(x[ib].d);
        int q[QK];
        unpack_nibbles(x[ib].qs, q);
        unpack_high_bits(x[ib].qh, q);
        for (int j = 0; j < QK; ++j) y[j] = (q[j] - 16) * d;
    }
}

void qk_dequantize_row_q5_1(const void *vx, float *y, int64_t n) {
    const qk_block_q5_1 *x = vx;
    for (int64_t ib = 0; ib < n / QK; ++ib, y += QK) {
        const float d = qk_fp16_to_fp32(x[ib].d), m = qk_fp16_to_fp32(x[ib].m);
        int q[QK];
        unpack_nibbles(x[ib].qs, q);
        unpack_high_bits(x[ib].qh, q);
        for (int j = 0; j < QK; ++j) y[j] = q[j] * d + m;
    }
}

void qk_dequantize_row_q8_0(const void *vx, float *y, int64_t n) {
    const qk_block_q8_0 *x = vx;
    for (int64_t ib = 0; ib < n / QK; ++ib, y += QK) {
        const float d = qk_fp16_to_fp32(x[ib].d);
        for (int j = 0; j < QK; ++j) y[j] = x[ib].qs[j] * d;
    }
}
