/* Weight rows unpacked for the matmul kernels (layout in qkernels.h): levels as one byte per value,
 * scales and mins as the integers the kernels multiply by, block scales widened to float. The
 * kernels of every ISA read these same bytes, so unpacking is written once, here.
 */
#include "qkernels.h"

static int64_t align32(int64_t x) { return (x + 31) & ~(int64_t)31; }

int qk_urow_layout_for(int wtype, int64_t n, qk_urow_layout *L) {
    const int64_t block = qk_block_size(wtype);
    if (block < 0) return QK_ERR_TYPE;
    if (n <= 0 || n % block || n > (INT64_MAX >> 4)) return QK_ERR_SHAPE;
    const int64_t nb = n / block;
    const int is_float = wtype == QK_F32 || wtype == QK_F16 || wtype == QK_BF16;
    const int is_k = wtype == QK_Q4_K || wtype == QK_Q5_K || wtype == QK_Q6_K;
    L->q = 0;
    L->sc = align32(is_float ? 4 * n : n);
    L->mn = align32(L->sc + (is_k ? 2 * (n / 16) : 0));
    L->d = align32(L->mn + (is_k ? 4 * (n / 32) : 0));
    L->dm = align32(L->d + (is_float ? 0 : 4 * nb));
    L->size = align32(L->dm + (is_float ? 0 : 4 * nb));
    return 0;
}

/* The 6-bit scales and mins of a Q4_K/Q5_K super-block (notes 1.2), in sub-block order. */
static void scales_k4(const uint8_t S[12], uint8_t sc[8], uint8_t m[8]) {
    for (int j = 0; j < 4; ++j) {
        sc[j] = S[j] & 63;
        m[j] = S[j + 4] & 63;
        sc[j + 4] = (uint8_t)((S[j + 8] & 0x0f) | ((S[j] >> 6) << 4));
        m[j + 4] = (uint8_t)((S[j + 8] >> 4) | ((S[j + 4] >> 6) << 4));
    }
}

static uint32_t int16_pair(int lo, int hi) { return (uint32_t)(uint16_t)lo | (uint32_t)(uint16_t)hi << 16; }

/* Q4_K / Q5_K (qh NULL for Q4_K), notes 1.2-1.3. */
static void unpack_kquant(const uint16_t dd[2], const uint8_t *S, const uint8_t *qs, const uint8_t *qh, uint8_t *q,
                          int16_t *sc, uint32_t *mn, float *d, float *dm) {
    uint8_t s[8], m[8];
    scales_k4(S, s, m);
    for (int j = 0; j < 8; ++j) sc[j] = s[j], mn[j] = int16_pair(m[j], m[j]);
    for (int c = 0; c < 4; ++c) {
        for (int l = 0; l < 32; ++l) {
            const int hi1 = qh ? ((qh[l] >> (2 * c)) & 1) << 4 : 0, hi2 = qh ? ((qh[l] >> (2 * c + 1)) & 1) << 4 : 0;
            q[64 * c + l] = (uint8_t)((qs[32 * c + l] & 15) | hi1);
            q[64 * c + 32 + l] = (uint8_t)((qs[32 * c + l] >> 4) | hi2);
        }
    }
    *d = qk_fp16_to_fp32(dd[0]);
    *dm = qk_fp16_to_fp32(dd[1]);
}

/* Q6_K, notes 1.4: value 128h + 32k + l has its low 4 bits in ql[64h + 32(k&1) + l] (high nibble
 * for k >= 2) and its high 2 bits at bit 2k of qh[32h + l]. */
static void unpack_q6_K(const qk_block_q6_K *x, uint8_t *q, int16_t *sc, uint32_t *mn, float *d) {
    for (int h = 0; h < 2; ++h) {
        const uint8_t *ql = x->ql + 64 * h, *qh = x->qh + 32 * h;
        for (int k = 0; k < 4; ++k) {
            for (int l = 0; l < 32; ++l) {
                const int nib = k < 2 ? ql[32 * k + l] & 15 : ql[32 * (k - 2) + l] >> 4;
                q[128 * h + 32 * k + l] = (uint8_t)(nib | (((qh[l] >> (2 * k)) & 3) << 4));
            }
        }
    }
    for (int j = 0; j < 16; ++j) sc[j] = x->scales[j];
    for (int j = 0; j < 8; ++j) mn[j] = int16_pair(x->scales[2 * j], x->scales[2 * j + 1]);
    *d = qk_fp16_to_fp32(x->d);
}

/* The 32 levels of a legacy 4/5-bit block (notes 1.1): qs[j] low nibble = value j, high nibble =
 * value j+16; qh (NULL for 4-bit types; little-endian uint32) bit j = bit 4 of value j. */
static void unpack_legacy(const uint8_t *qs, const uint8_t *qh, uint8_t *q) {
    const uint32_t h = qh ? (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24 : 0;
    for (int j = 0; j < 16; ++j) {
        q[j] = (uint8_t)((qs[j] & 15) | ((h >> j) & 1) << 4);
        q[j + 16] = (uint8_t)((qs[j] >> 4) | ((h >> (j + 16)) & 1) << 4);
    }
}

void qk_unpack_row(int wtype, const void *src, int64_t n, const qk_urow_layout *L, uint8_t *dst) {
    if (!src) {
        memset(dst, 0, (size_t)L->size);
        return;
    }
    uint8_t *q = dst + L->q;
    int16_t *sc = (int16_t *)(dst + L->sc);
    uint32_t *mn = (uint32_t *)(dst + L->mn);
    float *d = (float *)(dst + L->d), *dm = (float *)(dst + L->dm), *f = (float *)(dst + L->q);
    switch (wtype) {
    case QK_F32: memcpy(f, src, (size_t)n * sizeof(float)); break;
    case QK_F16: qk_dequantize_row_f16(src, f, n); break;
    case QK_BF16: qk_dequantize_row_bf16(src, f, n); break;
    case QK_Q4_K:
    case QK_Q5_K:
        for (int64_t i = 0; i < n / QK_K; ++i) {
            if (wtype == QK_Q4_K) {
                const qk_block_q4_K *x = (const qk_block_q4_K *)src + i;
                const uint16_t dd[2] = {x->d, x->dmin};
                unpack_kquant(dd, x->scales, x->qs, NULL, q + QK_K * i, sc + 8 * i, mn + 8 * i, d + i, dm + i);
            } else {
                const qk_block_q5_K *x = (const qk_block_q5_K *)src + i;
                const uint16_t dd[2] = {x->d, x->dmin};
                unpack_kquant(dd, x->scales, x->qs, x->qh, q + QK_K * i, sc + 8 * i, mn + 8 * i, d + i, dm + i);
            }
        }
        break;
    case QK_Q6_K:
        for (int64_t i = 0; i < n / QK_K; ++i)
            unpack_q6_K((const qk_block_q6_K *)src + i, q + QK_K * i, sc + 16 * i, mn + 8 * i, d + i);
        break;
    case QK_Q8_0:
        for (int64_t i = 0; i < n / 32; ++i) {
            const qk_block_q8_0 *x = (const qk_block_q8_0 *)src + i;
            memcpy(q + 32 * i, x->qs, 32);
            d[i] = qk_fp16_to_fp32(x->d);
        }
        break;
    case QK_Q4_0:
        for (int64_t i = 0; i < n / 32; ++i) {
            const qk_block_q4_0 *x = (const qk_block_q4_0 *)src + i;
            unpack_legacy(x->qs, NULL, q + 32 * i);
            d[i] = qk_fp16_to_fp32(x->d);
        }
        break;
    case QK_Q4_1:
        for (int64_t i = 0; i < n / 32; ++i) {
            const qk_block_q4_1 *x = (const qk_block_q4_1 *)src + i;
            unpack_legacy(x->qs, NULL, q + 32 * i);
            d[i] = qk_fp16_to_fp32(x->d), dm[i] = qk_fp16_to_fp32(x->m);
        }
        break;
    case QK_Q5_0:
        for (int64_t i = 0; i < n / 32; ++i) {
            const qk_block_q5_0 *x = (const qk_block_q5_0 *)src + i;
            unpack_legacy(x->qs, x->qh, q + 32 * i);
            d[i] = qk_fp16_to_fp32(x->d);
        }
        break;
    case QK_Q5_1:
        for (int64_t i = 0; i < n / 32; ++i) {
            const qk_block_q5_1 *x = (const qk_block_q5_1 *)src + i;
            unpack_legacy(x->qs, x->qh, q + 32 * i);
            d[i] = qk_fp16_to_fp32(x->d), dm[i] = qk_fp16_to_fp32(x->m);
        }
        break;
    default: break;
    }
}
