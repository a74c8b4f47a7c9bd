"""`qconvert MODEL --type T --calibrate TEXT`: one-step calibrated quantization through the real
CLI. It must give the bytes of `qconvert imatrix` followed by `--imatrix FILE`, keep the matrix
only where asked, and refuse bad option combinations before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantize_cli.formats.gguf_reader import read_gguf
from support.cli import qconvert
from support.cli import user_error as error_line
from support.tiny_model import tiny_llama


@pytest.fixture(scope="module")
def model(tmp_path_factory, austen_tokenizer) -> Path:
    """256 wide, so the k-quant recipes apply to every matrix (not llama.cpp's fallback types)."""
    return tiny_llama(tmp_path_factory.mktemp("tiny") / "Tiny-Llama", tokenizer_model=austen_tokenizer, hidden=256,
                      ffn=512, heads=4, kv_heads=2, dtype="F16")


@pytest.fixture(scope="module")
def text(tmp_path_factory, austen_emma: Path) -> Path:
    """A short calibration text (4 chunks of 64 tokens and some)."""
    path = tmp_path_factory.mktemp("text") / "emma-head.txt"
    path.write_text(austen_emma.read_text()[:3000])
    return path


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_calibrate_gives_the_bytes_of_imatrix_then_quantize(model: Path, text: Path, tmp_path: Path, fmt: str) -> None:
    """Both runs name the matrix `m.imatrix.<fmt>` (the quantize.imatrix.file key records the name as
    given), each in its own directory."""
    by_hand, one_step = tmp_path / "by-hand", tmp_path / "one-step"
    by_hand.mkdir()
    one_step.mkdir()
    name = f"m.imatrix.{fmt}"
    proc = qconvert("imatrix", str(model), "--text", str(text), "--ctx", "64", "-o", name, cwd=by_hand)
    assert proc.returncode == 0, proc.stderr
    proc = qconvert(str(model), "--type", "q4_k_m", "--imatrix", name, "-o", "out.gguf", cwd=by_hand)
    assert proc.returncode == 0, proc.stderr
    proc = qconvert(str(model), "--type", "q4_k_m", "--calibrate", str(text), "--ctx", "64", "--save-imatrix", name,
                    "-o", "out.gguf", "--json", cwd=one_step)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["calibration"]["chunks"] >= 4 and report["calibration"]["imatrix"] == name
    assert (one_step / name).read_bytes() == (by_hand / name).read_bytes()
    assert (one_step / "out.gguf").read_bytes() == (by_hand / "out.gguf").read_bytes()
    assert sorted(p.name for p in one_step.iterdir()) == sorted([name, "out.gguf"]), "temporary files were left"


def test_calibrate_without_saving_keeps_no_matrix_and_quantizes_the_same(model: Path, text: Path,
                                                                         tmp_path: Path) -> None:
    saved = qconvert(str(model), "--type", "q5_k_m", "--calibrate", str(text), "--ctx", "64", "--save-imatrix",
                     str(tmp_path / "m.gguf"), "-o", str(tmp_path / "a.gguf"))
    assert saved.returncode == 0, saved.stderr
    unsaved = qconvert(str(model), "--type", "q5_k_m", "--calibrate", str(text), "--ctx", "64",
                       "-o", str(tmp_path / "b.gguf"))
    assert unsaved.returncode == 0, unsaved.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "b.gguf", "m.gguf"]
    a, b = read_gguf(tmp_path / "a.gguf"), read_gguf(tmp_path / "b.gguf")
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for x, y in zip(a.tensors, b.tensors):
        assert x.data.tobytes() == y.data.tobytes(), x.name
    # without a file, the key names the text the matrix came from
    assert b.fields["quantize.imatrix.file"].contents() == str(text)
    assert b.fields["quantize.imatrix.dataset"].contents() == str(text)


def test_calibrate_optimize_uses_gptq_and_writes_standard_blocks(model: Path, text: Path, tmp_path: Path) -> None:
    plain = qconvert(str(model), "--type", "q4_k_m", "--calibrate", str(text), "--ctx", "64",
                     "-o", str(tmp_path / "plain.gguf"))
    assert plain.returncode == 0, plain.stderr
    proc = qconvert(str(model), "--type", "q4_k_m", "--calibrate", str(text), "--ctx", "64", "--optimize",
                    "-o", str(tmp_path / "opt.gguf"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["optimized"] == {"gptq": 2 * 7}
    a, b = read_gguf(tmp_path / "plain.gguf"), read_gguf(tmp_path / "opt.gguf")
    assert [(t.name, t.tensor_type) for t in a.tensors] == [(t.name, t.tensor_type) for t in b.tensors]
    changed = [t.name for t, u in zip(a.tensors, b.tensors) if t.data.tobytes() != u.data.tobytes()]
    assert len(changed) >= 2 * 7 - 1, changed  # the optimizer chose other blocks


def test_calibrate_option_errors(model: Path, text: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "x.gguf")
    cases = [
        (("--type", "q4_k_m", "--calibrate", str(text), "--imatrix", "m.gguf"), "--imatrix and --calibrate"),
        (("--type", "q4_k_m", "--save-imatrix", "m.gguf"), "--save-imatrix is a calibration option"),
        (("--type", "q4_k_m", "--chunks", "3"), "--chunks is a calibration option"),
        (("--type", "q4_k_m", "--optimize"), "--optimize needs --imatrix or --calibrate"),
        (("--type", "f16", "--calibrate", str(text)), "--calibrate needs a quantized --type"),
        (("--type", "q4_k_m", "--calibrate", str(tmp_path / "none.txt")), "none.txt: no such file"),
        (("--type", "q4_k_m", "--calibrate", str(text), "--save-imatrix", str(tmp_path / "no" / "m.gguf")),
         "output directory does not exist"),
        (("--type", "q4_k_m", "--calibrate", str(text), "--save-imatrix", out), "is the output file"),
    ]
    for args, expected in cases:
        assert expected in error_line(qconvert(str(model), *args, "-o", out)), args
    assert list(tmp_path.iterdir()) == []


def test_calibrate_on_a_text_too_short_leaves_nothing(model: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("It is a truth universally acknowledged.\n")
    proc = qconvert(str(model), "--type", "q4_k_m", "--calibrate", str(short), "--save-imatrix",
                    str(tmp_path / "m.gguf"), "-o", str(tmp_path / "x.gguf"))
    line = error_line(proc)
    assert "short.txt" in line and "needs at least 1024" in line
    assert [p.name for p in tmp_path.iterdir()] == ["short.txt"]
