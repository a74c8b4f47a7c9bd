"""Importance-matrix files as llama.cpp writes them (llamacpp-notes 4.8), read the way
llama-quantize reads them.

- GGUF (default since 2025): KV `imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`;
  per weight W the tensors `W.in_sum2` (raw sums of squared activations, ne = [n_per_row, n_expert])
  and `W.counts` (tokens per expert, stored as float). Importance = in_sum2 / lround(count), or 1
  where the count is 0.
- Legacy `.dat`: i32 n_entries, then per entry i32 name length, name, i32 ncall, i32 nval,
  f32 values[nval] (already mean * ncall); an optional trailer i32 chunk count, i32 length +
  dataset name. Importance = value / ncall (raw value when ncall is 0).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from quantize_cli.errors import InputError
from quantize_cli.formats.gguf_reader import read_gguf
from quantize_cli.formats.kv import KV, kv_str, kv_u32


@dataclass
class ImportanceMatrix:
    path_arg: str  # the path as the user gave it: llama-quantize stores that string
    entries: dict[str, np.ndarray]  # weight name -> float32 importance, n_per_row * n_expert
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0

    def for_tensor(self, name: str, n_per_row: int, n_expert: int = 1) -> np.ndarray | None:
        """llama-quantize's lookup: the entry for `name` if its size fits the tensor, None when
        there is no entry; a size mismatch is an error except for token_embd."""
        values = self.entries.get(name)
        if values is None:
            return None
        if values.size != n_per_row * n_expert:
            if name == "token_embd.weight":
                return None
            raise InputError(
                f"{self.path_arg}: imatrix entry {name!r} has {values.size} values but the tensor needs "
                f"{n_per_row * n_expert}",
                hint="the importance matrix was computed for a different model",
            )
        return values

    def kvs(self) -> list[KV]:
        """The quantize.imatrix.* keys llama-quantize appends (strings cut at 127 bytes)."""
        out = [kv_str("quantize.imatrix.file", _c_str_127(self.path_arg))]
        if self.datasets:
            out.append(kv_str("quantize.imatrix.dataset", _c_str_127(self.datasets[0])))
        out.append(kv_u32("quantize.imatrix.entries_count", len(self.entries)))
        if self.chunk_count > 0:
            out.append(kv_u32("quantize.imatrix.chunks_count", self.chunk_count))
        return out


def _c_str_127(s: str) -> str:
    raw = s.encode("utf-8")[:127]
    return raw.decode("utf-8", errors="ignore")


@dataclass
class ImatrixFile:
    """An imatrix file's contents as stored, before llama-quantize or llama-imatrix interpret them.

    GGUF: values are the raw in_sum2 sums, counts the stored float counts per expert.
    Legacy: values are mean * ncall, counts is [ncall]."""

    fmt: str  # "gguf" or "dat"
    entries: dict[str, tuple[np.ndarray, np.ndarray]]  # weight name -> (values float32, counts float32)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0


def read_imatrix_file(path: Path) -> ImatrixFile:
    """Parse and validate either format (one-line InputError naming the file and entry)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: imatrix file not found")
    with open(path, "rb") as f:
        magic = f.read(4)
    raw = _read_gguf(path) if magic == b"GGUF" else _read_legacy(path)
    if not raw.entries:
        raise InputError(f"{path}: imatrix has no entries")
    return raw


def load_imatrix(path_arg: str) -> ImportanceMatrix:
    """The importance vectors llama-quantize derives from the file `path_arg`."""
    path = Path(path_arg)
    raw = read_imatrix_file(path)
    entries = {}
    for name, (values, counts) in raw.entries.items():
        if raw.fmt == "gguf":
            per = values.size // counts.size
            out = np.empty_like(values)
            for e, count in enumerate(counts):
                n = float(np.float32(lround(float(count))))
                out[e * per:(e + 1) * per] = (values[e * per:(e + 1) * per] / np.float32(n)) if n > 0 else 1.0
        else:
            ncall = int(counts[0])
            out = values / np.float32(ncall) if ncall > 0 else values.copy()
        if not np.isfinite(out).all():
            raise InputError(f"{path}: imatrix entry {name!r} contains non-finite values")
        entries[name] = out
    return ImportanceMatrix(path_arg, entries, datasets=raw.datasets, chunk_count=raw.chunk_count)


def _read_gguf(path: Path) -> ImatrixFile:
    reader = read_gguf(path)
    fields = reader.fields
    missing = [k for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size") if k not in fields]
    if missing:
        raise InputError(f"{path}: GGUF imatrix lacks metadata key {missing[0]!r}")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise InputError(f"{path}: imatrix tensor {t.name!r} must be F32, not {t.tensor_type.name}")
        if t.name.endswith(".in_sum2"):
            sums[t.name.removesuffix(".in_sum2")] = np.array(t.data, dtype=np.float32).reshape(-1)
        elif t.name.endswith(".counts"):
            counts[t.name.removesuffix(".counts")] = np.array(t.data, dtype=np.float32).reshape(-1)
    entries = {}
    for name in sorted(set(sums) | set(counts)):
        if name not in sums or name not in counts:
            raise InputError(f"{path}: imatrix entry {name!r} has in_sum2 without counts or counts without in_sum2")
        s, c = sums[name], counts[name]
        if c.size == 0 or s.size % c.size:
            raise InputError(f"{path}: imatrix entry {name!r}: {s.size} sums do not split into {c.size} experts")
        entries[name] = (s, c)
    return ImatrixFile("gguf", entries, datasets=[str(d) for d in fields["imatrix.datasets"].contents()],
                       chunk_count=int(fields["imatrix.chunk_count"].contents()))


def lround(x: float) -> int:
    """C's lround: half away from zero."""
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def _read_legacy(path: Path) -> ImatrixFile:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise InputError(f"{path}: legacy imatrix is truncated at byte {pos}")
        out = struct.unpack_from(fmt, data, pos)
        pos += size
        return out

    (n_entries,) = take("<i")
    if n_entries < 1:
        raise InputError(f"{path}: not an imatrix file (no GGUF magic, and {n_entries} legacy entries)")
    entries: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for _ in range(n_entries):
        (length,) = take("<i")
        if length < 0 or pos + length > len(data):
            raise InputError(f"{path}: legacy imatrix has a bad name length at byte {pos - 4}")
        name = data[pos:pos + length].decode("utf-8", errors="replace")
        pos += length
        ncall, nval = take("<ii")
        if nval < 1 or pos + 4 * nval > len(data):
            raise InputError(f"{path}: legacy imatrix entry {name!r} has a bad value count {nval}")
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        entries[name] = (values, np.array([ncall], np.float32))
    chunk_count, datasets = 0, []
    if pos + 4 <= len(data):  # optional trailer: chunk count, then the dataset name
        (chunk_count,) = take("<i")
        if pos + 4 <= len(data):
            (length,) = take("<i")
            if length > 0 and pos + length <= len(data):
                datasets.append(data[pos:pos + length].decode("utf-8", errors="replace"))
    return ImatrixFile("dat", entries, datasets=datasets, chunk_count=chunk_count)
