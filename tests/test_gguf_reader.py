"""The GGUF reader agrees with gguf-py on real files and turns every kind of damage into one
InputError naming the file (a fuzz test of truncations and byte flips of a real header)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from quantize_cli.errors import InputError
from quantize_cli.formats.gguf_reader import read_gguf


def test_same_as_gguf_py(smollm2_gguf: Path) -> None:
    ours, ref = read_gguf(smollm2_gguf), gguf.GGUFReader(smollm2_gguf)
    ref_fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert list(ours.fields) == list(ref_fields)
    for key, field in ref_fields.items():
        assert ours.fields[key].contents() == field.contents(), key
        assert ours.fields[key].types == field.types, key
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors):
        assert a.tensor_type == b.tensor_type and list(a.shape) == list(b.shape)
        assert a.data_offset == b.data_offset and a.n_bytes == b.n_bytes
        assert np.array_equal(np.asarray(a.data).view(np.uint8), np.asarray(b.data).view(np.uint8)), a.name


@pytest.fixture(scope="module")
def header_bytes(smollm2_gguf: Path) -> bytes:
    """The first 4 MB of a real file: header, vocabulary, tensor infos and some data."""
    with open(smollm2_gguf, "rb") as f:
        return f.read(4 * 1024 * 1024)


def read_or_input_error(path: Path) -> None:
    try:
        read_gguf(path)
    except InputError as e:
        assert str(path) in str(e) and "\n" not in str(e)


def test_fuzz_truncations(tmp_path: Path, header_bytes: bytes) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "t.gguf"
    for cut in [0, 3, 4, 8, 16, 23, 24, 25, *rng.integers(24, len(header_bytes), 60)]:
        path.write_bytes(header_bytes[:cut])
        with pytest.raises(InputError):
            read_gguf(path)


def test_fuzz_byte_flips(tmp_path: Path, header_bytes: bytes, smollm2_gguf: Path) -> None:
    rng = np.random.default_rng(2)
    with open(smollm2_gguf, "rb") as f:
        whole = bytearray(f.read())
    header_end = read_gguf(smollm2_gguf).tensors[0].data_offset
    path = tmp_path / "f.gguf"
    for trial in range(150):
        damaged = bytearray(whole[:header_end]) + bytes(64)
        for pos in rng.integers(0, header_end, rng.integers(1, 4)):
            damaged[pos] = int(rng.integers(0, 256))
        path.write_bytes(bytes(damaged))
        read_or_input_error(path)


def test_bad_magic_and_version(tmp_path: Path, header_bytes: bytes) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUX" + header_bytes[4:])
    with pytest.raises(InputError, match="bad magic"):
        read_gguf(path)
    path.write_bytes(header_bytes[:4] + (7).to_bytes(4, "little") + header_bytes[8:])
    with pytest.raises(InputError, match="version 7"):
        read_gguf(path)


def test_tensor_data_out_of_range_names_tensor(tmp_path: Path, smollm2_gguf: Path) -> None:
    data = smollm2_gguf.read_bytes()
    path = tmp_path / "short.gguf"
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(InputError, match=r"tensor '.*' data .* past the end of the file"):
        read_gguf(path)
