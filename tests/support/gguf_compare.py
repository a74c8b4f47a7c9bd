"""Compare two GGUF files the way the oracle tests judge them: metadata key by key (value and
value type), tensor by tensor (name, shape, type, data bytes), and the order of both."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np


@dataclass
class GGUFDiff:
    missing_keys: list[str] = field(default_factory=list)  # in reference, not in ours
    extra_keys: list[str] = field(default_factory=list)  # in ours, not in reference
    value_diffs: list[str] = field(default_factory=list)
    key_order_differs: bool = False
    tensor_diffs: list[str] = field(default_factory=list)
    tensor_order_differs: bool = False

    def tensors_identical(self) -> bool:
        return not self.tensor_diffs

    def metadata_identical(self, *, ignore: frozenset[str] = frozenset()) -> bool:
        return not ([k for k in self.missing_keys + self.extra_keys if k not in ignore]
                    or [d for d in self.value_diffs if d.split(":", 1)[0] not in ignore])

    def summary(self) -> str:
        lines = [f"missing key {k}" for k in self.missing_keys] + [f"extra key {k}" for k in self.extra_keys]
        lines += self.value_diffs + self.tensor_diffs
        if self.key_order_differs:
            lines.append("key order differs")
        if self.tensor_order_differs:
            lines.append("tensor order differs")
        return "\n".join(lines) or "identical"


def _fields(reader: gguf.GGUFReader) -> dict[str, tuple[object, list[int]]]:
    return {f.name: (f.contents(), [int(t) for t in f.types]) for f in reader.fields.values()
            if not f.name.startswith("GGUF.")}


def compare_gguf(ours: Path, reference: Path) -> GGUFDiff:
    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(reference)
    fa, fb = _fields(a), _fields(b)
    diff = GGUFDiff()
    diff.missing_keys = [k for k in fb if k not in fa]
    diff.extra_keys = [k for k in fa if k not in fb]
    for k in fb:
        if k in fa and fa[k] != fb[k]:
            (va, ta_), (vb, tb_) = fa[k], fb[k]
            diff.value_diffs.append(f"{k}: ours {str(va)[:80]!r} {ta_} reference {str(vb)[:80]!r} {tb_}")
    common = [k for k in fb if k in fa]
    diff.key_order_differs = [k for k in fa if k in fb] != common
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    for name, t in tb.items():
        if name not in ta:
            diff.tensor_diffs.append(f"tensor {name}: missing in ours")
            continue
        o = ta[name]
        if o.tensor_type != t.tensor_type:
            diff.tensor_diffs.append(f"tensor {name}: type {o.tensor_type.name} vs {t.tensor_type.name}")
        elif list(o.shape) != list(t.shape):
            diff.tensor_diffs.append(f"tensor {name}: shape {list(o.shape)} vs {list(t.shape)}")
        else:
            x = np.asarray(o.data).view(np.uint8).reshape(-1)
            y = np.asarray(t.data).view(np.uint8).reshape(-1)
            if not np.array_equal(x, y):
                n = int(np.count_nonzero(x != y))
                diff.tensor_diffs.append(f"tensor {name} ({t.tensor_type.name}): {n} of {y.size} bytes differ")
    diff.tensor_diffs += [f"tensor {n}: extra in ours" for n in ta if n not in tb]
    diff.tensor_order_differs = [t.name for t in a.tensors if t.name in tb] != [t.name for t in b.tensors if t.name in ta]
    return diff


if __name__ == "__main__":
    print(compare_gguf(Path(sys.argv[1]), Path(sys.argv[2])).summary())
