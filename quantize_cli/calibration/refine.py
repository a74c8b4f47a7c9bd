"""Importance-weighted block search: the optimizer for when only diag(H) (an importance matrix) is
known. Same block layout as llama.cpp; it starts from llama.cpp's own importance-matrix blocks and
only ever lowers the error it is judged by,

    err(row) = sum_j imatrix[j] * (w_j - wq_j)^2,

by coordinate descent over what a block stores: (1) each level is rounded to the nearest point of
its grid, which is optimal once the grid is fixed; (2) the integer sub-block scales and mins (K
types) are refitted by weighted least squares for the current levels, trying the integers around
the optimum; (3) the fp16 block scales (d, dmin, or Q4_1/Q5_1's m) are refitted the same way,
trying the fp16 neighbours of the optimum. Every candidate is scored with freshly rounded levels,
and a block keeps a candidate only if its error goes down. llama.cpp weighs its search with
imatrix * sqrt(sigma2 + w^2) instead, which is why this wins on the plain weighted error.
"""

from __future__ import annotations

import itertools

import numpy as np
from gguf import GGMLQuantizationType

from quantize_cli import kernels
from quantize_cli.calibration import blocks
from quantize_cli.calibration.blocks import SPECS, Fields

T = GGMLQuantizationType
ROUNDS = 3
K_TYPES = (T.Q4_K, T.Q5_K)


class _Blocks:
    """One type's blocks of many rows, as arrays over all blocks at once: x and w (n, n_sub, sub),
    and the stored fields: d, dmin (n,) fp16 as float16; sc, mn (n, n_sub) integers."""

    def __init__(self, qtype: T, x: np.ndarray, w: np.ndarray, fields: Fields) -> None:
        spec = SPECS[qtype]
        self.qtype, self.spec = qtype, spec
        n_sub = spec.block // spec.sub
        self.x = x.reshape(-1, n_sub, spec.sub)
        self.w = np.broadcast_to(w.reshape(1, -1, n_sub, spec.sub), (x.shape[0],) + (w.size // spec.block, n_sub, spec.sub)
                                 ).reshape(-1, n_sub, spec.sub)
        self.d = fields.d.reshape(-1).view(np.float16).copy()
        self.dmin = None if fields.dmin is None else fields.dmin.reshape(-1).view(np.float16).copy()
        self.sc = None if fields.sc is None else fields.sc.reshape(-1, n_sub).astype(np.int32)
        self.mn = None if fields.mn is None else fields.mn.reshape(-1, n_sub).astype(np.int32)

    def grid(self, d, dmin, sc, mn) -> tuple[np.ndarray, np.ndarray]:
        """(step, shift) (n, n_sub) float32, computed as ggml dequantizes."""
        d32 = d.astype(np.float32)[:, None]
        step = d32 * (sc.astype(np.float32) if sc is not None else np.float32(1))
        if self.qtype in K_TYPES:
            shift = -(dmin.astype(np.float32)[:, None] * mn.astype(np.float32))
        elif dmin is not None:
            shift = np.broadcast_to(dmin.astype(np.float32)[:, None], step.shape)
        else:
            shift = np.zeros_like(step)
        return np.broadcast_to(step, (len(d), self.x.shape[1])), shift

    def levels(self, step: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """The nearest level of every value on its grid (any level where the step is 0)."""
        with np.errstate(divide="ignore"):
            inv = np.where(step != 0, np.float32(1) / step, np.float32(0))
        q = self.x - shift[..., None]
        q *= inv[..., None]
        np.rint(q, out=q)
        q += self.spec.zero
        return np.clip(q, 1 if self.qtype == T.Q8_0 else 0, self.spec.nmax, out=q)

    def error(self, d, dmin, sc, mn) -> tuple[np.ndarray, np.ndarray]:
        """Weighted error per sub-block (n, n_sub) with the best levels for these fields, and
        those levels."""
        step, shift = self.grid(d, dmin, sc, mn)
        q = self.levels(step, shift)
        value = step[..., None] * (q - self.spec.zero) + shift[..., None]
        diff = (self.x - value).astype(np.float64)
        return np.einsum("nsk,nsk->ns", self.w * diff, diff), q

    def state(self) -> tuple:
        return self.d, self.dmin, self.sc, self.mn

    def fields(self, shape: tuple[int, int]) -> Fields:
        n_rows, n_blocks = shape
        sc = None if self.sc is None else self.sc.reshape(n_rows, n_blocks, -1)
        if sc is not None:
            sc = sc.astype(np.int8) if self.qtype == T.Q6_K else sc.astype(np.uint8)
        return Fields(self.d.view(np.uint16).reshape(n_rows, n_blocks),
                      None if self.dmin is None else self.dmin.view(np.uint16).reshape(n_rows, n_blocks),
                      sc, None if self.mn is None else self.mn.reshape(n_rows, n_blocks, -1).astype(np.uint8))


def _fp16_around(v: np.ndarray) -> list[np.ndarray]:
    """v rounded to fp16, and its fp16 neighbours below and above (finite values only)."""
    h = np.nan_to_num(v, nan=0.0, posinf=65504.0, neginf=-65504.0).astype(np.float16)
    return [h, np.nextafter(h, np.float16(-np.inf)), np.nextafter(h, np.float16(np.inf))]


def _solve2(a11, a12, a22, b1, b2) -> tuple[np.ndarray, np.ndarray]:
    det = a11 * a22 - a12 * a12
    with np.errstate(divide="ignore", invalid="ignore"):
        return (b1 * a22 - b2 * a12) / det, (a11 * b2 - a12 * b1) / det


def _refit_ints(b: _Blocks, q: np.ndarray) -> list[tuple]:
    """Candidate sub-block scales (and mins) around their least-squares values for levels q."""
    w, x, spec = b.w, b.x, b.spec
    lv = (q - spec.zero)
    d = b.d.astype(np.float64)[:, None]
    if b.qtype == T.Q6_K:
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.einsum("nsk,nsk->ns", w * x, lv) / np.einsum("nsk,nsk->ns", w * lv, lv) / d
        base = np.floor(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0))
        return [(b.d, b.dmin, np.clip(base + k, -128, 127).astype(np.int32), b.mn) for k in (0, 1)]
    # value = (d*sc)*q - (dmin*m): least squares in (A, B) = (d*sc, dmin*m), per sub-block
    sw, swq, swqq = w.sum(-1), (w * lv).sum(-1), (w * lv * lv).sum(-1)
    swx, swqx = (w * x).sum(-1), (w * lv * x).sum(-1)
    a, minus_b = _solve2(swqq, swq, sw, swqx, swx)  # value = A*q + C with C = -B
    dmin = b.dmin.astype(np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.nan_to_num(a / d, nan=-1.0, posinf=-1.0, neginf=-1.0)
        mn = np.nan_to_num(-minus_b / dmin, nan=-1.0, posinf=-1.0, neginf=-1.0)
    out = []
    for ks, km in itertools.product((0, 1), (0, 1)):
        s = np.where(sc >= 0, np.clip(np.floor(sc) + ks, 0, 63), b.sc).astype(np.int32)
        m = np.where(mn >= 0, np.clip(np.floor(mn) + km, 0, 63), b.mn).astype(np.int32)
        out.append((b.d, b.dmin, s, m))
    return out


def _refit_floats(b: _Blocks, q: np.ndarray) -> list[tuple]:
    """Candidate fp16 block scales around their least-squares values for levels q (and ints)."""
    w, x, spec = b.w, b.x, b.spec
    lv = q - spec.zero
    if b.sc is not None:
        lv = lv * b.sc[..., None]  # value = d * (sc*lv) [- dmin * m]
    if b.qtype in K_TYPES:
        m = np.broadcast_to(b.mn[..., None].astype(np.float64), x.shape)
        a11, a12, a22 = (w * lv * lv).sum((1, 2)), -(w * lv * m).sum((1, 2)), (w * m * m).sum((1, 2))
        d, dmin = _solve2(a11, a12, a22, (w * lv * x).sum((1, 2)), -(w * m * x).sum((1, 2)))
        return [(dd, mm, b.sc, b.mn) for dd in _fp16_around(d) for mm in _fp16_around(dmin)]
    if b.dmin is not None:  # Q4_1/Q5_1: value = d*q + m
        d, m = _solve2((w * lv * lv).sum((1, 2)), (w * lv).sum((1, 2)), w.sum((1, 2)),
                       (w * lv * x).sum((1, 2)), (w * x).sum((1, 2)))
        return [(dd, mm, b.sc, b.mn) for dd in _fp16_around(d) for mm in _fp16_around(m)]
    with np.errstate(divide="ignore", invalid="ignore"):
        d = (w * lv * x).sum((1, 2)) / (w * lv * lv).sum((1, 2))
    return [(dd, b.dmin, b.sc, b.mn) for dd in _fp16_around(d)]


def quantize_weighted(qtype: T, rows: np.ndarray, importance: np.ndarray, *, rounds: int = ROUNDS) -> np.ndarray:
    """Quantize float32 rows (n_rows, n_per_row) to `qtype` blocks, uint8 (n_rows, row_bytes),
    minimizing sum_j importance[j] * (w_j - wq_j)^2 per row; never worse on that error than
    `kernels.quantize_rows(qtype, rows, imatrix=importance)`, where it starts."""
    qtype = T(qtype)
    spec = SPECS[qtype]
    n_rows, n = rows.shape
    start = kernels.quantize_rows(qtype, rows, imatrix=importance)
    q0, fields = blocks.unpack(qtype, start)
    b = _Blocks(qtype, rows, importance.astype(np.float32), fields)
    err, q = b.error(*b.state())  # (n_blocks, n_sub)
    for _ in range(rounds):
        before = err.sum()
        if b.sc is not None:  # sub-block integers: each sub-block keeps its best candidate
            for _, _, sc, mn in _refit_ints(b, q):
                e, _ = b.error(b.d, b.dmin, sc, mn)
                better = e < err * (1 - 1e-7)
                b.sc = np.where(better, sc, b.sc)
                if mn is not None:
                    b.mn = np.where(better, mn, b.mn)
                err = np.where(better, e, err)
            err, q = b.error(*b.state())
        for d, dmin, _, _ in _refit_floats(b, q):  # block floats: each block keeps its best candidate
            if not np.isfinite(d.astype(np.float32)).all() or (dmin is not None and
                                                               not np.isfinite(dmin.astype(np.float32)).all()):
                continue
            e, _ = b.error(d, dmin, b.sc, b.mn)
            better = e.sum(1) < err.sum(1) * (1 - 1e-7)
            b.d = np.where(better, d, b.d)
            if dmin is not None:
                b.dmin = np.where(better, dmin, b.dmin)
            err = np.where(better[:, None], e, err)
        err, q = b.error(*b.state())
        if not err.sum() < before * (1 - 1e-6):
            break
    levels = q.reshape(n_rows, n).astype(np.uint8)
    return blocks.pack(qtype, levels, b.fields((n_rows, n // spec.block)))
