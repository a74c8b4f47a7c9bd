"""A GGUF reader that trusts nothing and opens large vocabularies fast.

gguf-py's GGUFReader builds a numpy view per string (seconds for a 150k-token vocabulary) and
fails with assorted exceptions on damaged files. This reader parses the header with `struct` over a
memory map, checks every length, type, shape and offset against the file, and raises InputError
naming the file and the key or tensor. Tensor data stays in the memory map.

For drop-in use where gguf-py's reader was used, `fields` maps names to objects with `.name`,
`.types` and `.contents()`, and `tensors` holds objects with gguf-py's ReaderTensor attributes
(`name`, `tensor_type`, `shape` in ggml order, `n_elements`, `n_bytes`, `data_offset`, `data`).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType

from quantize_cli.errors import InputError
from quantize_cli.formats.kv import KV

_SCALARS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_NUMPY = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
          GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8, GGMLQuantizationType.I16: np.int16,
          GGMLQuantizationType.I32: np.int32, GGMLQuantizationType.I64: np.int64}
MAX_DIMS = 4


@dataclass(frozen=True)
class Field:
    name: str
    types: list[GGUFValueType]  # [type] or [ARRAY, element type]
    value: Any

    def contents(self) -> Any:
        return self.value


@dataclass(frozen=True)
class Tensor:
    name: str
    tensor_type: GGMLQuantizationType
    shape: np.ndarray  # ggml order: shape[0] is the row length (ne[0])
    n_elements: int
    n_bytes: int
    data_offset: int  # absolute offset in the file
    data: np.ndarray  # numpy order; uint8 rows of blocks for quantized and BF16 types


class _Cursor:
    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise InputError(f"{self.path}: file ends inside {what} (truncated?)")
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return out[0] if len(out) == 1 else out

    def string(self, what: str) -> str:
        n = self.take("<Q", what)
        if self.pos + n > len(self.buf):
            raise InputError(f"{self.path}: {what}: string of {n} bytes runs past the end of the file (truncated?)")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str) -> tuple[Any, list[GGUFValueType]]:
        try:
            t = GGUFValueType(vtype)
        except ValueError:
            raise InputError(f"{self.path}: key {key!r} has unknown value type {vtype}") from None
        if t == GGUFValueType.STRING:
            return self.string(f"key {key!r}"), [t]
        if t != GGUFValueType.ARRAY:
            return self.take(_SCALARS[t], f"key {key!r}"), [t]
        sub_raw, count = self.take("<IQ", f"key {key!r}")
        try:
            sub = GGUFValueType(sub_raw)
        except ValueError:
            raise InputError(f"{self.path}: key {key!r} is an array of unknown type {sub_raw}") from None
        if sub == GGUFValueType.STRING:
            if count > len(self.buf) // 8:
                raise InputError(f"{self.path}: key {key!r}: {count} strings cannot fit in the file")
            return [self.string(f"key {key!r}") for _ in range(count)], [t, sub]
        if sub == GGUFValueType.ARRAY:
            raise InputError(f"{self.path}: key {key!r}: nested arrays are not supported")
        fmt = _SCALARS[sub]
        size = struct.calcsize(fmt) * count
        if self.pos + size > len(self.buf):
            raise InputError(f"{self.path}: key {key!r}: array of {count} runs past the end of the file (truncated?)")
        values = np.frombuffer(self.buf, dtype=np.dtype(fmt), count=count, offset=self.pos).tolist()
        self.pos += size
        return values, [t, sub]


class GGUFFile:
    """A parsed, validated GGUF file. Keep it alive while tensor data is in use (memory map)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            size = path.stat().st_size
        except OSError as e:
            raise InputError(f"{path}: cannot read: {e.strerror or e}") from e
        if size < 24:
            raise InputError(f"{path}: too short to be a GGUF file ({size} bytes)")
        self._map = np.memmap(path, dtype=np.uint8, mode="r")
        cur = _Cursor(memoryview(self._map), path)
        magic, version = cur.take("<II", "the header")
        if magic != GGUF_MAGIC:
            raise InputError(f"{path}: not a GGUF file (bad magic {magic:#010x})")
        if version not in (2, 3):
            raise InputError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
        self.version = version
        n_tensors, n_kv = cur.take("<QQ", "the header")
        if n_kv > size or n_tensors > size:
            raise InputError(f"{path}: header claims {n_kv} keys and {n_tensors} tensors: corrupt")
        self.fields: dict[str, Field] = {}
        for _ in range(n_kv):
            key = cur.string("a key name")
            value, types = cur.value(cur.take("<I", f"key {key!r}"), key)
            self.fields[key] = Field(key, types, value)
        alignment = self.fields.get("general.alignment")
        align = int(alignment.value) if alignment is not None else GGUF_DEFAULT_ALIGNMENT
        if align <= 0 or align & (align - 1):
            raise InputError(f"{path}: general.alignment {align} is not a power of two")
        infos = []
        for _ in range(n_tensors):
            name = cur.string("a tensor name")
            n_dims = cur.take("<I", f"tensor {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise InputError(f"{path}: tensor {name!r} has {n_dims} dimensions")
            ne = [cur.take("<Q", f"tensor {name!r}") for _ in range(n_dims)]
            raw_type, offset = cur.take("<IQ", f"tensor {name!r}")
            try:
                qtype = GGMLQuantizationType(raw_type)
            except ValueError:
                raise InputError(f"{path}: tensor {name!r} has unknown type {raw_type}") from None
            infos.append((name, ne, qtype, offset))
        data_start = cur.pos + (align - cur.pos % align) % align
        self.tensors: list[Tensor] = []
        seen = set()
        for name, ne, qtype, offset in infos:
            if name in seen:
                raise InputError(f"{path}: duplicate tensor name {name!r}")
            seen.add(name)
            self.tensors.append(self._tensor(name, ne, qtype, data_start + offset, size))

    def _tensor(self, name: str, ne: list[int], qtype: GGMLQuantizationType, start: int, size: int) -> Tensor:
        if qtype not in GGML_QUANT_SIZES:
            raise InputError(f"{self.path}: tensor {name!r} has type {qtype.name} of unknown size")
        block, type_size = GGML_QUANT_SIZES[qtype]
        if ne[0] % block:
            raise InputError(f"{self.path}: tensor {name!r}: row of {ne[0]} is not a multiple of the "
                             f"{qtype.name} block ({block})")
        n_elements = math.prod(ne)
        n_bytes = n_elements // block * type_size
        if start + n_bytes > size:
            raise InputError(f"{self.path}: tensor {name!r} data [{start}, {start + n_bytes}) lies past the end of "
                             f"the file ({size} bytes; truncated?)")
        np_shape = tuple(reversed(ne))
        raw = self._map[start:start + n_bytes]
        if qtype in _NUMPY:
            data = raw.view(_NUMPY[qtype]).reshape(np_shape)
        else:
            data = raw.reshape(*np_shape[:-1], ne[0] // block * type_size)
        return Tensor(name, qtype, np.array(ne, dtype=np.uint64), n_elements, n_bytes, start, data)


def read_gguf(path: Path) -> GGUFFile:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return GGUFFile(path)


def gguf_kvs(reader: GGUFFile) -> list[KV]:
    """Every KV pair in file order, with its value types."""
    return [KV(f.name, f.value, f.types[0], f.types[1] if len(f.types) > 1 else None)
            for f in reader.fields.values()]


def gguf_metadata(reader: GGUFFile) -> dict[str, Any]:
    """Plain Python values of every KV pair."""
    return {f.name: f.value for f in reader.fields.values()}
