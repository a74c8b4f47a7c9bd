"""The safetensors reader rejects every malformed file with an error naming file and tensor."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from quantize_cli.errors import InputError, UnsupportedError
from quantize_cli.formats.safetensors import open_checkpoint, read_header, write_safetensors


def raw_file(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_round_trip_rows(tmp_path: Path) -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.arange(6, dtype=np.float16).reshape(2, 3)
    path = tmp_path / "model.safetensors"
    write_safetensors(path, [("a", "F32", (3, 4)), ("b", "F16", (2, 3))], [a, b])
    tensors, _ = read_header(path)
    assert tensors["a"].read_rows(1, 3).tolist() == a[1:3].tolist()
    assert tensors["b"].read_rows(0, 2).tolist() == b.tolist()


def test_bf16_is_read_as_raw_bits(tmp_path: Path) -> None:
    bits = np.array([[0x3F80, 0xC000]], dtype=np.uint16)  # 1.0, -2.0
    path = raw_file(tmp_path / "model.safetensors",
                    {"w": {"dtype": "BF16", "shape": [1, 2], "data_offsets": [0, 4]}}, bits.tobytes())
    tensors, _ = read_header(path)
    assert tensors["w"].read_rows(0, 1).tolist() == bits.tolist()


@pytest.mark.parametrize("header,data,message", [
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "past the end of the file"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8, "needs 8"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "v": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, b"\0" * 8, "overlaps"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "gap"),
    ({"w": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "unknown dtype"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, "bad shape"),
])
def test_malformed_files_are_rejected(tmp_path: Path, header, data, message) -> None:
    path = raw_file(tmp_path / "model.safetensors", header, data)
    with pytest.raises(InputError, match=message) as e:
        read_header(path)
    msg = str(e.value)
    assert str(path) in msg and ("'w'" in msg or "'v'" in msg)


def test_unsupported_dtype_names_tensor(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "model.safetensors", {"ids": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}},
                    b"\0" * 8)
    with pytest.raises(UnsupportedError, match="'ids' has dtype I64"):
        read_header(path)


def test_header_length_past_end(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(InputError, match="header length 1000 runs past the end"):
        read_header(path)


def test_truncated_below_eight_bytes(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\1\2")
    with pytest.raises(InputError, match="too short"):
        read_header(path)


def test_duplicate_names(tmp_path: Path) -> None:
    raw = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, ' \
          b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4)
    with pytest.raises(InputError, match="duplicate tensor name 'w'"):
        read_header(path)


def test_sharded_checkpoint_order_and_missing_shard(tmp_path: Path) -> None:
    one = np.zeros((1, 2), np.float32)
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", [("z", "F32", (1, 2)), ("a", "F32", (1, 2))],
                      [one, one])
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", [("m", "F32", (1, 2))], [one])
    index = {"weight_map": {"z": "model-00001-of-00002.safetensors", "a": "model-00001-of-00002.safetensors",
                            "m": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert list(open_checkpoint(tmp_path).tensors) == ["a", "z", "m"]  # by shard, sorted within
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(InputError, match="model-00002-of-00002.safetensors: shard listed in .* is missing"):
        open_checkpoint(tmp_path)
