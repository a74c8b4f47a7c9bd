"""`qconvert inspect`: a GGUF file's metadata and tensor table, for people and for --json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantize_cli.formats.gguf_reader import read_gguf

ARRAY_PREVIEW = 8  # elements of a long array shown without --all


@dataclass(frozen=True)
class TensorRow:
    name: str
    ne: list[int]  # ggml order: ne[0] is the row length
    type: str
    nbytes: int
    offset: int


@dataclass(frozen=True)
class Report:
    path: Path
    version: int
    metadata: list[tuple[str, str, Any]]  # key, value type name, value
    tensors: list[TensorRow]

    @property
    def n_params(self) -> int:
        total = 0
        for t in self.tensors:
            n = 1
            for d in t.ne:
                n *= d
            total += n
        return total

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.tensor_bytes / self.n_params if self.n_params else 0.0

    def metadata_rows(self, *, full_arrays: bool) -> list[tuple[str, str, str]]:
        rows = []
        for key, vtype, value in self.metadata:
            if isinstance(value, list) and not full_arrays and len(value) > ARRAY_PREVIEW:
                shown = f"[{', '.join(repr(v) for v in value[:ARRAY_PREVIEW])}, ...] ({len(value)} items)"
            elif isinstance(value, str) and not full_arrays and len(value) > 120:
                shown = repr(value[:117] + "...")
            else:
                shown = repr(value) if isinstance(value, str) else str(value)
            rows.append((key, vtype, shown))
        return rows

    def to_json(self, *, full_arrays: bool) -> dict[str, Any]:
        meta = {}
        for key, _, value in self.metadata:
            if isinstance(value, list) and not full_arrays and len(value) > ARRAY_PREVIEW:
                meta[key] = {"array_length": len(value), "first": value[:ARRAY_PREVIEW]}
            else:
                meta[key] = value
        types: dict[str, int] = {}
        for t in self.tensors:
            types[t.type] = types.get(t.type, 0) + 1
        return {
            "path": str(self.path), "version": self.version, "metadata": meta,
            "tensors": [{"name": t.name, "ne": t.ne, "type": t.type, "bytes": t.nbytes, "offset": t.offset}
                        for t in self.tensors],
            "tensor_types": dict(sorted(types.items())), "n_params": self.n_params,
            "tensor_bytes": self.tensor_bytes, "bits_per_weight": round(self.bits_per_weight, 4),
        }


def _type_name(field) -> str:
    names = [t.name.lower() for t in field.types]
    return f"{names[0]}[{names[1]}]" if len(names) > 1 else names[0]


def inspect_gguf(path: Path) -> Report:
    reader = read_gguf(path)
    version = reader.version
    metadata = []
    for field in reader.fields.values():
        value = field.contents()
        metadata.append((field.name, _type_name(field), value))
    tensors = [TensorRow(t.name, [int(d) for d in t.shape], t.tensor_type.name, int(t.n_bytes),
                         int(t.data_offset)) for t in reader.tensors]
    return Report(path, version, metadata, tensors)
