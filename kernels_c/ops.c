/* The per-token work of the forward pass besides the matmuls: RMSNorm, RoPE, causal grouped-query
 * attention, SwiGLU and a row log-softmax. Portable C with explicit lanes where a loop reduces (so
 * that no sum is reassociated); the hot inner loops (attention's products, exp) go through the
 * ISA's qk_ops_table. Math conventions follow ggml-cpu where they change results: RMSNorm sums
 * x*x in double and scales by 1/sqrtf(mean + eps); RoPE angles are float products
 * theta *= base^(-2/n_dims), as ggml_rope_cache_init.
 */
#include <math.h>

#include "qkernels.h"

#define LANES 8

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

static int64_t round8(int64_t x) { return (x + 7) & ~(int64_t)7; }

/* Scratch: K transposed (head_dim rows of round8(n_kv_tok)), scores (QK_ATTN_ROWS rows of the same),
 * a block of queries and one of outputs (QK_ATTN_ROWS rows of round8(head_dim) each). */
int64_t qk_attention_scratch_count(int64_t n_kv_tok, int64_t head_dim) {
    if (n_kv_tok < 0 || head_dim <= 0 || n_kv_tok > (INT64_MAX >> 20) || head_dim > (INT64_MAX >> 40)) return QK_ERR_SHAPE;
    return (head_dim + QK_ATTN_ROWS) * round8(n_kv_tok) + 2 * QK_ATTN_ROWS * round8(head_dim);
}

static void sgemm_scalar(int64_t n, int64_t k, const float *A, int64_t lda, const float *B, int64_t ldb, float *C,
                         int64_t ldc) {
    for (int i = 0; i < QK_ATTN_ROWS; ++i) {
        float *c = C + i * ldc;
        for (int64_t x = 0; x < n; ++x) c[x] = 0;
        for (int64_t r = 0; r < k; ++r) {
            const float a = A[i * lda + r], *b = B + r * ldb;
            for (int64_t x = 0; x < n; ++x) c[x] += a * b[x];
        }
    }
}

static void exp_shift_scalar(const float *x, int64_t n, float shift, float *y) {
    for (int64_t j = 0; j < n; ++j) y[j] = qk_exp_approx(x[j] - shift);
}

static void swiglu_scalar(const float *g, const float *u, int64_t n, float *y) {
    for (int64_t j = 0; j < n; ++j) y[j] = g[j] / (1.0f + qk_exp_approx(-g[j])) * u[j];
}

static const qk_ops_table OPS_SCALAR = {sgemm_scalar, exp_shift_scalar, swiglu_scalar};

static const qk_ops_table *ops_table(int isa) {
    switch (isa) {
    case QK_ISA_SCALAR: return &OPS_SCALAR;
    case QK_ISA_AVX2: return qk_best_isa() == QK_ISA_AVX2 ? qk_ops_avx2() : NULL;
    case QK_ISA_NEON: return qk_best_isa() == QK_ISA_NEON ? qk_ops_neon() : NULL;
    default: return NULL;
    }
}

/* max over a row, kept in LANES independent lanes (the same value as one sequential scan). */
static float row_max(const float *s, int64_t n) {
    float m[LANES];
    for (int l = 0; l < LANES; ++l) m[l] = -INFINITY;
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int l = 0; l < LANES; ++l) m[l] = s[j + l] > m[l] ? s[j + l] : m[l];
    for (; j < n; ++j) m[0] = s[j] > m[0] ? s[j] : m[0];
    float max = m[0];
    for (int l = 1; l < LANES; ++l) max = m[l] > max ? m[l] : max;
    return max;
}

/* sum over a row in double, LANES partial sums added pairwise at the end. */
static double row_sum(const float *s, int64_t n) {
    double a[LANES] = {0};
    int64_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int l = 0; l < LANES; ++l) a[l] += s[j + l];
    for (; j < n; ++j) a[0] += s[j];
    for (int w = LANES / 2; w; w /= 2)
        for (int l = 0; l < w; ++l) a[l] += a[l + w];
    return a[0];
}

/* Blocks of QK_ATTN_ROWS queries: S = Qb K^T over the keys the last of them sees (K transposed, so
 * lanes run over keys), row softmax with the causal cut, then Ob = P V. */
int64_t qk_attention(int isa, const float *q, const float *k, const float *v, float *out, int64_t n_tok,
                     int64_t n_kv_tok, int64_t n_head, int64_t n_head_kv, int64_t head_dim, int64_t kv_tok_stride,
                     int64_t kv_head_stride, int64_t h0, int64_t h1, float scale, float *scratch,
                     int64_t scratch_count) {
    if (n_tok < 0 || n_kv_tok < n_tok || n_head <= 0 || n_head_kv <= 0 || n_head % n_head_kv || head_dim <= 0)
        return QK_ERR_SHAPE;
    if (h0 < 0 || h1 < h0 || h1 > n_head || kv_tok_stride < 0 || kv_head_stride < 0) return QK_ERR_SHAPE;
    if (n_kv_tok && (n_head * head_dim > INT64_MAX / n_kv_tok || kv_head_stride > INT64_MAX / 4 / n_head_kv ||
                     head_dim > INT64_MAX / 4 || kv_tok_stride > INT64_MAX / 2 / n_kv_tok))
        return QK_ERR_SHAPE; /* every offset below then fits in int64 */
    const int64_t need = qk_attention_scratch_count(n_kv_tok, head_dim);
    if (need < 0) return need;
    const qk_ops_table *ops = ops_table(isa);
    if (!ops) return QK_ERR_ISA;
    if (!n_tok || h0 == h1) return 0;
    if (!q || !k || !v || !out || !scratch) return QK_ERR_NULL;
    if (scratch_count < need) return QK_ERR_CAPACITY;
    const int64_t group = n_head / n_head_kv, past = n_kv_tok - n_tok, q_stride = n_head * head_dim;
    const int64_t ldk = round8(n_kv_tok), ldq = round8(head_dim);
    float *kt = scratch;                 /* kt[d * ldk + j] = k[j][d] of the current kv head, 0 past n_kv_tok */
    float *sc = kt + head_dim * ldk;     /* sc[i * ldk + j]: scores, then probabilities */
    float *qb = sc + QK_ATTN_ROWS * ldk; /* qb[i * ldq + d]: the block's queries, 0 past n_tok */
    float *ob = qb + QK_ATTN_ROWS * ldq; /* ob[i * ldq + d]: the block's outputs */
    int64_t loaded = -1;
    for (int64_t h = h0; h < h1; ++h) {
        const int64_t g = h / group;
        if (g != loaded) {
            const float *kh = k + g * kv_head_stride;
            for (int64_t d = 0; d < head_dim; ++d) {
                for (int64_t j = 0; j < n_kv_tok; ++j) kt[d * ldk + j] = kh[j * kv_tok_stride + d];
                for (int64_t j = n_kv_tok; j < ldk; ++j) kt[d * ldk + j] = 0;
            }
            loaded = g;
        }
        for (int64_t t0 = 0; t0 < n_tok; t0 += QK_ATTN_ROWS) {
            const int64_t nq = QK_MIN(QK_ATTN_ROWS, n_tok - t0), n_keys = past + t0 + nq;
            for (int64_t i = 0; i < QK_ATTN_ROWS; ++i)
                for (int64_t d = 0; d < head_dim; ++d) qb[i * ldq + d] = i < nq ? q[(t0 + i) * q_stride + h * head_dim + d] : 0;
            ops->sgemm(round8(n_keys), head_dim, qb, ldq, kt, ldk, sc, ldk);
            for (int64_t i = 0; i < QK_ATTN_ROWS; ++i) {
                float *s = sc + i * ldk;
                const int64_t seen = i < nq ? past + t0 + i + 1 : 0; /* causal: keys 0..seen-1 */
                for (int64_t j = 0; j < seen; ++j) s[j] *= scale;
                const float max = row_max(s, seen);
                ops->exp_shift(s, seen, max, s);
                const float inv = seen ? (float)(1.0 / row_sum(s, seen)) : 0.0f;
                for (int64_t j = 0; j < seen; ++j) s[j] *= inv;
                for (int64_t j = seen; j < n_keys; ++j) s[j] = 0;
            }
            ops->sgemm(head_dim, n_keys, sc, ldk, v + g * kv_head_stride, kv_tok_stride, ob, ldq);
            for (int64_t i = 0; i < nq; ++i) memcpy(out + (t0 + i) * q_stride + h * head_dim, ob + i * ldq, (size_t)head_dim * 4);
        }
    }
    return n_tok * (h1 - h0);
}

int64_t qk_swiglu(int isa, const float *gate, const float *up, int64_t n, float *out) {
    const qk_ops_table *ops = ops_table(isa);
    if (!ops) return QK_ERR_ISA;
    if (n < 0) return QK_ERR_SHAPE;
    if (n && (!gate || !up || !out)) return QK_ERR_NULL;
    ops->swiglu(gate, up, n, out);
    return n;
}

int64_t qk_log_softmax(int isa, const float *x, int64_t n_rows, int64_t n, float *out) {
    const qk_ops_table *ops = ops_table(isa);
    if (!ops) return QK_ERR_ISA;
    if (n_rows < 0 || n <= 0 || (n_rows && n > INT64_MAX / n_rows)) return QK_ERR_SHAPE;
    if (n_rows && (!x || !out)) return QK_ERR_NULL;
    for (int64_t r = 0; r < n_rows; ++r) {
        const float *xr = x + r * n;
        float *o = out + r * n;
        const float max = row_max(xr, n);
        ops->exp_shift(xr, n, max, o);
        const double log_sum = log(row_sum(o, n));
        for (int64_t j = 0; j < n; ++j) o[j] = (float)((double)(xr[j] - max) - log_sum);
    }
    return n_rows * n;
}
