"""A streaming GGUF writer: header, KV pairs and tensor infos first, then tensor data in slabs.

gguf-py's GGUFWriter wants each tensor whole in memory; we write rows as they are quantized so
memory stays flat. Layout (llamacpp-notes 5.7): magic, version 3, n_tensors, n_kv, KV pairs,
tensor infos, zero padding to the alignment, then each tensor's bytes followed by zero padding
to the alignment. n_dims is written C-style (trailing dimensions of 1 dropped, at least 1), as
llama-quantize does.

The file is written to a temporary name in the destination directory and renamed into place by
`commit()`; `abort()` (or leaving the `with` block by an exception) deletes it, so a failure never
leaves a half-written file under the final name.
"""

from __future__ import annotations

import enum
import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from gguf import GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, GGMLQuantizationType, GGUFValueType

from quantize_cli.formats.kv import KV
from quantize_cli.qtypes import tensor_bytes

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d", GGUFValueType.BOOL: "<?",
}
_ARRAY_NUMPY = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4", GGUFValueType.UINT64: "<u8", GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT64: "<f8", GGUFValueType.BOOL: "<?",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: last dimension is the row (ggml ne[0])
    qtype: GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.qtype, self.shape)


def _pad(n: int, alignment: int) -> int:
    return (alignment - n % alignment) % alignment


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def encode_value(vtype: GGUFValueType, value, sub_type: GGUFValueType | None = None) -> bytes:
    if vtype == GGUFValueType.STRING:
        return _string(value)
    if vtype == GGUFValueType.ARRAY:
        assert sub_type is not None
        head = struct.pack("<IQ", int(sub_type), len(value))
        if sub_type == GGUFValueType.STRING:
            return head + b"".join(_string(v) for v in value)
        return head + np.asarray(value, dtype=_ARRAY_NUMPY[sub_type]).tobytes()
    return struct.pack(_SCALAR_FORMATS[vtype], value)


def encode_header(kvs: list[KV], tensors: list[TensorInfo], alignment: int) -> bytes:
    """Everything before the tensor data, padding included."""
    parts = [struct.pack("<IIQQ", GGUF_MAGIC, GGUF_VERSION, len(tensors), len(kvs))]
    for kv in kvs:
        parts.append(_string(kv.key) + struct.pack("<I", int(kv.vtype)))
        parts.append(encode_value(kv.vtype, kv.value, kv.sub_type))
    offset = 0
    for t in tensors:
        ne = list(reversed(t.shape)) or [1]
        while len(ne) > 1 and ne[-1] == 1:
            ne.pop()
        parts.append(_string(t.name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, int(t.qtype), offset))
        offset += t.nbytes + _pad(t.nbytes, alignment)
    head = b"".join(parts)
    return head + bytes(_pad(len(head), alignment))


class _State(enum.Enum):
    DATA = "writing tensor data"
    DONE = "committed"
    ABORTED = "aborted"


class GGUFStreamWriter:
    """Write one GGUF file: construct with the full KV list and tensor plan, then call
    `write(bytes)` for each tensor's data in plan order, `end_tensor()` after each, and `commit()`."""

    def __init__(self, path: Path, kvs: list[KV], tensors: list[TensorInfo], *,
                 alignment: int = GGUF_DEFAULT_ALIGNMENT) -> None:
        self.path = path
        self.tensors = tensors
        self.alignment = alignment
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        self.tmp_path = Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        self._f: BinaryIO = os.fdopen(fd, "wb")
        self._state = _State.DATA
        self._index = 0
        self._written = 0  # bytes of the current tensor so far
        self._hash = hashlib.sha256()
        try:
            self._emit(encode_header(kvs, tensors, alignment))
        except BaseException:
            self.abort()
            raise

    def write(self, data: bytes | np.ndarray | memoryview) -> None:
        if self._state is not _State.DATA or self._index >= len(self.tensors):
            raise RuntimeError(f"GGUF writer: got tensor data while {self._state.value}")
        n = data.nbytes if isinstance(data, (np.ndarray, memoryview)) else len(data)
        self._emit(data)
        self._written += n

    def _emit(self, data) -> None:
        self._f.write(data)
        self._hash.update(data)

    @property
    def sha256(self) -> str:
        """Hex digest of every byte written so far (the whole file once committed)."""
        return self._hash.hexdigest()

    def end_tensor(self) -> None:
        info = self.tensors[self._index]
        if self._written != info.nbytes:
            raise RuntimeError(f"GGUF writer: tensor {info.name!r} got {self._written} bytes, expected {info.nbytes}")
        self._emit(bytes(_pad(info.nbytes, self.alignment)))
        self._index += 1
        self._written = 0

    def commit(self) -> Path:
        if self._index != len(self.tensors):
            raise RuntimeError(f"GGUF writer: commit after {self._index} of {len(self.tensors)} tensors")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp_path, self.path)
        self._state = _State.DONE
        return self.path

    def abort(self) -> None:
        if self._state is _State.DATA:
            self._state = _State.ABORTED
            try:
                self._f.close()
            except OSError:
                pass
            self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> "GGUFStreamWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self._state is _State.DATA:
            self.abort()
