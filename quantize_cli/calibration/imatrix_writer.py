"""Importance-matrix files written the way llama-imatrix writes them, and read back raw for
`--in-file` merging the way llama-imatrix merges them (notes 4.8; tools/imatrix/imatrix.cpp).

GGUF (default): KV general.type = "imatrix", imatrix.datasets, imatrix.chunk_count,
imatrix.chunk_size; then, for each weight name in sorted order, `W.in_sum2` (raw float32 sums,
ne = [n_in, n_mat]) and `W.counts` (rows per expert as float32, ne = [1, n_mat]), each with
ggml_n_dims dimensions (a dense entry is 1-D). Legacy .dat: see `_legacy_bytes`.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from quantize_cli.calibration.collect import ActivationStats
from quantize_cli.errors import InputError, OutputError
from quantize_cli.formats.gguf_writer import GGUFStreamWriter, TensorInfo
from quantize_cli.formats.imatrix import lround, read_imatrix_file
from quantize_cli.formats.kv import KV, kv_array, kv_str, kv_u32

FORMATS = ("gguf", "dat")


def format_for(path: Path) -> str:
    """The format a file name implies: "dat" for a .dat file (llama-imatrix's legacy format), else "gguf"."""
    return "dat" if Path(path).suffix.lower() == ".dat" else "gguf"


def _sorted_names(stats: ActivationStats) -> list[str]:
    return sorted(stats.sums, key=lambda n: n.encode("utf-8"))  # std::sort on std::string: bytewise


def write_imatrix(stats: ActivationStats, path: Path, *, fmt: str = "gguf") -> Path:
    """Write `stats` to `path` atomically (temporary file, then rename)."""
    if fmt not in FORMATS:
        raise ValueError(f"imatrix format must be one of {FORMATS}, got {fmt!r}")
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"{path.parent}: output directory does not exist")
    if not stats.sums:
        raise InputError(f"{path}: no matrix multiplication was observed; nothing to write")
    try:
        if fmt == "gguf":
            _write_gguf(stats, path)
        else:
            _write_bytes(path, _legacy_bytes(stats))
    except OSError as e:
        raise OutputError(f"{path}: cannot write the importance matrix: {e.strerror or e}") from e
    return path


def _write_gguf(stats: ActivationStats, path: Path) -> None:
    kvs: list[KV] = [
        kv_str("general.type", "imatrix"),
        kv_array("imatrix.datasets", list(stats.datasets), GGUFValueType.STRING),
        kv_u32("imatrix.chunk_count", stats.chunk_count),
        kv_u32("imatrix.chunk_size", stats.chunk_size),
    ]
    tensors: list[TensorInfo] = []
    payload: list[np.ndarray] = []
    for name in _sorted_names(stats):
        sums, counts = stats.sums[name], stats.counts[name]
        n_mat = counts.size
        tensors.append(TensorInfo(f"{name}.in_sum2", (n_mat, sums.size // n_mat), GGMLQuantizationType.F32))
        tensors.append(TensorInfo(f"{name}.counts", (n_mat, 1), GGMLQuantizationType.F32))
        payload += [sums.astype("<f4"), counts.astype(np.float32).astype("<f4")]
    with GGUFStreamWriter(path, kvs, tensors) as writer:
        for data in payload:
            writer.write(data.tobytes())
            writer.end_tensor()
        writer.commit()


def _legacy_bytes(stats: ActivationStats) -> bytes:
    """i32 n_entries; per entry (sorted, all-zero counts skipped): i32 len, name, i32 ncall =
    ceil(max count / chunk_size), i32 nval, f32 (sum / count) * ncall; then i32 chunk count and the
    last dataset name (i32 len + bytes)."""
    parts: list[bytes] = []
    n_entries = 0
    for name in _sorted_names(stats):
        sums, counts = stats.sums[name], stats.counts[name]
        if not counts.any():
            continue
        n_entries += 1
        raw = name.encode("utf-8")
        ncall = (int(counts.max()) + stats.chunk_size - 1) // stats.chunk_size
        per = sums.size // counts.size
        count = np.repeat(counts.astype(np.float32), per)
        value = np.where(count == 0, np.float32(1), sums).astype(np.float32)
        count = np.where(count == 0, np.float32(1), count)
        values = (value / count) * np.float32(ncall)
        parts.append(struct.pack(f"<i{len(raw)}sii", len(raw), raw, ncall, sums.size) + values.astype("<f4").tobytes())
    dataset = stats.datasets[-1].encode("utf-8") if stats.datasets else b""
    trailer = struct.pack(f"<ii{len(dataset)}s", stats.chunk_count, len(dataset), dataset)
    return struct.pack("<i", n_entries) + b"".join(parts) + trailer


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- merging (--in-file)


def read_stats(path: Path, *, chunk_size: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """The raw (sums float32, counts int64) per weight of an imatrix file, and its datasets.

    As llama-imatrix loads an --in-file: GGUF sums and lround(counts) as stored; a legacy entry
    holds mean * ncall, so its sums become value * chunk_size and its count ncall * chunk_size."""
    raw = read_imatrix_file(Path(path))
    entries = {}
    for name, (values, counts) in raw.entries.items():
        if raw.fmt == "gguf":
            entries[name] = (values, np.array([lround(float(c)) for c in counts], np.int64))
        else:
            entries[name] = (values * np.float32(chunk_size), np.array([int(counts[0]) * chunk_size], np.int64))
    return entries, raw.datasets


def merge_files(paths: list[Path], *, chunk_size: int) -> ActivationStats:
    """Statistics of several imatrix files added together, as `llama-imatrix --in-file A --in-file B`."""
    stats = ActivationStats(chunk_size=chunk_size)
    for path in paths:
        entries, datasets = read_stats(path, chunk_size=chunk_size)
        for name, (sums, counts) in entries.items():
            if name not in stats.sums:
                stats.sums[name] = np.zeros_like(sums)
                stats.counts[name] = np.zeros_like(counts)
            have = stats.counts[name]
            if stats.sums[name].size != sums.size:
                raise InputError(f"{path}: imatrix entry {name!r} has {sums.size} values, an earlier file has "
                                 f"{stats.sums[name].size}", hint="merge only files computed for the same model")
            if have.size == 1 and counts.size > 1:
                have = np.repeat(have, counts.size)
            elif have.size != counts.size:
                raise InputError(f"{path}: imatrix entry {name!r} has {counts.size} expert counts, an earlier file "
                                 f"has {have.size}")
            stats.sums[name] = (stats.sums[name] + sums).astype(np.float32)
            stats.counts[name] = have + counts
        stats.datasets += datasets
    counts = [int(c.max()) for c in stats.counts.values() if c.size]
    stats.chunk_count = max(counts, default=0) // chunk_size
    return stats
