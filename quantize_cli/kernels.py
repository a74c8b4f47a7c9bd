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


# --------------------------------------------------------------------------- inference


@dataclass(frozen=True)
class Activations:
    """float32 rows (n_tok, n_in) converted once for the dot products of a weight type (notes 3.2):
    Q8_K for the K-quants, Q8_0 (with Q8_1's sums) for the 32-blocks, values rounded to F16/BF16
    for those weights. One conversion serves every weight whose type has the same `format`
    (e.g. the Q, K and V projections). `data` is laid out by the C side in panels of 4 tokens."""

    format: int
    n_tok: int
    n_in: int
    data: np.ndarray


def _aligned_bytes(nbytes: int, align: int = 64) -> np.ndarray:
    """An uninitialised uint8 buffer of nbytes starting on an `align`-byte boundary."""
    raw = np.empty(nbytes + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + nbytes]


def _isa(isa: str | None) -> int:
    name = backend() if isa is None else isa
    if name not in _ISAS:
        raise ValueError(f"isa must be one of {', '.join(_ISAS)}, got {name!r}")
    return _ISAS[name]


def activation_format(qtype: GGMLQuantizationType) -> int:
    """The format `quantize_activations` converts to for weights of `qtype` (ggml's vec_dot_type:
    Q8_K for Q4_K/Q5_K/Q6_K, Q8_0 for the 32-blocks, F32/F16/BF16 for those): weights of equal
    format can share one `Activations`."""
    qtype = _supported(qtype)
    return _check(_lib.qk_act_format(qtype), f"activations for {qtype.name}")


def quantize_activations(qtype: GGMLQuantizationType, x: np.ndarray, *, threads: int = 1) -> Activations:
    """Convert float32 rows x (n_tok, n_in) for matmuls with weights of `qtype`."""
    qtype = _supported(qtype)
    _require(x, "x", np.float32, 2)
    n_tok, n_in = x.shape
    _row_bytes(qtype, n_in)
    nbytes = _check(_lib.qk_act_bytes(qtype, n_tok, n_in), f"activations of {n_tok} x {n_in}")
    data = _aligned_bytes(nbytes)
    panel = _lib.QK_PANEL

    def work(a: int, b: int) -> None:  # panels a..b-1
        t0, t1 = a * panel, min(n_tok, b * panel)
        lo, hi = _lib.qk_act_bytes(qtype, t0, n_in), _lib.qk_act_bytes(qtype, t1, n_in)
        dst = data[lo:hi]
        _check(
            _lib.qk_quantize_act(
                qtype, _ffi.from_buffer("float[]", x[t0:t1]), t1 - t0, n_in,
                _ffi.from_buffer("uint8_t[]", dst, require_writable=True), dst.size,
            ),
            f"converting activations {t0}..{t1} for {qtype.name}",
        )

    _run(-(-n_tok // panel), threads, work)
    return Activations(activation_format(qtype), n_tok, n_in, data)


def _weight_rows(qtype: GGMLQuantizationType, weight: np.ndarray, row_bytes: int) -> None:
    """A weight is 2-D, C-contiguous, rows of row_bytes: uint8 rows for any type, or the natural
    dtype of F32 (float32), F16 (float16/uint16) and BF16 (uint16, ml_dtypes bfloat16)."""
    if not isinstance(weight, np.ndarray):
        raise TypeError(f"weight must be a numpy array, got {type(weight).__name__}")
    natural = {T.F32: ("float32",), T.F16: ("float16", "uint16"), T.BF16: ("uint16", "bfloat16")}
    if weight.dtype != np.uint8 and weight.dtype.name not in natural.get(qtype, ()):
        raise ValueError(f"{qtype.name} weight must be uint8 rows, got {weight.dtype.name}")
    if weight.ndim != 2 or weight.shape[1] * weight.itemsize != row_bytes:
        raise ValueError(f"{qtype.name} weight rows must hold {row_bytes} bytes, got shape {weight.shape} of {weight.dtype.name}")
    if not weight.flags.c_contiguous:
        raise ValueError("weight must be C-contiguous (a slice of whole rows of a memmap is)")
    align = 4 if qtype == T.F32 else 2
    if weight.ctypes.data % align and weight.size:
        raise ValueError(f"{qtype.name} weight must be {align}-byte aligned")


def _out_matrix(out: np.ndarray | None, n_tok: int, n_out: int) -> tuple[np.ndarray, int]:
    """The output and its row stride in floats; `out` may be a column slice of a wider array."""
    if out is None:
        return np.empty((n_tok, n_out), dtype=np.float32), n_out
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (n_tok, n_out):
        raise ValueError(f"out must be float32 of shape {(n_tok, n_out)}")
    if not out.flags.writeable:
        raise ValueError("out must be writable")
    if n_tok and n_out and (out.strides[1] != 4 or out.ctypes.data % 4):
        raise ValueError("out rows must be contiguous float32 (C order, or a column slice of it)")
    ld = out.strides[0] // 4 if n_tok > 1 else n_out
    if n_tok > 1 and (out.strides[0] % 4 or ld < n_out):
        raise ValueError("out rows must not overlap")
    return out, ld


def matmul(
    qtype: GGMLQuantizationType,
    weight: np.ndarray,
    x: np.ndarray | Activations,
    *,
    out: np.ndarray | None = None,
    threads: int = 1,
    isa: str | None = None,
) -> np.ndarray:
    """out (n_tok, n_out) = x (n_tok, n_in) @ W.T, with W (n_out rows of `qtype`) kept quantized.

    `weight`: uint8 (n_out, row_bytes), e.g. a read-only memmap slice of a GGUF tensor, or the
    natural dtype for F32/F16/BF16. `x`: float32 C-contiguous, or `quantize_activations` of it.
    `out`: float32 (n_tok, n_out), C order or a column slice of a wider array. Threads split the
    output rows; the result has the same bits for any thread count. `isa`: override `backend()`.
    """
    qtype = _supported(qtype)
    isa_id = _isa(isa)
    acts = x if isinstance(x, Activations) else quantize_activations(qtype, x, threads=threads)
    if acts.format != activation_format(qtype):
        raise ValueError(f"activations were converted for another weight format than {qtype.name}'s")
    _require(acts.data, "activations", np.uint8, 1)
    n_tok, n_in = acts.n_tok, acts.n_in
    row_bytes = _row_bytes(qtype, n_in)
    _weight_rows(qtype, weight, row_bytes)
    n_out = weight.shape[0]
    out, ld = _out_matrix(out, n_tok, n_out)
    if not n_tok or not n_out:
        return out
    w = _ffi.from_buffer("uint8_t[]", weight)
    act = _ffi.from_buffer("uint8_t[]", acts.data)
    dst = _ffi.cast("float *", out.ctypes.data)
    scratch_bytes = _check(_lib.qk_matmul_scratch_bytes(qtype, n_in), f"{qtype.name} rows of {n_in}")

    def work(a: int, b: int) -> None:
        scratch = _aligned_bytes(scratch_bytes)  # this thread's unpacked weight rows
        _check(
            _lib.qk_matmul(
                isa_id, qtype, w + a * row_bytes, b - a, row_bytes, act, acts.data.size, n_tok, n_in, dst + a, ld,
                _ffi.from_buffer("uint8_t[]", scratch, require_writable=True), scratch.size,
            ),
            f"{qtype.name} matmul of rows {a}..{b} by {n_tok} x {n_in}",
        )

    _run(n_out, threads, work)
    return out


def _same_shape_out(out: np.ndarray | None, like: np.ndarray) -> np.ndarray:
    if out is None:
        return np.empty_like(like)
    _require(out, "out", np.float32, like.ndim)
    if out.shape != like.shape or not out.flags.writeable:
        raise ValueError(f"out must be writable float32 of shape {like.shape}, got {out.shape}")
    return out


def rms_norm(x: np.ndarray, weight: np.ndarray | None, eps: float, *, out: np.ndarray | None = None) -> np.ndarray:
    """out (n, d) = x * 1/sqrt(mean(x^2) + eps) * weight, as ggml's rms_norm + mul (sum of squares
    in double). `weight`: float32 (d,) or None; `out` may be x."""
    _require(x, "x", np.float32, 2)
    w = _ffi.NULL
    if weight is not None:
        _require(weight, "weight", np.float32, 1)
        if weight.shape[0] != x.shape[1]:
            raise ValueError(f"weight has {weight.shape[0]} values, rows have {x.shape[1]}")
        w = _ffi.from_buffer("float[]", weight)
    out = _same_shape_out(out, x)
    if x.size:
        _check(
            _lib.qk_rms_norm(_ffi.from_buffer("float[]", x), x.shape[0], x.shape[1], w, eps,
                             _ffi.from_buffer("float[]", out, require_writable=True)),
            f"rms_norm of {x.shape}",
        )
    return out


def rope(
    x: np.ndarray,
    positions: np.ndarray,
    *,
    freq_base: float,
    neox: bool,
    n_dims: int | None = None,
    freq_scale: float = 1.0,
    freq_factors: np.ndarray | None = None,
) -> np.ndarray:
    """Rotate x (n_tok, n_head, head_dim) float32 in place and return it: the first n_dims (default
    head_dim) values of each head by angle pos * freq_base^(-2i/n_dims) * freq_scale / freq_factors[i].
    neox=False: llama.cpp's normal mode, pairs (2i, 2i+1) (llama, after the converter's Q/K permute);
    neox=True: pairs (i, i + n_dims/2) (qwen2). positions: int32 (n_tok,)."""
    _require(x, "x", np.float32, 3)
    if not x.flags.writeable:
        raise ValueError("x must be writable")
    _require(positions, "positions", np.int32, 1)
    n_tok, n_head, head_dim = x.shape
    if positions.shape[0] != n_tok:
        raise ValueError(f"{positions.shape[0]} positions for {n_tok} tokens")
    n_dims = head_dim if n_dims is None else n_dims
    ff = _ffi.NULL
    if freq_factors is not None:
        _require(freq_factors, "freq_factors", np.float32, 1)
        if freq_factors.shape[0] < n_dims // 2:
            raise ValueError(f"freq_factors needs {n_dims // 2} values, got {freq_factors.shape[0]}")
        ff = _ffi.from_buffer("float[]", freq_factors)
    if x.size:
        _check(
            _lib.qk_rope(
                _ffi.from_buffer("float[]", x, require_writable=True), n_tok, n_head, head_dim, n_dims,
                _ffi.from_buffer("int32_t[]", positions), freq_base, freq_scale, ff,
                _lib.QK_ROPE_NEOX if neox else _lib.QK_ROPE_NORMAL,
            ),
            f"rope of {x.shape} over {n_dims} dims",
        )
    return x


def _kv_view(arr: np.ndarray, name: str) -> None:
    if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.ndim != 3:
        raise ValueError(f"{name} must be a float32 (n_kv_tok, n_head_kv, head_dim) array")
    if arr.size and (arr.strides[2] != 4 or min(arr.strides) < 0 or arr.strides[0] % 4 or arr.strides[1] % 4
                     or arr.ctypes.data % 4):
        raise ValueError(f"{name} needs contiguous head_dim rows and non-negative float strides")


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    out: np.ndarray | None = None,
    scale: float | None = None,
    threads: int = 1,
    isa: str | None = None,
) -> np.ndarray:
    """Causal grouped-query attention; returns out (n_tok, n_head, head_dim).

    q: float32 (n_tok, n_head, head_dim), C-contiguous. k, v: float32 (n_kv_tok, n_head_kv,
    head_dim) with n_kv_tok >= n_tok, any strides with contiguous head_dim rows (a cache laid out
    (n_head_kv, T, head_dim) passes as cache[:, :t].transpose(1, 0, 2)). The queries are the last
    n_tok positions: query t sees keys 0..n_kv_tok - n_tok + t. Query head h reads KV head
    h // (n_head // n_head_kv). Softmax of scale * q.k, scale = 1/sqrt(head_dim) by default.
    Threads split the heads (same bits for any count); `isa` overrides `backend()`."""
    _require(q, "q", np.float32, 3)
    _kv_view(k, "k")
    _kv_view(v, "v")
    n_tok, n_head, head_dim = q.shape
    n_kv_tok, n_head_kv, kv_dim = k.shape
    if v.shape != k.shape or v.strides != k.strides:
        raise ValueError(f"k and v must have the same shape and strides, got {k.shape} and {v.shape}")
    if kv_dim != head_dim or n_kv_tok < n_tok or n_head_kv < 1 or n_head % n_head_kv:
        raise ValueError(f"q {q.shape} does not fit k/v {k.shape}: need the same head_dim, "
                         "at least as many positions, and n_head a multiple of n_head_kv")
    out = _same_shape_out(out, q)
    if not q.size:
        return out
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    qp, op = _ffi.from_buffer("float[]", q), _ffi.from_buffer("float[]", out, require_writable=True)
    kp, vp = _ffi.cast("float *", k.ctypes.data), _ffi.cast("float *", v.ctypes.data)
    tok_stride, head_stride = k.strides[0] // 4, k.strides[1] // 4

    scratch_count = _check(_lib.qk_attention_scratch_count(n_kv_tok, head_dim), f"attention over {n_kv_tok} positions")
    isa_id = _isa(isa)

    def work(h0: int, h1: int) -> None:
        scratch = _aligned_bytes(4 * scratch_count).view(np.float32)  # this thread's K^T, scores, blocks
        _check(
            _lib.qk_attention(
                isa_id, qp, kp, vp, op, n_tok, n_kv_tok, n_head, n_head_kv, head_dim, tok_stride, head_stride, h0, h1,
                scale, _ffi.from_buffer("float[]", scratch, require_writable=True), scratch.size,
            ),
            f"attention of heads {h0}..{h1}, {n_tok} queries over {n_kv_tok} positions",
        )

    _run(n_head, threads, work)
    return out


def swiglu(gate: np.ndarray, up: np.ndarray, *, out: np.ndarray | None = None, threads: int = 1,
           isa: str | None = None) -> np.ndarray:
    """out = silu(gate) * up = gate / (1 + exp(-gate)) * up, float32 of the same shape (C order);
    `out` may be gate or up. exp is within 2 ulp of expf; the same bits on every ISA."""
    _require(gate, "gate", np.float32, gate.ndim)
    _require(up, "up", np.float32, gate.ndim)
    if up.shape != gate.shape:
        raise ValueError(f"gate {gate.shape} and up {up.shape} differ")
    out = _same_shape_out(out, gate)
    g, u, o = gate.reshape(-1), up.reshape(-1), out.reshape(-1)
    isa_id = _isa(isa)

    def work(a: int, b: int) -> None:
        _check(
            _lib.qk_swiglu(isa_id, _ffi.from_buffer("float[]", g[a:b]), _ffi.from_buffer("float[]", u[a:b]), b - a,
                           _ffi.from_buffer("float[]", o[a:b], require_writable=True)),
            f"swiglu of {b - a} values",
        )

    _run(g.size, threads, work)
    return out


def log_softmax(x: np.ndarray, *, out: np.ndarray | None = None, threads: int = 1, isa: str | None = None) -> np.ndarray:
    """out (n, vocab) = log_softmax of each row of x, as llama-perplexity computes it: x - max -
    log(sum exp(x - max)), the sum in double (exp within 2 ulp of expf). `out` may be x."""
    _require(x, "x", np.float32, 2)
    out = _same_shape_out(out, x)
    n_rows, n = x.shape
    isa_id = _isa(isa)

    def work(a: int, b: int) -> None:
        _check(
            _lib.qk_log_softmax(isa_id, _ffi.from_buffer("float[]", x[a:b]), b - a, n,
                                _ffi.from_buffer("float[]", out[a:b], require_writable=True)),
            f"log_softmax of {b - a} rows of {n}",
        )

    if n:
        _run(n_rows, threads, work)
    return out
