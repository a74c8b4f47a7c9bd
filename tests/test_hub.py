"""Model resolution against a real Hugging Face cache layout in a temporary HF_HOME.

The cache is written in huggingface_hub's documented layout (models--org--name/{blobs,refs,snapshots})
and checked with huggingface_hub's own `scan_cache_dir` and `snapshot_download(local_files_only=True)`.
Nothing here reaches the network: HF_HUB_OFFLINE is on for every test, in the environment and in
huggingface_hub's import-time constant, so even a call with `offline=False` is refused by the hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
from huggingface_hub import constants, scan_cache_dir, snapshot_download
from tqdm.contrib.concurrent import thread_map

from quantize_cli.errors import InputError, ModelNotFoundError, OptionError
from quantize_cli.hub import _progress_bar_class, hub_cache_dir, resolve_model

CONFIG = json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 8}).encode()


def _safetensors() -> bytes:
    """A valid one-tensor safetensors file: u64 header size, JSON header, data."""
    header = json.dumps({"w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\x00\x3c\x00\x40"


MODEL_FILES = {"config.json": CONFIG, "model.safetensors": _safetensors(), "tokenizer.json": b"{}"}


def add_to_cache(cache: Path, repo_id: str, files=MODEL_FILES, *, repo_type: str = "model") -> Path:
    """Write `files` as the `main` snapshot of `repo_id`, the way huggingface_hub stores a download."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache under a temporary HF_HOME, offline."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "hf" / "hub"
    path.mkdir(parents=True)
    return path


def test_cache_layout_is_what_huggingface_hub_reads(cache):
    snapshot = add_to_cache(cache, "meta-llama/Meta-Llama-3-8B")
    (repo,) = scan_cache_dir(cache).repos
    assert (repo.repo_id, repo.repo_type) == ("meta-llama/Meta-Llama-3-8B", "model")
    assert [r.snapshot_path for r in repo.revisions] == [snapshot]
    found = snapshot_download("meta-llama/Meta-Llama-3-8B", cache_dir=cache, local_files_only=True)
    assert Path(found) == snapshot


def test_cache_dir_is_read_from_the_environment_at_call_time(tmp_path, monkeypatch):
    assert hub_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub_cache_dir() == tmp_path / "elsewhere"


def test_local_folder(tmp_path):
    folder = tmp_path / "Mistral-7B"
    folder.mkdir()
    model = resolve_model("./Mistral-7B")
    assert (model.kind, model.path, model.repo_id) == ("dir", folder, None)
    assert str(folder) in model.source


def test_local_gguf(tmp_path):
    (tmp_path / "model-f16.gguf").write_bytes(b"GGUF")
    model = resolve_model("model-f16.gguf")
    assert (model.kind, model.path, model.repo_id) == ("gguf", tmp_path / "model-f16.gguf", None)


def test_a_local_folder_wins_over_a_repo_id_of_the_same_name(tmp_path, cache):
    add_to_cache(cache, "org/name")
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert resolve_model("org/name").path == tmp_path / "org" / "name"


def test_a_file_that_is_not_gguf_is_an_input_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(_safetensors())
    with pytest.raises(InputError, match="model.safetensors is a file but not a .gguf file"):
        resolve_model("model.safetensors")


def test_revision_with_a_local_path_is_an_option_error(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(OptionError, match="applies to Hugging Face repos"):
        resolve_model("m", revision="main")


@pytest.mark.parametrize("spec", ["./missing", "missing.gguf", "models/llama/f16", "~/nope", "/no/such/dir"])
def test_missing_path_names_it(spec):
    with pytest.raises(ModelNotFoundError, match="no such file or folder") as error:
        resolve_model(spec)
    assert spec in str(error.value)
    assert error.value.hint


def test_cached_repo_id_resolves_offline(cache):
    snapshot = add_to_cache(cache, "meta-llama/Meta-Llama-3-8B")
    model = resolve_model("meta-llama/Meta-Llama-3-8B")
    assert (model.kind, model.path, model.repo_id) == ("dir", snapshot, "meta-llama/Meta-Llama-3-8B")
    assert model.source == f"HF cache meta-llama/Meta-Llama-3-8B@{snapshot.name[:12]}"


def test_cached_repo_id_is_used_before_the_network(cache):
    """offline=False, but the hub itself is offline: a download attempt would fail."""
    snapshot = add_to_cache(cache, "meta-llama/Meta-Llama-3-8B")
    assert resolve_model("meta-llama/Meta-Llama-3-8B", offline=False).path == snapshot


def test_repo_id_matches_the_cache_whatever_the_case(cache):
    snapshot = add_to_cache(cache, "meta-llama/Meta-Llama-3-8B")
    model = resolve_model("META-LLAMA/meta-llama-3-8b")
    assert (model.path, model.repo_id) == (snapshot, "meta-llama/Meta-Llama-3-8B")


def test_explicit_cache_dir_and_offline_argument(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    other = tmp_path / "other-cache"
    snapshot = add_to_cache(other, "Qwen/Qwen2.5-1.5B")
    assert resolve_model("Qwen/Qwen2.5-1.5B", cache_dir=other, offline=True).path == snapshot


def test_offline_returns_a_partial_snapshot_for_the_reader_to_judge(cache):
    snapshot = add_to_cache(cache, "org/partial", {"config.json": CONFIG})
    assert resolve_model("org/partial").path == snapshot


def test_repo_id_not_cached_and_offline(cache):
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model("meta-llama/Meta-Llama-3-8B")
    message = str(error.value)
    assert "meta-llama/Meta-Llama-3-8B is not in the Hugging Face cache at" in message
    assert str(cache) in message and "offline" in message and "\n" not in message
    assert "hf download meta-llama/Meta-Llama-3-8B" in error.value.hint


def test_repo_id_not_cached_and_hub_unreachable_goes_through_the_download_path(cache):
    """offline=False tries snapshot_download; the hub refuses (its offline mode): a clear error."""
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache at .* and offline mode is on"):
        resolve_model("org/not-cached", offline=False)


def test_revision_not_cached(cache):
    add_to_cache(cache, "org/name")
    with pytest.raises(ModelNotFoundError, match="org/name@v2 is not in the Hugging Face cache"):
        resolve_model("org/name", revision="v2")


@pytest.fixture
def llamas(cache) -> Path:
    for repo_id in ("meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct"):
        add_to_cache(cache, repo_id)
    add_to_cache(cache, "wikitext/llama-3-8b", repo_type="dataset")  # datasets never match
    return cache


@pytest.mark.parametrize(
    ("spec", "repo_id"),
    [
        ("Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B"),  # tier 0: exact name
        ("meta_llama_3_8b", "meta-llama/Meta-Llama-3-8B"),  # tier 1: separators ignored
        ("llama-3-8b", "meta-llama/Meta-Llama-3-8B"),  # tier 2: suffix beats the -Instruct containment
        ("llama3-8b", "meta-llama/Meta-Llama-3-8B"),
        ("LLAMA-3-8B-INSTRUCT", "meta-llama/Meta-Llama-3-8B-Instruct"),
        ("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B-Instruct"),  # tier 3: contained
        ("qwen-qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct"),  # with the org
    ],
)
def test_short_name_finds_the_one_cached_repo(llamas, spec, repo_id):
    model = resolve_model(spec)
    assert model.repo_id == repo_id
    assert model.path.parent.parent.name == f"models--{repo_id.replace('/', '--')}"


@pytest.mark.parametrize("spec", ["lama-3-8b", "llama-38b", "qwen2.5-15b", "qwen25"])
def test_short_name_tokens_match_whole(llamas, spec):
    with pytest.raises(ModelNotFoundError, match=f"no model named {spec} in the Hugging Face cache"):
        resolve_model(spec)


def test_ambiguous_short_name_lists_the_candidates(cache):
    add_to_cache(cache, "meta-llama/Meta-Llama-3-8B")
    add_to_cache(cache, "NousResearch/Meta-Llama-3-8B")
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model("llama-3-8b")
    assert str(error.value) == (
        "llama-3-8b names 2 cached models: NousResearch/Meta-Llama-3-8B, meta-llama/Meta-Llama-3-8B"
    )
    assert "qconvert NousResearch/Meta-Llama-3-8B" in error.value.hint


def test_ambiguous_among_contained_matches(cache):
    add_to_cache(cache, "mistralai/Mistral-7B-Instruct-v0.2")
    add_to_cache(cache, "mistralai/Mistral-7B-v0.1")
    with pytest.raises(ModelNotFoundError, match="mistral-7b names 2 cached models: .*Instruct-v0.2, .*v0.1$"):
        resolve_model("mistral-7b")


def test_short_name_not_cached_lists_what_is(llamas):
    with pytest.raises(ModelNotFoundError, match="no model named mistral-7b in the Hugging Face cache at") as error:
        resolve_model("mistral-7b")
    assert error.value.hint.startswith(
        "cached models: Qwen/Qwen2.5-1.5B-Instruct, meta-llama/Meta-Llama-3-8B, meta-llama/Meta-Llama-3-8B-Instruct;"
    )
    assert "wikitext" not in error.value.hint


def test_short_name_with_many_cached_repos_lists_ten(cache):
    for i in range(12):
        add_to_cache(cache, f"org/model-{i:02d}")
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model("mistral")
    assert "org/model-09 (+2 more)" in error.value.hint and "org/model-10" not in error.value.hint


def test_short_name_with_nothing_cached(cache, tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="no model named llama-3-8b") as error:
        resolve_model("llama-3-8b")
    assert "holds no models" in error.value.hint
    monkeypatch.setenv("HF_HOME", str(tmp_path / "never-created"))  # no cache folder at all
    with pytest.raises(ModelNotFoundError, match="never-created"):
        resolve_model("llama-3-8b")


def test_progress_bar_reports_and_draws_nothing(capsys):
    """The tqdm class given to snapshot_download: counts, descriptions, iteration, threads."""
    calls = []
    bar_class = _progress_bar_class(lambda *args: calls.append(args))
    thread_map(lambda x: x, range(3), tqdm_class=bar_class, desc="Fetching 3 files", max_workers=2)
    bar = bar_class(total=10, desc="Downloading bytes", unit="B", name="huggingface_hub.snapshot_download")
    bar.update(4)
    bar.set_description("Reconstruction complete")
    bar.update(6)
    bar.close()
    assert calls[-3:-1] == [("Fetching 3 files", 3, 3), ("Downloading bytes", 4, 10)]
    assert calls[-1] == ("Reconstruction complete", 10, 10)
    assert capsys.readouterr() == ("", "")
