"""cffi build script for `quantize_cli._kernels` (API mode), run by setup.py's cffi_modules.

The cdef mirrors the public part of qkernels.h. Flags: -ffp-contract=off so that no compiler fuses
a*b+c (ggml's x86-64 reference has no FMA), and never -ffast-math (it reorders sums): the bytes
must not depend on the machine. Every file gets the same flags, baseline ISA included: the AVX2
kernels (dot_avx2.c) carry target attributes per function and run only where cpuid allows, so the
extension loads on any x86-64; NEON (dot_neon.c) is baseline on aarch64.

QCONVERT_KERNELS_NO_LANES=1 at build time compiles the scale searches as plain scalar loops instead of
four vector lanes (same bytes, slower): a way to check the two against each other.
"""

from __future__ import annotations

import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = [
    "api.c", "convert.c", "legacy.c", "kquants.c", "search.c",  # quantizers
    "act.c", "unpack.c", "matmul.c", "dot.c", "dot_avx2.c", "dot_neon.c", "ops.c",  # inference
]

CDEF = """
int64_t qk_quantize(int type, const float *src, int64_t n_rows, int64_t n_per_row,
                    const float *imatrix, void *dst, int64_t dst_bytes);
int64_t qk_dequantize(int type, const void *src, int64_t n_rows, int64_t n_per_row,
                      float *dst, int64_t dst_count);
int64_t qk_block_size(int type);
int64_t qk_type_size(int type);
static const int QK_ERR_TYPE, QK_ERR_SHAPE, QK_ERR_NULL, QK_ERR_CAPACITY, QK_ERR_ISA;

static const int QK_ISA_SCALAR, QK_ISA_AVX2, QK_ISA_NEON;
static const int QK_ACT_F32, QK_ACT_F16, QK_ACT_BF16, QK_ACT_Q8_0, QK_ACT_Q8_K;
static const int QK_PANEL, QK_ROPE_NORMAL, QK_ROPE_NEOX;
int qk_best_isa(void);
int qk_act_format(int wtype);
int64_t qk_act_bytes(int wtype, int64_t n_tok, int64_t n_in);
int64_t qk_quantize_act(int wtype, const float *x, int64_t n_tok, int64_t n_in, void *act, int64_t act_bytes);
int64_t qk_matmul_scratch_bytes(int wtype, int64_t n_in);
int64_t qk_matmul(int isa, int wtype, const void *w, int64_t n_rows, int64_t w_stride, const void *act,
                  int64_t act_bytes, int64_t n_tok, int64_t n_in, float *out, int64_t ld_out, void *scratch,
                  int64_t scratch_bytes);
int64_t qk_rms_norm(const float *x, int64_t n_rows, int64_t n, const float *w, float eps, float *y);
int64_t qk_rope(float *x, int64_t n_tok, int64_t n_head, int64_t head_dim, int64_t n_dims, const int32_t *pos,
                float freq_base, float freq_scale, const float *freq_factors, int mode);
int64_t qk_attention_scratch_count(int64_t n_kv_tok, int64_t head_dim);
int64_t qk_attention(int isa, const float *q, const float *k, const float *v, float *out, int64_t n_tok,
                     int64_t n_kv_tok, int64_t n_head, int64_t n_head_kv, int64_t head_dim, int64_t kv_tok_stride,
                     int64_t kv_head_stride, int64_t h0, int64_t h1, float scale, float *scratch,
                     int64_t scratch_count);
int64_t qk_swiglu(int isa, const float *gate, const float *up, int64_t n, float *out);
int64_t qk_log_softmax(int isa, const float *x, int64_t n_rows, int64_t n, float *out);
"""


def _compile_args() -> list[str]:
    no_lanes = ["-DQK_NO_LANES"] if os.environ.get("QCONVERT_KERNELS_NO_LANES") == "1" else []
    if sys.platform == "win32":
        return ["/O2", "/fp:precise", *no_lanes]
    return ["-std=c11", "-O3", "-ffp-contract=off", "-fno-fast-math", "-fvisibility=hidden", *no_lanes]


def _relative(name: str) -> str:
    # setuptools wants source paths relative to the project root it runs from.
    return os.path.relpath(os.path.join(HERE, name))


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "quantize_cli._kernels",
    '#include "qkernels.h"\n',
    sources=[_relative(name) for name in SOURCES],
    include_dirs=[_relative(".")],
    extra_compile_args=_compile_args(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
