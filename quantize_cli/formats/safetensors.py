"""A safetensors reader that trusts nothing and reads rows, not whole files.

File layout: u64 little-endian header length N, N bytes of JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the data
buffer; offsets are relative to the buffer start. Like the safetensors library we require the
tensors to tile the buffer exactly (sorted by offset, no gap, no overlap), and we reject duplicate
names, sizes that disagree with shape x dtype, and headers that run past the end of the file.

Rows are read with `readinto` into fresh buffers instead of memory-mapping the file: mapped pages
count towards the process's RSS, and peak memory must not grow with the model size.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from quantize_cli.errors import InputError, UnsupportedError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own cap

# safetensors dtype -> (ggml type of the stored values, numpy dtype used to hold the raw values)
SUPPORTED_DTYPES: dict[str, tuple[GGMLQuantizationType, np.dtype]] = {
    "F32": (GGMLQuantizationType.F32, np.dtype("<f4")),
    "F16": (GGMLQuantizationType.F16, np.dtype("<f2")),
    "BF16": (GGMLQuantizationType.BF16, np.dtype("<u2")),  # raw bits; widened by the kernels
}
KNOWN_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


@dataclass(frozen=True)
class SafetensorsTensor:
    """One tensor of one file: where its bytes are and how to read rows of it."""

    name: str
    path: Path
    dtype: str  # safetensors dtype string, one of SUPPORTED_DTYPES
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the first element in the file

    @property
    def ggml_type(self) -> GGMLQuantizationType:
        return SUPPORTED_DTYPES[self.dtype][0]

    @property
    def np_dtype(self) -> np.dtype:
        return SUPPORTED_DTYPES[self.dtype][1]

    @property
    def n_per_row(self) -> int:
        return self.shape[-1] if self.shape else 1

    @property
    def n_rows(self) -> int:
        return math.prod(self.shape[:-1]) if len(self.shape) > 1 else 1

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.np_dtype.itemsize

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Raw values of rows [start, stop) as a (stop-start, n_per_row) array of `np_dtype`."""
        if not 0 <= start <= stop <= self.n_rows:
            raise ValueError(f"rows {start}:{stop} out of range for {self.name} ({self.n_rows} rows)")
        row_bytes = self.n_per_row * self.np_dtype.itemsize
        out = np.empty((stop - start, self.n_per_row), dtype=self.np_dtype)
        read_exactly(self.path, self.offset + start * row_bytes, out, what=f"tensor {self.name!r}")
        return out


def read_exactly(path: Path, offset: int, out: np.ndarray, *, what: str = "tensor data") -> None:
    """Fill `out` with the bytes of `path` at `offset`; a short file is an InputError."""
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        view = memoryview(out.reshape(-1).view(np.uint8))
        got = 0
        while got < len(view):
            n = f.readinto(view[got:])
            if not n:
                raise InputError(f"{path}: {what} ends past the end of the file (truncated?)")
            got += n


def _reject_duplicates(pairs: list[tuple[str, object]], path: Path) -> dict:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise InputError(f"{path}: duplicate tensor name {key!r} in the safetensors header")
        seen[key] = value
    return seen


def read_header(path: Path) -> tuple[dict[str, SafetensorsTensor], dict[str, str]]:
    """Parse and validate the header of one .safetensors file: (tensors by name, __metadata__)."""
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise InputError(f"{path}: file is too short to be safetensors ({file_size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise InputError(f"{path}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte cap")
            if 8 + n > file_size:
                raise InputError(
                    f"{path}: header length {n} runs past the end of the file ({file_size} bytes; truncated?)"
                )
            raw = f.read(n)
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from e
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=lambda p: _reject_duplicates(p, path))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise InputError(f"{path}: header is not a JSON object")

    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    data_size = file_size - data_start
    tensors: dict[str, SafetensorsTensor] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise InputError(f"{path}: tensor {name!r}: entry is not an object")
        dtype = info.get("dtype")
        shape = info.get("shape")
        offsets = info.get("data_offsets")
        if dtype not in KNOWN_DTYPE_SIZES:
            raise InputError(f"{path}: tensor {name!r}: unknown dtype {dtype!r}")
        if dtype not in SUPPORTED_DTYPES:
            raise UnsupportedError(
                f"{path}: tensor {name!r} has dtype {dtype}; supported: {', '.join(SUPPORTED_DTYPES)}"
            )
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise InputError(f"{path}: tensor {name!r}: bad shape {shape!r}")
        if not (
            isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) and o >= 0 for o in offsets) and offsets[0] <= offsets[1]
        ):
            raise InputError(f"{path}: tensor {name!r}: bad data_offsets {offsets!r}")
        begin, end = offsets
        expected = math.prod(shape) * KNOWN_DTYPE_SIZES[dtype]  # Python ints: no overflow
        if end - begin != expected:
            raise InputError(
                f"{path}: tensor {name!r}: data_offsets span {end - begin} bytes "
                f"but shape {shape} of {dtype} needs {expected}"
            )
        if end > data_size:
            raise InputError(
                f"{path}: tensor {name!r}: data_offsets [{begin}, {end}] run past the end of the file "
                f"(data buffer is {data_size} bytes; truncated?)"
            )
        spans.append((begin, end, name))
        tensors[name] = SafetensorsTensor(name, path, dtype, tuple(shape), data_start + begin)

    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            what = "overlaps the previous tensor" if begin < pos else f"leaves a gap at byte {pos}"
            raise InputError(f"{path}: tensor {name!r}: data_offsets [{begin}, {end}] {what}")
        pos = end
    return tensors, {str(k): str(v) for k, v in metadata.items()}


@dataclass(frozen=True)
class Checkpoint:
    """All tensors of a model directory, in the order llama.cpp's converter visits them:
    shard by shard (sorted file names), names sorted within a shard."""

    directory: Path
    tensors: dict[str, SafetensorsTensor]


def _shard_names(directory: Path) -> list[str]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (OSError, json.JSONDecodeError, AttributeError) as e:
            raise InputError(f"{index}: cannot parse: {e}") from e
        if not isinstance(weight_map, dict):
            raise InputError(f"{index}: missing or malformed 'weight_map'")
        return sorted(set(weight_map.values()))
    return sorted(
        p.name for p in directory.iterdir() if p.name.startswith("model") and p.name.endswith(".safetensors")
    )


def open_checkpoint(directory: Path) -> Checkpoint:
    """Index every tensor of a (possibly sharded) safetensors checkpoint from headers alone."""
    shards = _shard_names(directory)
    if not shards:
        raise InputError(
            f"{directory}: no model*.safetensors files or model.safetensors.index.json found",
            hint="qconvert reads safetensors checkpoints; convert .bin weights with transformers first",
        )
    index_file = directory / "model.safetensors.index.json"
    expected: dict[str, str] = {}
    if index_file.is_file():
        expected = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
    tensors: dict[str, SafetensorsTensor] = {}
    for shard in shards:
        path = directory / shard
        if not path.is_file():
            raise InputError(
                f"{path}: shard listed in {index_file.name} is missing",
                hint="download the complete checkpoint",
            )
        found, _ = read_header(path)
        for name in sorted(found):
            if name in tensors:
                raise InputError(f"{path}: tensor {name!r} also appears in {tensors[name].path.name}")
            if expected and expected.get(name) != shard:
                raise InputError(
                    f"{path}: tensor {name!r} is not listed for this shard in {index_file.name}"
                )
            tensors[name] = found[name]
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise InputError(
            f"{index_file}: tensor {missing[0]!r} (and {len(missing) - 1} more) listed but not found "
            f"in {expected[missing[0]]}"
        )
    return Checkpoint(directory, tensors)


def write_safetensors(path: Path, tensors: list[tuple[str, str, tuple[int, ...]]], chunks,
                      metadata: dict[str, str] | None = None) -> None:
    """Write a .safetensors file from a plan of (name, dtype, shape) and an iterable yielding each
    tensor's bytes in the same order (one numpy array per tensor). Only the header is built up
    front; data streams straight to disk."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape in tensors:
        size = math.prod(shape) * KNOWN_DTYPE_SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((8 - len(raw) % 8) % 8)  # the data buffer starts 8-byte aligned, as the library does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for (name, dtype, shape), array in zip(tensors, chunks):
            data = np.ascontiguousarray(array)
            if data.nbytes != math.prod(shape) * KNOWN_DTYPE_SIZES[dtype]:
                raise ValueError(f"{path}: tensor {name!r}: got {data.nbytes} bytes for {dtype} {shape}")
            f.write(memoryview(data).cast("B"))
