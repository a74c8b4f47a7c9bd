/* Entry points: one table of the types these kernels handle, and the row loops over it.
 * No allocation, no globals beyond the constant table, no I/O. */
#include "qkernels.h"

typedef struct {
    int type;
    int64_t block;      /* elements per block */
    int64_t type_size;  /* bytes per block */
    qk_quantize_row_fn quantize;
    qk_dequantize_row_fn dequantize;
} qk_type_traits;

static const qk_type_traits TRAITS[] = {
    {QK_F32, 1, sizeof(float), qk_quantize_row_f32, qk_dequantize_row_f32},
    {QK_F16, 1, sizeof(uint16_t), qk_quantize_row_f16, qk_dequantize_row_f16},
    {QK_BF16, 1, sizeof(uint16_t), qk_quantize_row_bf16, qk_dequantize_row_bf16},
    {QK_Q4_0, 32, sizeof(qk_block_q4_0), qk_quantize_row_q4_0, qk_dequantize_row_q4_0},
    {QK_Q4_1, 32, sizeof(qk_block_q4_1), qk_quantize_row_q4_1, qk_dequantize_row_q4_1},
    {QK_Q5_0, 32, sizeof(qk_block_q5_0), qk_quantize_row_q5_0, qk_dequantize_row_q5_0},
    {QK_Q5_1, 32, sizeof(qk_block_q5_1), qk_quantize_row_q5_1, qk_dequantize_row_q5_1},
    {QK_Q8_0, 32, sizeof(qk_block_q8_0), qk_quantize_row_q8_0, qk_dequantize_row_q8_0},
    {QK_Q4_K, QK_K, sizeof(qk_block_q4_K), qk_quantize_row_q4_K, qk_dequantize_row_q4_K},
    {QK_Q5_K, QK_K, sizeof(qk_block_q5_K), qk_quantize_row_q5_K, qk_dequantize_row_q5_K},
    {QK_Q6_K, QK_K, sizeof(qk_block_q6_K), qk_quantize_row_q6_K, qk_dequantize_row_q6_K},
};

static const qk_type_traits *traits(int type) {
    for (size_t i = 0; i < sizeof TRAITS / sizeof TRAITS[0]; ++i)
        if (TRAITS[i].type == type) return &TRAITS[i];
    return NULL;
}

/* Bytes of one row, or a status. Guards the products below against overflow. */
static int64_t row_size(const qk_type_traits *t, int64_t n_rows, int64_t n_per_row) {
    if (n_rows < 0 || n_per_row <= 0 || n_per_row % t->block) return QK_ERR_SHAPE;
    const int64_t bytes = n_per_row / t->block * t->type_size;
    if (n_rows && (bytes > INT64_MAX / n_rows || n_per_row > INT64_MAX / n_rows)) return QK_ERR_SHAPE;
    return bytes;
}

int64_t qk_block_size(int type) {
    const qk_type_traits *t = traits(type);
    return t ? t->block : QK_ERR_TYPE;
}

int64_t qk_type_size(int type) {
    const qk_type_traits *t = traits(type);
    return t ? t->type_size : QK_ERR_TYPE;
}

int64_t qk_quantize(int type, const float *src, int64_t n_rows, int64_t n_per_row,
                    const float *imatrix, void *dst, int64_t dst_bytes) {
    const qk_type_traits *t = traits(type);
    if (!t) return QK_ERR_TYPE;
    const int64_t rs = row_size(t, n_rows, n_per_row);
    if (rs < 0) return rs;
    if (n_rows && (!src || !dst)) return QK_ERR_NULL;
    if (dst_bytes < n_rows * rs) return QK_ERR_CAPACITY;
    for (int64_t r = 0; r < n_rows; ++r)
        t->quantize(src + r * n_per_row, (uint8_t *)dst + r * rs, n_per_row, imatrix);
    return n_rows * rs;
}

int64_t qk_dequantize(int type, const void *src, int64_t n_rows, int64_t n_per_row,
                      float *dst, int64_t dst_count) {
    const qk_type_traits *t = traits(type);
    if (!t) return QK_ERR_TYPE;
    const int64_t rs = row_size(t, n_rows, n_per_row);
    if (rs < 0) return rs;
    if (n_rows && (!src || !dst)) return QK_ERR_NULL;
    if (dst_count < n_rows * n_per_row) return QK_ERR_CAPACITY;
    for (int64_t r = 0; r < n_rows; ++r)
        t->dequantize((const uint8_t *)src + r * rs, dst + r * n_per_row, n_per_row);
    return n_rows * n_per_row;
}
