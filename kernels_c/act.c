/* Activation quantization for the matmul (reference notes 2.12, 3.2, 3.5), into panels of
 * QK_PANEL tokens (qkernels.h). The same code serves every ISA, so every ISA's dot products read
 * the same activation bytes.
 *
 * Bit-exact code: Q8_K is quantize_row_q8_K_ref; Q8_0/Q8_1 are what ggml's CPU backend runs on
 * this architecture (x86: scale 127/amax, aarch64: 1/(amax/127); both round to nearest even).
 */
#include <math.h>

#include "qkernels.h"

int qk_act_format(int wtype) {
    switch (wtype) {
    case QK_F32: return QK_ACT_F32;
    case QK_F16: return QK_ACT_F16;
    case QK_BF16: return QK_ACT_BF16;
    case QK_Q4_0: case QK_Q4_1: case QK_Q5_0: case QK_Q5_1: case QK_Q8_0: return QK_ACT_Q8_0;
    case QK_Q4_K: case QK_Q5_K: case QK_Q6_K: return QK_ACT_Q8_K;
    default: return QK_ERR_TYPE;
    }
}

/* Bytes of one panel of n_in values, or a status. */
static int64_t panel_bytes(int format, int64_t n_in) {
    int64_t block, size;
    switch (format) {
    case QK_ACT_Q8_K: block = QK_K, size = sizeof(qk_panel_q8_K); break;
    case QK_ACT_Q8_0: block = 32, size = sizeof(qk_panel_q8_0); break;
    default: block = 1, size = QK_PANEL * sizeof(float); break;
    }
    if (n_in <= 0 || n_in % block || n_in / block > INT64_MAX / size) return QK_ERR_SHAPE;
    return n_in / block * size;
}

int64_t qk_act_bytes(int wtype, int64_t n_tok, int64_t n_in) {
    const int format = qk_act_format(wtype);
    if (format < 0) return format;
    const int64_t pb = panel_bytes(format, n_in);
    if (pb < 0) return pb;
    if (n_tok < 0) return QK_ERR_SHAPE;
    const int64_t n_panels = n_tok / QK_PANEL + (n_tok % QK_PANEL != 0);
    if (n_panels > INT64_MAX / pb) return QK_ERR_SHAPE;
    return n_panels * pb;
}

/* max |x[j]| over n (a multiple of 8) values; NaNs never win, as in ggml's `ax > amax` scans.
 * Eight independent lanes, so that it vectorizes without reordering a float reduction. */
static float absmax(const float *x, int n) {
    float m[8] = {0};
    for (int j = 0; j < n; j += 8)
        for (int l = 0; l < 8; ++l) m[l] = fabsf(x[j + l]) > m[l] ? fabsf(x[j + l]) : m[l];
    float amax = 0;
    for (int l = 0; l < 8; ++l) amax = m[l] > amax ? m[l] : amax;
    return amax;
}

/* The signed value of largest |x|, the first one wins (ggml's strict `>` scan); 0 when all are 0. */
static float signed_absmax(const float *x, int n) {
    const float amax = absmax(x, n);
    for (int j = 0; amax && j < n; ++j)
        if (fabsf(x[j]) == amax) return x[j];
    return 0;
}

/* Token t of a Q8_K panel row (quantize_row_q8_K_ref): per super-block, the value of largest |x|
 * maps to -127; levels RNE, capped at 127; d = 1/iscale; amax == 0 gives d = 0 and zeros, as
 * ggml. x == NULL: zeros. */
static void q8_K_row(const float *x, int64_t n, qk_panel_q8_K *p, int t) {
    for (int64_t i = 0; i < n / QK_K; ++i, p++) {
        const float max = x ? signed_absmax(x, QK_K) : 0.0f;
        const float iscale = max ? -127.f / max : 0.0f;
        int8_t q[QK_K];
        for (int j = 0; j < QK_K; ++j) q[j] = (int8_t)(max ? QK_MIN(127, qk_nearest_int(iscale * x[j])) : 0);
        for (int g = 0; g < QK_K / 4; ++g) memcpy(p->qs[g][t], q + 4 * g, 4);
        for (int j = 0; j < QK_K / 16; ++j) {
            int sum = 0;
            for (int l = 0; l < 16; ++l) sum += q[16 * j + l];
            p->bsums[j / 2][t][j % 2] = (int16_t)sum;
        }
        p->d[t] = max ? 1 / iscale : 0.0f;
        if (x) x += QK_K;
    }
}

/* Token t of a Q8_0 panel row, as ggml-cpu's quantize_row_q8_0/q8_1 on this architecture (notes 3.5):
 * RNE of x*id, saturated to int8 like the vector packs; sum and s = fp16(d*sum) for Q8_1. */
static void q8_0_row(const float *x, int64_t n, qk_panel_q8_0 *p, int t) {
    for (int64_t i = 0; i < n / 32; ++i, p++) {
        const float amax = x ? absmax(x, 32) : 0.0f;
#if defined(__aarch64__) || defined(_M_ARM64)
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
#else
        const float d = amax / 127.f;
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
#endif
        int8_t q[32];
        for (int j = 0; j < 32; ++j) q[j] = (int8_t)(x ? QK_MAX(-128, QK_MIN(127, qk_nearest_int(x[j] * id))) : 0);
        int sum = 0;
        for (int j = 0; j < 32; ++j) sum += q[j];
        for (int g = 0; g < 8; ++g) memcpy(p->qs[g][t], q + 4 * g, 4);
        p->d[t] = qk_fp16_to_fp32(qk_fp32_to_fp16(d));
        p->s[t] = qk_fp16_to_fp32(qk_fp32_to_fp16(d * (float)sum));
        p->sum[t] = sum;
        if (x) x += 32;
    }
}

/* Token t of a float panel (x[k][t]): the row rounded to the weight's element type; NULL: zeros. */
static void float_row(int format, const float *x, int64_t n, float *p, int t) {
    for (int64_t k = 0; k < n; ++k) {
        float v = x ? x[k] : 0.0f;
        if (format == QK_ACT_F16) v = qk_fp16_to_fp32(qk_fp32_to_fp16(v));
        if (format == QK_ACT_BF16) v = qk_bf16_to_fp32(qk_fp32_to_bf16(v));
        p[k * QK_PANEL + t] = v;
    }
}

int64_t qk_quantize_act(int wtype, const float *x, int64_t n_tok, int64_t n_in, void *act, int64_t act_bytes) {
    const int64_t bytes = qk_act_bytes(wtype, n_tok, n_in);
    if (bytes < 0) return bytes;
    if (n_tok && (!x || !act)) return QK_ERR_NULL;
    if (act_bytes < bytes) return QK_ERR_CAPACITY;
    const int format = qk_act_format(wtype);
    const int64_t pb = panel_bytes(format, n_in);
    for (int64_t p = 0; p * QK_PANEL < n_tok; ++p) {
        uint8_t *panel = (uint8_t *)act + p * pb;
        for (int t = 0; t < QK_PANEL; ++t) {
            const int64_t tok = p * QK_PANEL + t;
            const float *row = tok < n_tok ? x + tok * n_in : NULL;
            switch (format) {
            case QK_ACT_Q8_K: q8_K_row(row, n_in, (qk_panel_q8_K *)panel, t); break;
            case QK_ACT_Q8_0: q8_0_row(row, n_in, (qk_panel_q8_0 *)panel, t); break;
            default: float_row(format, row, n_in, (float *)panel, t); break;
            }
        }
    }
    return bytes;
}
