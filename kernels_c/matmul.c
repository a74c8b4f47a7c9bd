/* The matmul entry point: run-time ISA choice and the tile loop over (weight rows x token panels).
 * Threads live in Python: each call handles the rows it is given. */
#include "qkernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
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

int qk_best_isa(void) { return cpu_has_avx2() ? QK_ISA_AVX2 : QK_ISA_SCALAR; }
#elif defined(__aarch64__) && defined(__ARM_NEON)
int qk_best_isa(void) { return QK_ISA_NEON; }
#else
int qk_best_isa(void) { return QK_ISA_SCALAR; }
#endif

/* The kernel for wtype on isa, or NULL when that ISA is not compiled in or not run by this CPU. */
static qk_gemm_fn gemm_kernel(int isa, int wtype) {
    switch (isa) {
    case QK_ISA_SCALAR: return qk_gemm_kernel_scalar(wtype);
    case QK_ISA_AVX2: return qk_best_isa() == QK_ISA_AVX2 ? qk_gemm_kernel_avx2(wtype) : NULL;
    case QK_ISA_NEON: return qk_best_isa() == QK_ISA_NEON ? qk_gemm_kernel_neon(wtype) : NULL;
    default: return NULL;
    }
}

/* Rows unpacked at a time: about TILE_BYTES of unpacked rows, which stay in L2 while every token
 * panel passes them; a multiple of QK_ROWS (the last tile is padded with zero rows). */
#define TILE_BYTES (256 * 1024)
#define TILE_MAX_ROWS 256

static int64_t tile_rows(const qk_urow_layout *L) {
    const int64_t rows = TILE_BYTES / L->size / QK_ROWS * QK_ROWS;
    return QK_MAX(QK_ROWS, QK_MIN(TILE_MAX_ROWS, rows));
}

int64_t qk_matmul_scratch_bytes(int wtype, int64_t n_in) {
    qk_urow_layout L;
    const int status = qk_urow_layout_for(wtype, n_in, &L);
    if (status < 0) return status;
    if (qk_act_format(wtype) < 0) return QK_ERR_TYPE;
    return tile_rows(&L) * L.size;
}

int64_t qk_matmul(int isa, int wtype, const void *w, int64_t n_rows, int64_t w_stride, const void *act,
                  int64_t act_bytes, int64_t n_tok, int64_t n_in, float *out, int64_t ld_out, void *scratch,
                  int64_t scratch_bytes) {
    if (qk_act_format(wtype) < 0) return QK_ERR_TYPE;
    const int64_t need = qk_act_bytes(wtype, n_tok, n_in);
    if (need < 0) return need;
    qk_urow_layout L;
    const int status = qk_urow_layout_for(wtype, n_in, &L);
    if (status < 0) return status;
    const int64_t row_bytes = n_in / qk_block_size(wtype) * qk_type_size(wtype);
    if (n_rows < 0 || w_stride < row_bytes || ld_out < n_rows) return QK_ERR_SHAPE;
    if (n_rows && n_tok && (n_tok - 1 > (INT64_MAX - n_rows) / ld_out || n_rows - 1 > INT64_MAX / w_stride))
        return QK_ERR_SHAPE;
    const qk_gemm_fn gemm = gemm_kernel(isa, wtype);
    if (!gemm) return QK_ERR_ISA;
    if (!n_rows || !n_tok) return 0;
    if (!w || !act || !out || !scratch) return QK_ERR_NULL;
    if (act_bytes < need || scratch_bytes < QK_ROWS * L.size) return QK_ERR_CAPACITY;

    const int64_t panel = qk_act_bytes(wtype, QK_PANEL, n_in);
    const int64_t tile = QK_MIN(tile_rows(&L), scratch_bytes / L.size / QK_ROWS * QK_ROWS);
    uint8_t *unpacked = scratch;
    for (int64_t r0 = 0; r0 < n_rows; r0 += tile) {
        const int64_t nr = QK_MIN(tile, n_rows - r0);
        for (int64_t r = 0; r < (nr + QK_ROWS - 1) / QK_ROWS * QK_ROWS; ++r)
            qk_unpack_row(wtype, r < nr ? (const uint8_t *)w + (r0 + r) * w_stride : NULL, n_in, &L, unpacked + r * L.size);
        for (int64_t t0 = 0; t0 < n_tok; t0 += QK_PANEL) {
            const uint8_t *pa = (const uint8_t *)act + t0 / QK_PANEL * panel;
            const int64_t nt = QK_MIN(QK_PANEL, n_tok - t0);
            for (int64_t r = 0; r < nr; r += QK_ROWS) {
                float res[QK_ROWS][QK_PANEL];
                gemm(unpacked + r * L.size, &L, pa, n_in, res);
                float *o = out + t0 * ld_out + r0 + r;
                for (int64_t t = 0; t < nt; ++t)
                    for (int64_t k = 0; k < QK_MIN(QK_ROWS, nr - r); ++k) o[t * ld_out + k] = res[k][t];
            }
        }
    }
    return n_rows * n_tok;
}
