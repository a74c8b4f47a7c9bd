"""Execute a plan: stream every tensor through load -> convert -> write, slab by slab.

Memory stays flat: a slab is a few MB of rows, read while the previous slab is being quantized
(one prefetch thread), converted by the C kernels on `threads` threads, written, and dropped.
Output bytes do not depend on the thread count or the slab size: every quantization block is
independent and lies within one row.
"""

from __future__ import annotations

import errno
import os
import resource
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T

from quantize_cli import kernels
from quantize_cli.errors import NonFiniteError, OutputError
from quantize_cli.formats.gguf_writer import GGUFStreamWriter
from quantize_cli.plan import Plan, PlannedTensor
from quantize_cli.qtypes import FLOAT_TYPES
from quantize_cli.sources import n_rows

SLAB_BYTES = 8 * 1024 * 1024  # float32 bytes per slab; small enough for flat memory, big enough for speed

# progress(tensor_name, bytes_written) is called after each slab.
Progress = Callable[[str, int], None]


@dataclass(frozen=True)
class WriteResult:
    path: Path
    sha256: str
    size: int
    seconds: float
    peak_rss_mb: float


def _slabs(t: PlannedTensor) -> Iterator[tuple[int, int]]:
    rows, n_per_row = n_rows(t.shape), t.shape[-1]
    group = t.source.row_group
    step = max(group, (SLAB_BYTES // (4 * n_per_row)) // group * group)
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def _to_f32(raw: np.ndarray, stored: T, n_per_row: int, threads: int) -> np.ndarray:
    if stored == T.F32:
        return np.ascontiguousarray(raw, dtype=np.float32)
    if stored == T.BF16:
        return kernels.widen_to_f32(np.ascontiguousarray(raw), source="bf16", threads=threads)
    if stored == T.F16:
        return kernels.widen_to_f32(np.ascontiguousarray(raw), source="f16", threads=threads)
    return kernels.dequantize_rows(stored, np.ascontiguousarray(raw), n_per_row, threads=threads)


def _nonfinite_rows(raw: np.ndarray, stored: T) -> bool:
    if stored == T.BF16:
        return bool(np.any((raw & 0x7F80) == 0x7F80))
    if stored in (T.F32, T.F16):
        return not bool(np.isfinite(raw).all())
    return False


def _convert_slab(t: PlannedTensor, raw: np.ndarray, *, threads: int, allow_nonfinite: bool,
                  source: Path) -> np.ndarray:
    stored = t.source.stored_type
    if not allow_nonfinite and _nonfinite_rows(raw, stored):
        raise NonFiniteError(
            f"{source}: tensor {t.name!r} contains NaN or Inf values",
            hint="pass --allow-nonfinite to convert it anyway",
        )
    if t.qtype == stored:
        return raw  # same type: the bytes are copied, as llama-quantize and the converter do
    rows = _to_f32(raw, stored, t.shape[-1], threads)
    if stored not in FLOAT_TYPES and not allow_nonfinite and not np.isfinite(rows).all():
        raise NonFiniteError(f"{source}: tensor {t.name!r} dequantizes to NaN or Inf values")
    if t.qtype == T.F32:
        return rows
    return kernels.quantize_rows(t.qtype, rows, imatrix=t.imatrix, threads=threads)


def write_plan(plan: Plan, outfile: Path, *, threads: int = 2, allow_nonfinite: bool = False,
               progress: Progress | None = None) -> WriteResult:
    """Write the planned file to `outfile` atomically; the caller decides about overwriting."""
    started = time.perf_counter()
    if not outfile.parent.is_dir():
        raise OutputError(f"{outfile.parent}: output directory does not exist")
    if not os.access(outfile.parent, os.W_OK):
        raise OutputError(f"{outfile.parent}: output directory is not writable")
    try:
        writer = GGUFStreamWriter(outfile, plan.kvs, [t.info for t in plan.tensors])
    except OSError as e:
        raise OutputError(f"{outfile}: cannot create the output file: {e.strerror or e}") from e
    with writer, ThreadPoolExecutor(1, thread_name_prefix="qconvert-read") as reader:
        try:
            for t in plan.tensors:
                slabs = list(_slabs(t))
                pending = reader.submit(t.source.read, *slabs[0])
                for k, (start, stop) in enumerate(slabs):
                    raw = pending.result()
                    if k + 1 < len(slabs):
                        pending = reader.submit(t.source.read, *slabs[k + 1])
                    out = _convert_slab(t, raw, threads=threads, allow_nonfinite=allow_nonfinite,
                                        source=plan.source)
                    writer.write(memoryview(np.ascontiguousarray(out)).cast("B"))
                    if progress is not None:
                        progress(t.name, out.nbytes)
                writer.end_tensor()
            writer.commit()
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise OutputError(f"{outfile}: disk full or file too large while writing: {e.strerror}",
                                  hint="free some space or choose another --outfile") from e
            raise OutputError(f"{outfile}: write failed: {e.strerror or e}") from e
    return WriteResult(outfile, writer.sha256, outfile.stat().st_size, time.perf_counter() - started, peak_rss_mb())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
