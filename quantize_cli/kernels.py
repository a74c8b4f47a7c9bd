"""The typed Python face of the C kernels (`kernels_c/`, compiled as `quantize_cli._kernels`).

Every function checks dtype, shape, contiguity and alignment before it calls C, so the C side only
ever sees pointers and counts it can trust; `_check` turns the C status codes into exceptions in
one place. Rows are independent, so `threads` splits them over a thread pool (cffi releases the GIL
during each call) and the bytes are the same for any thread count.

Bytes are identical to llama.cpp's `ggml_quantize_chunk` for the same input and importance matrix:
without an imatrix the `_ref` quantizers, with one the `_impl` ones (reference notes, section 2).

Inference: `matmul` multiplies float32 activations by a weight that stays quantized, the way
llama.cpp's CPU backend does (activations converted to the weight's vec_dot type, integer dot
products per block; notes 3.2-3.5), on the best instruction set this CPU runs (`backend()`). The
quantized types give the same float bits on every ISA and any thread count. `attention`,
`rms_norm`, `rope`, `swiglu` and `log_softmax` are the rest of a forward pass's per-token work.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from quantize_cli import _kernels
from quantize_cli.errors import UnsupportedError

T = GGMLQuantizationType
_ffi, _lib = _kernels.ffi, _kernels.lib

# Tensor types the kernels quantize and dequantize (ids are ggml's, as in the C table).
SUPPORTED: frozenset[GGMLQuantizationType] = frozenset(
    (T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K)
)
# Types whose quantizer reads the importance matrix (the others ignore it, as llama.cpp does).
USES_IMATRIX: frozenset[GGMLQuantizationType] = frozenset(
    (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K)
)

_STATUS: dict[int, str] = {
    _lib.QK_ERR_TYPE: "type not supported by the C kernels",
    _lib.QK_ERR_SHAPE: "row length is not a positive multiple of the block, or the row count is invalid",
    _lib.QK_ERR_NULL: "NULL buffer",
    _lib.QK_ERR_CAPACITY: "destination buffer too small",
    _lib.QK_ERR_ISA: "instruction set not compiled in or not run by this CPU",
}


_ISAS: dict[str, int] = {"scalar": _lib.QK_ISA_SCALAR, "avx2": _lib.QK_ISA_AVX2, "neon": _lib.QK_ISA_NEON}


def backend() -> str:
    """The instruction set of the matmul kernels: "avx2", "neon" or "scalar", chosen at run time from
    the CPU's features; QCONVERT_KERNELS=scalar forces the portable C reference. The quantizers are
    portable C on every ISA (same bytes everywhere)."""
    best = next(name for name, isa in _ISAS.items() if isa == _lib.qk_best_isa())
    forced = os.environ.get("QCONVERT_KERNELS", "").strip().lower()
    if forced in ("", "auto", best):
        return best
    if forced == "scalar":
        return "scalar"
    raise UnsupportedError(
        f"QCONVERT_KERNELS={forced!r}: this CPU runs the {best} kernels",
        hint=f"set QCONVERT_KERNELS to 'scalar', '{best}' or 'auto', or unset it",
    )


def _check(result: int, what: str) -> int:
    """Return a C kernel's count, or raise for its status code."""
    if result < 0:
        raise ValueError(f"{what}: {_STATUS.get(result, f'unknown status {result}')}")
    return result


def _supported(qtype: GGMLQuantizationType) -> GGMLQuantizationType:
    qtype = GGMLQuantizationType(qtype)
    if qtype not in SUPPORTED:
        names = ", ".join(t.name for t in sorted(SUPPORTED))
        raise UnsupportedError(
            f"tensor type {qtype.name} is not supported by qconvert's kernels",
            hint=f"supported types: {names}",
        )
    return qtype


def _row_bytes(qtype: GGMLQuantizationType, n_per_row: int) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    if n_per_row <= 0 or n_per_row % block:
        raise ValueError(f"row of {n_per_row} values is not a positive multiple of the {qtype.name} block ({block})")
    return n_per_row // block * size


def _require(arr: np.ndarray, name: str, dtype: type | np.dtype, ndim: int, *, align: int = 4) -> None:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype != dtype:
        raise ValueError(f"{name} must be {np.dtype(dtype).name}, got {arr.dtype.name}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    if arr.ctypes.data % align and arr.size:
        raise ValueError(f"{name} must be {align}-byte aligned")


def _run(n: int, threads: int, work: Callable[[int, int], None]) -> None:
    """Call work(start, stop) on at most `threads` contiguous, non-empty ranges covering 0..n."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    parts = min(threads, n)
    ranges = [(n * k // parts, n * (k + 1) // parts) for k in range(parts)]
    if parts <= 1:
        for a, b in ranges:
            work(a, b)
        return
    with ThreadPoolExecutor(max_workers=parts) as pool:
        for future in [pool.submit(work, a, b) for a, b in ranges]:
            future.result()


def quantize_rows(
    qtype: GGMLQuantizationType,
    rows: np.ndarray,
    *,
    imatrix: np.ndarray | None = None,
    threads: int = 1,
) -> np.ndarray:
    """Quantize float32 rows (n_rows, n_per_row) to `qtype`; returns uint8 (n_rows, row_bytes).

    `imatrix`: float32 (n_per_row,) importance weights shared by all rows, or None. Types that
    llama.cpp quantizes without one (F32, F16, BF16, Q8_0) ignore it.
    """
    qtype = _supported(qtype)
    _require(rows, "rows", np.float32, 2)
    n_rows, n_per_row = rows.shape
    row_bytes = _row_bytes(qtype, n_per_row)
    imat = _ffi.NULL
    if imatrix is not None:
        _require(imatrix, "imatrix", np.float32, 1)
        if imatrix.shape[0] != n_per_row:
            raise ValueError(f"imatrix has {imatrix.shape[0]} values, rows have {n_per_row}")
        if qtype in USES_IMATRIX:
            imat = _ffi.from_buffer("float[]", imatrix)
    out = np.empty((n_rows, row_bytes), dtype=np.uint8)

    def work(a: int, b: int) -> None:
        src, dst = rows[a:b], out[a:b]
        _check(
            _lib.qk_quantize(
                qtype, _ffi.from_buffer("float[]", src), b - a, n_per_row, imat,
                _ffi.from_buffer("uint8_t[]", dst, require_writable=True), dst.size,
            ),
            f"quantizing {b - a} rows of {n_per_row} to {qtype.name}",
        )

    _run(n_rows, threads, work)
    return out


def dequantize_rows(
    qtype: GGMLQuantizationType, data: np.ndarray, n_per_row: int, *, threads: int = 1
) -> np.ndarray:
    """Dequantize uint8 rows (n_rows, row_bytes) of `qtype` to float32 (n_rows, n_per_row)."""
    qtype = _supported(qtype)
    _require(data, "data", np.uint8, 2, align=2)  # blocks hold uint16 fields
    row_bytes = _row_bytes(qtype, n_per_row)
    if data.shape[1] != row_bytes:
        raise ValueError(f"{qtype.name} rows of {n_per_row} take {row_bytes} bytes, data rows have {data.shape[1]}")
    n_rows = data.shape[0]
    out = np.empty((n_rows, n_per_row), dtype=np.float32)

    def work(a: int, b: int) -> None:
        dst = out[a:b]
        _check(
            _lib.qk_dequantize(
                qtype, _ffi.from_buffer("uint8_t[]", data[a:b]), b - a, n_per_row,
                _ffi.from_buffer("float[]", dst, require_writable=True), dst.size,
            ),
            f"dequantizing {b - a} rows of {qtype.name}",
        )

    _run(n_rows, threads, work)
    return out


_WIDEN_DTYPES = {"f16": ("float16", "uint16"), "bf16": ("bfloat16", "uint16")}


def widen_to_f32(rows: np.ndarray, *, source: Literal["bf16", "f16"], threads: int = 1) -> np.ndarray:
    """Widen 16-bit floats exactly to float32, keeping the shape.

    `rows` holds binary16 (float16, or its uint16 bits) for source="f16", or bfloat16 bits
    (uint16, or an ml_dtypes bfloat16 array) for source="bf16".
    """
    if source not in _WIDEN_DTYPES:
        raise ValueError(f"source must be 'f16' or 'bf16', got {source!r}")
    if not isinstance(rows, np.ndarray):
        raise TypeError(f"rows must be a numpy array, got {type(rows).__name__}")
    if rows.dtype.name not in _WIDEN_DTYPES[source]:
        raise ValueError(f"{source} input must be one of {_WIDEN_DTYPES[source]}, got {rows.dtype.name}")
    if not rows.flags.c_contiguous:
        raise ValueError("rows must be C-contiguous (use np.ascontiguousarray)")
    if rows.ctypes.data % 2 and rows.size:
        raise ValueError("rows must be 2-byte aligned")
    qtype = T.F16 if source == "f16" else T.BF16
    flat = rows.reshape(-1).view(np.uint16)
    out = np.empty(flat.shape, dtype=np.float32)

    def work(a: int, b: int) -> None:
        _check(
            _lib.qk_dequantize(
                qtype, _ffi.from_buffer("uint16_t[]", flat[a:b]), 1, b - a,
                _ffi.from_buffer("float[]", out[a:b], require_writable=True), b - a,
            ),
            f"widening {b - a} {source} values",
        )

    _run(flat.size, threads, work)
    return out.reshape(rows.shape)


def block_struct_size(qtype: GGMLQuantizationType) -> tuple[int, int]:
    """(elements per block, sizeof the C block struct): checked against GGML_QUANT_SIZES by a test."""
    qtype = _supported(qtype)
    return _check(_lib.qk_block_size(qtype), qtype.name), _check(_lib.qk_type_size(qtype), qtype.name)
