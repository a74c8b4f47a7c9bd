"""Every bad input gets a one-line error naming the file and the tensor or key, exit code 1, and
leaves no output file behind. Runs the real `qconvert` command in a subprocess."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from support.cli import error_line, qconvert
from support.tiny_model import tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, austen_tokenizer) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny") / "Tiny-Llama", tokenizer_model=austen_tokenizer)


@pytest.fixture
def model(tmp_path: Path, tiny: Path) -> Path:
    """A private copy each test may break."""
    return Path(shutil.copytree(tiny, tmp_path / "Tiny-Llama"))


@pytest.fixture
def outdir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def assert_user_error(proc, outdir: Path, *needles: str) -> str:
    assert proc.returncode == 1, proc.stderr
    line = error_line(proc)
    for needle in needles:
        assert needle in line, line
    assert list(outdir.iterdir()) == [], "an output file was left behind"
    assert proc.stdout == ""
    return line


def st_header(path: Path) -> tuple[dict, int]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), n


def rewrite_header(path: Path, header: dict) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


def test_converts(model: Path, outdir: Path) -> None:
    proc = qconvert(str(model), "--type", "q8_0", "-o", str(outdir / "m.gguf"), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # stdout is exactly one JSON document
    assert doc["type"] == "Q8_0" and doc["tensor_types"] == {"F32": 5, "Q8_0": 16}
    assert list(outdir.iterdir()) == [outdir / "m.gguf"]


def test_default_name_and_existing_output_kept(model: Path, outdir: Path) -> None:
    proc = qconvert(str(model), "--type", "f16", cwd=outdir)
    assert proc.returncode == 0, proc.stderr
    (out,) = outdir.iterdir()
    assert out.name.startswith("Tiny-Llama") and out.name.endswith("-F16.gguf")
    before = out.read_bytes()
    proc = qconvert(str(model), "--type", "f16", cwd=outdir)
    assert proc.returncode == 1 and "output file exists" in error_line(proc) and "--force" in proc.stderr
    assert out.read_bytes() == before
    assert qconvert(str(model), "--type", "f16", "--force", cwd=outdir).returncode == 0


def test_truncated_safetensors(model: Path, outdir: Path) -> None:
    f = model / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    proc = qconvert(str(model), "--type", "q8_0", "-o", str(outdir / "m.gguf"))
    assert_user_error(proc, outdir, str(f), "truncated")


def test_header_length_past_end(model: Path, outdir: Path) -> None:
    f = model / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes(struct.pack("<Q", len(raw) * 2) + raw[8:])
    assert_user_error(qconvert(str(model), "-o", str(outdir / "m.gguf")), outdir, str(f), "header length")


def test_overlapping_offsets(model: Path, outdir: Path) -> None:
    f = model / "model.safetensors"
    header, _ = st_header(f)
    header["model.norm.weight"]["data_offsets"] = [0, header["model.norm.weight"]["data_offsets"][1]
                                                   - header["model.norm.weight"]["data_offsets"][0]]
    rewrite_header(f, header)
    assert_user_error(qconvert(str(model), "-o", str(outdir / "m.gguf")), outdir, str(f), "data_offsets")


def test_out_of_range_offsets(model: Path, outdir: Path) -> None:
    f = model / "model.safetensors"
    header, _ = st_header(f)
    begin, end = header["model.norm.weight"]["data_offsets"]
    header["model.norm.weight"]["data_offsets"] = [begin + 10**9, end + 10**9]
    rewrite_header(f, header)
    assert_user_error(qconvert(str(model), "-o", str(outdir / "m.gguf")), outdir, "'model.norm.weight'")


def test_unknown_dtype(model: Path, outdir: Path) -> None:
    f = model / "model.safetensors"
    header, _ = st_header(f)
    header["model.norm.weight"]["dtype"] = "F12"
    rewrite_header(f, header)
    assert_user_error(qconvert(str(model), "-o", str(outdir / "m.gguf")), outdir, "'model.norm.weight'", "F12")


def test_missing_shard(tmp_path: Path, austen_tokenizer: Path, outdir: Path) -> None:
    model = tiny_llama(tmp_path / "sharded", tokenizer_model=austen_tokenizer, shards=2)
    (model / "model-00002-of-00002.safetensors").unlink()
    assert_user_error(qconvert(str(model), "-o", str(outdir / "m.gguf")), outdir, "model-00002-of-00002.safetensors",
                      "missing")


def test_missing_config(model: Path, outdir: Path) -> None:
    (model / "config.json").unlink()
    assert_user_error(qconvert(str(model), "-o", str(outdir / "m.gguf")), outdir, "config.json")


def test_unsupported_architecture(model: Path, outdir: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["GPTNeoXForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    line = assert_user_error(qconvert(str(model), "-o", str(outdir / "m.gguf")), outdir, "GPTNeoXForCausalLM")
    assert "LlamaForCausalLM" in line and "Qwen2ForCausalLM" in line


def test_missing_tokenizer(model: Path, outdir: Path) -> None:
    (model / "tokenizer.model").unlink()
    assert_user_error(qconvert(str(model), "-o", str(outdir / "m.gguf")), outdir, str(model))


def test_nonfinite_weights(model: Path, outdir: Path) -> None:
    f = model / "model.safetensors"
    header, n = st_header(f)
    begin, _ = header["model.layers.1.mlp.up_proj.weight"]["data_offsets"]
    raw = bytearray(f.read_bytes())
    raw[8 + n + begin + 40: 8 + n + begin + 44] = np.float32(np.nan).tobytes()
    f.write_bytes(bytes(raw))
    assert_user_error(qconvert(str(model), "-o", str(outdir / "m.gguf")), outdir,
                      "'blk.1.ffn_up.weight'", "NaN")
    proc = qconvert(str(model), "-o", str(outdir / "m.gguf"), "--allow-nonfinite")
    assert proc.returncode == 0, proc.stderr


def test_output_directory_missing(model: Path, tmp_path: Path) -> None:
    proc = qconvert(str(model), "-o", str(tmp_path / "nope" / "m.gguf"))
    assert proc.returncode == 1 and "does not exist" in error_line(proc)


def test_output_directory_not_writable(model: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    target = ro if os.geteuid() != 0 else Path("/proc")  # root ignores mode bits; /proc refuses new files
    proc = qconvert(str(model), "-o", str(target / "m.gguf"))
    assert proc.returncode == 1 and str(target) in error_line(proc)
    assert not (target / "m.gguf").exists()


def test_disk_full(model: Path, outdir: Path) -> None:
    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 1024 * 1024, 2 * 1024 * 1024))
    proc = qconvert(str(model), "--type", "f32", "-o", str(outdir / "m.gguf"), preexec_fn=small_files)
    assert_user_error(proc, outdir, str(outdir / "m.gguf"), "disk full")


def test_ctrl_c_mid_write(tmp_path: Path, austen_tokenizer: Path, outdir: Path) -> None:
    big = tiny_llama(tmp_path / "big", tokenizer_model=austen_tokenizer, hidden=1024, ffn=2048, layers=4)
    # A shell starts background jobs with SIGINT ignored, and Python then installs no KeyboardInterrupt
    # handler; the child gets the default disposition back, as a terminal's foreground job has it.
    proc = subprocess.Popen([sys.executable, "-m", "quantize_cli", str(big), "--type", "q6_k", "--threads", "1",
                             "-o", str(outdir / "m.gguf")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".partial") for p in outdir.iterdir()):
        assert proc.poll() is None, "finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert list(outdir.iterdir()) == []


def test_usage_error_exit_2(model: Path) -> None:
    assert qconvert(str(model), "--no-such-option").returncode == 2


def test_unknown_type_lists_valid(model: Path, outdir: Path) -> None:
    line = assert_user_error(qconvert(str(model), "--type", "q3_k_xl", "-o", str(outdir / "m.gguf")), outdir,
                             "q3_k_xl")
    assert "q4_k_m" in line and "q8_0" in line


def test_tensor_type_pattern_matching_nothing(model: Path, outdir: Path) -> None:
    assert_user_error(qconvert(str(model), "--type", "q4_k_m", "--tensor-type", "attn_zz=q8_0",
                               "-o", str(outdir / "m.gguf")), outdir, "attn_zz", "matches no tensor")


def test_dry_run_writes_nothing(model: Path, outdir: Path) -> None:
    proc = qconvert(str(model), "--type", "q4_k_m", "--dry-run", "--json", "-o", str(outdir / "m.gguf"))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["dry_run"] and len(doc["tensors"]) == 21
    assert list(outdir.iterdir()) == []


def test_same_bytes_whatever_the_thread_count(model: Path, outdir: Path) -> None:
    digests = []
    for threads in ("1", "2"):
        proc = qconvert(str(model), "--type", "q4_k_m", "--threads", threads, "--json", "--force",
                        "-o", str(outdir / "m.gguf"))
        assert proc.returncode == 0, proc.stderr
        digests.append(json.loads(proc.stdout)["sha256"])
    assert digests[0] == digests[1]


def test_quantized_gguf_needs_allow_requantize(smollm2_gguf: Path, outdir: Path) -> None:
    proc = qconvert(str(smollm2_gguf), "--type", "q4_k_m", "-o", str(outdir / "m.gguf"))
    assert_user_error(proc, outdir, str(smollm2_gguf), "Q4_1")
    assert "--allow-requantize" in proc.stderr


def test_imatrix_size_mismatch_names_tensor(model: Path, tmp_path: Path, outdir: Path) -> None:
    dat = tmp_path / "bad.dat"
    name = b"blk.0.ffn_down.weight"
    dat.write_bytes(struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 1, 7)
                    + np.ones(7, np.float32).tobytes())
    assert_user_error(qconvert(str(model), "--type", "q4_k_m", "--imatrix", str(dat), "-o", str(outdir / "m.gguf")),
                      outdir, "blk.0.ffn_down.weight", "7 values")


def test_imatrix_nonfinite(model: Path, tmp_path: Path, outdir: Path) -> None:
    dat = tmp_path / "nan.dat"
    name = b"blk.0.ffn_down.weight"
    values = np.ones(128, np.float32)
    values[3] = np.inf
    dat.write_bytes(struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 1, 128)
                    + values.tobytes())
    assert_user_error(qconvert(str(model), "--type", "q4_k_m", "--imatrix", str(dat), "-o", str(outdir / "m.gguf")),
                      outdir, "blk.0.ffn_down.weight", "non-finite")


def test_optimize_needs_imatrix(model: Path, outdir: Path) -> None:
    assert_user_error(qconvert(str(model), "--type", "q4_k_m", "--optimize", "-o", str(outdir / "m.gguf")), outdir,
                      "--optimize needs --imatrix")
