/* Element types F32, F16, BF16 (reference notes 1.7): rows converted one value at a time.
 * F16: IEEE round to nearest even (= numpy astype(float16)); BF16: ggml_fp32_to_bf16_row_ref. */
#include "qkernels.h"

void qk_quantize_row_f32(const float *x, void *y, int64_t n, const float *imatrix) {
    (void)imatrix;
    memcpy(y, x, (size_t)n * sizeof(float));
}

void qk_quantize_row_f16(const float *x, void *vy, int64_t n, const float *imatrix) {
    uint16_t *y = vy;
    (void)imatrix;
    for (int64_t i = 0; i < n; ++i) y[i] = qk_fp32_to_fp16(x[i]);
}

void qk_quantize_row_bf16(const float *x, void *vy, int64_t n, const float *imatrix) {
    uint16_t *y = vy;
    (void)imatrix;
    for (int64_t i = 0; i < n; ++i) y[i] = qk_fp32_to_bf16(x[i]);
}

void qk_dequantize_row_f32(const void *x, float *y, int64_t n) {
    memcpy(y, x, (size_t)n * sizeof(float));
}

void qk_dequantize_row_f16(const void *vx, float *y, int64_t n) {
    const uint16_t *x = vx;
    for (int64_t i = 0; i < n; ++i) y[i] = qk_fp16_to_fp32(x[i]);
}

void qk_dequantize_row_bf16(const void *vx, float *y, int64_t n) {
    const uint16_t *x = vx;
    for (int64_t i = 0; i < n; ++i) y[i] = qk_bf16_to_fp32(x[i]);
}
