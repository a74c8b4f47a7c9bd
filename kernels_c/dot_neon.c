/* NEON mirrors of dot.c (aarch64, where NEON is baseline): the same signatures and, for the
 * quantized types, the same float bits.
 *
 * Tokens sit in lanes as on AVX2 (two int32x4 per panel of 8). A group of 4 weight levels is
 * broadcast and multiplied with 4 tokens' groups by vmull_s8 (ARMv8.0; levels are below 128, so
 * they are valid int8, and no product exceeds 128 * 128), then vpadalq_s16 widens pairs into int32
 * and vpaddq_s32 folds each token's two lanes. The per-block float steps run on the tokens side by
 * side with separate multiplies and adds in dot.c's order (never vfma/vmla on floats).
 */
#include "qkernels.h"

#if defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#include <math.h>

/* Per-token sums over `groups` groups of 4 values: levels q (as int8) times the panel groups act;
 * out[0] tokens 0-3, out[1] tokens 4-7. */
static inline void group_sums(const uint8_t *q, const int8_t (*act)[QK_PANEL][4], int groups, int32x4_t out[2]) {
    int32x4_t a[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
    for (int g = 0; g < groups; ++g) {
        uint32_t w32;
        memcpy(&w32, q + 4 * g, 4);
        const int8x16_t w = vreinterpretq_s8_u32(vdupq_n_u32(w32));
        const int8x16_t lo = vld1q_s8(act[g][0]), hi = vld1q_s8(act[g][4]);
        a[0] = vpadalq_s16(a[0], vmull_s8(vget_low_s8(w), vget_low_s8(lo)));
        a[1] = vpadalq_s16(a[1], vmull_high_s8(w, lo));
        a[2] = vpadalq_s16(a[2], vmull_s8(vget_low_s8(w), vget_low_s8(hi)));
        a[3] = vpadalq_s16(a[3], vmull_high_s8(w, hi));
    }
    out[0] = vpaddq_s32(a[0], a[1]);
    out[1] = vpaddq_s32(a[2], a[3]);
}

/* The float steps of dot.c for 4 tokens (one half of a panel). */
static inline float32x4_t acc_kquant(float32x4_t acc, float dx, float dmx, float32x4_t dy, int32x4_t isum, int32x4_t msum) {
    const float32x4_t a = vmulq_f32(vmulq_n_f32(dy, dx), vcvtq_f32_s32(isum));
    const float32x4_t b = vmulq_f32(vmulq_n_f32(dy, dmx), vcvtq_f32_s32(msum));
    return vaddq_f32(acc, vsubq_f32(a, b));
}
static inline float32x4_t acc_sym(float32x4_t acc, float dx, float32x4_t dy, int32x4_t isum) {
    return vaddq_f32(acc, vmulq_f32(vmulq_n_f32(dy, dx), vcvtq_f32_s32(isum)));
}
static inline float32x4_t acc_asym(float32x4_t acc, float dx, float mx, float32x4_t dy, float32x4_t sy, int32x4_t isum) {
    const float32x4_t a = vmulq_f32(vmulq_n_f32(dy, dx), vcvtq_f32_s32(isum));
    return vaddq_f32(acc, vaddq_f32(a, vmulq_n_f32(sy, mx)));
}

typedef struct {
    const uint8_t *q;
    const int16_t *sc;
    const uint32_t *mn;
    const float *d, *dm;
} urow;

static inline urow row_parts(const uint8_t *rows, const qk_urow_layout *L, int r) {
    const uint8_t *row = rows + r * L->size;
    return (urow){row + L->q, (const int16_t *)(row + L->sc), (const uint32_t *)(row + L->mn), (const float *)(row + L->d),
                  (const float *)(row + L->dm)};
}

/* sum over 8 sub-blocks of (the int16 pair in mn[s]) . (bsums[s][t][0], bsums[s][t][1]), per token. */
static inline void pair_sums(const uint32_t *mn, const qk_panel_q8_K *p, int32x4_t out[2]) {
    out[0] = out[1] = vdupq_n_s32(0);
    for (int s = 0; s < 8; ++s) {
        const int16x8_t m = vreinterpretq_s16_u32(vdupq_n_u32(mn[s]));
        for (int h = 0; h < 2; ++h) {
            const int16x8_t b = vld1q_s16(p->bsums[s][4 * h]);
            const int32x4_t prod = vpaddq_s32(vmull_s16(vget_low_s16(m), vget_low_s16(b)), vmull_high_s16(m, b));
            out[h] = vaddq_s32(out[h], prod);
        }
    }
}

/* ---- K-quants ------------------------------------------------------------------------------ */

static inline void gemm_kquant(int q6, const uint8_t *rows, const qk_urow_layout *L, const void *panel, int64_t n,
                               float out[QK_ROWS][QK_PANEL]) {
    const qk_panel_q8_K *p = panel;
    const int sub = q6 ? 16 : 32;
    for (int r = 0; r < QK_ROWS; ++r) {
        const urow w = row_parts(rows, L, r);
        float32x4_t acc[2] = {vdupq_n_f32(0), vdupq_n_f32(0)};
        for (int64_t i = 0; i < n / QK_K; ++i) {
            int32x4_t isum[2] = {vdupq_n_s32(0), vdupq_n_s32(0)}, ps[2];
            for (int s = 0; s < QK_K / sub; ++s) {
                int32x4_t g[2];
                group_sums(w.q + QK_K * i + sub * s, p[i].qs + sub / 4 * s, sub / 4, g);
                for (int h = 0; h < 2; ++h) isum[h] = vmlaq_n_s32(isum[h], g[h], w.sc[QK_K / sub * i + s]);
            }
            pair_sums(w.mn + 8 * i, p + i, ps);
            for (int h = 0; h < 2; ++h) {
                const float32x4_t dy = vld1q_f32(p[i].d + 4 * h);
                acc[h] = q6 ? acc_sym(acc[h], w.d[i], dy, vsubq_s32(isum[h], vshlq_n_s32(ps[h], 5)))
                            : acc_kquant(acc[h], w.d[i], w.dm[i], dy, isum[h], ps[h]);
            }
        }
        vst1q_f32(out[r], acc[0]);
        vst1q_f32(out[r] + 4, acc[1]);
    }
}

static void gemm_q4_K(const uint8_t *rows, const qk_urow_layout *L, const void *p, int64_t n, float out[QK_ROWS][QK_PANEL]) {
    gemm_kquant(0, rows, L, p, n, out);
}
static void gemm_q5_K(const uint8_t *rows, const qk_urow_layout *L, const void *p, int64_t n, float out[QK_ROWS][QK_PANEL]) {
    gemm_kquant(0, rows, L, p, n, out);
}
static void gemm_q6_K(const uint8_t *rows, const qk_urow_layout *L, const void *p, int64_t n, float out[QK_ROWS][QK_PANEL]) {
    gemm_kquant(1, rows, L, p, n, out);
}

/* ---- 32-blocks ----------------------------------------------------------------------------- */

/* offset_shift: Q4_0 3 (minus 8 * sum), Q5_0 4; -1 for Q4_1/Q5_1 (m * s) and Q8_0 (signed levels). */
static inline void gemm_legacy(int offset_shift, int asym, const uint8_t *rows, const qk_urow_layout *L,
                               const void *panel, int64_t n, float out[QK_ROWS][QK_PANEL]) {
    const qk_panel_q8_0 *p = panel;
    for (int r = 0; r < QK_ROWS; ++r) {
        const urow w = row_parts(rows, L, r);
        float32x4_t acc[2] = {vdupq_n_f32(0), vdupq_n_f32(0)};
        for (int64_t i = 0; i < n / 32; ++i) {
            int32x4_t isum[2];
            group_sums(w.q + 32 * i, p[i].qs, 8, isum);
            for (int h = 0; h < 2; ++h) {
                if (offset_shift >= 0) isum[h] = vsubq_s32(isum[h], vshlq_s32(vld1q_s32(p[i].sum + 4 * h), vdupq_n_s32(offset_shift)));
                const float32x4_t dy = vld1q_f32(p[i].d + 4 * h);
                acc[h] = asym ? acc_asym(acc[h], w.d[i], w.dm[i], dy, vld1q_f32(p[i].s + 4 * h), isum[h])
                              : acc_sym(acc[h], w.d[i], dy, isum[h]);
            }
        }
        vst1q_f32(out[r], acc[0]);
        vst1q_f32(out[r] + 4, acc[1]);
    }
}

static void gemm_q4_0(const uint8_t *rows, const qk_urow_layout *L, const void *p, int64_t n, float out[QK_ROWS][QK_PANEL]) {
    gemm_legacy(3, 0, rows, L, p, n, out);
}
static void gemm_q5_0(const uint8_t *rows, const qk_urow_layout *L, const void *p, int64_t n, float out[QK_ROWS][QK_PANEL]) {
    gemm_legacy(4, 0, rows, L, p, n, out);
}
static void gemm_q4_1(const uint8_t *rows, const qk_urow_layout *L, const void *p, int64_t n, float out[QK_ROWS][QK_PANEL]) {
    gemm_legacy(-1, 1, rows, L, p, n, out);
}
static void gemm_q5_1(const uint8_t *rows, const qk_urow_layout *L, const void *p, int64_t n, float out[QK_ROWS][QK_PANEL]) {
    gemm_legacy(-1, 1, rows, L, p, n, out);
}
static void gemm_q8_0(const uint8_t *rows, const qk_urow_layout *L, const void *p, int64_t n, float out[QK_ROWS][QK_PANEL]) {
    gemm_legacy(-1, 0, rows, L, p, n, out);
}

/* ---- float weights: 4 tokens per FMA, two partial sums (even and odd values) --------------- */

static void gemm_float(const uint8_t *rows, const qk_urow_layout *L, const void *panel, int64_t n,
                       float out[QK_ROWS][QK_PANEL]) {
    const float *x = panel;
    for (int r = 0; r < QK_ROWS; ++r) {
        const float *w = (const float *)(rows + r * L->size + L->q);
        float32x4_t a[2][2] = {{vdupq_n_f32(0), vdupq_n_f32(0)}, {vdupq_n_f32(0), vdupq_n_f32(0)}};
        for (int64_t k = 0; k < n; ++k)
            for (int h = 0; h < 2; ++h) a[k & 1][h] = vfmaq_n_f32(a[k & 1][h], vld1q_f32(x + k * QK_PANEL + 4 * h), w[k]);
        vst1q_f32(out[r], vaddq_f32(a[0][0], a[1][0]));
        vst1q_f32(out[r] + 4, vaddq_f32(a[0][1], a[1][1]));
    }
}

/* ---- attention's small float products (ops.c) --------------------------------------------- */

/* C[i][x] = sum_r A[i][r] B[r][x] for QK_ATTN_ROWS rows, 4 lanes of x, FMA; the tail one by one. */
static void sgemm8(int64_t n, int64_t k, const float *A, int64_t lda, const float *B, int64_t ldb, float *C,
                   int64_t ldc) {
    int64_t x = 0;
    for (; x + 4 <= n; x += 4) {
        float32x4_t c[QK_ATTN_ROWS];
        for (int i = 0; i < QK_ATTN_ROWS; ++i) c[i] = vdupq_n_f32(0);
        for (int64_t r = 0; r < k; ++r) {
            const float32x4_t b = vld1q_f32(B + r * ldb + x);
            for (int i = 0; i < QK_ATTN_ROWS; ++i) c[i] = vfmaq_n_f32(c[i], b, A[i * lda + r]);
        }
        for (int i = 0; i < QK_ATTN_ROWS; ++i) vst1q_f32(C + i * ldc + x, c[i]);
    }
    for (; x < n; ++x) {
        for (int i = 0; i < QK_ATTN_ROWS; ++i) {
            float c = 0;
            for (int64_t r = 0; r < k; ++r) c = fmaf(A[i * lda + r], B[r * ldb + x], c);
            C[i * ldc + x] = c;
        }
    }
}

/* qk_exp_approx on 4 lanes, the same operations in the same order (max/min clamp: the same for
 * every non-NaN input). */
static inline float32x4_t exp4(float32x4_t x) {
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(QK_EXP_LO)), vdupq_n_f32(QK_EXP_HI));
    const float32x4_t magic = vdupq_n_f32(QK_EXP_MAGIC);
    const float32x4_t t = vaddq_f32(vmulq_n_f32(x, QK_EXP_LOG2E), magic);
    const float32x4_t n = vsubq_f32(t, magic);
    const int32x4_t ni = vsubq_s32(vreinterpretq_s32_f32(t), vreinterpretq_s32_f32(magic));
    const float32x4_t r = vsubq_f32(vsubq_f32(x, vmulq_n_f32(n, QK_EXP_LN2_HI)), vmulq_n_f32(n, QK_EXP_LN2_LO));
    float32x4_t p = vdupq_n_f32(QK_EXP_P0);
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(QK_EXP_P1));
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(QK_EXP_P2));
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(QK_EXP_P3));
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(QK_EXP_P4));
    p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(QK_EXP_P5));
    p = vaddq_f32(vaddq_f32(vmulq_f32(vmulq_f32(p, r), r), r), vdupq_n_f32(1.0f));
    const int32x4_t e = vshlq_n_s32(vaddq_s32(ni, vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

static void exp_shift4(const float *x, int64_t n, float shift, float *y) {
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) vst1q_f32(y + j, exp4(vsubq_f32(vld1q_f32(x + j), vdupq_n_f32(shift))));
    for (; j < n; ++j) y[j] = qk_exp_approx(x[j] - shift);
}

static void swiglu4(const float *g, const float *u, int64_t n, float *y) {
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
        const float32x4_t gv = vld1q_f32(g + j);
        const float32x4_t e = exp4(vnegq_f32(gv));
        vst1q_f32(y + j, vmulq_f32(vdivq_f32(gv, vaddq_f32(vdupq_n_f32(1.0f), e)), vld1q_f32(u + j)));
    }
    for (; j < n; ++j) y[j] = g[j] / (1.0f + qk_exp_approx(-g[j])) * u[j];
}

static const qk_ops_table OPS_NEON = {sgemm8, exp_shift4, swiglu4};

const qk_ops_table *qk_ops_neon(void) { return &OPS_NEON; }

qk_gemm_fn qk_gemm_kernel_neon(int wtype) {
    switch (wtype) {
    case QK_F32: case QK_F16: case QK_BF16: return gemm_float;
    case QK_Q4_0: return gemm_q4_0;
    case QK_Q4_1: return gemm_q4_1;
    case QK_Q5_0: return gemm_q5_0;
    case QK_Q5_1: return gemm_q5_1;
    case QK_Q8_0: return gemm_q8_0;
    case QK_Q4_K: return gemm_q4_K;
    case QK_Q5_K: return gemm_q5_K;
    case QK_Q6_K: return gemm_q6_K;
    default: return NULL;
    }
}

#else

qk_gemm_fn qk_gemm_kernel_neon(int wtype) {
    (void)wtype;
    return NULL;
}

const qk_ops_table *qk_ops_neon(void) { return NULL; }

#endif
