"""Calibration-aware quantization that still writes llama.cpp's standard blocks.

`quantize_gptq` is GPTQ (Frantar et al., 2022) inside ggml's grids. The loss of a linear layer with
inputs X is tr((W - Wq) H (W - Wq)^T), H = X^T X (the `hessians` collected with the importance
matrix). Columns (input features) are quantized one after the other; the rounding error of each
column is spread over the columns not yet quantized through the Cholesky factor of H^-1, so later
columns compensate for earlier ones. The order is act-order kept inside ggml's blocks
(`grouped_act_order`: blocks, sub-blocks and columns by descending diag(H); against the natural
order it lowered llama-perplexity's mean KLD on SmolLM2 by 21% for Q4_K_M, 2% for Q5_K_M). The grids are ggml's:
at the first column of each block (256 for the K-quants, 32 for the others) the block's fields
(d, dmin, 6-bit scales and mins) are chosen for the *current*, error-updated weights by
`refine.quantize_weighted` (llama.cpp's importance-matrix search, then an importance-weighted
least-squares refinement) with diag(H) as the importance; each column is then rounded to its
sub-block's grid. `blocks.pack` turns levels and fields into bytes that any llama.cpp build loads
and runs unchanged.

`optimize_plan` puts the optimizer into a conversion plan, tensor by tensor: GPTQ where H was
collected, `refine.quantize_weighted` where only the importance matrix is known.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from quantize_cli import kernels
from quantize_cli.calibration import blas, blocks, refine
from quantize_cli.calibration.blocks import SPECS, Fields
from quantize_cli.calibration.collect import ActivationStats
from quantize_cli.errors import NonFiniteError
from quantize_cli.plan import Plan
from quantize_cli.sources import RowSource

T = GGMLQuantizationType

OPTIMIZABLE = frozenset(SPECS)
DAMP = 0.01    # fraction of mean(diag(H)) added to the diagonal before inverting (GPTQ's percdamp)
BATCH = 256    # columns updated eagerly; the rest of the matrix gets one product per batch
ROWS_PER_TASK = 4096  # rows per worker task (a fixed split: the bytes do not depend on --threads)


def weighted_error(weight: np.ndarray, approx: np.ndarray, hessian: np.ndarray) -> float:
    """tr((W - Wq) H (W - Wq)^T): the summed squared output error over the calibration inputs
    (per input row when H is the mean of x x^T). A 1-D `hessian` means diag(H)."""
    diff = (weight.astype(np.float64) - approx.astype(np.float64))
    if hessian.ndim == 1:
        return float(np.sum(diff * diff * hessian.astype(np.float64)))
    return float(np.sum((diff @ hessian.astype(np.float64)) * diff))


def _inverse_cholesky(hessian: np.ndarray, damp: float) -> np.ndarray:
    """Upper triangular U with U^T U = (H + damp*mean(diag H)*I)^-1, float32.

    With J the reversal permutation and J H J = C C^T (C lower), U = J C^-1 J: one Cholesky and
    one triangular inverse instead of GPTQ's inverse followed by a second Cholesky. Columns never
    activated (diag 0) get a unit diagonal: their error then moves nothing."""
    h = hessian.astype(np.float32)  # float32 throughout, as GPTQ does; damping keeps it well conditioned
    dead = np.diagonal(h) <= 0
    h[dead, dead] = 1.0
    mean = float(np.mean(np.diagonal(h), dtype=np.float64))
    flipped = h[::-1, ::-1].copy()
    idx = np.diag_indices_from(flipped)
    flipped[idx] += damp * mean
    for attempt in range(6):
        try:
            lower = np.linalg.cholesky(flipped)
            break
        except np.linalg.LinAlgError:  # numerically indefinite: more damping, as GPTQ users do
            flipped[idx] += damp * mean * 10 ** attempt
    else:
        raise np.linalg.LinAlgError("H + damping is not positive definite")
    return np.ascontiguousarray(_lower_inverse(lower)[::-1, ::-1])


def _lower_inverse(lower: np.ndarray) -> np.ndarray:
    """Inverse of a lower triangular matrix by halves, [[A, 0], [B, D]]^-1 = [[A^-1, 0],
    [-D^-1 B A^-1, D^-1]]: about n^3/3 flops in matrix products, a third of a general inverse."""
    n = lower.shape[0]
    if n <= 128:
        return np.linalg.inv(lower)
    k = n // 2
    a_inv, d_inv = _lower_inverse(lower[:k, :k]), _lower_inverse(lower[k:, k:])
    out = np.zeros_like(lower)
    out[:k, :k], out[k:, k:] = a_inv, d_inv
    out[k:, :k] = -(d_inv @ (lower[k:, :k] @ a_inv))
    return out


def _block_fields(qtype: T, cols: np.ndarray, importance: np.ndarray) -> Fields:
    """The fields for the blocks of `cols` (n_out, block*k): the importance-weighted search."""
    cols = np.ascontiguousarray(cols, dtype=np.float32)
    importance = np.ascontiguousarray(importance, dtype=np.float32)
    return refine.search(qtype, cols, importance)[1]


def _concat_fields(parts: list[Fields]) -> Fields:
    def cat(name: str) -> np.ndarray | None:
        arrays = [getattr(p, name) for p in parts]
        return None if arrays[0] is None else np.concatenate(arrays, axis=1)
    return Fields(cat("d"), cat("dmin"), cat("sc"), cat("mn"))


def grouped_act_order(spec, importance: np.ndarray) -> np.ndarray:
    """GPTQ's act-order (most important columns first) within what ggml's grids allow: the fields
    of a block are chosen when its first column is reached, so blocks stay contiguous. Blocks in
    descending total importance, inside each its sub-blocks likewise, inside each sub-block its
    columns likewise (stable sorts: ties keep the natural order)."""
    n_in = importance.size
    imp = importance.astype(np.float64)
    order = []
    for b in np.argsort(-imp.reshape(-1, spec.block).sum(axis=1), kind="stable"):
        subs = imp[b * spec.block:(b + 1) * spec.block].reshape(-1, spec.sub)
        for s in np.argsort(-subs.sum(axis=1), kind="stable"):
            first = b * spec.block + s * spec.sub
            order.extend(first + np.argsort(-subs[s], kind="stable"))
    perm = np.asarray(order, dtype=np.int64)
    assert perm.size == n_in
    return perm


def quantize_gptq(qtype: T, weight: np.ndarray, hessian: np.ndarray, *, damp: float = DAMP,
                  factor: np.ndarray | None = None, act_order: bool = True) -> np.ndarray:
    """GPTQ-quantize `weight` float32 (n_out, n_in) to `qtype` rows, uint8 (n_out, row_bytes).

    hessian: float32/64 (n_in, n_in), the mean (or sum) of x x^T over calibration inputs.
    factor: `_inverse_cholesky` of H (permuted by `grouped_act_order` when act_order) when the
    caller has it already (one per tensor)."""
    qtype = T(qtype)
    if qtype not in OPTIMIZABLE:
        raise ValueError(f"no optimizing quantizer for {qtype.name}")
    spec = SPECS[qtype]
    n_out, n_in = weight.shape
    if hessian.shape != (n_in, n_in):
        raise ValueError(f"hessian is {hessian.shape}, the weight has {n_in} input columns")
    if n_in % spec.block:
        raise ValueError(f"{qtype.name}: rows of {n_in} are not whole {spec.block}-blocks")
    importance = np.maximum(np.diagonal(hessian), 0).astype(np.float32)
    perm = grouped_act_order(spec, importance) if act_order else np.arange(n_in)
    if factor is None:
        factor = _inverse_cholesky(hessian[np.ix_(perm, perm)], damp)
    u = factor
    lo = np.float32(1 if qtype == T.Q8_0 else 0)  # Q8_0 keeps -127..127 like the reference quantizer
    hi = np.float32(spec.nmax)
    # Work on W^T (n_in, n_out) in processing order: position j is input column perm[j].
    wt = np.array(weight.T[perm], dtype=np.float32, order="C")
    levels = np.empty((n_in, n_out), np.float32)
    inv_diag = np.float32(1) / np.diagonal(u)
    fields_of_block: dict[int, Fields] = {}
    batch = max(spec.block, BATCH // spec.block * spec.block)
    for b0 in range(0, n_in, batch):
        b1 = min(n_in, b0 + batch)
        errors = np.empty((b1 - b0, n_out), np.float32)  # scaled error of each column of the batch
        for g0 in range(b0, b1, spec.block):
            g1 = g0 + spec.block
            block = int(perm[g0]) // spec.block
            natural = np.argsort(perm[g0:g1]) + g0  # the block's positions in column order
            fields = _block_fields(qtype, wt[natural].T, importance[perm[natural]])
            fields_of_block[block] = fields
            steps, shifts = (a.T for a in blocks.grid(qtype, fields))  # (n_sub, n_out)
            for s0 in range(g0, g1, spec.sub):
                s1 = s0 + spec.sub
                sub = (int(perm[s0]) - block * spec.block) // spec.sub
                step, shift = steps[sub], shifts[sub]
                # level = rint((x - shift) / step) + zero = rint(x * inv + to_level); value = step * level + to_value
                with np.errstate(divide="ignore"):
                    inv = np.where(step != 0, np.float32(1) / step, np.float32(0))
                to_level = spec.zero - shift * inv
                to_value = shift - step * np.float32(spec.zero)
                for j in range(s0, s1):
                    x, q, e = wt[j], levels[j], errors[j - b0]
                    np.multiply(x, inv, out=q)
                    q += to_level
                    np.rint(q, out=q)
                    np.minimum(np.maximum(q, lo, out=q), hi, out=q)
                    np.multiply(step, q, out=e)
                    e += to_value
                    np.subtract(x, e, out=e)
                    e *= inv_diag[j]
                    wt[j + 1:s1] -= u[j, j + 1:s1, None] * e
                wt[s1:b1] -= u[s0:s1, s1:b1].T @ errors[s0 - b0:s1 - b0]
        wt[b1:] -= u[b0:b1, b1:].T @ errors
    natural_levels = np.empty_like(levels)
    natural_levels[perm] = levels
    parts = [fields_of_block[b] for b in range(n_in // spec.block)]
    return blocks.pack(qtype, natural_levels.T.astype(np.uint8), _concat_fields(parts))


# --------------------------------------------------------------------------- plans


class FactorCache:
    """The inverse Cholesky factor of each collected H, computed once: attn_q/k/v (and
    ffn_gate/up) share one H object, so they share one factor. Keeps the last few."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._factors: dict[int, tuple[np.ndarray, float, np.ndarray]] = {}

    def get(self, hessian: np.ndarray, damp: float, qtype: T) -> np.ndarray:
        """The factor `quantize_gptq` uses for `qtype`: of H in that type's act-order."""
        spec = SPECS[T(qtype)]
        key = (id(hessian), spec.block, spec.sub)
        hit = self._factors.get(key)
        if hit is not None and hit[0] is hessian and hit[1] == damp:
            return hit[2]
        perm = grouped_act_order(spec, np.maximum(np.diagonal(hessian), 0).astype(np.float32))
        factor = _inverse_cholesky(hessian[np.ix_(perm, perm)], damp)
        while len(self._factors) >= self.keep:
            self._factors.pop(next(iter(self._factors)))
        self._factors[key] = (hessian, damp, factor)
        return factor


class OptimizedRows:
    """A planned tensor's rows, quantized to `qtype` by the optimizer as they are read: a RowSource
    whose stored type is the target type, so the writer copies its bytes. Both methods treat rows
    independently (H and the importance are shared by all rows), so any slab of rows gives the
    same bytes as the whole tensor, and a fixed split of the rows over the worker threads gives the
    same bytes for any thread count.

    With `hessian`: GPTQ. Without: the importance-weighted block search of `refine` with
    `imatrix` (the plan's vector, llama.cpp's importance)."""

    def __init__(self, inner: RowSource, qtype: T, *, name: str, hessian: np.ndarray | None,
                 imatrix: np.ndarray | None, damp: float = DAMP, factors: FactorCache | None = None,
                 threads: int = 1) -> None:
        if hessian is None and imatrix is None:
            raise ValueError(f"{name}: the optimizer needs H or an importance vector")
        self.inner, self.qtype, self.name = inner, T(qtype), name
        self.hessian, self.imatrix, self.damp = hessian, imatrix, damp
        self.factors, self.threads = factors or FactorCache(), threads

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
        pieces = [(a, min(len(rows), a + ROWS_PER_TASK)) for a in range(0, len(rows), ROWS_PER_TASK)]
        block, size = GGML_QUANT_SIZES[self.qtype]
        out = np.empty((len(rows), rows.shape[1] // block * size), np.uint8)
        with blas.single_threaded():
            if self.hessian is not None:
                hessian = self.hessian.astype(np.float32)
                factor = self.factors.get(self.hessian, self.damp, self.qtype)

                def work(piece: tuple[int, int]) -> None:
                    out[piece[0]:piece[1]] = quantize_gptq(self.qtype, rows[piece[0]:piece[1]], hessian, factor=factor)
            else:
                def work(piece: tuple[int, int]) -> None:
                    out[piece[0]:piece[1]] = refine.quantize_weighted(self.qtype, rows[piece[0]:piece[1]], self.imatrix)

            if self.threads > 1 and len(pieces) > 1:
                with ThreadPoolExecutor(min(self.threads, len(pieces))) as pool:
                    list(pool.map(work, pieces))
            else:
                for piece in pieces:
                    work(piece)
        return out


def _to_f32(raw: np.ndarray, stored: T, n_per_row: int) -> np.ndarray:
    if stored == T.F32:
        return np.ascontiguousarray(raw, dtype=np.float32)
    if stored in (T.F16, T.BF16):
        return kernels.widen_to_f32(np.ascontiguousarray(raw), source="f16" if stored == T.F16 else "bf16")
    return kernels.dequantize_rows(stored, np.ascontiguousarray(raw), n_per_row)


def optimize_plan(plan: Plan, stats: ActivationStats | None = None, *, damp: float = DAMP, threads: int = 1
                  ) -> tuple[Plan, dict[str, str]]:
    """The plan with its re-typed 2-D tensors of an OPTIMIZABLE type read through the optimizer:
    GPTQ where `stats` holds the tensor's H, else the importance-weighted search where the plan
    gives the tensor an importance vector (llama.cpp's imatrix rule), else unchanged.
    Returns the plan and {tensor name: "gptq" | "weighted"}."""
    tensors, methods = [], {}
    factors = FactorCache()
    for t in plan.tensors:
        hessian = stats.hessians.get(t.name) if stats is not None else None  # a raw sum: GPTQ ignores H's scale
        if hessian is not None and hessian.shape != (t.shape[-1], t.shape[-1]):
            hessian = None
        if (t.qtype not in OPTIMIZABLE or t.qtype == t.source.stored_type or len(t.shape) != 2
                or (hessian is None and t.imatrix is None)):
            tensors.append(t)
            continue
        methods[t.name] = "gptq" if hessian is not None else "weighted"
        source = OptimizedRows(t.source, t.qtype, name=t.name, hessian=hessian, imatrix=t.imatrix, damp=damp,
                               factors=factors, threads=threads)
        tensors.append(replace(t, source=source, imatrix=None))
    return replace(plan, tensors=tensors), methods
