/* AVX2 mirrors of dot.c: the same signatures and, for the quantized types, the same float bits.
 *
 * Only these functions carry target("avx2,fma,f16c"); the rest of the extension stays baseline
 * x86-64, and matmul.c calls them only when cpuid says the CPU runs them.
 *
 * One ymm holds the QK_PANEL = 8 tokens of a panel, 4 consecutive int8 activations per token; the
 * 4 matching weight levels of a row are broadcast to all lanes, and maddubs (u8 x s8, adjacent
 * pairs summed to int16) gives 2 partial products per token. The int16 sums run over DEPTH groups
 * before they widen (madd by the block or sub-block scale, or by 1), as deep as no lane can
 * overflow: a pair is at most 2 * 15 * 127 = 3810 for 4-bit levels (8 groups: 30480), 2 * 31 * 127
 * for 5-bit (4 groups), 2 * 63 * 127 for Q6_K (2 groups), 2 * 128 * 127 for Q8_0 (1 group; its
 * signed weights go through |w| and sign(w) * a). Each row keeps one int32 vector per block, then
 * the block's float step runs for the 8 tokens side by side, as dot.c's acc_* do one at a time.
 */
#include "qkernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX2_INLINE AVX2 __attribute__((always_inline))

static inline AVX2_INLINE __m256i load256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* 4 weight levels broadcast to every 32-bit lane. */
static inline AVX2_INLINE __m256i bcast4(const uint8_t *q) {
    int32_t v;
    memcpy(&v, q, 4);
    return _mm256_set1_epi32(v);
}

/* The float steps of dot.c for 8 tokens (dy, sy, isum, msum: one lane per token). */
static inline AVX2_INLINE __m256 acc_kquant(__m256 acc, float dx, float dmx, __m256 dy, __m256i isum, __m256i msum) {
    const __m256 a = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(dx), dy), _mm256_cvtepi32_ps(isum));
    const __m256 b = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(dmx), dy), _mm256_cvtepi32_ps(msum));
    return _mm256_add_ps(acc, _mm256_sub_ps(a, b));
}
static inline AVX2_INLINE __m256 acc_sym(__m256 acc, float dx, __m256 dy, __m256i isum) {
    return _mm256_add_ps(acc, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(dx), dy), _mm256_cvtepi32_ps(isum)));
}
static inline AVX2_INLINE __m256 acc_asym(__m256 acc, float dx, float mx, __m256 dy, __m256 sy, __m256i isum) {
    const __m256 a = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(dx), dy), _mm256_cvtepi32_ps(isum));
    return _mm256_add_ps(acc, _mm256_add_ps(a, _mm256_mul_ps(_mm256_set1_ps(mx), sy)));
}

/* The parts of the QK_ROWS unpacked rows. */
typedef struct {
    const uint8_t *q[QK_ROWS];
    const int16_t *sc[QK_ROWS];
    const uint32_t *mn[QK_ROWS];
    const float *d[QK_ROWS], *dm[QK_ROWS];
} rows4;

static inline AVX2_INLINE rows4 parts(const uint8_t *rows, const qk_urow_layout *L) {
    rows4 w;
    for (int r = 0; r < QK_ROWS; ++r) {
        const uint8_t *row = rows + r * L->size;
        w.q[r] = row + L->q;
        w.sc[r] = (const int16_t *)(row + L->sc);
        w.mn[r] = (const uint32_t *)(row + L->mn);
        w.d[r] = (const float *)(row + L->d);
        w.dm[r] = (const float *)(row + L->dm);
    }
    return w;
}

/* int16 sums over groups g0 .. g0+depth-1 (values 4g0 .. of q) for the four rows: act holds the
 * activation groups of the same values. */
static inline AVX2_INLINE void groups16(const rows4 *w, int64_t k0, const int8_t (*act)[QK_PANEL][4], int depth,
                                        __m256i s16[QK_ROWS]) {
    for (int r = 0; r < QK_ROWS; ++r) s16[r] = _mm256_setzero_si256();
#pragma GCC unroll 2
    for (int g = 0; g < depth; ++g) {
        const __m256i a = load256(act[g]);
        for (int r = 0; r < QK_ROWS; ++r)
            s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(bcast4(w->q[r] + k0 + 4 * g), a));
    }
}

static inline AVX2_INLINE void store_rows(const __m256 acc[QK_ROWS], float out[QK_ROWS][QK_PANEL]) {
    for (int r = 0; r < QK_ROWS; ++r) _mm256_storeu_ps(out[r], acc[r]);
}

/* ---- K-quants ------------------------------------------------------------------------------ */

/* Q4_K (depth 8) and Q5_K (depth 4): scale and min per sub-block of 32. */
static inline AVX2_INLINE void gemm_k45(int depth, const uint8_t *rows, const qk_urow_layout *L, const void *panel,
                                        int64_t n, float out[QK_ROWS][QK_PANEL]) {
    const qk_panel_q8_K *p = panel;
    const rows4 w = parts(rows, L);
    __m256 acc[QK_ROWS];
    for (int r = 0; r < QK_ROWS; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        __m256i s32[QK_ROWS];
        for (int r = 0; r < QK_ROWS; ++r) s32[r] = _mm256_setzero_si256();
        for (int s = 0; s < 8; ++s) {
            for (int h = 0; h < 8; h += depth) {
                __m256i s16[QK_ROWS];
                groups16(&w, QK_K * i + 32 * s + 4 * h, p[i].qs + 8 * s + h, depth, s16);
                for (int r = 0; r < QK_ROWS; ++r)
                    s32[r] = _mm256_add_epi32(s32[r], _mm256_madd_epi16(s16[r], _mm256_set1_epi16(w.sc[r][8 * i + s])));
            }
        }
        const __m256 dy = _mm256_loadu_ps(p[i].d);
        for (int r = 0; r < QK_ROWS; ++r) {
            __m256i ms = _mm256_setzero_si256();
            for (int s = 0; s < 8; ++s)
                ms = _mm256_add_epi32(ms, _mm256_madd_epi16(load256(p[i].bsums[s]), _mm256_set1_epi32((int)w.mn[r][8 * i + s])));
            acc[r] = acc_kquant(acc[r], w.d[r][i], w.dm[r][i], dy, s32[r], ms);
        }
    }
    store_rows(acc, out);
}

static AVX2 void gemm_q4_K(const uint8_t *rows, const qk_urow_layout *L, const void *p, int64_t n, float out[QK_ROWS][QK_PANEL]) {
    gemm_k45(8, rows, L, p, n, out);
}
static AVX2 void gemm_q5_K(const uint8_t *rows, const qk_urow_layout *L, const void *p, int64_t n, float out[QK_ROWS][QK_PANEL]) {
    gemm_k45(4, rows, L, p, n, out);
}

/* Q6_K: unsigned levels 0..63 (depth 2) with a signed scale per 16, then minus
 * 32 * sum_s scale[s] * bsums[s] (madd of the (scale, scale) pairs in mn with the bsums pairs). */
static AVX2 void gemm_q6_K(const uint8_t *rows, const qk_urow_layout *L, const void *panel, int64_t n,
                           float out[QK_ROWS][QK_PANEL]) {
    const qk_panel_q8_K *p = panel;
    const rows4 w = parts(rows, L);
    __m256 acc[QK_ROWS];
    for (int r = 0; r < QK_ROWS; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        __m256i s32[QK_ROWS];
        for (int r = 0; r < QK_ROWS; ++r) s32[r] = _mm256_setzero_si256();
        for (int s = 0; s < 16; ++s) {
            for (int h = 0; h < 4; h += 2) {
                __m256i s16[QK_ROWS];
                groups16(&w, QK_K * i + 16 * s + 4 * h, p[i].qs + 4 * s + h, 2, s16);
                for (int r = 0; r < QK_ROWS; ++r)
                    s32[r] = _mm256_add_epi32(s32[r], _mm256_madd_epi16(s16[r], _mm256_set1_epi16(w.sc[r][16 * i + s])));
            }
        }
        const __m256 dy = _mm256_loadu_ps(p[i].d);
        for (int r = 0; r < QK_ROWS; ++r) {
            __m256i off = _mm256_setzero_si256();
            for (int s = 0; s < 8; ++s)
                off = _mm256_add_epi32(off, _mm256_madd_epi16(load256(p[i].bsums[s]), _mm256_set1_epi32((int)w.mn[r][8 * i + s])));
            acc[r] = acc_sym(acc[r], w.d[r][i], dy, _mm256_sub_epi32(s32[r], _mm256_slli_epi32(off, 5)));
        }
    }
    store_rows(acc, out);
}

/* ---- 32-blocks ----------------------------------------------------------------------------- */

/* Q4_0/Q4_1 (levels 0..15, depth 8), Q5_0/Q5_1 (0..31, depth 4): sum of levels * activations,
 * minus offset * sum of activations for the symmetric ones; Q4_1/Q5_1 add m * s. */
static inline AVX2_INLINE void gemm_legacy(int depth, int offset_shift, int asym, const uint8_t *rows,
                                           const qk_urow_layout *L, const void *panel, int64_t n,
                                           float out[QK_ROWS][QK_PANEL]) {
    const qk_panel_q8_0 *p = panel;
    const rows4 w = parts(rows, L);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[QK_ROWS];
    for (int r = 0; r < QK_ROWS; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 32; ++i) {
        __m256i s32[QK_ROWS];
        for (int r = 0; r < QK_ROWS; ++r) s32[r] = _mm256_setzero_si256();
        for (int h = 0; h < 8; h += depth) {
            __m256i s16[QK_ROWS];
            groups16(&w, 32 * i + 4 * h, p[i].qs + h, depth, s16);
            for (int r = 0; r < QK_ROWS; ++r) s32[r] = _mm256_add_epi32(s32[r], _mm256_madd_epi16(s16[r], ones));
        }
        const __m256 dy = _mm256_loadu_ps(p[i].d);
        const __m256i off = asym ? _mm256_setzero_si256() : _mm256_slli_epi32(load256(p[i].sum), offset_shift);
        for (int r = 0; r < QK_ROWS; ++r) {
            const __m256i isum = _mm256_sub_epi32(s32[r], off);
            acc[r] = asym ? acc_asym(acc[r], w.d[r][i], w.dm[r][i], dy, _mm256_loadu_ps(p[i].s), isum)
                          : acc_sym(acc[r], w.d[r][i], dy, isum);
        }
    }
    store_rows(acc, out);
}

static AVX2 void gemm_q4_0(const uint8_t *rows, const qk_urow_layout *L, const void *p, int64_t n, float out[QK_ROWS][QK_PANEL]) {
    gemm_legacy(8, 3, 0, rows, L, p, n, out);
}
static AVX2 void gemm_q5_0(const uint8_t *rows, const qk_urow_layout *L, const void *p, int64_t n, float out[QK_ROWS][QK_PANEL]) {
    gemm_legacy(4, 4, 0, rows, L, p, n, out);
}
static AVX2 void gemm_q4_1(const uint8_t *rows, const qk_urow_layout *L, const void *p, int64_t n, float out[QK_ROWS][QK_PANEL]) {
    gemm_legacy(8, 0, 1, rows, L, p, n, out);
}
static AVX2 void gemm_q5_1(const uint8_t *rows, const qk_urow_layout *L, const void *p, int64_t n, float out[QK_ROWS][QK_PANEL]) {
    gemm_legacy(4, 0, 1, rows, L, p, n, out);
}

/* Q8_0: |w| (unsigned) times sign(w) * a, one group per int16 sum. */
static AVX2 void gemm_q8_0(const uint8_t *rows, const qk_urow_layout *L, const void *panel, int64_t n,
                           float out[QK_ROWS][QK_PANEL]) {
    const qk_panel_q8_0 *p = panel;
    const rows4 w = parts(rows, L);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[QK_ROWS];
    for (int r = 0; r < QK_ROWS; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 32; ++i) {
        __m256i s32[QK_ROWS];
        for (int r = 0; r < QK_ROWS; ++r) s32[r] = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int g = 0; g < 8; ++g) {
            const __m256i a = load256(p[i].qs[g]);
            for (int r = 0; r < QK_ROWS; ++r) {
                const __m256i x = bcast4(w.q[r] + 32 * i + 4 * g);
                const __m256i prod = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(a, x));
                s32[r] = _mm256_add_epi32(s32[r], _mm256_madd_epi16(prod, ones));
            }
        }
        const __m256 dy = _mm256_loadu_ps(p[i].d);
        for (int r = 0; r < QK_ROWS; ++r) acc[r] = acc_sym(acc[r], w.d[r][i], dy, s32[r]);
    }
    store_rows(acc, out);
}

/* ---- float weights: 8 tokens per FMA, two partial sums per row (even and odd values) -------- */

static AVX2 void gemm_float(const uint8_t *rows, const qk_urow_layout *L, const void *panel, int64_t n,
                            float out[QK_ROWS][QK_PANEL]) {
    _Static_assert(QK_ROWS == 4, "gemm_float names its four rows");
    const float *x = panel;
    const float *w0 = (const float *)(rows + L->q), *w1 = (const float *)(rows + L->size + L->q);
    const float *w2 = (const float *)(rows + 2 * L->size + L->q), *w3 = (const float *)(rows + 3 * L->size + L->q);
    __m256 e0 = _mm256_setzero_ps(), e1 = e0, e2 = e0, e3 = e0, o0 = e0, o1 = e0, o2 = e0, o3 = e0;
    int64_t k = 0;
    for (; k + 2 <= n; k += 2) {
        const __m256 xe = _mm256_loadu_ps(x + k * QK_PANEL), xo = _mm256_loadu_ps(x + (k + 1) * QK_PANEL);
        e0 = _mm256_fmadd_ps(_mm256_broadcast_ss(w0 + k), xe, e0);
        e1 = _mm256_fmadd_ps(_mm256_broadcast_ss(w1 + k), xe, e1);
        e2 = _mm256_fmadd_ps(_mm256_broadcast_ss(w2 + k), xe, e2);
        e3 = _mm256_fmadd_ps(_mm256_broadcast_ss(w3 + k), xe, e3);
        o0 = _mm256_fmadd_ps(_mm256_broadcast_ss(w0 + k + 1), xo, o0);
        o1 = _mm256_fmadd_ps(_mm256_broadcast_ss(w1 + k + 1), xo, o1);
        o2 = _mm256_fmadd_ps(_mm256_broadcast_ss(w2 + k + 1), xo, o2);
        o3 = _mm256_fmadd_ps(_mm256_broadcast_ss(w3 + k + 1), xo, o3);
    }
    if (k < n) {
        const __m256 xe = _mm256_loadu_ps(x + k * QK_PANEL);
        e0 = _mm256_fmadd_ps(_mm256_broadcast_ss(w0 + k), xe, e0);
        e1 = _mm256_fmadd_ps(_mm256_broadcast_ss(w1 + k), xe, e1);
        e2 = _mm256_fmadd_ps(_mm256_broadcast_ss(w2 + k), xe, e2);
        e3 = _mm256_fmadd_ps(_mm256_broadcast_ss(w3 + k), xe, e3);
    }
    _mm256_storeu_ps(out[0], _mm256_add_ps(e0, o0));
    _mm256_storeu_ps(out[1], _mm256_add_ps(e1, o1));
    _mm256_storeu_ps(out[2], _mm256_add_ps(e2, o2));
    _mm256_storeu_ps(out[3], _mm256_add_ps(e3, o3));
}

/* ---- attention's small float products (ops.c) --------------------------------------------- */

/* C[i][x] = sum_r A[i][r] B[r][x] for QK_ATTN_ROWS = 8 rows: 8 lanes of x, A broadcast, FMA. The
 * last x block of fewer than 8 goes through masked loads and stores. */
static AVX2 void sgemm8(int64_t n, int64_t k, const float *A, int64_t lda, const float *B, int64_t ldb, float *C,
                        int64_t ldc) {
    _Static_assert(QK_ATTN_ROWS == 8, "sgemm8 names its eight rows");
    for (int64_t x = 0; x < n; x += 8) {
        const int64_t left = n - x;
        const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)QK_MIN(left, 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
        for (int64_t r = 0; r < k; ++r) {
            const float *a = A + r;
            const __m256 b = left >= 8 ? _mm256_loadu_ps(B + r * ldb + x) : _mm256_maskload_ps(B + r * ldb + x, mask);
            c0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a), b, c0);
            c1 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + lda), b, c1);
            c2 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 2 * lda), b, c2);
            c3 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 3 * lda), b, c3);
            c4 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 4 * lda), b, c4);
            c5 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 5 * lda), b, c5);
            c6 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 6 * lda), b, c6);
            c7 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 7 * lda), b, c7);
        }
        const __m256 c[8] = {c0, c1, c2, c3, c4, c5, c6, c7};
        for (int i = 0; i < 8; ++i) {
            if (left >= 8) {
                _mm256_storeu_ps(C + i * ldc + x, c[i]);
            } else {
                _mm256_maskstore_ps(C + i * ldc + x, mask, c[i]);
            }
        }
    }
}

/* qk_exp_approx on 8 lanes, the same operations in the same order (max/min clamp: the same for
 * every non-NaN input). */
static inline AVX2_INLINE __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(QK_EXP_LO)), _mm256_set1_ps(QK_EXP_HI));
    const __m256 magic = _mm256_set1_ps(QK_EXP_MAGIC);
    const __m256 t = _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(QK_EXP_LOG2E)), magic);
    const __m256 n = _mm256_sub_ps(t, magic);
    const __m256i ni = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(magic));
    const __m256 r = _mm256_sub_ps(_mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(QK_EXP_LN2_HI))),
                                   _mm256_mul_ps(n, _mm256_set1_ps(QK_EXP_LN2_LO)));
    __m256 p = _mm256_set1_ps(QK_EXP_P0);
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(QK_EXP_P1));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(QK_EXP_P2));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(QK_EXP_P3));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(QK_EXP_P4));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(QK_EXP_P5));
    p = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), r), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static AVX2 void exp_shift8(const float *x, int64_t n, float shift, float *y) {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(y + j, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), _mm256_set1_ps(shift))));
    for (; j < n; ++j) y[j] = qk_exp_approx(x[j] - shift);
}

static AVX2 void swiglu8(const float *g, const float *u, int64_t n, float *y) {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 gv = _mm256_loadu_ps(g + j);
        const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
        _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), _mm256_loadu_ps(u + j)));
    }
    for (; j < n; ++j) y[j] = g[j] / (1.0f + qk_exp_approx(-g[j])) * u[j];
}

static const qk_ops_table OPS_AVX2 = {sgemm8, exp_shift8, swiglu8};

const qk_ops_table *qk_ops_avx2(void) { return &OPS_AVX2; }

qk_gemm_fn qk_gemm_kernel_avx2(int wtype) {
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

qk_gemm_fn qk_gemm_kernel_avx2(int wtype) {
    (void)wtype;
    return NULL;
}

const qk_ops_table *qk_ops_avx2(void) { return NULL; }

#endif
