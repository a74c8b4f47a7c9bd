/* 256-element super-block types: Q4_K, Q5_K, Q6_K (reference notes 1.2-1.4, 2.8-2.11, 3.1).
 *
 * Two paths per type, as in llama-quantize: without an imatrix the _ref algorithm
 * (make_qkx2_quants + linear 6-bit scales; Q6_K make_qx_quants with x^2 weights), with one the
 * _impl algorithm (make_qkx3_quants + make_qp_quants with weights qw*sqrt(sigma2 + x^2); Q6_K the
 * raw qw). Bit-exact code: sums are sequential float32 in ggml's order, and a sub-block whose
 * stored scale is 0 keeps the levels of the first search (ggml's `if (!d) continue`).
 */
#include <math.h>

#include "qkernels.h"

/* Scale and min of sub-block j from the 12 packed bytes (6 bits each). */
static void get_scale_min(int j, const uint8_t *S, int *sc, int *m) {
    if (j < 4) {
        *sc = S[j] & 63;
        *m = S[j + 4] & 63;
    } else {
        *sc = (S[j + 4] & 0x0f) | ((S[j - 4] >> 6) << 4);
        *m = (S[j + 4] >> 4) | ((S[j] >> 6) << 4);
    }
}

/* Pack 8 six-bit (scale, min) pairs, in j order: j < 4 assigns, j >= 4 ORs the high bits into
 * bytes written earlier. ls/lm are taken as ggml's uint8 values (the high bits may overflow and
 * are truncated by the byte store, as in ggml). */
static void pack_scale_min(const uint8_t *ls, const uint8_t *lm, uint8_t *S) {
    for (int j = 0; j < 8; ++j) {
        if (j < 4) {
            S[j] = ls[j];
            S[j + 4] = lm[j];
        } else {
            S[j + 4] = (uint8_t)((ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4));
            S[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
            S[j] |= (uint8_t)((lm[j] >> 4) << 6);
        }
    }
}

/* The shared part of Q4_K (nmax = 15) and Q5_K (nmax = 31) for one super-block x[256]:
 * sub-block searches, 6-bit scales and mins, d and dmin, then levels L[256] in 0..nmax
 * re-derived from the stored (rounded) scales. qw: the imatrix slice for this super-block, or NULL. */
static void kquant_levels(const float *x, const float *qw, int nmax, uint8_t *L, uint8_t *S,
                          uint16_t *d_out, uint16_t *dmin_out) {
    float scales[8], mins[8], w[QK_K];
    uint8_t ls[8], lm[8];
    if (!qw) {
        /* ref: per-sub-block weights av_x + |x|; make_qkx2_quants with the type's search grid */
        const float rmin = nmax == 15 ? -1.f : -0.5f;
        const int nstep = nmax == 15 ? 20 : 15;
        for (int j = 0; j < 8; ++j) {
            const float *xs = x + 32 * j;
            float sum_x2 = 0;
            for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
            const float av_x = sqrtf(sum_x2 / 32);
            for (int l = 0; l < 32; ++l) w[32 * j + l] = av_x + fabsf(xs[l]);
        }
        for (int j = 0; j < 8; j += 4)
            qk_make_qkx_quants_4(32, nmax, x + 32 * j, w + 32 * j, L + 32 * j, scales + j, mins + j,
                                 rmin, 0.1f, nstep);
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < 8; ++j) {
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
        const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
        for (int j = 0; j < 8; ++j) {
            ls[j] = QK_MIN(63, (uint8_t)qk_nearest_int(inv_scale * scales[j]));
            lm[j] = QK_MIN(63, (uint8_t)qk_nearest_int(inv_min * mins[j]));
        }
        *d_out = qk_fp32_to_fp16(max_scale / 63.f);
        *dmin_out = qk_fp32_to_fp16(max_min / 63.f);
    } else {
        /* impl: weights qw*sqrt(sigma2 + x^2), sigma2 = 2*sum(x^2)/256 over the super-block;
         * make_qkx3_quants, then make_qp_quants for the scales and mins (weights sw[j]) */
        float sum_x2 = 0, sw[8];
        for (int l = 0; l < QK_K; ++l) sum_x2 += x[l] * x[l];
        const float sigma2 = 2 * sum_x2 / QK_K;
        for (int l = 0; l < QK_K; ++l) w[l] = qw[l] * sqrtf(sigma2 + x[l] * x[l]);
        for (int j = 0; j < 8; ++j) {
            float sumw = 0;
            for (int l = 0; l < 32; ++l) sumw += w[32 * j + l];
            sw[j] = sumw;
        }
        for (int j = 0; j < 8; j += 4)
            qk_make_qkx_quants_4(32, nmax, x + 32 * j, w + 32 * j, L + 32 * j, scales + j, mins + j,
                                 -0.9f, 0.05f, 36);
        const float d_block = qk_make_qp_quants(8, 63, scales, ls, sw);
        const float m_block = qk_make_qp_quants(8, 63, mins, lm, sw);
        if (nmax == 31) {  /* Q5_K clamps the levels, Q4_K does not */
            for (int j = 0; j < 8; ++j) {
                ls[j] = QK_MIN(63, ls[j]);
                lm[j] = QK_MIN(63, lm[j]);
            }
        }
        *d_out = qk_fp32_to_fp16(d_block);
        *dmin_out = qk_fp32_to_fp16(m_block);
    }
    pack_scale_min(ls, lm, S);

    const float d_all = qk_fp16_to_fp32(*d_out), dmin_all = qk_fp16_to_fp32(*dmin_out);
    for (int j = 0; j < 8; ++j) {
        int sc, m;
        get_scale_min(j, S, &sc, &m);
        const float d = d_all * sc;
        if (!d) continue;  /* keep the search's levels for this sub-block */
        const float dm = dmin_all * m;
        for (int ii = 0; ii < 32; ++ii) {
            const int l = qk_nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)QK_MAX(0, QK_MIN(nmax, l));
        }
    }
}

void qk_quantize_row_q4_K(const float *x, void *vy, int64_t n, const float *imatrix) {
    qk_block_q4_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        uint8_t L[QK_K];
        kquant_levels(x, imatrix ? imatrix + QK_K * i : NULL, 15, L, y[i].scales, &y[i].d, &y[i].dmin);
        for (int c = 0; c < 4; ++c)
            for (int l = 0; l < 32; ++l)
                y[i].qs[32 * c + l] = (uint8_t)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
    }
}

void qk_quantize_row_q5_K(const float *x, void *vy, int64_t n, const float *imatrix) {
    qk_block_q5_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        uint8_t L[QK_K];
        kquant_levels(x, imatrix ? imatrix + QK_K * i : NULL, 31, L, y[i].scales, &y[i].d, &y[i].dmin);
        memset(y[i].qh, 0, sizeof y[i].qh);
        for (int c = 0; c < 4; ++c) {
            for (int l = 0; l < 32; ++l) {
                const int l1 = L[64 * c + l], l2 = L[64 * c + 32 + l];
                if (l1 > 15) y[i].qh[l] |= (uint8_t)(1u << (2 * c));
                if (l2 > 15) y[i].qh[l] |= (uint8_t)(2u << (2 * c));
                y[i].qs[32 * c + l] = (uint8_t)((l1 & 15) | ((l2 & 15) << 4));
            }
        }
    }
}

/* Q6_K: 16 symmetric sub-block searches (weights x^2, or the raw imatrix: no sigma2 here), then
 * int8 scales relative to the largest |scale|, then levels re-derived from the stored scales. */
void qk_quantize_row_q6_K(const float *x, void *vy, int64_t n, const float *imatrix) {
    qk_block_q6_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        int8_t L[QK_K];
        float scales[16];
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < 16; ib += 4)
            qk_make_qx_quants_4(16, 32, x + 16 * ib, L + 16 * ib, imatrix ? imatrix + QK_K * i + 16 * ib : NULL,
                                scales + ib);
        for (int ib = 0; ib < 16; ++ib) {
            const float abs_scale = fabsf(scales[ib]);
            if (abs_scale > max_abs_scale) {
                max_abs_scale = abs_scale;
                max_scale = scales[ib];
            }
        }
        if (max_abs_scale < 1e-15f) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float iscale = -128.f / max_scale;
        y[i].d = qk_fp32_to_fp16(1 / iscale);
        for (int ib = 0; ib < 16; ++ib)
            y[i].scales[ib] = (int8_t)QK_MIN(127, qk_nearest_int(iscale * scales[ib]));
        const float d_all = qk_fp16_to_fp32(y[i].d);
        for (int j = 0; j < 16; ++j) {
            const float d = d_all * y[i].scales[j];
            if (!d) continue;  /* keep the search's levels for this sub-block */
            for (int ii = 0; ii < 16; ++ii) {
                const int l = qk_nearest_int(x[16 * j + ii] / d);
                L[16 * j + ii] = (int8_t)(QK_MAX(-32, QK_MIN(31, l)) + 32);
            }
        }
        /* layout: notes 1.4 (two halves of 128; ql nibbles, qh 2-bit pairs) */
        for (int h = 0; h < 2; ++h) {
            const int8_t *Lh = L + 128 * h;
            uint8_t *ql = y[i].ql + 64 * h, *qh = y[i].qh + 32 * h;
            for (int l = 0; l < 32; ++l) {
                const int q1 = Lh[l], q2 = Lh[l + 32], q3 = Lh[l + 64], q4 = Lh[l + 96];
                ql[l] = (uint8_t)((q1 & 15) | ((q3 & 15) << 4));
                ql[l + 32] = (uint8_t)((q2 & 15) | ((q4 & 15) << 4));
                qh[l] = (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
            }
        }
    }
}

/* ---- dequantization (ggml dequantize_row_q{4,5,6}_K, same float order) ------------------- */

/* Q4_K/Q5_K: y = (d*sc)*q - (dmin*m); qh NULL for Q4_K. */
static void dequantize_kquant(const uint16_t *dd, const uint8_t *S, const uint8_t *qs,
                              const uint8_t *qh, float *y) {
    const float d = qk_fp16_to_fp32(dd[0]), dmin = qk_fp16_to_fp32(dd[1]);
    for (int c = 0; c < 4; ++c) {
        int sc1, m1, sc2, m2;
        get_scale_min(2 * c, S, &sc1, &m1);
        get_scale_min(2 * c + 1, S, &sc2, &m2);
        const float d1 = d * sc1, mm1 = dmin * m1, d2 = d * sc2, mm2 = dmin * m2;
        for (int l = 0; l < 32; ++l) {
            const int hi1 = qh && (qh[l] >> (2 * c)) & 1 ? 16 : 0;
            const int hi2 = qh && (qh[l] >> (2 * c + 1)) & 1 ? 16 : 0;
            y[64 * c + l] = d1 * ((qs[32 * c + l] & 15) + hi1) - mm1;
            y[64 * c + 32 + l] = d2 * ((qs[32 * c + l] >> 4) + hi2) - mm2;
        }
    }
}

void qk_dequantize_row_q4_K(const void *vx, float *y, int64_t n) {
    const qk_block_q4_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; ++i, y += QK_K) {
        const uint16_t dd[2] = {x[i].d, x[i].dmin};
        dequantize_kquant(dd, x[i].scales, x[i].qs, NULL, y);
    }
}

void qk_dequantize_row_q5_K(const void *vx, float *y, int64_t n) {
    const qk_block_q5_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; ++i, y += QK_K) {
        const uint16_t dd[2] = {x[i].d, x[i].dmin};
        dequantize_kquant(dd, x[i].scales, x[i].qs, x[i].qh, y);
    }
}

void qk_dequantize_row_q6_K(const void *vx, float *y, int64_t n) {
    const qk_block_q6_K *x = vx;
    for (int64_t i = 0; i < n / QK_K; ++i, y += QK_K) {
        const float d = qk_fp16_to_fp32(x[i].d);
        for (int h = 0; h < 2; ++h) {
            const uint8_t *ql = x[i].ql + 64 * h, *qh = x[i].qh + 32 * h;
            const int8_t *sc = x[i].scales + 8 * h;
            float *yh = y + 128 * h;
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                yh[l] = d * sc[is] * q1;
                yh[l + 32] = d * sc[is + 2] * q2;
                yh[l + 64] = d * sc[is + 4] * q3;
                yh[l + 96] = d * sc[is + 6] * q4;
            }
        }
    }
}
