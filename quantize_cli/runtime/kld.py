"""Log-probabilities as llama-perplexity scores and stores them, and the KL-divergence statistics.

File format of `--kl-divergence-base` (llama.cpp tools/perplexity, notes 6.3), little-endian:

    char[8]  "_logits_"
    int32    n_ctx, n_vocab, n_chunk
    int32    tokens[n_chunk * n_ctx]          the evaluated text (no BOS substitution)
    then per chunk, per scored position (n_ctx - 1 - n_ctx/2 of them), one record of
    nv = 2*((n_vocab+1)/2) + 4 uint16:
        float32 scale, float32 min_log_prob   (the first 4 uint16)
        uint16  q[n_vocab]                    log p_v = scale*q_v + min_log_prob
        (uint16 padding to an even count)

Every formula below keeps llama.cpp's float/double choices (float logits, expf, sums in double) so
that numbers agree to the printed precision; the comments name the C function each one mirrors.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quantize_cli.errors import InputError, OutputError

MAGIC = b"_logits_"
HEADER = np.dtype([("magic", "S8"), ("n_ctx", "<i4"), ("n_vocab", "<i4"), ("n_chunk", "<i4")])
_ROWS_VALUES = 1 << 22  # float32 values processed at once (rows of n_vocab): bounds temporaries


def record_size(n_vocab: int) -> int:
    """uint16 values per stored position."""
    return 2 * ((n_vocab + 1) // 2) + 4


def scored_per_chunk(n_ctx: int) -> int:
    """Positions first..n_ctx-2 (first = n_ctx/2) predict the next token and are scored."""
    return n_ctx - 1 - n_ctx // 2


def _row_blocks(n_rows: int, n_vocab: int):
    step = max(1, _ROWS_VALUES // n_vocab)
    for r0 in range(0, n_rows, step):
        yield slice(r0, min(n_rows, r0 + step))


def _max_and_sum_exp(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the max logit (float) and sum_v expf(l_v - max) accumulated in double."""
    mx = logits.max(axis=1)
    sum_exp = np.exp(logits - mx[:, None]).sum(axis=1, dtype=np.float64)
    return mx, sum_exp


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log p(target) per row, double: llama-perplexity's log_softmax(n_vocab, logits, tok)
    (float logit - max, minus the double log of the double sum)."""
    out = np.empty(len(targets), np.float64)
    for rows in _row_blocks(len(targets), logits.shape[1]):
        lg = logits[rows]
        mx, sum_exp = _max_and_sum_exp(lg)
        picked = lg[np.arange(len(lg)), targets[rows]]
        out[rows] = -((picked - mx).astype(np.float64) - np.log(sum_exp))
    return out


def log_prob_records(logits: np.ndarray, targets: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Fill `out` (n, record_size) with the uint16 records llama-perplexity stores for these rows
    and return -log p(target) per row as it computes it there (in float; log_softmax with log_prob)."""
    n, n_vocab = logits.shape
    nll = np.empty(n, np.float64)
    heads = out[:, :4].view(np.float32)  # (n, 2): scale, min_log_prob
    out[:, 4 + n_vocab:] = 0
    for rows in _row_blocks(n, n_vocab):
        lg = logits[rows]
        mx, sum_exp = _max_and_sum_exp(lg)
        mn = np.maximum(lg.min(axis=1), mx - np.float32(16))
        lse = np.log(sum_exp).astype(np.float32)
        heads[rows, 1] = mn - mx - lse
        scale = (mx - mn) / np.float32(65535)
        heads[rows, 0] = scale
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(scale != 0, np.float32(1) / scale, np.float32(0))
            q = np.rint(inv[:, None] * (lg - mn[:, None]))  # nearest_int: round half to even
        q[lg <= mn[:, None]] = 0
        out[rows, 4:4 + n_vocab] = q.astype(np.uint16)
        picked = lg[np.arange(len(lg)), targets[rows]]
        nll[rows] = mx + lse - picked
    return nll


@dataclass(frozen=True)
class LogitsFile:
    """A `--kl-divergence-base` file, memory-mapped: header, tokens, and the records per chunk."""

    path: Path
    n_ctx: int
    n_vocab: int
    n_chunk: int
    tokens: np.ndarray   # int32 (n_chunk * n_ctx,)
    records: np.ndarray  # uint16 (n_chunk, scored_per_chunk(n_ctx), record_size(n_vocab))

    @classmethod
    def open(cls, path: Path) -> LogitsFile:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        size = path.stat().st_size
        if size < HEADER.itemsize:
            raise InputError(f"{path}: too short for a llama.cpp logits file ({size} bytes)")
        head = np.fromfile(path, dtype=HEADER, count=1)[0]
        if bytes(head["magic"]) != MAGIC:
            raise InputError(f"{path}: not a llama.cpp logits file (no '_logits_' magic)",
                             hint="create one with --save-logits, or llama-perplexity --kl-divergence-base")
        n_ctx, n_vocab, n_chunk = int(head["n_ctx"]), int(head["n_vocab"]), int(head["n_chunk"])
        if n_ctx < 4 or n_vocab < 1 or n_chunk < 1:
            raise InputError(f"{path}: bad header (n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk})")
        n_scored, nv = scored_per_chunk(n_ctx), record_size(n_vocab)
        expected = HEADER.itemsize + 4 * n_chunk * n_ctx + 2 * n_chunk * n_scored * nv
        if size != expected:
            raise InputError(f"{path}: {size} bytes, but a logits file with n_ctx {n_ctx}, n_vocab {n_vocab} and "
                             f"{n_chunk} chunks has {expected} (truncated or not written by llama-perplexity?)")
        tokens = np.memmap(path, dtype="<i4", mode="r", offset=HEADER.itemsize, shape=(n_chunk * n_ctx,))
        records = np.memmap(path, dtype="<u2", mode="r", offset=HEADER.itemsize + 4 * n_chunk * n_ctx,
                            shape=(n_chunk, n_scored, nv))
        return cls(path, n_ctx, n_vocab, n_chunk, np.asarray(tokens), records)


class LogitsWriter:
    """Writes a logits file to a temporary name; `commit()` renames it into place."""

    def __init__(self, path: Path, *, n_ctx: int, n_vocab: int, n_chunk: int, tokens: np.ndarray) -> None:
        self.path = Path(path)
        self.nv = record_size(n_vocab)
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent or ".", prefix=f".{self.path.name}.", suffix=".tmp")
        except OSError as e:
            raise OutputError(f"{self.path}: cannot write here: {e.strerror}") from None
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "wb")
        header = np.array([(MAGIC, n_ctx, n_vocab, n_chunk)], dtype=HEADER)
        self._write(header.tobytes())
        self._write(np.ascontiguousarray(tokens[: n_chunk * n_ctx], dtype="<i4").tobytes())

    def _write(self, data: bytes) -> None:
        try:
            self.file.write(data)
        except OSError as e:
            self.discard()
            raise OutputError(f"{self.path}: write failed: {e.strerror}") from None

    def write_records(self, records: np.ndarray) -> None:
        self._write(np.ascontiguousarray(records, dtype="<u2").tobytes())

    def commit(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.tmp.unlink(missing_ok=True)


def _mean_and_uncertainty(s: float, s2: float, n: int) -> tuple[float, float]:
    if n < 1:
        return 0.0, 0.0
    f = s / n
    df = s2 / n - f * f
    return f, math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0


def _covariance(sa: float, sb: float, sab: float, n: int) -> float:
    return 0.0 if n < 10 else (sab / n - (sa / n) * (sb / n)) / (n - 1)


def _percentile(sorted_values: np.ndarray, fraction: float) -> float:
    """llama-perplexity's percentile(): linear interpolation, evaluated in float."""
    if fraction <= 0:
        return float(sorted_values[0])
    if fraction >= 1:
        return float(sorted_values[-1])
    p = np.float32(fraction) * np.float32(len(sorted_values) - 1)
    ip = int(p)
    p = p - np.float32(ip)
    return float((np.float32(1) - p) * sorted_values[ip] + p * sorted_values[min(ip + 1, len(sorted_values) - 1)])


def _median(sorted_values: np.ndarray) -> float:
    n = len(sorted_values)
    if n % 2:
        return float(sorted_values[n // 2])
    return float(np.float32(0.5) * (sorted_values[n // 2] + sorted_values[n // 2 - 1]))


KLD_PERCENTILES = (("Maximum", 1.0), ("99.9%", 0.999), ("99.0%", 0.990), ("95.0%", 0.950), ("90.0%", 0.900),
                   ("Median", None), ("10.0%", 0.100), ("5.0%", 0.050), ("1.0%", 0.010), ("0.1%", 0.001),
                   ("Minimum", 0.0))
DP_PERCENTILES = KLD_PERCENTILES[:5] + (("75.0%", 0.750), ("Median", None), ("25.0%", 0.250)) + KLD_PERCENTILES[6:]


@dataclass
class KLDivergence:
    """Running sums of llama-perplexity's kl_divergence_result, plus every per-token KLD and Δp."""

    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    max_p_diff: float = 0.0
    n_same_top: int = 0
    count: int = 0
    kld_values: list[np.ndarray] = field(default_factory=list)     # float32 per token
    p_diff_values: list[np.ndarray] = field(default_factory=list)  # float32 per token

    def add(self, logits: np.ndarray, base_records: np.ndarray, targets: np.ndarray) -> None:
        """Score rows of current-model logits (n, n_vocab) against the base records (n, nv):
        log_softmax(n_vocab, logits, base_log_prob, tok, kld) of perplexity.cpp, row-vectorized."""
        n, n_vocab = logits.shape
        for rows in _row_blocks(n, n_vocab):
            lg, rec, tok = logits[rows], base_records[rows], targets[rows]
            idx = np.arange(len(lg))
            imax = lg.argmax(axis=1)
            mx, sum_exp = _max_and_sum_exp(lg)
            lse = np.log(sum_exp).astype(np.float32)
            heads = np.ascontiguousarray(rec[:, :4]).view(np.float32)
            scale, min_log_prob = heads[:, 0:1], heads[:, 1:2]
            nll = mx + lse - lg[idx, tok]                                   # float
            log_p_base = scale * rec[:, 4:4 + n_vocab].astype(np.float32) + min_log_prob
            nll_base = -log_p_base[idx, tok]                                # float
            imax_base = log_p_base.argmax(axis=1)
            shifted = (mx + lse)[:, None]
            with np.errstate(under="ignore"):
                terms = np.exp(log_p_base) * ((log_p_base - lg) + shifted)
            kld = np.where(log_p_base > np.float32(-16), terms, np.float32(0)).sum(axis=1, dtype=np.float64)
            p_diff = np.exp(-nll) - np.exp(-nll_base)                       # float

            self.sum_nll += float(nll.sum(dtype=np.float64))
            self.sum_nll2 += float((nll * nll).sum(dtype=np.float64))
            self.sum_nll_base += float(nll_base.sum(dtype=np.float64))
            self.sum_nll_base2 += float((nll_base * nll_base).sum(dtype=np.float64))
            self.sum_nll_nll_base += float((nll * nll_base).sum(dtype=np.float64))
            self.sum_kld += float(kld.sum())
            self.sum_kld2 += float((kld * kld).sum())
            p_diff2 = (p_diff * p_diff).astype(np.float64)
            self.sum_p_diff += float(p_diff.sum(dtype=np.float64))
            self.sum_p_diff2 += float(p_diff2.sum())
            self.sum_p_diff4 += float((p_diff2 * p_diff2).sum())
            self.max_p_diff = max(self.max_p_diff, float(np.abs(p_diff).max()))
            self.n_same_top += int((imax == imax_base).sum())
            self.count += len(lg)
            self.kld_values.append(kld.astype(np.float32))
            self.p_diff_values.append(p_diff.astype(np.float32))

    def running(self) -> dict[str, tuple[float, float]]:
        """The per-chunk line of llama-perplexity's KLD mode (value, uncertainty), percentages as %."""
        n = self.count
        lq = _mean_and_uncertainty(self.sum_nll, self.sum_nll2, n)
        lb = _mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, n)
        cov = _covariance(self.sum_nll, self.sum_nll_base, self.sum_nll_nll_base, n)
        ppl = math.exp(lq[0])
        mse = _mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, n)
        rms = math.sqrt(mse[0])
        top = self.n_same_top / n
        return {
            "ppl": (ppl, ppl * lq[1]),
            "ln_ppl_ratio": (lq[0] - lb[0], math.sqrt(max(0.0, lq[1] ** 2 + lb[1] ** 2 - 2 * cov))),
            "kld": _mean_and_uncertainty(self.sum_kld, self.sum_kld2, n),
            "rms_dp": (100 * rms, 100 * 0.5 / rms * mse[1] if rms else 0.0),
            "same_top": (100 * top, 100 * math.sqrt(top * (1 - top) / (n - 1)) if n > 1 else 0.0),
        }

    def report(self) -> dict[str, tuple[float, float | None]]:
        """Every statistic llama-perplexity prints after a KLD run, keyed by its label there
        ("Mean PPL(Q)", "99.9% KLD", "Same top p", ...); (value, uncertainty or None); Δp in %."""
        n = self.count
        lq = _mean_and_uncertainty(self.sum_nll, self.sum_nll2, n)
        lb = _mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, n)
        cov = _covariance(self.sum_nll, self.sum_nll_base, self.sum_nll_nll_base, n)
        ppl, ppl_base = math.exp(lq[0]), math.exp(lb[0])
        ratio_unc = math.sqrt(max(0.0, lq[1] ** 2 + lb[1] ** 2 - 2 * cov))
        ratio = math.exp(lq[0] - lb[0])
        diff_unc2 = (ppl * lq[1]) ** 2 + (ppl_base * lb[1]) ** 2 - 2 * ppl * ppl_base * cov
        out: dict[str, tuple[float, float | None]] = {
            "Mean PPL(Q)": (ppl, ppl * lq[1]),
            "Mean PPL(base)": (ppl_base, ppl_base * lb[1]),
            "Cor(ln(PPL(Q)), ln(PPL(base)))": (100 * cov / (lq[1] * lb[1]) if lq[1] * lb[1] else math.nan, None),
            "Mean ln(PPL(Q)/PPL(base))": (lq[0] - lb[0], ratio_unc),
            "Mean PPL(Q)/PPL(base)": (ratio, ratio * ratio_unc),
            "Mean PPL(Q)-PPL(base)": (ppl - ppl_base, math.sqrt(max(0.0, diff_unc2))),
            "Mean KLD": _mean_and_uncertainty(self.sum_kld, self.sum_kld2, n),
        }
        kld = np.sort(np.concatenate(self.kld_values))
        for label, fraction in KLD_PERCENTILES:
            out[f"{label} KLD"] = (_median(kld) if fraction is None else _percentile(kld, fraction), None)
        dp_mean = _mean_and_uncertainty(self.sum_p_diff, self.sum_p_diff2, n)
        out["Mean Δp"] = (100 * dp_mean[0], 100 * dp_mean[1])
        dp = np.sort(np.concatenate(self.p_diff_values))
        for label, fraction in DP_PERCENTILES:
            value = _median(dp) if fraction is None else _percentile(dp, fraction)
            out[f"{label} Δp"] = (100 * value, None)
        running = self.running()
        out["RMS Δp"] = running["rms_dp"]
        out["Same top p"] = running["same_top"]
        return out


def format_report(stats: dict[str, tuple[float, float | None]]) -> str:
    """The three tables exactly as llama-perplexity prints them."""
    def pm(label: str, width: str = "10.6f") -> str:
        v, u = stats[label]
        return f"{v:{width}} ± {u:{width}}"

    lines = ["====== Perplexity statistics ======"]
    for label in ("Mean PPL(Q)", "Mean PPL(base)"):
        lines.append(f"{label:<30}: {pm(label)}")
    lines.append(f"{'Cor(ln(PPL(Q)), ln(PPL(base)))':<30}: {stats['Cor(ln(PPL(Q)), ln(PPL(base)))'][0]:6.2f}%")
    for label in ("Mean ln(PPL(Q)/PPL(base))", "Mean PPL(Q)/PPL(base)", "Mean PPL(Q)-PPL(base)"):
        lines.append(f"{label:<30}: {pm(label)}")
    lines += ["", "====== KL divergence statistics ======", f"Mean    KLD: {pm('Mean KLD')}"]
    for label, _ in KLD_PERCENTILES:
        name = label if not label[0].isdigit() else f"{label:>5}"
        lines.append(f"{name:<7} KLD: {stats[f'{label} KLD'][0]:10.6f}")
    v, u = stats["Mean Δp"]
    lines += ["", "====== Token probability statistics ======", f"Mean    Δp: {v:6.3f} ± {u:5.3f} %"]
    for label, _ in DP_PERCENTILES:
        name = label if not label[0].isdigit() else f"{label:>5}"
        lines.append(f"{name:<7} Δp: {stats[f'{label} Δp'][0]:6.3f}%")
    for label in ("RMS Δp", "Same top p"):
        v, u = stats[label]
        lines.append(f"{label:<10}: {v:6.3f} ± {u:5.3f} %")
    return "\n".join(lines)
