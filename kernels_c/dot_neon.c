/* NEON mirrors of dot.c (aarch64, where NEON is baseline): the same signatures and, for the
 * quantized types, the same float bits.
 *
 * Byte products use only ARMv8.0 instructions: vmull_s8 (int8 x int8 -> int16, at most 128 * 128 in
 * magnitude, so no overflow) and vpadalq_s16 (pairwise into int32). Levels become signed first
 * (minus 8/16/32 for the symmetric types). Each token's integer block sum is reduced with vaddvq,
 * and the per-block float steps then run on the four tokens side by side in one float32x4, with
 * separate multiplies and adds in dot.c's order (never vfma/vmla on floats).
 */
#include "qkernels.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>

static inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    return vpadalq_s16(acc, vmull_high_s8(a, b));
}

/* Sum of 32 products a[j] * b[j] (two 16-byte halves each). */
static inline int32x4_t dot32(int8x16_t a0, int8x16_t a1, const int8_t *b) {
    return dot16(dot16(vdupq_n_s32(0), a0, vld1q_s8(b)), a1, vld1q_s8(b + 16));
}

/* The float steps of dot.c, four tokens at a time. */
static inline float32x4_t acc_kquant(float32x4_t acc, float dx, float dmx, float32x4_t dy, const int32_t *isum,
                                     const int32_t *msum) {
    const float32x4_t a = vmulq_f32(vmulq_n_f32(dy, dx), vcvtq_f32_s32(vld1q_s32(isum)));
    const float32x4_t b = vmulq_f32(vmulq_n_f32(dy, dmx), vcvtq_f32_s32(vld1q_s32(msum)));
    return vaddq_f32(acc, vsubq_f32(a, b));
}
static inline float32x4_t acc_sym(float32x4_t acc, float dx, float32x4_t dy, const int32_t *isum) {
    return vaddq_f32(acc, vmulq_f32(vmulq_n_f32(dy, dx), vcvtq_f32_s32(vld1q_s32(isum))));
}
static inline float32x4_t acc_asym(float32x4_t acc, float dx, float mx, float32x4_t dy, float32x4_t sy,
                                   const int32_t *isum) {
    const float32x4_t a = vmulq_f32(vmulq_n_f32(dy, dx), vcvtq_f32_s32(vld1q_s32(isum)));
    return vaddq_f32(acc, vaddq_f32(a, vmulq_n_f32(sy, mx)));
}

/* ---- K-quants ------------------------------------------------------------------------------ */

static inline float32x4_t dot_kquant(float32x4_t acc, const uint16_t *dd, const uint8_t *S, const uint8_t *qs,
                                     const uint8_t *qh, const qk_panel_q8_K *p) {
    const uint8x16_t m4 = vdupq_n_u8(0x0f), bit4 = vdupq_n_u8(0x10);
    uint8_t sc[8], m[8];
    qk_unpack_scales_k4(S, sc, m);
    int8x16_t lo[4][2], hi[4][2];
    for (int c = 0; c < 4; ++c) {
        for (int k = 0; k < 2; ++k) {
            const uint8x16_t q = vld1q_u8(qs + 32 * c + 16 * k);
            uint8x16_t l = vandq_u8(q, m4), h = vshrq_n_u8(q, 4);
            if (qh) {
                const uint8x16_t bits = vld1q_u8(qh + 16 * k);
                l = vorrq_u8(l, vandq_u8(vshlq_u8(bits, vdupq_n_s8((int8_t)(4 - 2 * c))), bit4));
                h = vorrq_u8(h, vandq_u8(vshlq_u8(bits, vdupq_n_s8((int8_t)(3 - 2 * c))), bit4));
            }
            lo[c][k] = vreinterpretq_s8_u8(l);
            hi[c][k] = vreinterpretq_s8_u8(h);
        }
    }
    const int16x8_t mins = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(m)));
    int32_t isum[QK_PANEL], msum[QK_PANEL];
    for (int t = 0; t < QK_PANEL; ++t) {
        int32x4_t s = vdupq_n_s32(0);
        for (int c = 0; c < 4; ++c) {
            s = vmlaq_n_s32(s, dot32(lo[c][0], lo[c][1], p->qs[t] + 64 * c), sc[2 * c]);
            s = vmlaq_n_s32(s, dot32(hi[c][0], hi[c][1], p->qs[t] + 64 * c + 32), sc[2 * c + 1]);
        }
        isum[t] = vaddvq_s32(s);
        const int16x8_t pairs = vpaddq_s16(vld1q_s16(p->bsums[t]), vld1q_s16(p->bsums[t] + 8));
        msum[t] = vaddvq_s32(vaddq_s32(vmull_s16(vget_low_s16(mins), vget_low_s16(pairs)),
                                       vmull_high_s16(mins, pairs)));
    }
    return acc_kquant(acc, qk_fp16_to_fp32(dd[0]), qk_fp16_to_fp32(dd[1]), vld1q_f32(p->d), isum, msum);
}

static void dot_q4_K(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q4_K *w = vw;
    const qk_panel_q8_K *p = vp;
    float32x4_t acc = vdupq_n_f32(0);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const uint16_t dd[2] = {w[i].d, w[i].dmin};
        acc = dot_kquant(acc, dd, w[i].scales, w[i].qs, NULL, p + i);
    }
    vst1q_f32(out, acc);
}

static void dot_q5_K(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q5_K *w = vw;
    const qk_panel_q8_K *p = vp;
    float32x4_t acc = vdupq_n_f32(0);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const uint16_t dd[2] = {w[i].d, w[i].dmin};
        acc = dot_kquant(acc, dd, w[i].scales, w[i].qs, w[i].qh, p + i);
    }
    vst1q_f32(out, acc);
}

/* Q6_K (layout in dot.c): signed levels q - 32, one 16-element sub-block per scale. */
static void dot_q6_K(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q6_K *w = vw;
    const qk_panel_q8_K *p = vp;
    const uint8x16_t m4 = vdupq_n_u8(0x0f), m2 = vdupq_n_u8(0x03);
    const int8x16_t off = vdupq_n_s8(32);
    float32x4_t acc = vdupq_n_f32(0);
    for (int64_t i = 0; i < n / QK_K; ++i) {
        int8x16_t q[16]; /* sub-block order: q[8h + 2k + half] */
        for (int h = 0; h < 2; ++h) {
            for (int half = 0; half < 2; ++half) {
                const uint8x16_t ql0 = vld1q_u8(w[i].ql + 64 * h + 16 * half);
                const uint8x16_t ql1 = vld1q_u8(w[i].ql + 64 * h + 32 + 16 * half);
                const uint8x16_t qh = vld1q_u8(w[i].qh + 32 * h + 16 * half);
                const uint8x16_t v[4] = {
                    vorrq_u8(vandq_u8(ql0, m4), vshlq_n_u8(vandq_u8(qh, m2), 4)),
                    vorrq_u8(vandq_u8(ql1, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(qh, 2), m2), 4)),
                    vorrq_u8(vshrq_n_u8(ql0, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(qh, 4), m2), 4)),
                    vorrq_u8(vshrq_n_u8(ql1, 4), vshlq_n_u8(vshrq_n_u8(qh, 6), 4)),
                };
                for (int k = 0; k < 4; ++k) q[8 * h + 2 * k + half] = vsubq_s8(vreinterpretq_s8_u8(v[k]), off);
            }
        }
        int32_t isum[QK_PANEL];
        for (int t = 0; t < QK_PANEL; ++t) {
            int32x4_t s = vdupq_n_s32(0);
            for (int b = 0; b < 16; ++b)
                s = vmlaq_n_s32(s, dot16(vdupq_n_s32(0), q[b], vld1q_s8(p[i].qs[t] + 16 * b)), w[i].scales[b]);
            isum[t] = vaddvq_s32(s);
        }
        acc = acc_sym(acc, qk_fp16_to_fp32(w[i].d), vld1q_f32(p[i].d), isum);
    }
    vst1q_f32(out, acc);
}

/* ---- 32-blocks ----------------------------------------------------------------------------- */

/* Integer sums of the 32 signed levels (two halves) with tokens 0..3 of a panel block. */
static inline void levels_x4(int8x16_t q0, int8x16_t q1, const qk_panel_q8_0 *p, int32_t isum[QK_PANEL]) {
    for (int t = 0; t < QK_PANEL; ++t) isum[t] = vaddvq_s32(dot32(q0, q1, p->qs[t]));
}

/* Levels of a 4/5-bit block in element order (elements 0-15, 16-31), minus offset, as int8. */
static inline void legacy_levels(const uint8_t *qs, const uint8_t *qh, int offset, int8x16_t *q0, int8x16_t *q1) {
    const uint8x16_t x = vld1q_u8(qs);
    uint8x16_t l = vandq_u8(x, vdupq_n_u8(0x0f)), h = vshrq_n_u8(x, 4);
    if (qh) {
        static const uint8_t bit_of[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
        const uint8x16_t bits = vld1q_u8(bit_of), b16 = vdupq_n_u8(0x10);
        const uint8x16_t lo_bytes = vcombine_u8(vdup_n_u8(qh[0]), vdup_n_u8(qh[1]));
        const uint8x16_t hi_bytes = vcombine_u8(vdup_n_u8(qh[2]), vdup_n_u8(qh[3]));
        l = vorrq_u8(l, vandq_u8(vtstq_u8(lo_bytes, bits), b16));
        h = vorrq_u8(h, vandq_u8(vtstq_u8(hi_bytes, bits), b16));
    }
    const int8x16_t o = vdupq_n_s8((int8_t)offset);
    *q0 = vsubq_s8(vreinterpretq_s8_u8(l), o);
    *q1 = vsubq_s8(vreinterpretq_s8_u8(h), o);
}

static void dot_q8_0(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q8_0 *w = vw;
    const qk_panel_q8_0 *p = vp;
    float32x4_t acc = vdupq_n_f32(0);
    for (int64_t i = 0; i < n / 32; ++i) {
        int32_t isum[QK_PANEL];
        levels_x4(vld1q_s8(w[i].qs), vld1q_s8(w[i].qs + 16), p + i, isum);
        acc = acc_sym(acc, qk_fp16_to_fp32(w[i].d), vld1q_f32(p[i].d), isum);
    }
    vst1q_f32(out, acc);
}

static void dot_q4_0(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q4_0 *w = vw;
    const qk_panel_q8_0 *p = vp;
    float32x4_t acc = vdupq_n_f32(0);
    for (int64_t i = 0; i < n / 32; ++i) {
        int8x16_t q0, q1;
        int32_t isum[QK_PANEL];
        legacy_levels(w[i].qs, NULL, 8, &q0, &q1);
        levels_x4(q0, q1, p + i, isum);
        acc = acc_sym(acc, qk_fp16_to_fp32(w[i].d), vld1q_f32(p[i].d), isum);
    }
    vst1q_f32(out, acc);
}

static void dot_q5_0(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q5_0 *w = vw;
    const qk_panel_q8_0 *p = vp;
    float32x4_t acc = vdupq_n_f32(0);
    for (int64_t i = 0; i < n / 32; ++i) {
        int8x16_t q0, q1;
        int32_t isum[QK_PANEL];
        legacy_levels(w[i].qs, w[i].qh, 16, &q0, &q1);
        levels_x4(q0, q1, p + i, isum);
        acc = acc_sym(acc, qk_fp16_to_fp32(w[i].d), vld1q_f32(p[i].d), isum);
    }
    vst1q_f32(out, acc);
}

static void dot_q4_1(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q4_1 *w = vw;
    const qk_panel_q8_0 *p = vp;
    float32x4_t acc = vdupq_n_f32(0);
    for (int64_t i = 0; i < n / 32; ++i) {
        int8x16_t q0, q1;
        int32_t isum[QK_PANEL];
        legacy_levels(w[i].qs, NULL, 0, &q0, &q1);
        levels_x4(q0, q1, p + i, isum);
        acc = acc_asym(acc, qk_fp16_to_fp32(w[i].d), qk_fp16_to_fp32(w[i].m), vld1q_f32(p[i].d), vld1q_f32(p[i].s), isum);
    }
    vst1q_f32(out, acc);
}

static void dot_q5_1(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q5_1 *w = vw;
    const qk_panel_q8_0 *p = vp;
    float32x4_t acc = vdupq_n_f32(0);
    for (int64_t i = 0; i < n / 32; ++i) {
        int8x16_t q0, q1;
        int32_t isum[QK_PANEL];
        legacy_levels(w[i].qs, w[i].qh, 0, &q0, &q1);
        levels_x4(q0, q1, p + i, isum);
        acc = acc_asym(acc, qk_fp16_to_fp32(w[i].d), qk_fp16_to_fp32(w[i].m), vld1q_f32(p[i].d), vld1q_f32(p[i].s), isum);
    }
    vst1q_f32(out, acc);
}

/* ---- float weights ------------------------------------------------------------------------- */

static inline float32x4_t widen4(int wtype, const void *w, int64_t j) {
    switch (wtype) {
    case QK_F16: return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)w + j)));
    case QK_BF16: return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16((const uint16_t *)w + j), 16));
    default: return vld1q_f32((const float *)w + j);
    }
}

static inline float widen1(int wtype, const void *w, int64_t j) {
    switch (wtype) {
    case QK_F16: return qk_fp16_to_fp32(((const uint16_t *)w)[j]);
    case QK_BF16: return qk_bf16_to_fp32(((const uint16_t *)w)[j]);
    default: return ((const float *)w)[j];
    }
}

/* Two partial sums of 4 lanes per token (FMA), 8 values per step; the rest one by one. */
static inline void dot_float(int wtype, const void *w, const void *vp, int64_t n, float out[QK_PANEL]) {
    const float *x = vp;
    float32x4_t a[QK_PANEL][2];
    for (int t = 0; t < QK_PANEL; ++t) a[t][0] = a[t][1] = vdupq_n_f32(0);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const float32x4_t w0 = widen4(wtype, w, j), w1 = widen4(wtype, w, j + 4);
        for (int t = 0; t < QK_PANEL; ++t) {
            a[t][0] = vfmaq_f32(a[t][0], w0, vld1q_f32(x + t * n + j));
            a[t][1] = vfmaq_f32(a[t][1], w1, vld1q_f32(x + t * n + j + 4));
        }
    }
    for (int t = 0; t < QK_PANEL; ++t) {
        float s = vaddvq_f32(vaddq_f32(a[t][0], a[t][1]));
        for (int64_t k = j; k < n; ++k) s += widen1(wtype, w, k) * x[t * n + k];
        out[t] = s;
    }
}

static void dot_f32(const void *w, const void *p, int64_t n, float out[QK_PANEL]) { dot_float(QK_F32, w, p, n, out); }
static void dot_f16(const void *w, const void *p, int64_t n, float out[QK_PANEL]) { dot_float(QK_F16, w, p, n, out); }
static void dot_bf16(const void *w, const void *p, int64_t n, float out[QK_PANEL]) { dot_float(QK_BF16, w, p, n, out); }

qk_dot_panel_fn qk_dot_kernel_neon(int wtype) {
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

#else

qk_dot_panel_fn qk_dot_kernel_neon(int wtype) {
    (void)wtype;
    return NULL;
}

#endif
