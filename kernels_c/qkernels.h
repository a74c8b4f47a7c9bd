/* qkernels: scalar reference quantizers and dequantizers, byte-compatible with ggml.
 *
 * Public part (mirrored by the cdef in build_ffi.py): type ids, status codes, entry points.
 * Internal part: block layouts, fp16/bf16 conversions, per-row kernels shared by the .c files.
 *
 * Bit-exactness: every kernel keeps ggml's float32 evaluation order (see the reference notes,
 * sections 1-3). Build with -ffp-contract=off and never with -ffast-math; the checks below refuse
 * builds that would evaluate float expressions in a wider type.
 */
#ifndef QKERNELS_H
#define QKERNELS_H

#include <float.h>
#include <stdint.h>
#include <string.h>

/* ---- public ------------------------------------------------------------------------------- */

/* Type ids are ggml's (gguf.GGMLQuantizationType). */
enum {
    QK_F32 = 0, QK_F16 = 1, QK_Q4_0 = 2, QK_Q4_1 = 3, QK_Q5_0 = 6, QK_Q5_1 = 7, QK_Q8_0 = 8,
    QK_Q4_K = 12, QK_Q5_K = 13, QK_Q6_K = 14, QK_BF16 = 30,
};

/* Status codes: every entry point returns a count >= 0 or one of these. */
enum {
    QK_ERR_TYPE = -1,     /* type id not supported by these kernels */
    QK_ERR_SHAPE = -2,    /* n_rows < 0, or n_per_row not a positive multiple of the block */
    QK_ERR_NULL = -3,     /* a required pointer is NULL */
    QK_ERR_CAPACITY = -4, /* the destination is smaller than the result */
    QK_ERR_ISA = -5,      /* instruction set not compiled in, or not run by this CPU */
};

/* Quantize n_rows rows of n_per_row floats into dst (row after row, no padding).
 * imatrix: NULL, or n_per_row importance weights shared by all rows (ignored by F32/F16/BF16/Q8_0).
 * Returns the bytes written, or a status. */
int64_t qk_quantize(int type, const float *src, int64_t n_rows, int64_t n_per_row,
                    const float *imatrix, void *dst, int64_t dst_bytes);

/* Dequantize n_rows rows (as written by qk_quantize) into dst. F16/BF16 rows are widened exactly.
 * Returns the floats written, or a status. */
int64_t qk_dequantize(int type, const void *src, int64_t n_rows, int64_t n_per_row,
                      float *dst, int64_t dst_count);

int64_t qk_block_size(int type);  /* elements per block, or QK_ERR_TYPE */
int64_t qk_type_size(int type);   /* bytes per block = sizeof the block struct, or QK_ERR_TYPE */

/* ---- public: inference (matmul.c, act.c, ops.c) ------------------------------------------- */

/* Instruction sets of the matmul kernels (the `isa` argument): the scalar C reference, and
 * mirrors of it chosen at run time from the CPU's features. */
enum { QK_ISA_SCALAR = 0, QK_ISA_AVX2 = 1, QK_ISA_NEON = 2 };

/* Activation formats (what a weight type's dot product reads; reference notes 3.2). */
enum { QK_ACT_F32 = 0, QK_ACT_F16 = 1, QK_ACT_BF16 = 2, QK_ACT_Q8_0 = 8, QK_ACT_Q8_K = 15 };

#define QK_PANEL 8 /* tokens per activation panel (see the internal part) */

int qk_best_isa(void);              /* the fastest ISA this CPU runs */
int qk_act_format(int wtype);       /* activation format for weights of wtype, or QK_ERR_TYPE */

/* Bytes of scratch for n_tok activation rows of n_in values for weights of wtype, or a status. */
int64_t qk_act_bytes(int wtype, int64_t n_tok, int64_t n_in);

/* Quantize n_tok float rows of n_in into act (the layout of qk_act_bytes). Rows after n_tok in the
 * last panel are zeros. A range of tokens starting at a multiple of QK_PANEL may be quantized on
 * its own at act + qk_act_bytes(wtype, first_token, n_in). Returns the bytes written or a status. */
int64_t qk_quantize_act(int wtype, const float *x, int64_t n_tok, int64_t n_in, void *act, int64_t act_bytes);

/* Bytes of per-thread scratch qk_matmul needs for weights of wtype with rows of n_in, or a status. */
int64_t qk_matmul_scratch_bytes(int wtype, int64_t n_in);

/* out[t * ld_out + r] = dot(weight row r, activation row t) for r < n_rows, t < n_tok: w holds
 * n_rows rows of n_in values of wtype, w_stride bytes apart; act as written by qk_quantize_act;
 * scratch (32-byte aligned, qk_matmul_scratch_bytes) holds weight rows unpacked to bytes.
 * Returns n_rows * n_tok or a status. */
int64_t qk_matmul(int isa, int wtype, const void *w, int64_t n_rows, int64_t w_stride, const void *act,
                  int64_t act_bytes, int64_t n_tok, int64_t n_in, float *out, int64_t ld_out, void *scratch,
                  int64_t scratch_bytes);

/* y[r] = x[r] * 1/sqrt(mean(x[r]^2) + eps) (* w if not NULL), rows of n; y may be x. */
int64_t qk_rms_norm(const float *x, int64_t n_rows, int64_t n, const float *w, float eps, float *y);

/* Rotary embedding in place on x (n_tok, n_head, head_dim): the first n_dims values of each head
 * rotate by pos[t] * freq_base^(-2i/n_dims) * freq_scale (/ freq_factors[i] if not NULL);
 * mode QK_ROPE_NORMAL pairs (2i, 2i+1), QK_ROPE_NEOX pairs (i, i + n_dims/2). */
enum { QK_ROPE_NORMAL = 0, QK_ROPE_NEOX = 2 };
int64_t qk_rope(float *x, int64_t n_tok, int64_t n_head, int64_t head_dim, int64_t n_dims, const int32_t *pos,
                float freq_base, float freq_scale, const float *freq_factors, int mode);

/* Causal grouped-query attention for heads [h0, h1): q and out (n_tok, n_head, head_dim)
 * contiguous; k and v hold n_kv_tok >= n_tok positions of n_head_kv heads, row (position j, head g)
 * of head_dim floats at j * kv_tok_stride + g * kv_head_stride. Query t sits at position
 * n_kv_tok - n_tok + t and sees keys 0..that; head h reads kv head h / (n_head / n_head_kv);
 * softmax(scale * q.k) with scale usually 1/sqrt(head_dim). isa: as for qk_matmul (the products of
 * Q and K, P and V run on it). scratch: qk_attention_scratch_count floats, 32-byte aligned.
 * Returns the (token, head) rows written, or a status. */
int64_t qk_attention_scratch_count(int64_t n_kv_tok, int64_t head_dim);
int64_t qk_attention(int isa, const float *q, const float *k, const float *v, float *out, int64_t n_tok,
                     int64_t n_kv_tok, int64_t n_head, int64_t n_head_kv, int64_t head_dim, int64_t kv_tok_stride,
                     int64_t kv_head_stride, int64_t h0, int64_t h1, float scale, float *scratch,
                     int64_t scratch_count);

/* out = silu(gate) * up over n values (out may alias either); isa as for qk_matmul. */
int64_t qk_swiglu(int isa, const float *gate, const float *up, int64_t n, float *out);

/* out[r] = log_softmax(x[r]) for rows of n: x - max - log(sum exp(x - max)), the sum in double as
 * llama-perplexity (exp within 2 ulp of expf); isa as for qk_matmul. */
int64_t qk_log_softmax(int isa, const float *x, int64_t n_rows, int64_t n, float *out);

/* ---- internal: float model ---------------------------------------------------------------- */

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "qkernels needs float expressions evaluated in float32 (x87 excess precision changes bytes)"
#endif
#if defined(__FAST_MATH__)
#error "qkernels must not be built with -ffast-math: it reorders sums and changes bytes"
#endif
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "qkernels writes GGUF blocks in memory order, which must be little-endian"
#endif

#define QK_K 256

/* ---- internal: block layouts (ggml-common.h; packed by construction, checked below) -------- */

/* Q4_0, 4.5 bits/weight: value = (nibble - 8) * d; qs[j] = elem j | elem j+16 << 4 */
typedef struct { uint16_t d; uint8_t qs[16]; } qk_block_q4_0;
/* Q4_1, 5.0 bits/weight: value = nibble * d + m */
typedef struct { uint16_t d, m; uint8_t qs[16]; } qk_block_q4_1;
/* Q5_0, 5.5 bits/weight: value = (q5 - 16) * d; qh (LE uint32) bit j = bit 4 of elem j */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } qk_block_q5_0;
/* Q5_1, 6.0 bits/weight: value = q5 * d + m */
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } qk_block_q5_1;
/* Q8_0, 8.5 bits/weight: value = qs[j] * d */
typedef struct { uint16_t d; int8_t qs[32]; } qk_block_q8_0;
/* Q4_K, 4.5 bits/weight: 8 sub-blocks of 32, value = d*sc[s]*q - dmin*m[s]; 6-bit sc/m packed
 * in scales[12]; qs[32c+l] = elem 64c+l | elem 64c+32+l << 4 */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } qk_block_q4_K;
/* Q5_K, 5.5 bits/weight: Q4_K plus qh[l] bit 2c (elem 64c+l) / bit 2c+1 (elem 64c+32+l) */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } qk_block_q5_K;
/* Q6_K, 6.5625 bits/weight: 16 sub-blocks of 16, value = d * scales[s] * (q - 32) */
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } qk_block_q6_K;

_Static_assert(sizeof(qk_block_q4_0) == 2 + 16, "q4_0 block size");
_Static_assert(sizeof(qk_block_q4_1) == 4 + 16, "q4_1 block size");
_Static_assert(sizeof(qk_block_q5_0) == 2 + 4 + 16, "q5_0 block size");
_Static_assert(sizeof(qk_block_q5_1) == 4 + 4 + 16, "q5_1 block size");
_Static_assert(sizeof(qk_block_q8_0) == 2 + 32, "q8_0 block size");
_Static_assert(sizeof(qk_block_q4_K) == 4 + 12 + QK_K / 2, "q4_K block size");
_Static_assert(sizeof(qk_block_q5_K) == 4 + 12 + QK_K / 8 + QK_K / 2, "q5_K block size");
_Static_assert(sizeof(qk_block_q6_K) == QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, "q6_K block size");
_Static_assert(sizeof(float) == 4 && sizeof(uint16_t) == 2, "float32 and binary16 storage");

/* ---- internal: scalar conversions ---------------------------------------------------------- */

static inline uint32_t qk_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float qk_f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* float32 -> binary16, round to nearest even; overflow -> inf; NaN -> 0x7E00 | sign (as ggml). */
static inline uint16_t qk_fp32_to_fp16(float f) {
    const uint32_t x = qk_f32_bits(f);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sign | 0x7e00u;
    if (ax >= 0x477ff000u) return sign | 0x7c00u;           /* >= 65520 rounds to inf */
    if (ax < 0x38800000u) {                                   /* below 2^-14: subnormal half */
        /* Adding 0.5 leaves the float32 ulp at 2^-24, the half subnormal step: the addition
         * itself rounds to nearest even; the carry into 2^-14 gives the smallest normal. */
        const float v = qk_f32_from_bits(ax) + 0.5f;
        return sign | (uint16_t)(qk_f32_bits(v) - 0x3f000000u);
    }
    const uint32_t r = (ax + 0x0fffu + ((ax >> 13) & 1u)) >> 13;   /* RNE on 13 dropped bits */
    return sign | (uint16_t)(r - ((127u - 15u) << 10));
}

/* binary16 -> float32, exact; NaN payloads are kept and quieted (as ggml on x86-64). */
static inline float qk_fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {
        const float v = (float)m * 0x1p-24f;
        return qk_f32_from_bits(qk_f32_bits(v) | sign);
    }
    if (e == 31) return qk_f32_from_bits(sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0));
    return qk_f32_from_bits(sign | ((e + 112u) << 23) | (m << 13));
}

/* float32 -> bfloat16, round to nearest even; NaN -> top half | 0x40 (quiet), as ggml. */
static inline uint16_t qk_fp32_to_bf16(float f) {
    const uint32_t u = qk_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64u);
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

static inline float qk_bf16_to_fp32(uint16_t h) { return qk_f32_from_bits((uint32_t)h << 16); }

/* RNE of a float32 with |f| <= 4194303 (ggml's nearest_int): adding 1.5*2^23 leaves the rounded
 * integer in the low mantissa bits. Outside that range it returns ggml's same garbage. */
static inline int qk_nearest_int(float f) {
    const float v = f + 12582912.0f;
    return (int)(qk_f32_bits(v) & 0x7fffffu) - 0x400000;
}

#define QK_MIN(a, b) ((a) < (b) ? (a) : (b))
#define QK_MAX(a, b) ((a) > (b) ? (a) : (b))

/* ---- internal: search helpers (search.c) --------------------------------------------------- */

float qk_make_qx_quants(int n, int nmax, const float *x, int8_t *L, const float *qw);
float qk_make_qkx_quants(int n, int nmax, const float *x, const float *w, uint8_t *L,
                         float *the_min, float rmin, float rdelta, int nstep);
float qk_make_qp_quants(int n, int nmax, const float *x, uint8_t *L, const float *w);

/* Four consecutive groups of n <= 32 values through the searches above, with identical results
 * (lane-parallel where the compiler has vector extensions): x, w/qw and L hold the groups back
 * to back; scales[g] and the_mins[g] get each group's results. */
void qk_make_qkx_quants_4(int n, int nmax, const float *x, const float *w, uint8_t *L,
                          float *scales, float *the_mins, float rmin, float rdelta, int nstep);
void qk_make_qx_quants_4(int n, int nmax, const float *x, int8_t *L, const float *qw, float *scales);

/* ---- internal: per-row kernels (one row of n elements; imatrix may be NULL) --------------- */

typedef void (*qk_quantize_row_fn)(const float *x, void *y, int64_t n, const float *imatrix);
typedef void (*qk_dequantize_row_fn)(const void *x, float *y, int64_t n);

void qk_quantize_row_f32(const float *x, void *y, int64_t n, const float *imatrix);
void qk_quantize_row_f16(const float *x, void *y, int64_t n, const float *imatrix);
void qk_quantize_row_bf16(const float *x, void *y, int64_t n, const float *imatrix);
void qk_quantize_row_q4_0(const float *x, void *y, int64_t n, const float *imatrix);
void qk_quantize_row_q4_1(const float *x, void *y, int64_t n, const float *imatrix);
void qk_quantize_row_q5_0(const float *x, void *y, int64_t n, const float *imatrix);
void qk_quantize_row_q5_1(const float *x, void *y, int64_t n, const float *imatrix);
void qk_quantize_row_q8_0(const float *x, void *y, int64_t n, const float *imatrix);
void qk_quantize_row_q4_K(const float *x, void *y, int64_t n, const float *imatrix);
void qk_quantize_row_q5_K(const float *x, void *y, int64_t n, const float *imatrix);
void qk_quantize_row_q6_K(const float *x, void *y, int64_t n, const float *imatrix);

void qk_dequantize_row_f32(const void *x, float *y, int64_t n);
void qk_dequantize_row_f16(const void *x, float *y, int64_t n);
void qk_dequantize_row_bf16(const void *x, float *y, int64_t n);
void qk_dequantize_row_q4_0(const void *x, float *y, int64_t n);
void qk_dequantize_row_q4_1(const void *x, float *y, int64_t n);
void qk_dequantize_row_q5_0(const void *x, float *y, int64_t n);
void qk_dequantize_row_q5_1(const void *x, float *y, int64_t n);
void qk_dequantize_row_q8_0(const void *x, float *y, int64_t n);
void qk_dequantize_row_q4_K(const void *x, float *y, int64_t n);
void qk_dequantize_row_q5_K(const void *x, float *y, int64_t n);
void qk_dequantize_row_q6_K(const void *x, float *y, int64_t n);

/* ---- internal: the matmul's data layouts and kernels (act.c, unpack.c, matmul.c, dot*.c) --- */

/* The matmul multiplies QK_ROWS weight rows by the QK_PANEL tokens of one activation panel at a
 * time. Tokens sit side by side in vector lanes: the 4 consecutive values of one token that a
 * 32-bit lane holds meet 4 weight values broadcast to every lane (u8 x s8 products, pairs summed). */
#define QK_ROWS 4

/* K-quant activations, one per super-block: Q8_K (notes 1.5, 2.12) of QK_PANEL tokens.
 * qs[g][t][j] = value 4g + j of token t; bsums[s][t][h] = sum of values 32s + 16h .. + 15. */
typedef struct {
    int8_t qs[QK_K / 4][QK_PANEL][4];
    int16_t bsums[QK_K / 32][QK_PANEL][2];
    float d[QK_PANEL];
} qk_panel_q8_K;

/* 32-block activations: Q8_0 (notes 3.5) plus what Q8_1 adds, qs as above. d and s hold the fp16
 * values ggml stores, widened: d = fp16(scale), s = fp16(scale * sum); sum = sum of qs. */
typedef struct {
    int8_t qs[8][QK_PANEL][4];
    float d[QK_PANEL];
    float s[QK_PANEL];
    int32_t sum[QK_PANEL];
} qk_panel_q8_0;

/* Float activations (F32, F16, BF16 weights): x[k][t] = value k of token t, rounded to the
 * weight's type first (ggml converts activations to vec_dot_type: F16 -> F16, BF16 -> BF16). */

_Static_assert(sizeof(qk_panel_q8_K) == QK_PANEL * (QK_K + QK_K / 16 * 2 + 4), "q8_K panel has no padding");
_Static_assert(sizeof(qk_panel_q8_0) == QK_PANEL * (32 + 4 + 4 + 4), "q8_0 panel has no padding");
_Static_assert(sizeof(qk_panel_q8_K) % 32 == 0 && sizeof(qk_panel_q8_0) % 32 == 0, "panels keep 32-byte alignment");

/* A weight row unpacked for the kernels (unpack.c), parts at 32-byte aligned offsets:
 *   q   n bytes: the levels, unsigned (K-quants 0..15/31/63, Q4/Q5 0..15/31), Q8_0's int8 as they
 *       are; float types: n floats instead.
 *   sc  int16 scale per sub-block (Q4_K/Q5_K: per 32, Q6_K: per 16);
 *   mn  uint32 per 32 values, an int16 pair for one madd: Q4_K/Q5_K (min, min), Q6_K (scale of the
 *       first 16, scale of the second 16);
 *   d   float per block: d (widened fp16); dm float per block: K-quant dmin, Q4_1/Q5_1 m. */
typedef struct {
    int64_t q, sc, mn, d, dm, size;
} qk_urow_layout;

int qk_urow_layout_for(int wtype, int64_t n, qk_urow_layout *L); /* 0, or QK_ERR_TYPE/QK_ERR_SHAPE */
/* Unpack row src (NULL: a row of zeros) of n values of wtype into dst (L->size bytes). */
void qk_unpack_row(int wtype, const void *src, int64_t n, const qk_urow_layout *L, uint8_t *dst);

/* QK_ROWS unpacked rows (rows + r * L->size) times one panel: out[r][t] = dot(row r, token t).
 * The quantized types give the same float bits on every ISA: integer block sums are exact, and the
 * per-block float steps are the same multiplies and adds in the same order (dot.c's acc_*; no FMA,
 * the build has -ffp-contract=off). Float weights: per-ISA summation order, within tolerance. */
typedef void (*qk_gemm_fn)(const uint8_t *rows, const qk_urow_layout *L, const void *panel, int64_t n,
                           float out[QK_ROWS][QK_PANEL]);

qk_gemm_fn qk_gemm_kernel_scalar(int wtype);
qk_gemm_fn qk_gemm_kernel_avx2(int wtype); /* NULL unless built for x86-64 */
qk_gemm_fn qk_gemm_kernel_neon(int wtype); /* NULL unless built for aarch64 */

/* The ops' inner loops per ISA (ops.c has the scalar table):
 *   sgemm     C[i][x] = sum_{r < k} A[i][r] * B[r][x] for QK_ATTN_ROWS rows i and x < n, rows
 *             lda/ldb/ldc floats apart, C overwritten (attention's QK^T and PV). The scalar one
 *             sums in r order; the SIMD ones use FMA (within tolerance).
 *   exp_shift y[j] = qk_exp_approx(x[j] - shift);  swiglu  y[j] = g[j] / (1 + qk_exp_approx(-g[j])) * u[j]
 *             (the same float operations on every ISA, so the same bits). */
#define QK_ATTN_ROWS 8
typedef void (*qk_sgemm_fn)(int64_t n, int64_t k, const float *A, int64_t lda, const float *B, int64_t ldb, float *C,
                            int64_t ldc);
typedef struct {
    qk_sgemm_fn sgemm;
    void (*exp_shift)(const float *x, int64_t n, float shift, float *y);
    void (*swiglu)(const float *g, const float *u, int64_t n, float *y);
} qk_ops_table;
const qk_ops_table *qk_ops_avx2(void); /* NULL unless built for x86-64 */
const qk_ops_table *qk_ops_neon(void); /* NULL unless built for aarch64 */

/* e^x within 2 ulp of expf over [QK_EXP_LO, QK_EXP_HI], inputs clamped to that range (Cephes'
 * polynomial, two-part ln 2). No FMA anywhere (-ffp-contract=off): the SIMD copies of this
 * function do exactly these operations and give the same bits (NaN inputs aside). */
#define QK_EXP_LO (-87.3f)
#define QK_EXP_HI 88.3f
#define QK_EXP_MAGIC 12582912.0f /* 1.5 * 2^23: adding it rounds to an integer in the low bits */
#define QK_EXP_LOG2E 1.44269504088896341f
#define QK_EXP_LN2_HI 0.693359375f
#define QK_EXP_LN2_LO (-2.12194440e-4f)
#define QK_EXP_P0 1.9875691500e-4f
#define QK_EXP_P1 1.3981999507e-3f
#define QK_EXP_P2 8.3334519073e-3f
#define QK_EXP_P3 4.1665795894e-2f
#define QK_EXP_P4 1.6666665459e-1f
#define QK_EXP_P5 5.0000001201e-1f

static inline float qk_exp_approx(float x) {
    x = x < QK_EXP_LO ? QK_EXP_LO : x;
    x = x > QK_EXP_HI ? QK_EXP_HI : x;
    const float t = x * QK_EXP_LOG2E + QK_EXP_MAGIC;
    const float n = t - QK_EXP_MAGIC;
    const int32_t ni = (int32_t)(qk_f32_bits(t) - qk_f32_bits(QK_EXP_MAGIC));
    const float r = (x - n * QK_EXP_LN2_HI) - n * QK_EXP_LN2_LO;
    float p = QK_EXP_P0;
    p = p * r + QK_EXP_P1;
    p = p * r + QK_EXP_P2;
    p = p * r + QK_EXP_P3;
    p = p * r + QK_EXP_P4;
    p = p * r + QK_EXP_P5;
    p = p * r * r + r + 1.0f;
    return p * qk_f32_from_bits((uint32_t)(ni + 127) << 23);
}

#endif
