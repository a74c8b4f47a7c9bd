"""`qconvert llama-3-8b --type q4_k_m` works as written when such a repo is in the HF cache:
the real command, a real hub cache layout (checked in test_hub.py), no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_hub import add_to_cache

from support.tiny_model import tiny_llama


@pytest.fixture(scope="module")
def cached_hub(tmp_path_factory, austen_tokenizer: Path) -> Path:
    home = tmp_path_factory.mktemp("hf-home")
    model = tiny_llama(tmp_path_factory.mktemp("src") / "m", tokenizer_model=austen_tokenizer)
    files = {p.name: p.read_bytes() for p in model.iterdir()}
    add_to_cache(home / "hub", "meta-llama/Meta-Llama-3-8B", files)
    add_to_cache(home / "hub", "meta-llama/Meta-Llama-3-8B-Instruct", files)
    return home


def run(home: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-m", "quantize_cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd)


def test_short_name_of_a_cached_repo(cached_hub: Path, tmp_path: Path) -> None:
    proc = run(cached_hub, tmp_path, "llama-3-8b", "--type", "q4_k_m", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    out = Path(doc["output"])
    assert out.parent == tmp_path and out.name.endswith("-Q4_K_M.gguf") and out.is_file()
    assert "Meta-Llama-3-8B" in out.name  # named after the repo, not the snapshot hash


def test_repo_id_offline(cached_hub: Path, tmp_path: Path) -> None:
    proc = run(cached_hub, tmp_path, "meta-llama/Meta-Llama-3-8B-Instruct", "--type", "q8_0", "-o", "x.gguf")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "x.gguf").is_file()


def test_repo_not_cached_offline_is_a_clear_error(cached_hub: Path, tmp_path: Path) -> None:
    proc = run(cached_hub, tmp_path, "mistralai/Mistral-7B-v0.1", "--type", "q8_0")
    assert proc.returncode == 1
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "mistralai/Mistral-7B-v0.1" in line and "cache" in line
    assert list(tmp_path.iterdir()) == []
