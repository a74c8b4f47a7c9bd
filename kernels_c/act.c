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

/* Token t of a Q8_K panel row (quantize_row_q8_K_ref): per super-block, the value of largest |x|
 * (the first one wins) maps to -127; levels RNE, capped at 127; d = 1/iscale. x == NULL: zeros. */
static void q8_K_row(const float *x, int64_t n, qk_panel_q8_K *p, int t) {
    for (int64_t i = 0; i < n / QK_K; ++i, p++) {
        float amax = 0, max = 0;
        if (x) {
            for (int j = 0; j < QK_K; ++j) {
                const float ax = fabsf(x[j]);
                if (ax > amax) {
                    amax = ax;
                    max = x[j];
                }
            }
        }
        const float iscale = amax ? -127.f / max : 0.0f; /* amax == 0: ggml stores d = 0, qs = 0 */
        int sums[QK_K / 16] = {0};
        for (int j = 0; j < QK_K; ++j) {
            const int v = amax ? QK_MIN(127, qk_nearest_int(iscale * x[j])) : 0;
            p->qs[j / 4][t][j % 4] = (int8_t)v;
            sums[j / 16] += v;
        }
        for (int j = 0; j < QK_K / 16; ++j) p->bsums[j / 2][t][j % 2] = (int16_t)sums[j];
        p->d[t] = amax ? 1 / iscale : 0.0f;
        if (x) x += QK_K;
    }
}

/* Token t of a Q8_0 panel row, as ggml-cpu's quantize_row_q8_0/q8_1 on this architecture (notes 3.5):
 * RNE of x*id, saturated to int8 like the vector packs; sum and s = fp16(d*sum) for Q8_1. */
static void q8_0_row(const float *x, int64_t n, qk_panel_q8_0 *p, int t) {
    for (int64_t i = 0; i < n / 32; ++i, p++) {
        float amax = 0;
        if (x) {
            for (int j = 0; j < 32; ++j) amax = QK_MAX(amax, fabsf(x[j]));
        }
#if defined(__aarch64__) || defined(_M_ARM64)
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
#else
        const float d = amax / 127.f;
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
#endif
        int sum = 0;
        for (int j = 0; j < 32; ++j) {
            const int v = x ? QK_MAX(-128, QK_MIN(127, qk_nearest_int(x[j] * id))) : 0;
            p->qs[j / 4][t][j % 4] = (int8_t)v;
            sum += v;
        }
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
