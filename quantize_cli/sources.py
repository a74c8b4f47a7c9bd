"""Where a planned tensor's rows come from.

Every source answers `read(start, stop)` with the rows [start, stop) as raw values of its stored
type (`stored_type`): float32, float16, or bf16 bits as uint16, or quantized blocks as uint8.
Rows of a 3-D tensor are counted over all leading dimensions. Sources hold no tensor data; they
read on demand, so a plan for a 70B model costs nothing until it is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from gguf import GGMLQuantizationType as T

from quantize_cli.archs.base import RowPermute
from quantize_cli.formats.safetensors import SafetensorsTensor, read_exactly
from quantize_cli.qtypes import row_bytes


class RowSource(Protocol):
    shape: tuple[int, ...]  # numpy order; shape[-1] elements per row
    stored_type: T

    def read(self, start: int, stop: int) -> np.ndarray: ...

    @property
    def row_group(self) -> int:
        """Slabs must start and end on multiples of this many rows."""
        ...


def n_rows(shape: tuple[int, ...]) -> int:
    return math.prod(shape[:-1]) if len(shape) > 1 else 1


@dataclass(frozen=True)
class SafetensorsRows:
    tensor: SafetensorsTensor
    permute: RowPermute | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.tensor.shape

    @property
    def stored_type(self) -> T:
        return self.tensor.ggml_type

    @property
    def row_group(self) -> int:
        return self.permute.group if self.permute else 1

    def read(self, start: int, stop: int) -> np.ndarray:
        rows = self.tensor.read_rows(start, stop)
        if len(self.shape) <= 1:  # one row; a permute (of a bias) moves its elements
            return rows if self.permute is None else rows[:, self.permute.order]
        if self.permute is not None:
            # Permutes never cross a group, so the slab's own rows are all it needs.
            rows = rows[self.permute.order[start:stop] - start]
        return rows


@dataclass(frozen=True)
class ArrayRows:
    """A tensor computed in memory (rope_freqs)."""

    array: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def stored_type(self) -> T:
        return {np.dtype("float32"): T.F32, np.dtype("float16"): T.F16}[self.array.dtype]

    @property
    def row_group(self) -> int:
        return 1

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.array.reshape(-1, self.shape[-1])[start:stop]


@dataclass(frozen=True)
class GGUFRows:
    """A tensor of an input GGUF file, read row range by row range with `readinto` (not through
    the memory map, whose pages would count towards RSS and grow with the model)."""

    path: Path
    offset: int  # absolute offset of the tensor data in the file
    shape: tuple[int, ...]
    stored_type: T

    @property
    def row_group(self) -> int:
        return 1

    def read(self, start: int, stop: int) -> np.ndarray:
        n_per_row = self.shape[-1]
        if self.stored_type in _NUMPY_OF:
            out = np.empty((stop - start, n_per_row), dtype=_NUMPY_OF[self.stored_type])
        else:
            out = np.empty((stop - start, row_bytes(self.stored_type, n_per_row)), dtype=np.uint8)
        read_exactly(self.path, self.offset + start * out.shape[1] * out.itemsize, out)
        return out


# Stored types read as numpy values; everything else (quantized blocks) is read as raw bytes.
_NUMPY_OF = {T.F32: np.dtype("<f4"), T.F16: np.dtype("<f2"), T.BF16: np.dtype("<u2")}
