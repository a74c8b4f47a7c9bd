"""Importance-weighted block search: the optimizer for when only diag(H) (an importance matrix) is
known, and the block-field chooser inside GPTQ. Same block layout as llama.cpp; it starts from
llama.cpp's own importance-matrix blocks and only keeps what lowers the error it is judged by,

    err(row) = sum_j imatrix[j] * (w_j - wq_j)^2,

(llama.cpp weighs its search with imatrix * sqrt(sigma2 + w^2) instead, and ignores the imatrix
for Q8_0). Types with one scale per block and no min (Q4_0, Q5_0, Q8_0) first scan 16 scales
around the largest value. Then rounds of coordinate descent over what a block stores: the integer
sub-block scales and mins (K types) are refitted by weighted least squares for the current levels,
trying the integers around the optimum; then the fp16 block scales (d, dmin, or Q4_1/Q5_1's m)
likewise, trying the fp16 neighbours of the optimum. Every candidate is scored with freshly rounded
levels (optimal once the grid is fixed), all candidates at once, and each sub-block or block keeps
the best of them and its current fields.
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
SCANNED = (T.Q4_0, T.Q5_0, T.Q8_0)  # one scale per block, no min: `_scale_scan` first


class _Blocks:
    """One type's blocks of many rows as arrays over all blocks at once: x and w (n, n_sub, sub);
    the stored fields d, dmin (n,) as float16, sc, mn (n, n_sub) as int32. Candidate fields carry
    a leading candidate axis (c, n) / (c, n, n_sub) and are scored all at once."""

    def __init__(self, qtype: T, x: np.ndarray, w: np.ndarray, fields: Fields) -> None:
        spec = SPECS[qtype]
        self.qtype, self.spec = qtype, spec
        n_sub = spec.block // spec.sub
        self.x = x.reshape(-1, n_sub, spec.sub)
        per_row = w.reshape(-1, n_sub, spec.sub)  # the importance of one row's blocks
        self.w = np.broadcast_to(per_row, (x.shape[0],) + per_row.shape).reshape(self.x.shape)
        self.sqrt_w = np.sqrt(self.w)
        self.d = fields.d.reshape(-1).view(np.float16).copy()
        self.dmin = None if fields.dmin is None else fields.dmin.reshape(-1).view(np.float16).copy()
        self.sc = None if fields.sc is None else fields.sc.reshape(-1, n_sub).astype(np.int32)
        self.mn = None if fields.mn is None else fields.mn.reshape(-1, n_sub).astype(np.int32)

    def score(self, d, dmin, sc, mn) -> tuple[np.ndarray, np.ndarray]:
        """Weighted error (c, n, n_sub) (float32) of candidate fields with the nearest levels, and
        the levels (c, n, n_sub, sub). Grids are computed as ggml dequantizes: step = d*sc, shift =
        -(dmin*m); the error compares the values to within float32 rounding."""
        step = d.astype(np.float32)[..., None]
        if sc is not None:
            step = step * sc.astype(np.float32)
        step = np.broadcast_to(step, step.shape[:-1] + (self.x.shape[1],))
        if self.qtype in K_TYPES:
            shift = -(dmin.astype(np.float32)[..., None] * mn.astype(np.float32))
        elif dmin is not None:
            shift = dmin.astype(np.float32)[..., None]
        else:
            shift = np.float32(0)
        shift = np.broadcast_to(shift, step.shape)
        with np.errstate(divide="ignore"):
            inv = np.where(step != 0, np.float32(1) / step, np.float32(0))
        q = self.x - shift[..., None]
        q *= inv[..., None]
        np.rint(q, out=q)
        q += self.spec.zero
        np.clip(q, 1 if self.qtype == T.Q8_0 else 0, self.spec.nmax, out=q)
        diff = np.multiply(q, step[..., None])  # value = step*q + (shift - step*zero)
        diff += (shift - step * np.float32(self.spec.zero))[..., None]
        np.subtract(self.x, diff, out=diff)
        diff *= self.sqrt_w
        return np.einsum("...k,...k->...", diff, diff), q

    def fields(self, shape: tuple[int, int]) -> Fields:
        n_rows, n_blocks = shape

        def ints(a: np.ndarray | None, dtype: type) -> np.ndarray | None:
            return None if a is None else a.reshape(n_rows, n_blocks, -1).astype(dtype)
        return Fields(self.d.view(np.uint16).reshape(n_rows, n_blocks),
                      None if self.dmin is None else self.dmin.view(np.uint16).reshape(n_rows, n_blocks),
                      ints(self.sc, np.int8 if self.qtype == T.Q6_K else np.uint8), ints(self.mn, np.uint8))


def _fp16_around(v: np.ndarray) -> list[np.ndarray]:
    """v rounded to fp16 and its fp16 neighbours below and above (inf and NaN become 0)."""
    with np.errstate(over="ignore", invalid="ignore"):
        h = v.astype(np.float16)
    h[~np.isfinite(h)] = 0
    return [h, np.nextafter(h, np.float16(-np.inf)), np.nextafter(h, np.float16(np.inf))]


def _solve2(a11, a12, a22, b1, b2) -> tuple[np.ndarray, np.ndarray]:
    """Solutions of [[a11, a12], [a12, a22]] (u, v) = (b1, b2), NaN where singular."""
    det = a11 * a22 - a12 * a12
    with np.errstate(divide="ignore", invalid="ignore"):
        return (b1 * a22 - b2 * a12) / det, (a11 * b2 - a12 * b1) / det


def _int_candidates(b: _Blocks, q: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Sub-block scales (and mins) (c, n, n_sub): the current ones, then the integers around the
    weighted least-squares fit for levels q."""
    w, x = b.w, b.x
    lv = (q - b.spec.zero).astype(np.float64)
    d = b.d.astype(np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        if b.qtype == T.Q6_K:  # value = (d*sc) * lv
            a = np.einsum("nsk,nsk->ns", w * x, lv) / np.einsum("nsk,nsk->ns", w * lv, lv) / d
            base = np.floor(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0))
            return np.stack([b.sc] + [np.clip(base + k, -128, 127) for k in (0, 1)]).astype(np.int32), None
        # value = (d*sc) * lv - (dmin*m): least squares in (A, C) = (d*sc, -dmin*m)
        a, c = _solve2((w * lv * lv).sum(-1), (w * lv).sum(-1), w.sum(-1), (w * lv * x).sum(-1), (w * x).sum(-1))
        sc = np.nan_to_num(a / d, nan=-1.0, posinf=-1.0, neginf=-1.0)
        mn = np.nan_to_num(-c / b.dmin.astype(np.float64)[:, None], nan=-1.0, posinf=-1.0, neginf=-1.0)
    scs, mns = [b.sc], [b.mn]
    for ks, km in itertools.product((0, 1), (0, 1)):
        scs.append(np.where(sc >= 0, np.clip(np.floor(sc) + ks, 0, 63), b.sc))
        mns.append(np.where(mn >= 0, np.clip(np.floor(mn) + km, 0, 63), b.mn))
    return np.stack(scs).astype(np.int32), np.stack(mns).astype(np.int32)


def _float_candidates(b: _Blocks, q: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Block scales d (and dmin or m) (c, n): the current ones, then the fp16 values around the
    weighted least-squares fit for levels q and the sub-block integers."""
    w, x = b.w, b.x
    lv = (q - b.spec.zero).astype(np.float64)
    if b.sc is not None:
        lv = lv * b.sc[..., None]  # value = d * (sc*lv) [- dmin*m]
    if b.qtype in K_TYPES:
        m = np.broadcast_to(b.mn[..., None].astype(np.float64), x.shape)
        d, other = _solve2((w * lv * lv).sum((1, 2)), -(w * lv * m).sum((1, 2)), (w * m * m).sum((1, 2)),
                           (w * lv * x).sum((1, 2)), -(w * m * x).sum((1, 2)))
    elif b.dmin is not None:  # Q4_1/Q5_1: value = d*lv + m
        d, other = _solve2((w * lv * lv).sum((1, 2)), (w * lv).sum((1, 2)), w.sum((1, 2)),
                           (w * lv * x).sum((1, 2)), (w * x).sum((1, 2)))
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            d = (w * lv * x).sum((1, 2)) / (w * lv * lv).sum((1, 2))
        return np.stack([b.d] + _fp16_around(d)), None
    pairs = list(itertools.product(_fp16_around(d), _fp16_around(other)))
    return np.stack([b.d] + [p[0] for p in pairs]), np.stack([b.dmin] + [p[1] for p in pairs])


def _scale_scan(b: _Blocks) -> np.ndarray:
    """Block scales (c, n) for symmetric 32-blocks: the value of largest magnitude on either end
    level, stretched from 0.8 to 1.05 in 8 steps each, as fp16."""
    x = b.x.reshape(len(b.x), -1)
    signed_max = np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)[:, 0]
    low = (1 if b.qtype == T.Q8_0 else 0) - b.spec.zero
    ends = [np.float32(low), np.float32(b.spec.nmax - b.spec.zero)]
    stretch = np.linspace(0.8, 1.05, 8, dtype=np.float32)
    cands = [signed_max[None, :] / (end * stretch[:, None]) for end in ends]
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.concatenate(cands).astype(np.float16)
    out[~np.isfinite(out)] = 0
    return out


def _pick(values: np.ndarray, best: np.ndarray) -> np.ndarray:
    """values (c, *best.shape, *rest) at candidate best[i] for each position i: (*best.shape, *rest)."""
    return values[(best, *np.indices(best.shape, sparse=True))]


def quantize_weighted(qtype: T, rows: np.ndarray, importance: np.ndarray, *, rounds: int = ROUNDS) -> np.ndarray:
    """Quantize float32 rows (n_rows, n_per_row) to `qtype` blocks, uint8 (n_rows, row_bytes),
    minimizing sum_j importance[j] * (w_j - wq_j)^2 per row; never worse on that error than
    `kernels.quantize_rows(qtype, rows, imatrix=importance)`, where it starts."""
    levels, fields = search(qtype, rows, importance, rounds=rounds)
    return blocks.pack(qtype, levels, fields)


def search(qtype: T, rows: np.ndarray, importance: np.ndarray, *, rounds: int = ROUNDS,
           start: np.ndarray | None = None) -> tuple[np.ndarray, Fields]:
    """The levels (uint8 (n_rows, n_per_row)) and fields of `quantize_weighted`, starting from the
    blocks `start` (default: llama.cpp's importance-matrix blocks)."""
    qtype = T(qtype)
    spec = SPECS[qtype]
    n_rows, n = rows.shape
    if start is None:
        start = kernels.quantize_rows(qtype, rows, imatrix=importance)
    b = _Blocks(qtype, rows, importance.astype(np.float32), blocks.unpack(qtype, start)[1])

    def current() -> tuple:
        return (b.d[None], None if b.dmin is None else b.dmin[None],
                None if b.sc is None else b.sc[None], None if b.mn is None else b.mn[None])

    if qtype in SCANNED:  # one scale per block: scan it before refining
        ds = np.concatenate([b.d[None], _scale_scan(b)])
        e, qs = b.score(ds, None, None, None)
        best = np.argmin(e.sum(-1), axis=0)
        b.d, err, q = _pick(ds, best), _pick(e, best), _pick(qs, best)
    else:
        err, q = b.score(*current())
        err, q = err[0], q[0]
    for _ in range(rounds):
        before = err.sum()
        if b.sc is not None:  # each sub-block takes its best integers (the current ones first)
            scs, mns = _int_candidates(b, q)
            e, _ = b.score(b.d[None], None if b.dmin is None else b.dmin[None], scs, mns)
            best = np.argmin(e, axis=0)
            b.sc = _pick(scs, best)
            b.mn = None if mns is None else _pick(mns, best)
            err, q = b.score(*current())
            err, q = err[0], q[0]
        ds, others = _float_candidates(b, q)  # each block takes its best fp16 scales
        e, qs = b.score(ds, others, None if b.sc is None else b.sc[None], None if b.mn is None else b.mn[None])
        best = np.argmin(e.sum(-1), axis=0)
        b.d = _pick(ds, best)
        b.dmin = None if others is None else _pick(others, best)
        err, q = _pick(e, best), _pick(qs, best)
        if not err.sum() < before * (1 - 1e-6):
            break
    return q.reshape(n_rows, n).astype(np.uint8), b.fields((n_rows, n // spec.block))
