"""Where a planned tensor's rows come from.

Every source answers `read(start, stop)` with the rows [start, stop) as raw values of its stored
type (`stored_type`): float32, float16, or bf16 bits as uint16, or quantized blocks as uint8.
Rows of a 3-D tensor are counted over all leading dimensions. Sources hold no tensor data; they
read on demand, so a plan for a 70B model costs nothing until it is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from gguf import GGMLQuantizationType as T

from quantize_cli.archs.base import RowPermute
from quantize_cli.formats.safetensors import SafetensorsTensor


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
    """A tensor of an input GGUF file, read through gguf-py's memory map."""

    data: np.ndarray  # GGUFReader's tensor.data: numpy shape, uint8 rows for quantized types
    shape: tuple[int, ...]
    stored_type: T

    @property
    def row_group(self) -> int:
        return 1

    def read(self, start: int, stop: int) -> np.ndarray:
        flat = self.data.reshape(n_rows(self.shape), -1)
        return np.ascontiguousarray(flat[start:stop])
