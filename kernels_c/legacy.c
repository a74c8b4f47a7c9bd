/* 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (reference notes 1.1, 2.2, 2.3, 3.1).
 *
 * Bit-exact code: three rounding styles live here, each where ggml uses it: truncation after
 * adding 8.5/16.5/0.5 (the _ref paths), roundf = half away from zero (Q8_0), and RNE through
 * qk_nearest_int (the imatrix searches). Float expressions keep ggml's order.
 */
#include <math.h>

#include "qkernels.h"

#define QK 32

/* qs[j] = q[j] | q[j+16] << 4: low nibbles hold the first half of the block. */
static void pack_nibbles(const uint8_t *q, uint8_t *qs) {
    for (int j = 0; j < QK / 2; ++j) qs[j] = (uint8_t)((q[j] & 0x0f) | ((q[j + QK / 2] & 0x0f) << 4));
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

/* One block of a symmetric type (Q4_0: half = 8, Q5_0: half = 16): q in 0..2*half-1.
 * With an imatrix (qw = its slice for this block): make_qx_quants, weights qw*sqrt(sigma2 + x^2). */
static float block_symmetric(const float *xb, const float *qw, float sigma2, int half, uint8_t *q) {
    if (!qw) return symmetric_ref(xb, half, q);
    float w[QK];
    int8_t L[QK];
    imatrix_weights(xb, qw, sigma2, w);
    const float d = qk_make_qx_quants(QK, half, xb, L, w);
    for (int j = 0; j < QK; ++j) q[j] = (uint8_t)L[j];
    return d;
}

/* One block of an asymmetric type (Q4_1: nmax = 15, Q5_1: nmax = 31); *m gets the offset stored
 * in the block. With an imatrix: make_qkx3_quants(-0.9, 0.05, 36). */
static float block_asymmetric(const float *xb, const float *qw, float sigma2, int nmax, uint8_t *q,
                              float *m) {
    if (!qw) return asymmetric_ref(xb, nmax, q, m);
    float w[QK], the_min;
    imatrix_weights(xb, qw, sigma2, w);
    const float d = qk_make_qkx_quants(QK, nmax, xb, w, q, &the_min, -0.9f, 0.05f, 36);
    *m = -the_min;
    return d;
}

void qk_quantize_row_q4_0(const float *x, void *vy, int64_t n, const float *imatrix) {
    qk_block_q4_0 *y = vy;
    const float sigma2 = imatrix ? row_sigma2(x, n) : 0;
    for (int64_t ib = 0; ib < n / QK; ++ib) {
        uint8_t q[QK];
        const float d = block_symmetric(x + QK * ib, imatrix ? imatrix + QK * ib : NULL, sigma2, 8, q);
        y[ib].d = qk_fp32_to_fp16(d);
        pack_nibbles(q, y[ib].qs);
    }
}

void qk_quantize_row_q5_0(const float *x, void *vy, int64_t n, const float *imatrix) {
    qk_block_q5_0 *y = vy;
    const float sigma2 = imatrix ? row_sigma2(x, n) : 0;
    for (int64_t ib = 0; ib < n / QK; ++ib) {
        uint8_t q[QK];
        const float d = block_symmetric(x + QK * ib, imatrix ? imatrix + QK * ib : NULL, sigma2, 16, q);
        y[ib].d = qk_fp32_to_fp16(d);
        pack_nibbles(q, y[ib].qs);
        pack_high_bits(q, y[ib].qh);
    }
}

void qk_quantize_row_q4_1(const float *x, void *vy, int64_t n, const float *imatrix) {
    qk_block_q4_1 *y = vy;
    const float sigma2 = imatrix ? row_sigma2(x, n) : 0;
    for (int64_t ib = 0; ib < n / QK; ++ib) {
        uint8_t q[QK];
        float m;
        const float d = block_asymmetric(x + QK * ib, imatrix ? imatrix + QK * ib : NULL, sigma2, 15, q, &m);
        y[ib].d = qk_fp32_to_fp16(d);
        y[ib].m = qk_fp32_to_fp16(m);
        pack_nibbles(q, y[ib].qs);
    }
}

void qk_quantize_row_q5_1(const float *x, void *vy, int64_t n, const float *imatrix) {
    qk_block_q5_1 *y = vy;
    const float sigma2 = imatrix ? row_sigma2(x, n) : 0;
    for (int64_t ib = 0; ib < n / QK; ++ib) {
        uint8_t q[QK];
        float m;
        const float d = block_asymmetric(x + QK * ib, imatrix ? imatrix + QK * ib : NULL, sigma2, 31, q, &m);
        y[ib].d = qk_fp32_to_fp16(d);
        y[ib].m = qk_fp32_to_fp16(m);
        pack_nibbles(q, y[ib].qs);
        pack_high_bits(q, y[ib].qh);
    }
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
        for (int j = 0; j < QK; ++j) y[ib].qs[j] = (int8_t)roundf(xb[j] * id);
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
