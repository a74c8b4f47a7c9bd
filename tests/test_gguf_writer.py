"""The streaming writer produces the same bytes as gguf-py's GGUFWriter, and never leaves a
half-written file behind."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from quantize_cli.formats.gguf_writer import GGUFStreamWriter, TensorInfo
from quantize_cli.formats.kv import KV

V = gguf.GGUFValueType


def sample():
    kvs = [
        KV("general.architecture", "llama", V.STRING),
        KV("a.u32", 7, V.UINT32), KV("a.i32", -3, V.INT32), KV("a.f32", 0.5, V.FLOAT32),
        KV("a.bool", True, V.BOOL), KV("a.u64", 2**40, V.UINT64), KV("a.f64", 1.25, V.FLOAT64),
        KV("a.strs", ["x", "ünï", ""], V.ARRAY, V.STRING), KV("a.ints", [1, -2, 3], V.ARRAY, V.INT32),
        KV("a.floats", [0.25, -1.0], V.ARRAY, V.FLOAT32),
    ]
    rng = np.random.default_rng(0)
    tensors = {"t.f32": rng.standard_normal((3, 5)).astype(np.float32),
               "t.f16": rng.standard_normal((7,)).astype(np.float16),
               "t.u8": rng.integers(0, 255, (2, 34), dtype=np.uint8)}  # two rows of one Q8_0 block each
    return kvs, tensors


def test_bytes_equal_gguf_py(tmp_path: Path) -> None:
    kvs, tensors = sample()
    ref = tmp_path / "ref.gguf"
    w = gguf.GGUFWriter(ref, "llama")
    for kv in kvs[1:]:
        w.add_key_value(kv.key, kv.value, kv.vtype, kv.sub_type)
    w.add_tensor("t.f32", tensors["t.f32"])
    w.add_tensor("t.f16", tensors["t.f16"])
    w.add_tensor("t.u8", tensors["t.u8"], raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    ours = tmp_path / "ours.gguf"
    infos = [TensorInfo("t.f32", (3, 5), gguf.GGMLQuantizationType.F32),
             TensorInfo("t.f16", (7,), gguf.GGMLQuantizationType.F16),
             TensorInfo("t.u8", (2, 32), gguf.GGMLQuantizationType.Q8_0)]
    with GGUFStreamWriter(ours, kvs, infos) as out:
        for name in ("t.f32", "t.f16", "t.u8"):
            data = tensors[name]
            for row in np.atleast_2d(data):  # row by row, as the converter streams slabs
                out.write(row.tobytes())
            out.end_tensor()
        out.commit()
    assert ours.read_bytes() == ref.read_bytes()
    import hashlib
    assert out.sha256 == hashlib.sha256(ours.read_bytes()).hexdigest()


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    kvs, _ = sample()
    target = tmp_path / "out.gguf"
    with pytest.raises(RuntimeError):
        with GGUFStreamWriter(target, kvs, [TensorInfo("t", (4,), gguf.GGMLQuantizationType.F32)]) as out:
            out.write(b"\0" * 8)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_wrong_byte_count_is_caught(tmp_path: Path) -> None:
    with GGUFStreamWriter(tmp_path / "o.gguf", [], [TensorInfo("t", (4,), gguf.GGMLQuantizationType.F32)]) as out:
        out.write(b"\0" * 8)
        with pytest.raises(RuntimeError, match="got 8 bytes, expected 16"):
            out.end_tensor()
    assert list(tmp_path.iterdir()) == []
