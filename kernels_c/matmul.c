/* The matmul entry point: run-time ISA choice and the tile loop over (weight rows x token panels).
 * Threads live in Python: each call handles the rows it is given. */
#include "qkernels.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>

/* AVX2 + FMA + F16C, and the OS saves the ymm registers (OSXSAVE and XCR0 bits 1-2). */
static int cpu_has_avx2(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const unsigned fma = 1u << 12, osxsave = 1u << 27, avx = 1u << 28, f16c = 1u << 29;
    if ((c & (fma | osxsave | avx | f16c)) != (fma | osxsave | avx | f16c)) return 0;
    unsigned xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    (void)xcr0_hi;
    if ((xcr0_lo & 6u) != 6u) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b >> 5) & 1u;
}
#else
static int cpu_has_avx2(void) { return 0; }
#endif

int qk_best_isa(void) {
#if defined(__aarch64__)
    return QK_ISA_NEON;
#else
    return cpu_has_avx2() && qk_dot_kernel_avx2(QK_F32) ? QK_ISA_AVX2 : QK_ISA_SCALAR;
#endif
}

/* The kernel for wtype on isa, or NULL when that ISA is not compiled in or not run by this CPU. */
static qk_dot_panel_fn dot_kernel(int isa, int wtype) {
    switch (isa) {
    case QK_ISA_SCALAR: return qk_dot_kernel_scalar(wtype);
    case QK_ISA_AVX2: return qk_best_isa() == QK_ISA_AVX2 ? qk_dot_kernel_avx2(wtype) : NULL;
    case QK_ISA_NEON: return qk_best_isa() == QK_ISA_NEON ? qk_dot_kernel_neon(wtype) : NULL;
    default: return NULL;
    }
}

/* Weight bytes per tile: the rows of one tile stay in L2 while every token panel passes them. */
#define TILE_BYTES (192 * 1024)

int64_t qk_matmul(int isa, int wtype, const void *w, int64_t n_rows, int64_t w_stride, const void *act,
                  int64_t act_bytes, int64_t n_tok, int64_t n_in, float *out, int64_t ld_out) {
    if (qk_act_format(wtype) < 0) return QK_ERR_TYPE;
    const int64_t need = qk_act_bytes(wtype, n_tok, n_in);
    if (need < 0) return need;
    const int64_t block = qk_block_size(wtype), row_bytes = n_in / block * qk_type_size(wtype);
    if (n_rows < 0 || w_stride < row_bytes || ld_out < n_rows) return QK_ERR_SHAPE;
    if (n_rows && n_tok && (n_tok - 1 > (INT64_MAX - n_rows) / ld_out || n_rows - 1 > INT64_MAX / w_stride))
        return QK_ERR_SHAPE;
    const qk_dot_panel_fn dot = dot_kernel(isa, wtype);
    if (!dot) return QK_ERR_ISA;
    if (!n_rows || !n_tok) return 0;
    if (!w || !act || !out) return QK_ERR_NULL;
    if (act_bytes < need) return QK_ERR_CAPACITY;

    const int64_t panel = qk_act_bytes(wtype, QK_PANEL, n_in);
    const int64_t tile_rows = QK_MAX(1, TILE_BYTES / row_bytes);
    for (int64_t r0 = 0; r0 < n_rows; r0 += tile_rows) {
        const int64_t r1 = QK_MIN(n_rows, r0 + tile_rows);
        for (int64_t t0 = 0; t0 < n_tok; t0 += QK_PANEL) {
            const uint8_t *pa = (const uint8_t *)act + t0 / QK_PANEL * panel;
            const int64_t nt = QK_MIN(QK_PANEL, n_tok - t0);
            float *o = out + t0 * ld_out;
            for (int64_t r = r0; r < r1; ++r) {
                float res[QK_PANEL];
                dot((const uint8_t *)w + r * w_stride, pa, n_in, res);
                for (int64_t t = 0; t < nt; ++t) o[t * ld_out + r] = res[t];
            }
        }
    }
    return n_rows * n_tok;
}
