/* The per-token work of the forward pass besides the matmuls: RMSNorm, RoPE, causal grouped-query
 * attention, SwiGLU and a row log-softmax. Portable C written so that compilers vectorize it
 * without reassociating sums (explicit lanes where a loop reduces). Math conventions follow
 * ggml-cpu where they change results: RMSNorm sums x*x in double and scales by 1/sqrtf(mean + eps);
 * RoPE angles are float products theta *= base^(-2/n_dims), as ggml_rope_cache_init.
 */
#include <math.h>

#include "qkernels.h"

#define LANES 8

/* e^x for softmax and SiLU, within 2 ulp of expf over [-87.3, 88.3] (Cephes' polynomial with a
 * two-part ln 2), inputs clamped to that range; branch-free so that loops over it vectorize. */
static inline float exp_approx(float x) {
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.3f ? 88.3f : x;
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer in the low bits */
    const float t = x * 1.44269504088896341f + magic;
    const float n = t - magic;
    const int32_t ni = (int32_t)(qk_f32_bits(t) - qk_f32_bits(magic));
    const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return p * qk_f32_from_bits((uint32_t)(ni + 127) << 23);
}

/* Dot product of n floats in LANES interleaved partial sums, added pairwise at the end. */
static float dot_lanes(const float *a, const float *b, int64_t n) {
    float acc[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int l = 0; l < LANES; ++l) acc[l] += a[j + l] * b[j + l];
    for (; j < n; ++j) acc[0] += a[j] * b[j];
    for (int w = LANES / 2; w; w /= 2)
        for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
    return acc[0];
}

int64_t qk_rms_norm(const float *x, int64_t n_rows, int64_t n, const float *w, float eps, float *y) {
    if (n_rows < 0 || n <= 0 || (n_rows && n > INT64_MAX / n_rows)) return QK_ERR_SHAPE;
    if (n_rows && (!x || !y)) return QK_ERR_NULL;
    for (int64_t r = 0; r < n_rows; ++r) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        double sum = 0;
        for (int64_t j = 0; j < n; ++j) sum += (double)(xr[j] * xr[j]);
        const float mean = (float)(sum / (double)n);
        const float scale = 1.0f / sqrtf(mean + eps);
        if (w) {
            for (int64_t j = 0; j < n; ++j) yr[j] = xr[j] * scale * w[j];
        } else {
            for (int64_t j = 0; j < n; ++j) yr[j] = xr[j] * scale;
        }
    }
    return n_rows * n;
}

int64_t qk_rope(float *x, int64_t n_tok, int64_t n_head, int64_t head_dim, int64_t n_dims, const int32_t *pos,
                float freq_base, float freq_scale, const float *freq_factors, int mode) {
    if (mode != QK_ROPE_NORMAL && mode != QK_ROPE_NEOX) return QK_ERR_SHAPE;
    if (n_tok < 0 || n_head <= 0 || head_dim <= 0 || n_dims <= 0 || n_dims % 2 || n_dims > head_dim) return QK_ERR_SHAPE;
    if (n_tok && n_head * head_dim > INT64_MAX / n_tok) return QK_ERR_SHAPE;
    if (n_tok && (!x || !pos)) return QK_ERR_NULL;
    const float theta_scale = powf(freq_base, -2.0f / (float)n_dims);
    const int64_t half = n_dims / 2;
    for (int64_t t = 0; t < n_tok; ++t) {
        float theta = (float)pos[t];
        float *xt = x + t * n_head * head_dim;
        for (int64_t i = 0; i < half; ++i) {
            const float ff = freq_factors ? freq_factors[i] : 1.0f;
            const float angle = freq_scale * (theta / ff);
            const float c = cosf(angle), s = sinf(angle);
            const int64_t i0 = mode == QK_ROPE_NEOX ? i : 2 * i, i1 = mode == QK_ROPE_NEOX ? i + half : 2 * i + 1;
            for (int64_t h = 0; h < n_head; ++h) {
                float *v = xt + h * head_dim;
                const float x0 = v[i0], x1 = v[i1];
                v[i0] = x0 * c - x1 * s;
                v[i1] = x0 * s + x1 * c;
            }
            theta *= theta_scale;
        }
    }
    return n_tok * n_head;
}

int64_t qk_attention(const float *q, const float *k, const float *v, float *out, int64_t n_tok, int64_t n_kv_tok,
                     int64_t n_head, int64_t n_head_kv, int64_t head_dim, int64_t kv_tok_stride,
                     int64_t kv_head_stride, int64_t h0, int64_t h1, float scale, float *scratch,
                     int64_t scratch_count) {
    if (n_tok < 0 || n_kv_tok < n_tok || n_head <= 0 || n_head_kv <= 0 || n_head % n_head_kv || head_dim <= 0)
        return QK_ERR_SHAPE;
    if (h0 < 0 || h1 < h0 || h1 > n_head || kv_tok_stride < 0 || kv_head_stride < 0) return QK_ERR_SHAPE;
    if (n_kv_tok && (n_head * head_dim > INT64_MAX / n_kv_tok || kv_head_stride > INT64_MAX / 4 / n_head_kv ||
                     head_dim > INT64_MAX / 4 || kv_tok_stride > INT64_MAX / 2 / n_kv_tok))
        return QK_ERR_SHAPE; /* every offset below then fits in int64 */
    if (!n_tok || h0 == h1) return 0;
    if (!q || !k || !v || !out || !scratch) return QK_ERR_NULL;
    if (scratch_count < n_kv_tok) return QK_ERR_CAPACITY;
    const int64_t group = n_head / n_head_kv, past = n_kv_tok - n_tok;
    const int64_t q_stride = n_head * head_dim, kv_stride = kv_tok_stride;
    for (int64_t h = h0; h < h1; ++h) {
        const float *kh = k + h / group * kv_head_stride, *vh = v + h / group * kv_head_stride;
        for (int64_t t = 0; t < n_tok; ++t) {
            const float *qt = q + t * q_stride + h * head_dim;
            float *o = out + t * q_stride + h * head_dim;
            const int64_t n_keys = past + t + 1;
            float max = -INFINITY;
            for (int64_t j = 0; j < n_keys; ++j) {
                scratch[j] = dot_lanes(qt, kh + j * kv_stride, head_dim) * scale;
                max = scratch[j] > max ? scratch[j] : max;
            }
            for (int64_t j = 0; j < n_keys; ++j) scratch[j] = exp_approx(scratch[j] - max);
            double sum = 0;
            for (int64_t j = 0; j < n_keys; ++j) sum += scratch[j];
            for (int64_t d = 0; d < head_dim; ++d) o[d] = 0;
            for (int64_t j = 0; j < n_keys; ++j) {
                const float pj = scratch[j], *vj = vh + j * kv_stride;
                for (int64_t d = 0; d < head_dim; ++d) o[d] += pj * vj[d];
            }
            const float inv = (float)(1.0 / sum);
            for (int64_t d = 0; d < head_dim; ++d) o[d] *= inv;
        }
    }
    return n_tok * (h1 - h0);
}

int64_t qk_swiglu(const float *gate, const float *up, int64_t n, float *out) {
    if (n < 0) return QK_ERR_SHAPE;
    if (n && (!gate || !up || !out)) return QK_ERR_NULL;
    for (int64_t j = 0; j < n; ++j) out[j] = gate[j] / (1.0f + exp_approx(-gate[j])) * up[j];
    return n;
}

int64_t qk_log_softmax(const float *x, int64_t n_rows, int64_t n, float *out) {
    if (n_rows < 0 || n <= 0 || (n_rows && n > INT64_MAX / n_rows)) return QK_ERR_SHAPE;
    if (n_rows && (!x || !out)) return QK_ERR_NULL;
    for (int64_t r = 0; r < n_rows; ++r) {
        const float *xr = x + r * n;
        float *o = out + r * n;
        float max = xr[0];
        for (int64_t j = 1; j < n; ++j) max = xr[j] > max ? xr[j] : max;
        double sum = 0;
        for (int64_t j = 0; j < n; ++j) o[j] = exp_approx(xr[j] - max);
        for (int64_t j = 0; j < n; ++j) sum += o[j];
        const double log_sum = log(sum);
        for (int64_t j = 0; j < n; ++j) o[j] = (float)((double)(xr[j] - max) - log_sum);
    }
    return n_rows * n;
}
