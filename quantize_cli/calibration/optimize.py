"""Calibration-aware quantization that still writes llama.cpp's standard blocks.

`quantize_gptq` is GPTQ (Frantar et al., 2022) inside ggml's grids. The loss of a linear layer with
inputs X is tr((W - Wq) H (W - Wq)^T), H = X^T X / n (the `hessian` collected with the importance
matrix). Columns (input features) are quantized left to right; the rounding error of each column
is spread over the columns not yet quantized through the Cholesky factor of H^-1, so later columns
compensate for earlier ones. The grids are ggml's: at the first column of each block (256 for the
K-quants, 32 for the others) llama.cpp's own importance-matrix quantizer picks the block's fields
(d, dmin, 6-bit scales and mins) for the *current*, error-updated weights, with diag(H) as the
importance; each column is then rounded to its sub-block's grid. The result is packed by
`blocks.pack` into bytes that any llama.cpp build loads and runs unchanged.

`quantize_weighted` is the fallback when only diag(H) (the importance matrix) is known: the same
block layout, with more scale candidates than llama.cpp tries and a few rounds of coordinate
descent between levels and scales, all against sum_j imatrix[j] * (w_j - wq_j)^2.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from gguf import GGMLQuantizationType

from quantize_cli import kernels
from quantize_cli.calibration import blocks
from quantize_cli.calibration.blocks import SPECS, Fields
from quantize_cli.calibration.collect import ActivationStats
from quantize_cli.errors import NonFiniteError
from quantize_cli.plan import Plan
from quantize_cli.sources import RowSource

T = GGMLQuantizationType

OPTIMIZABLE = frozenset(SPECS)
DAMP = 0.01    # fraction of mean(diag(H)) added to the diagonal before inverting (GPTQ's percdamp)
BATCH = 256    # columns updated eagerly; the rest of the matrix gets one product per batch


def weighted_error(weight: np.ndarray, approx: np.ndarray, hessian: np.ndarray) -> float:
    """tr((W - Wq) H (W - Wq)^T): the summed squared output error over the calibration inputs
    (per input row when H is the mean of x x^T). A 1-D `hessian` means diag(H)."""
    diff = (weight.astype(np.float64) - approx.astype(np.float64))
    if hessian.ndim == 1:
        return float(np.sum(diff * diff * hessian.astype(np.float64)))
    return float(np.sum((diff @ hessian.astype(np.float64)) * diff))


def _inverse_cholesky(hessian: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor U of (H + damp*mean(diag)*I)^-1, float64 (U^T U = H^-1).

    Columns never activated (diag 0) get a unit diagonal: their error then moves nothing."""
    h = hessian.astype(np.float64)
    diag = np.diagonal(h).copy()
    dead = diag <= 0
    h[dead, dead] = 1.0
    mean = float(np.mean(np.diagonal(h)))
    h[np.diag_indices_from(h)] += damp * mean
    for attempt in range(6):
        try:
            lower = np.linalg.cholesky(h)
            break
        except np.linalg.LinAlgError:  # numerically indefinite: more damping, as GPTQ users do
            h[np.diag_indices_from(h)] += damp * mean * 10 ** attempt
    else:
        raise np.linalg.LinAlgError("H + damping is not positive definite")
    lower_inv = np.linalg.inv(lower)
    h_inv = lower_inv.T @ lower_inv
    return np.linalg.cholesky(h_inv).T


def _block_fields(qtype: T, cols: np.ndarray, importance: np.ndarray) -> tuple[np.ndarray, Fields]:
    """llama.cpp's choice of levels and fields for the blocks of `cols` (n_out, block*k)."""
    data = kernels.quantize_rows(qtype, np.ascontiguousarray(cols, dtype=np.float32),
                                 imatrix=np.ascontiguousarray(importance, dtype=np.float32))
    return blocks.unpack(qtype, data)


def _concat_fields(parts: list[Fields]) -> Fields:
    def cat(name: str) -> np.ndarray | None:
        arrays = [getattr(p, name) for p in parts]
        return None if arrays[0] is None else np.concatenate(arrays, axis=1)
    return Fields(cat("d"), cat("dmin"), cat("sc"), cat("mn"))


def _levels(x: np.ndarray, step: np.ndarray, shift: np.ndarray, fallback: np.ndarray, spec: blocks.GridSpec
            ) -> np.ndarray:
    """Nearest level of each x on its grid; `fallback` where the grid has step 0."""
    lo = 1 if spec.nmax == 255 else 0  # Q8_0 keeps -127..127 like the reference quantizer
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.rint((x - shift) / step) + spec.zero
    q = np.clip(np.nan_to_num(q, nan=0.0, posinf=spec.nmax, neginf=lo), lo, spec.nmax)
    return np.where(step != 0, q, fallback).astype(np.uint8)


def quantize_gptq(qtype: T, weight: np.ndarray, hessian: np.ndarray, *, damp: float = DAMP,
                  factor: np.ndarray | None = None) -> np.ndarray:
    """GPTQ-quantize `weight` float32 (n_out, n_in) to `qtype` rows, uint8 (n_out, row_bytes).

    hessian: float32/64 (n_in, n_in), the mean (or sum) of x x^T over calibration inputs.
    factor: `_inverse_cholesky(hessian, damp)` when the caller has it already (one per tensor)."""
    qtype = T(qtype)
    if qtype not in OPTIMIZABLE:
        raise ValueError(f"no optimizing quantizer for {qtype.name}")
    spec = SPECS[qtype]
    n_out, n_in = weight.shape
    if hessian.shape != (n_in, n_in):
        raise ValueError(f"hessian is {hessian.shape}, the weight has {n_in} input columns")
    if n_in % spec.block:
        raise ValueError(f"{qtype.name}: rows of {n_in} are not whole {spec.block}-blocks")
    u = _inverse_cholesky(hessian, damp).astype(np.float32) if factor is None else factor
    importance = np.maximum(np.diagonal(hessian), 0).astype(np.float32)
    w = np.array(weight, dtype=np.float32, copy=True)
    q = np.empty((n_out, n_in), np.uint8)
    parts: list[Fields] = []
    batch = max(spec.block, BATCH // spec.block * spec.block)
    for b0 in range(0, n_in, batch):
        b1 = min(n_in, b0 + batch)
        errors = np.empty((n_out, b1 - b0), np.float32)
        for g0 in range(b0, b1, spec.block):
            g1 = g0 + spec.block
            first, fields = _block_fields(qtype, w[:, g0:g1], importance[g0:g1])
            parts.append(fields)
            step, shift = blocks.grid(qtype, fields)
            for j in range(g0, g1):
                s = (j - g0) // spec.sub
                col = w[:, j]
                q[:, j] = _levels(col, step[:, s], shift[:, s], first[:, j - g0], spec)
                value = step[:, s] * (q[:, j].astype(np.float32) - spec.zero)
                if spec.has_min:
                    value += shift[:, s]
                err = (col - value) / u[j, j]
                errors[:, j - b0] = err
                w[:, j + 1:b1] -= np.outer(err, u[j, j + 1:b1])
        if b1 < n_in:
            w[:, b1:] -= errors @ u[b0:b1, b1:]
    return blocks.pack(qtype, q, _concat_fields(parts))


# --------------------------------------------------------------------------- plans


class OptimizedRows:
    """A planned tensor's rows, GPTQ-quantized to `qtype` as they are read: a RowSource whose
    stored type is the target type, so the writer copies the bytes. Rows are independent under
    GPTQ (H is shared by all rows), so slabs of rows give the same bytes as the whole tensor."""

    def __init__(self, inner: RowSource, qtype: T, hessian: np.ndarray, *, name: str, damp: float = DAMP) -> None:
        self.inner, self.qtype, self.hessian, self.name, self.damp = inner, T(qtype), hessian, name, damp
        self._factor: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.inner.shape

    @property
    def stored_type(self) -> T:
        return self.qtype

    @property
    def row_group(self) -> int:
        return self.inner.row_group

    def read(self, start: int, stop: int) -> np.ndarray:
        rows = _to_f32(self.inner.read(start, stop), self.inner.stored_type, self.shape[-1])
        if not np.isfinite(rows).all():
            raise NonFiniteError(f"tensor {self.name!r} contains NaN or Inf values")
        if self._factor is None:
            self._factor = _inverse_cholesky(self.hessian, self.damp).astype(np.float32)
        return quantize_gptq(self.qtype, rows, self.hessian, factor=self._factor)


def _to_f32(raw: np.ndarray, stored: T, n_per_row: int) -> np.ndarray:
    if stored == T.F32:
        return np.ascontiguousarray(raw, dtype=np.float32)
    if stored in (T.F16, T.BF16):
        return kernels.widen_to_f32(np.ascontiguousarray(raw), source="f16" if stored == T.F16 else "bf16")
    return kernels.dequantize_rows(stored, np.ascontiguousarray(raw), n_per_row)


def optimize_plan(plan: Plan, stats: ActivationStats, *, damp: float = DAMP) -> tuple[Plan, list[str]]:
    """The plan with every tensor that has a collected H and a target type in OPTIMIZABLE (and is
    re-typed) read through GPTQ; returns it and the names of the optimized tensors."""
    tensors, names = [], []
    for t in plan.tensors:
        hessian = stats.hessian(t.name)
        if (hessian is None or t.qtype not in OPTIMIZABLE or t.qtype == t.source.stored_type
                or len(t.shape) != 2 or hessian.shape[0] != t.shape[-1]):
            tensors.append(t)
            continue
        names.append(t.name)
        tensors.append(replace(t, source=OptimizedRows(t.source, t.qtype, hessian, name=t.name, damp=damp),
                               imatrix=None))
    return replace(plan, tensors=tensors), names
