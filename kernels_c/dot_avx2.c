/* AVX2 mirrors of dot.c: the same signatures and, for the quantized types, the same float bits.
 *
 * Only these functions carry target("avx2,fma,f16c"); the rest of the extension stays baseline
 * x86-64, and matmul.c calls them only when cpuid says the CPU runs them.
 *
 * Layout of the work: one weight block is unpacked once into 32-byte vectors of levels, then meets
 * the QK_PANEL tokens of the panel; each token keeps its own int32 accumulator vector, and the four
 * are reduced together (hsum_x4) so the per-block float steps run on the four tokens side by side,
 * as the scalar acc_* helpers do one at a time. Byte products go through maddubs (u8 x s8 -> pairs
 * of int16): every level is unsigned (Q4_0/Q5_0 subtract their offset times the activation sum, Q6_K
 * subtracts 32 times it, Q8_0 moves the sign onto the activation), and no pair sum can saturate:
 * at most 2 * 63 * 127 for Q6_K, 2 * 128 * 127 for Q8_0.
 */
#include "qkernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX2_INLINE AVX2 __attribute__((always_inline))

static inline AVX2 __m256i load256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline AVX2 __m128i load128(const void *p) { return _mm_loadu_si128((const __m128i *)p); }
static inline AVX2 float half(uint16_t h) { return _cvtsh_ss(h); }

/* Lane t of the result = the sum of the 8 int32 lanes of a_t. */
static inline AVX2 __m128i hsum_x4(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* The float steps of dot.c, four tokens at a time (dy, sy, isum, msum: one lane per token). */
static inline AVX2 __m128 acc_kquant(__m128 acc, float dx, float dmx, __m128 dy, __m128i isum, __m128i msum) {
    const __m128 a = _mm_mul_ps(_mm_mul_ps(_mm_set1_ps(dx), dy), _mm_cvtepi32_ps(isum));
    const __m128 b = _mm_mul_ps(_mm_mul_ps(_mm_set1_ps(dmx), dy), _mm_cvtepi32_ps(msum));
    return _mm_add_ps(acc, _mm_sub_ps(a, b));
}
static inline AVX2 __m128 acc_sym(__m128 acc, float dx, __m128 dy, __m128i isum) {
    return _mm_add_ps(acc, _mm_mul_ps(_mm_mul_ps(_mm_set1_ps(dx), dy), _mm_cvtepi32_ps(isum)));
}
static inline AVX2 __m128 acc_asym(__m128 acc, float dx, float mx, __m128 dy, __m128 sy, __m128i isum) {
    const __m128 a = _mm_mul_ps(_mm_mul_ps(_mm_set1_ps(dx), dy), _mm_cvtepi32_ps(isum));
    return _mm_add_ps(acc, _mm_add_ps(a, _mm_mul_ps(_mm_set1_ps(mx), sy)));
}

/* int32 lanes whose sum is sum_j levels[j] * y[j] * scale, for 32 unsigned levels and 32 int8. */
static inline AVX2 __m256i mul_scaled(__m256i levels, const int8_t *y, __m256i scale16) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(levels, load256(y)), scale16);
}

/* ---- K-quants ------------------------------------------------------------------------------ */

/* Q4_K / Q5_K (qh == NULL for Q4_K). Chunk c of 64 elements: low nibbles (sub-block 2c) and high
 * nibbles (2c+1) of qs[32c..32c+31]; Q5_K's fifth bits are bits 2c and 2c+1 of qh[0..31]. */
static inline AVX2_INLINE __m128 dot_kquant(__m128 acc, const uint16_t *dd, const uint8_t *S, const uint8_t *qs,
                                     const uint8_t *qh, const qk_panel_q8_K *p) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), bit4 = _mm256_set1_epi8(0x10);
    uint8_t sc[8], m[8];
    qk_unpack_scales_k4(S, sc, m);
    const __m256i hbits = qh ? load256(qh) : _mm256_setzero_si256();
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    for (int c = 0; c < 4; ++c) {
        const __m256i q = load256(qs + 32 * c);
        __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        if (qh) {
            const __m256i h = _mm256_srli_epi16(hbits, 2 * c);
            lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(h, 4), bit4));
            hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(h, 3), bit4));
        }
        const __m256i sc_lo = _mm256_set1_epi16(sc[2 * c]), sc_hi = _mm256_set1_epi16(sc[2 * c + 1]);
#define STEP(t, s)                                                                                  \
    s = _mm256_add_epi32(s, _mm256_add_epi32(mul_scaled(lo, p->qs[t] + 64 * c, sc_lo),             \
                                             mul_scaled(hi, p->qs[t] + 64 * c + 32, sc_hi)))
        STEP(0, s0);
        STEP(1, s1);
        STEP(2, s2);
        STEP(3, s3);
#undef STEP
    }
    /* mins times the sums of 32 activations (adjacent pairs of the sums of 16) */
    const __m128i mins = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)m));
    __m128i ms[QK_PANEL];
    for (int t = 0; t < QK_PANEL; ++t) {
        const __m128i pairs = _mm_hadd_epi16(load128(p->bsums[t]), load128(p->bsums[t] + 8));
        ms[t] = _mm_madd_epi16(mins, pairs);
    }
    const __m128i msum = _mm_hadd_epi32(_mm_hadd_epi32(ms[0], ms[1]), _mm_hadd_epi32(ms[2], ms[3]));
    return acc_kquant(acc, half(dd[0]), half(dd[1]), _mm_loadu_ps(p->d), hsum_x4(s0, s1, s2, s3), msum);
}

static AVX2 void dot_q4_K(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q4_K *w = vw;
    const qk_panel_q8_K *p = vp;
    __m128 acc = _mm_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const uint16_t dd[2] = {w[i].d, w[i].dmin};
        acc = dot_kquant(acc, dd, w[i].scales, w[i].qs, NULL, p + i);
    }
    _mm_storeu_ps(out, acc);
}

static AVX2 void dot_q5_K(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q5_K *w = vw;
    const qk_panel_q8_K *p = vp;
    __m128 acc = _mm_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const uint16_t dd[2] = {w[i].d, w[i].dmin};
        acc = dot_kquant(acc, dd, w[i].scales, w[i].qs, w[i].qh, p + i);
    }
    _mm_storeu_ps(out, acc);
}

/* Scales of sub-blocks s (lanes 0-7) and s+1 (lanes 8-15) as int16: one maddubs result's halves. */
static inline AVX2 __m256i scale_pair(const int8_t *sc) {
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(sc[0])), _mm_set1_epi16(sc[1]), 1);
}

/* Q6_K (layout in dot.c): unsigned levels 0..63 through maddubs, then minus 32 * sum_s sc[s] * bsums[s]. */
static AVX2 void dot_q6_K(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q6_K *w = vw;
    const qk_panel_q8_K *p = vp;
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x03);
    __m128 acc = _mm_setzero_ps();
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const int8_t *sc = w[i].scales;
        __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
        for (int h = 0; h < 2; ++h) {
            const __m256i ql0 = load256(w[i].ql + 64 * h), ql1 = load256(w[i].ql + 64 * h + 32);
            const __m256i qh = load256(w[i].qh + 32 * h);
            const __m256i q[4] = {
                _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4),
                                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4)),
            };
            for (int k = 0; k < 4; ++k) {
                const __m256i scales = scale_pair(sc + 8 * h + 2 * k);
                const int off = 128 * h + 32 * k;
                s0 = _mm256_add_epi32(s0, mul_scaled(q[k], p[i].qs[0] + off, scales));
                s1 = _mm256_add_epi32(s1, mul_scaled(q[k], p[i].qs[1] + off, scales));
                s2 = _mm256_add_epi32(s2, mul_scaled(q[k], p[i].qs[2] + off, scales));
                s3 = _mm256_add_epi32(s3, mul_scaled(q[k], p[i].qs[3] + off, scales));
            }
        }
        const __m256i sc16 = _mm256_cvtepi8_epi16(load128(sc));
#define OFFSET(t, s) s = _mm256_sub_epi32(s, _mm256_slli_epi32(_mm256_madd_epi16(sc16, load256(p[i].bsums[t])), 5))
        OFFSET(0, s0);
        OFFSET(1, s1);
        OFFSET(2, s2);
        OFFSET(3, s3);
#undef OFFSET
        acc = acc_sym(acc, half(w[i].d), _mm_loadu_ps(p[i].d), hsum_x4(s0, s1, s2, s3));
    }
    _mm_storeu_ps(out, acc);
}

/* ---- 32-blocks ----------------------------------------------------------------------------- */

/* Four int32 sums: tokens 0..3 of panel block p times the 32 unsigned levels q. */
static inline AVX2 __m128i levels_x4(__m256i q, const qk_panel_q8_0 *p) {
    const __m256i ones = _mm256_set1_epi16(1);
    return hsum_x4(_mm256_madd_epi16(_mm256_maddubs_epi16(q, load256(p->qs[0])), ones),
                   _mm256_madd_epi16(_mm256_maddubs_epi16(q, load256(p->qs[1])), ones),
                   _mm256_madd_epi16(_mm256_maddubs_epi16(q, load256(p->qs[2])), ones),
                   _mm256_madd_epi16(_mm256_maddubs_epi16(q, load256(p->qs[3])), ones));
}

/* 32 levels of a 4-bit block in element order: low nibbles (elements 0-15), then high nibbles. */
static inline AVX2 __m256i nibbles(const uint8_t *qs) {
    const __m128i x = load128(qs);
    const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(x), _mm_srli_epi16(x, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

/* Byte j = 0x10 where bit j of the little-endian qh is set (the fifth bit of element j). */
static inline AVX2 __m256i fifth_bits(const uint8_t *qh) {
    uint32_t h;
    memcpy(&h, qh, 4);
    const __m256i shuf = _mm256_setr_epi64x(0x0000000000000000, 0x0101010101010101, 0x0202020202020202,
                                            0x0303030303030303);
    const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)h), shuf);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201);
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
    return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

static AVX2 void dot_q8_0(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q8_0 *w = vw;
    const qk_panel_q8_0 *p = vp;
    const __m256i ones = _mm256_set1_epi16(1);
    __m128 acc = _mm_setzero_ps();
    for (int64_t i = 0; i < n / 32; ++i) {
        const __m256i x = load256(w[i].qs), ax = _mm256_sign_epi8(x, x);
#define SIGNED(t) _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(load256(p[i].qs[t]), x)), ones)
        const __m128i isum = hsum_x4(SIGNED(0), SIGNED(1), SIGNED(2), SIGNED(3));
#undef SIGNED
        acc = acc_sym(acc, half(w[i].d), _mm_loadu_ps(p[i].d), isum);
    }
    _mm_storeu_ps(out, acc);
}

static AVX2 void dot_q4_0(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q4_0 *w = vw;
    const qk_panel_q8_0 *p = vp;
    __m128 acc = _mm_setzero_ps();
    for (int64_t i = 0; i < n / 32; ++i) {
        const __m128i isum = _mm_sub_epi32(levels_x4(nibbles(w[i].qs), p + i), _mm_slli_epi32(load128(p[i].sum), 3));
        acc = acc_sym(acc, half(w[i].d), _mm_loadu_ps(p[i].d), isum);
    }
    _mm_storeu_ps(out, acc);
}

static AVX2 void dot_q5_0(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q5_0 *w = vw;
    const qk_panel_q8_0 *p = vp;
    __m128 acc = _mm_setzero_ps();
    for (int64_t i = 0; i < n / 32; ++i) {
        const __m256i q = _mm256_or_si256(nibbles(w[i].qs), fifth_bits(w[i].qh));
        const __m128i isum = _mm_sub_epi32(levels_x4(q, p + i), _mm_slli_epi32(load128(p[i].sum), 4));
        acc = acc_sym(acc, half(w[i].d), _mm_loadu_ps(p[i].d), isum);
    }
    _mm_storeu_ps(out, acc);
}

static AVX2 void dot_q4_1(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q4_1 *w = vw;
    const qk_panel_q8_0 *p = vp;
    __m128 acc = _mm_setzero_ps();
    for (int64_t i = 0; i < n / 32; ++i) {
        const __m128i isum = levels_x4(nibbles(w[i].qs), p + i);
        acc = acc_asym(acc, half(w[i].d), half(w[i].m), _mm_loadu_ps(p[i].d), _mm_loadu_ps(p[i].s), isum);
    }
    _mm_storeu_ps(out, acc);
}

static AVX2 void dot_q5_1(const void *vw, const void *vp, int64_t n, float out[QK_PANEL]) {
    const qk_block_q5_1 *w = vw;
    const qk_panel_q8_0 *p = vp;
    __m128 acc = _mm_setzero_ps();
    for (int64_t i = 0; i < n / 32; ++i) {
        const __m256i q = _mm256_or_si256(nibbles(w[i].qs), fifth_bits(w[i].qh));
        const __m128i isum = levels_x4(q, p + i);
        acc = acc_asym(acc, half(w[i].d), half(w[i].m), _mm_loadu_ps(p[i].d), _mm_loadu_ps(p[i].s), isum);
    }
    _mm_storeu_ps(out, acc);
}

/* ---- float weights ------------------------------------------------------------------------- */

static inline AVX2_INLINE __m256 widen8(int wtype, const void *w, int64_t j) {
    switch (wtype) {
    case QK_F16: return _mm256_cvtph_ps(load128((const uint16_t *)w + j));
    case QK_BF16: return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load128((const uint16_t *)w + j)), 16));
    default: return _mm256_loadu_ps((const float *)w + j);
    }
}

static inline AVX2 float widen1(int wtype, const void *w, int64_t j) {
    switch (wtype) {
    case QK_F16: return half(((const uint16_t *)w)[j]);
    case QK_BF16: return qk_bf16_to_fp32(((const uint16_t *)w)[j]);
    default: return ((const float *)w)[j];
    }
}

static inline AVX2 float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* Two partial sums of 8 lanes per token (FMA), 16 values per step; the rest one by one. */
static inline AVX2_INLINE void dot_float(int wtype, const void *w, const void *vp, int64_t n, float out[QK_PANEL]) {
    const float *x = vp;
    __m256 a[QK_PANEL][2];
    for (int t = 0; t < QK_PANEL; ++t) a[t][0] = a[t][1] = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const __m256 w0 = widen8(wtype, w, j), w1 = widen8(wtype, w, j + 8);
        for (int t = 0; t < QK_PANEL; ++t) {
            a[t][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * n + j), a[t][0]);
            a[t][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * n + j + 8), a[t][1]);
        }
    }
    for (int t = 0; t < QK_PANEL; ++t) {
        float s = hsum_ps(_mm256_add_ps(a[t][0], a[t][1]));
        for (int64_t k = j; k < n; ++k) s += widen1(wtype, w, k) * x[t * n + k];
        out[t] = s;
    }
}

static AVX2 void dot_f32(const void *w, const void *p, int64_t n, float out[QK_PANEL]) { dot_float(QK_F32, w, p, n, out); }
static AVX2 void dot_f16(const void *w, const void *p, int64_t n, float out[QK_PANEL]) { dot_float(QK_F16, w, p, n, out); }
static AVX2 void dot_bf16(const void *w, const void *p, int64_t n, float out[QK_PANEL]) { dot_float(QK_BF16, w, p, n, out); }

qk_dot_panel_fn qk_dot_kernel_avx2(int wtype) {
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

qk_dot_panel_fn qk_dot_kernel_avx2(int wtype) {
    (void)wtype;
    return NULL;
}

#endif
