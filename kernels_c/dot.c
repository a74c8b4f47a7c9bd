/* Scalar reference dot products: one weight row with the QK_PANEL tokens of an activation panel
 * (reference notes 3.2-3.4). dot_avx2.c and dot_neon.c mirror these signatures and results.
 *
 * The integer sum of each block is exact; the float steps per block are the acc_* helpers below,
 * and the SIMD files do the same multiplies and adds in the same order (tokens side by side in
 * vector lanes), so the quantized types give the same float bits on every ISA. Float weights
 * (F32/F16/BF16) accumulate sequentially here; the SIMD files keep several partial sums.
 */
#include <stddef.h>

#include "qkernels.h"

/* K-quants: super-block sum d*dy*isum - dmin*dy*msum, msum = sum of mins * activation sums. */
static float acc_kquant(float acc, float dx, float dmx, float dy, int32_t isum, int32_t msum) {
    return acc + ((dx * dy) * (float)isum - (dmx * dy) * (float)msum);
}

/* Symmetric 32-blocks (Q4_0, Q5_0, Q8_0) and Q6_K: d*dy*isum. */
static float acc_sym(float acc, float dx, float dy, int32_t isum) { return acc + (dx * dy) * (float)isum; }

/* Asymmetric 32-blocks (Q4_1, Q5_1): d*dy*isum + m*s, s = the activation's fp16(dy*sum). */
static float acc_asym(float acc, float dx, float mx, float dy, float sy, int32_t isum) {
    return acc + ((dx * dy) * (float)isum + mx * sy);
}

/* Q4_K / Q5_K (qh == NULL for Q4_K): levels 0..15 (+16 from qh), 8 sub-blocks of 32. */
static void dot_kquant(const uint16_t *dd, const uint8_t *S, const uint8_t *qs, const uint8_t *qh,
                       const qk_panel_q8_K *p, float acc[QK_PANEL]) {
    uint8_t sc[8], m[8];
    qk_unpack_scales_k4(S, sc, m);
    const float dx = qk_fp16_to_fp32(dd[0]), dmx = qk_fp16_to_fp32(dd[1]);
    for (int t = 0; t < QK_PANEL; ++t) {
        const int8_t *y = p->qs[t];
        int32_t isum = 0, msum = 0;
        for (int c = 0; c < 4; ++c) {
            int32_t s1 = 0, s2 = 0;
            for (int l = 0; l < 32; ++l) {
                const int hi1 = qh ? ((qh[l] >> (2 * c)) & 1) << 4 : 0;
                const int hi2 = qh ? ((qh[l] >> (2 * c + 1)) & 1) << 4 : 0;
                s1 += ((qs[32 * c + l] & 15) + hi1) * y[64 * c + l];
                s2 += ((qs[32 * c + l] >> 4) + hi2) * y[64 * c + 32 + l];
            }
            isum += sc[2 * c] * s1 + sc[2 * c + 1] * s2;
        }
        for (int s = 0; s < 8; ++s) msum += m[s] * (p->bsums[t][2 * s] + p->bsums[t][2 * s + 1]);
        acc[t] = acc_kquant(acc[t], dx, dmx, p->d[t], isum, msum);
    }
}

static void dot_q4_K(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q4_K *w = vw;
    const qk_panel_q8_K *p = vp;
    float acc[QK_PANEL] = {0};
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const uint16_t dd[2] = {w[i].d, w[i].dmin};
        dot_kquant(dd, w[i].scales, w[i].qs, NULL, p + i, acc);
    }
    memcpy(out, acc, sizeof acc);
}

static void dot_q5_K(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q5_K *w = vw;
    const qk_panel_q8_K *p = vp;
    float acc[QK_PANEL] = {0};
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const uint16_t dd[2] = {w[i].d, w[i].dmin};
        dot_kquant(dd, w[i].scales, w[i].qs, w[i].qh, p + i, acc);
    }
    memcpy(out, acc, sizeof acc);
}

/* Q6_K: element 128h + 32k + l has its low 4 bits in ql[64h + 32(k&1) + l] (high nibble for
 * k >= 2) and its high 2 bits at bit 2k of qh[32h + l]; sub-block (of 16) 8h + 2k + l/16. */
static void dot_q6_K(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q6_K *w = vw;
    const qk_panel_q8_K *p = vp;
    float acc[QK_PANEL] = {0};
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float dx = qk_fp16_to_fp32(w[i].d);
        for (int t = 0; t < QK_PANEL; ++t) {
            int32_t isum = 0;
            for (int h = 0; h < 2; ++h) {
                const uint8_t *ql = w[i].ql + 64 * h, *qh = w[i].qh + 32 * h;
                const int8_t *y = p[i].qs[t] + 128 * h;
                for (int k = 0; k < 4; ++k) {
                    for (int half = 0; half < 2; ++half) {
                        int32_t s = 0;
                        for (int l = 16 * half; l < 16 * half + 16; ++l) {
                            const int nib = k < 2 ? ql[32 * k + l] & 15 : ql[32 * (k - 2) + l] >> 4;
                            const int q = nib | (((qh[l] >> (2 * k)) & 3) << 4);
                            s += (q - 32) * y[32 * k + l];
                        }
                        isum += w[i].scales[8 * h + 2 * k + half] * s;
                    }
                }
            }
            acc[t] = acc_sym(acc[t], dx, p[i].d[t], isum);
        }
    }
    memcpy(out, acc, sizeof acc);
}

static void dot_q8_0(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q8_0 *w = vw;
    const qk_panel_q8_0 *p = vp;
    float acc[QK_PANEL] = {0};
    for (int64_t i = 0; i < n / 32; ++i) {
        const float dx = qk_fp16_to_fp32(w[i].d);
        for (int t = 0; t < QK_PANEL; ++t) {
            int32_t isum = 0;
            for (int j = 0; j < 32; ++j) isum += w[i].qs[j] * p[i].qs[t][j];
            acc[t] = acc_sym(acc[t], dx, p[i].d[t], isum);
        }
    }
    memcpy(out, acc, sizeof acc);
}

/* The 32 levels of a legacy 4/5-bit block: qs[j] low nibble = elem j, high nibble = elem j+16;
 * qh (NULL for 4-bit types; little-endian uint32) bit j = bit 4 of elem j. */
static void legacy_levels(const uint8_t *qs, const uint8_t *qh, int q[32]) {
    const uint32_t h = qh ? (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24 : 0;
    for (int j = 0; j < 16; ++j) {
        q[j] = (qs[j] & 15) | (int)((h >> j) & 1) << 4;
        q[j + 16] = (qs[j] >> 4) | (int)((h >> (j + 16)) & 1) << 4;
    }
}

/* Where a legacy block keeps its fields (d is first in all of them; -1: absent), and the level
 * offset (8 for Q4_0, 16 for Q5_0; 0 for the asymmetric Q4_1/Q5_1, which add m*s instead). */
typedef struct {
    int64_t size;
    int m_at, qh_at, qs_at, offset;
} legacy_layout;

static const legacy_layout LAYOUT_Q4_0 = {sizeof(qk_block_q4_0), -1, -1, offsetof(qk_block_q4_0, qs), 8};
static const legacy_layout LAYOUT_Q4_1 = {sizeof(qk_block_q4_1), offsetof(qk_block_q4_1, m), -1, offsetof(qk_block_q4_1, qs), 0};
static const legacy_layout LAYOUT_Q5_0 = {sizeof(qk_block_q5_0), -1, offsetof(qk_block_q5_0, qh), offsetof(qk_block_q5_0, qs), 16};
static const legacy_layout LAYOUT_Q5_1 = {sizeof(qk_block_q5_1), offsetof(qk_block_q5_1, m), offsetof(qk_block_q5_1, qh), offsetof(qk_block_q5_1, qs), 0};

static float half_at(const uint8_t *b, int at) {
    uint16_t h;
    memcpy(&h, b + at, 2);
    return qk_fp16_to_fp32(h);
}

static void dot_legacy(const legacy_layout *L, const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const uint8_t *w = vw;
    const qk_panel_q8_0 *p = vp;
    float acc[QK_PANEL] = {0};
    for (int64_t i = 0; i < n / 32; ++i, w += L->size) {
        int q[32];
        legacy_levels(w + L->qs_at, L->qh_at < 0 ? NULL : w + L->qh_at, q);
        const float dx = half_at(w, 0);
        for (int t = 0; t < QK_PANEL; ++t) {
            int32_t isum = 0;
            for (int j = 0; j < 32; ++j) isum += (q[j] - L->offset) * p[i].qs[t][j];
            acc[t] = L->m_at < 0 ? acc_sym(acc[t], dx, p[i].d[t], isum)
                                 : acc_asym(acc[t], dx, half_at(w, L->m_at), p[i].d[t], p[i].s[t], isum);
        }
    }
    memcpy(out, acc, sizeof acc);
}

static void dot_q4_0(const void *w, const void *p, int64_t n, float out[QK_PANEL]) { dot_legacy(&LAYOUT_Q4_0, w, p, n, out); }
static void dot_q4_1(const void *w, const void *p, int64_t n, float out[QK_PANEL]) { dot_legacy(&LAYOUT_Q4_1, w, p, n, out); }
static void dot_q5_0(const void *w, const void *p, int64_t n, float out[QK_PANEL]) { dot_legacy(&LAYOUT_Q5_0, w, p, n, out); }
static void dot_q5_1(const void *w, const void *p, int64_t n, float out[QK_PANEL]) { dot_legacy(&LAYOUT_Q5_1, w, p, n, out); }

/* Float weights: a panel is QK_PANEL rows of n floats. */
static void dot_float(const void *vw, float (*widen)(const void *, int64_t), const void *vp, int64_t n,
                      float out[QK_PANEL]) {
    const float *x = vp;
    for (int t = 0; t < QK_PANEL; ++t) {
        float s = 0;
        for (int64_t j = 0; j < n; ++j) s += widen(vw, j) * x[t * n + j];
        out[t] = s;
    }
}

static float widen_f32(const void *w, int64_t j) { return ((const float *)w)[j]; }
static float widen_f16(const void *w, int64_t j) { return qk_fp16_to_fp32(((const uint16_t *)w)[j]); }
static float widen_bf16(const void *w, int64_t j) { return qk_bf16_to_fp32(((const uint16_t *)w)[j]); }

static void dot_f32(const void *w, const void *p, int64_t n, float out[QK_PANEL]) { dot_float(w, widen_f32, p, n, out); }
static void dot_f16(const void *w, const void *p, int64_t n, float out[QK_PANEL]) { dot_float(w, widen_f16, p, n, out); }
static void dot_bf16(const void *w, const void *p, int64_t n, float out[QK_PANEL]) { dot_float(w, widen_bf16, p, n, out); }

qk_dot_panel_fn qk_dot_kernel_scalar(int wtype) {
    switch (wtype) {
    case QK_F32: return dot_f32;
    case QK_F16: return dot_f16;
    case QK_BF16: return dot_bf16;
    case QK_Q4_0: return dot_q4_0;
    case QK_Q4_1: return dot_q4_1;
    case QK_Q5_0: return dot_q5_0;
    case QK_Q5_1: return dot_q5_1;
    case QK_Q8_0: return dot_q8_0;
    case QK_Q4_K: return dot_q4_K;
    case QK_Q5_K: return dot_q5_K;
    case QK_Q6_K: return dot_q6_K;
    default: return NULL;
    }
}
