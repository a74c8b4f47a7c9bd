/* Scalar reference kernels: QK_ROWS unpacked weight rows times the QK_PANEL tokens of one
 * activation panel (layouts in qkernels.h; reference notes 3.2-3.4). dot_avx2.c and dot_neon.c
 * mirror these signatures and results.
 *
 * The integer sum of each block is exact; the float steps per block are the acc_* helpers below,
 * and the SIMD files do the same multiplies and adds in the same order (tokens side by side in
 * vector lanes), so the quantized types give the same float bits on every ISA. Float weights
 * (F32/F16/BF16) accumulate sequentially here; the SIMD files keep partial sums and use FMA.
 */
#include "qkernels.h"

/* K-quants: super-block sum d*dy*isum - dmin*dy*msum, msum = sum of mins * activation sums. */
static float acc_kquant(float acc, float dx, float dmx, float dy, int32_t isum, int32_t msum) {
    return acc + ((dx * dy) * (float)isum - (dmx * dy) * (float)msum);
}

/* Q6_K and the symmetric 32-blocks (Q4_0, Q5_0, Q8_0): d*dy*isum. */
static float acc_sym(float acc, float dx, float dy, int32_t isum) { return acc + (dx * dy) * (float)isum; }

/* Asymmetric 32-blocks (Q4_1, Q5_1): d*dy*isum + m*s, s = the activation's fp16(dy*sum). */
static float acc_asym(float acc, float dx, float mx, float dy, float sy, int32_t isum) {
    return acc + ((dx * dy) * (float)isum + mx * sy);
}

/* Value k of token t of a Q8 panel block. */
#define ACT(p, k, t) ((p)->qs[(k) / 4][t][(k) % 4])

typedef struct {
    const uint8_t *q;
    const int16_t *sc;
    const float *d, *dm;
} urow;

static urow row_parts(const uint8_t *rows, const qk_urow_layout *L, int r) {
    const uint8_t *row = rows + r * L->size;
    return (urow){row + L->q, (const int16_t *)(row + L->sc), (const float *)(row + L->d), (const float *)(row + L->dm)};
}

/* Q4_K, Q5_K (unsigned levels, scale and min per 32) and Q6_K (levels - 32, signed scale per 16). */
static void gemm_kquant(int wtype, const uint8_t *rows, const qk_urow_layout *L, const void *panel, int64_t n,
                        float out[QK_ROWS][QK_PANEL]) {
    const qk_panel_q8_K *p = panel;
    const int q6 = wtype == QK_Q6_K, sub = q6 ? 16 : 32;
    for (int r = 0; r < QK_ROWS; ++r) {
        const urow w = row_parts(rows, L, r);
        const uint32_t *mn = (const uint32_t *)(rows + r * L->size + L->mn);
        for (int t = 0; t < QK_PANEL; ++t) {
            float acc = 0;
            for (int64_t i = 0; i < n / QK_K; ++i) {
                const uint8_t *q = w.q + QK_K * i;
                int32_t isum = 0, msum = 0;
                for (int s = 0; s < QK_K / sub; ++s) {
                    int32_t dot = 0;
                    for (int l = sub * s; l < sub * s + sub; ++l) dot += (q[l] - (q6 ? 32 : 0)) * ACT(p + i, l, t);
                    isum += w.sc[QK_K / sub * i + s] * dot;
                }
                if (q6) {
                    acc = acc_sym(acc, w.d[i], p[i].d[t], isum);
                    continue;
                }
                for (int s = 0; s < 8; ++s)
                    msum += (int16_t)(mn[8 * i + s] & 0xffff) * (p[i].bsums[s][t][0] + p[i].bsums[s][t][1]);
                acc = acc_kquant(acc, w.d[i], w.dm[i], p[i].d[t], isum, msum);
            }
            out[r][t] = acc;
        }
    }
}

/* The 32-blocks: level offset 8 (Q4_0), 16 (Q5_0), 0 (Q4_1/Q5_1, which add m*s); Q8_0 signed. */
static void gemm_legacy(int wtype, const uint8_t *rows, const qk_urow_layout *L, const void *panel, int64_t n,
                        float out[QK_ROWS][QK_PANEL]) {
    const qk_panel_q8_0 *p = panel;
    const int offset = wtype == QK_Q4_0 ? 8 : wtype == QK_Q5_0 ? 16 : 0;
    const int asym = wtype == QK_Q4_1 || wtype == QK_Q5_1;
    for (int r = 0; r < QK_ROWS; ++r) {
        const urow w = row_parts(rows, L, r);
        for (int t = 0; t < QK_PANEL; ++t) {
            float acc = 0;
            for (int64_t i = 0; i < n / 32; ++i) {
                int32_t isum = 0;
                for (int l = 0; l < 32; ++l) {
                    const int q = wtype == QK_Q8_0 ? (int8_t)w.q[32 * i + l] : w.q[32 * i + l] - offset;
                    isum += q * ACT(p + i, l, t);
                }
                acc = asym ? acc_asym(acc, w.d[i], w.dm[i], p[i].d[t], p[i].s[t], isum) : acc_sym(acc, w.d[i], p[i].d[t], isum);
            }
            out[r][t] = acc;
        }
    }
}

static void gemm_float(const uint8_t *rows, const qk_urow_layout *L, const void *panel, int64_t n,
                       float out[QK_ROWS][QK_PANEL]) {
    const float *x = panel;
    for (int r = 0; r < QK_ROWS; ++r) {
        const float *w = (const float *)(rows + r * L->size + L->q);
        for (int t = 0; t < QK_PANEL; ++t) {
            float acc = 0;
            for (int64_t k = 0; k < n; ++k) acc += w[k] * x[k * QK_PANEL + t];
            out[r][t] = acc;
        }
    }
}

#define KERNEL(name, call)                                                                          \
    static void name(const uint8_t *rows, const qk_urow_layout *L, const void *p, int64_t n,         \
                     float out[QK_ROWS][QK_PANEL]) {                                                 \
        call;                                                                                       \
    }
KERNEL(gemm_q4_K, gemm_kquant(QK_Q4_K, rows, L, p, n, out))
KERNEL(gemm_q5_K, gemm_kquant(QK_Q5_K, rows, L, p, n, out))
KERNEL(gemm_q6_K, gemm_kquant(QK_Q6_K, rows, L, p, n, out))
KERNEL(gemm_q8_0, gemm_legacy(QK_Q8_0, rows, L, p, n, out))
KERNEL(gemm_q4_0, gemm_legacy(QK_Q4_0, rows, L, p, n, out))
KERNEL(gemm_q4_1, gemm_legacy(QK_Q4_1, rows, L, p, n, out))
KERNEL(gemm_q5_0, gemm_legacy(QK_Q5_0, rows, L, p, n, out))
KERNEL(gemm_q5_1, gemm_legacy(QK_Q5_1, rows, L, p, n, out))
#undef KERNEL

qk_gemm_fn qk_gemm_kernel_scalar(int wtype) {
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
