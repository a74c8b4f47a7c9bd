"""Oracle tests: our files against llama.cpp's own, byte for byte.

- HF folder -> f32/f16/bf16/q8_0: whole file identical to convert_hf_to_gguf.py --outtype.
- HF folder -> k-quant recipes: whole file identical to llama-quantize run on the converter's
  lossless output (BF16 for BF16 sources, F16 for F16 ones), without and with an importance matrix
  from llama-imatrix in both file formats.
- GGUF -> GGUF: identical to llama-quantize on the same input.

Models: SmolLM2-135M (mostly shape-fallback tensors, hidden 576), Qwen2.5-Coder-1.5B (all dims
multiples of 256, qwen2 architecture) — both unpacked from their real GGUF files with `qconvert
unpack` — and the synthetic TinyLlama-shaped BF16 checkpoint (sharded, with index).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.gguf_compare import compare_gguf

pytestmark = pytest.mark.oracle

KQUANTS = ["Q4_K_M", "Q5_K_M", "Q4_K_S", "Q5_K_S", "Q6_K", "Q8_0"]


@pytest.fixture(autouse=True)
def _drop_outputs(tmp_path: Path):
    """Qwen files are GBs each: delete a test's GGUFs as soon as it is done, pass or fail."""
    yield
    for f in tmp_path.glob("*.gguf"):
        f.unlink()


def qconvert(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "quantize_cli", *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr


def assert_same_file(ours: Path, ref: Path) -> None:
    if ours.read_bytes() != ref.read_bytes():
        pytest.fail(f"{ours.name} differs from llama.cpp's {ref.name}:\n{compare_gguf(ours, ref).summary()}")


@pytest.fixture(scope="session")
def smol_hf(tmp_path_factory, smollm2_gguf: Path) -> Path:
    out = tmp_path_factory.mktemp("unpacked") / "SmolLM2-135M-Instruct"
    qconvert("unpack", str(smollm2_gguf), "--outdir", str(out))
    return out


@pytest.fixture(scope="session")
def qwen_hf(tmp_path_factory, qwen_coder_gguf: Path) -> Path:
    out = tmp_path_factory.mktemp("unpacked") / "Qwen2.5-Coder-1.5B-Instruct"
    qconvert("unpack", str(qwen_coder_gguf), "--outdir", str(out))
    return out


FIXTURE_OF = {"smollm2": "smol_hf", "qwen2.5": "qwen_hf", "synthetic": "synthetic_1layer"}


@pytest.fixture
def models(request):
    """Look a model folder up by name, building only the one a test asks for."""
    return lambda name: request.getfixturevalue(FIXTURE_OF[name])


LOSSLESS = {"smollm2": "f16", "qwen2.5": "f16", "synthetic": "bf16"}


@pytest.mark.parametrize("name", ["smollm2", "qwen2.5", "synthetic"])
@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_convert_matches_converter(name: str, outtype: str, models, llamacpp, tmp_path: Path) -> None:
    ref = llamacpp.convert_hf(models(name), outtype=outtype)
    ours = tmp_path / "ours.gguf"
    qconvert(str(models(name)), "--type", outtype, "-o", str(ours))
    assert_same_file(ours, ref)


def test_convert_f32_matches_converter(synthetic_1layer: Path, llamacpp, tmp_path: Path) -> None:
    ref = llamacpp.convert_hf(synthetic_1layer, outtype="f32")
    ours = tmp_path / "ours.gguf"
    qconvert(str(synthetic_1layer), "--type", "f32", "-o", str(ours))
    assert_same_file(ours, ref)


@pytest.mark.parametrize("name", ["smollm2", "qwen2.5", "synthetic"])
@pytest.mark.parametrize("qtype", KQUANTS)
def test_one_step_kquant_matches_two_step_llamacpp(name: str, qtype: str, models, llamacpp, tmp_path: Path) -> None:
    lossless = llamacpp.convert_hf(models(name), outtype=LOSSLESS[name])
    ref = llamacpp.quantize(lossless, tmp_path / "ref.gguf", qtype)
    ours = tmp_path / "ours.gguf"
    qconvert(str(models(name)), "--type", qtype, "-o", str(ours))
    if qtype == "Q8_0":
        # Plain `--type q8_0` is the converter's file (test_convert_matches_converter checks it whole);
        # llama-quantize writes the same tensors and keys, only in its own order.
        diff = compare_gguf(ours, ref)
        assert diff.tensors_identical() and diff.metadata_identical(), diff.summary()
    else:
        assert_same_file(ours, ref)


@pytest.fixture(scope="session")
def smol_imatrices(tmp_path_factory, smol_hf: Path, llamacpp, austen_emma: Path) -> dict[str, Path]:
    """llama-imatrix on the F16 SmolLM2, 8 chunks of Emma, in both file formats."""
    f16 = llamacpp.convert_hf(smol_hf, outtype="f16")
    out = tmp_path_factory.mktemp("imatrix")
    return {fmt: llamacpp.imatrix(f16, austen_emma, out=out / f"smol.imatrix.{fmt}", chunks=8, output_format=fmt)
            for fmt in ("gguf", "dat")}


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
@pytest.mark.parametrize("qtype", KQUANTS)
def test_imatrix_kquant_matches_llamacpp(fmt: str, qtype: str, smol_hf: Path, smol_imatrices, llamacpp,
                                         tmp_path: Path) -> None:
    imatrix = smol_imatrices[fmt]
    lossless = llamacpp.convert_hf(smol_hf, outtype="f16")
    ref = llamacpp.quantize(lossless, tmp_path / "ref.gguf", qtype, imatrix=imatrix)
    ours = tmp_path / "ours.gguf"
    qconvert(str(smol_hf), "--type", qtype, "--imatrix", str(imatrix), "-o", str(ours))
    assert_same_file(ours, ref)


@pytest.fixture(scope="session")
def qwen_imatrix(tmp_path_factory, qwen_hf: Path, llamacpp, austen_emma: Path) -> Path:
    """llama-imatrix on the F16 Qwen2.5-Coder, 2 chunks of Emma (computed once: it is slow on 2 cores)."""
    f16 = llamacpp.convert_hf(qwen_hf, outtype="f16")
    return llamacpp.imatrix(f16, austen_emma, out=tmp_path_factory.mktemp("imatrix") / "qwen.imatrix.gguf", chunks=2)


@pytest.mark.parametrize("qtype", ["Q4_K_M", "Q5_K_M"])
def test_qwen_imatrix_kquant_matches_llamacpp(qtype: str, qwen_hf: Path, qwen_imatrix: Path, llamacpp,
                                              tmp_path: Path) -> None:
    f16 = llamacpp.convert_hf(qwen_hf, outtype="f16")
    imatrix = qwen_imatrix
    ref = llamacpp.quantize(f16, tmp_path / "ref.gguf", qtype, imatrix=imatrix)
    ours = tmp_path / "ours.gguf"
    qconvert(str(qwen_hf), "--type", qtype, "--imatrix", str(imatrix), "-o", str(ours))
    assert_same_file(ours, ref)


@pytest.mark.parametrize("qtype", KQUANTS)
def test_gguf_to_gguf_matches_llama_quantize(qtype: str, smol_hf: Path, llamacpp, tmp_path: Path) -> None:
    f16 = llamacpp.convert_hf(smol_hf, outtype="f16")
    ref = llamacpp.quantize(f16, tmp_path / "ref.gguf", qtype)
    ours = tmp_path / "ours.gguf"
    qconvert(str(f16), "--type", qtype, "-o", str(ours))
    assert_same_file(ours, ref)


def test_requantize_from_q4_1_matches_llama_quantize(smollm2_gguf: Path, llamacpp, tmp_path: Path) -> None:
    ref = llamacpp.quantize(smollm2_gguf, tmp_path / "ref.gguf", "Q4_K_M", extra_args=("--allow-requantize",))
    ours = tmp_path / "ours.gguf"
    qconvert(str(smollm2_gguf), "--type", "q4_k_m", "--allow-requantize", "-o", str(ours))
    assert_same_file(ours, ref)


def test_unpack_is_lossless(smol_hf: Path, smollm2_gguf: Path, llamacpp, tmp_path: Path) -> None:
    """The HF folder `unpack` makes holds the original model exactly: llama.cpp's converter takes it,
    and llama-quantize back to the original's types (Q4_1, Q8_0 token embeddings) reproduces every
    tensor of the original GGUF byte for byte."""
    f16 = llamacpp.convert_hf(smol_hf, outtype="f16")
    again = llamacpp.quantize(f16, tmp_path / "again.gguf", "Q4_1",
                              extra_args=("--pure", "--token-embedding-type", "q8_0"))
    diff = compare_gguf(again, smollm2_gguf)
    assert diff.tensors_identical(), diff.summary()
