"""Model resolution: turn the MODEL argument into a local folder or GGUF file.

MODEL is tried, in order, as
1. a local directory                      -> kind "dir"
2. a local `.gguf` file                   -> kind "gguf"
   (anything else that looks like a path, e.g. `./x`, `a/b/c`, `x.gguf`, and does not exist is an error)
3. a Hugging Face repo id `org/name`      -> the cached snapshot, else downloaded (unless offline)
4. a short name (`llama-3-8b`)            -> the one cached model repo it names (see `_match_cached`)

Only huggingface_hub's public API is used: `snapshot_download` (with `local_files_only=True` for cache
look-ups) and `scan_cache_dir`. huggingface_hub reads `HF_HOME` / `HF_HUB_CACHE` / `HF_HUB_OFFLINE` once,
at import; this module reads them at call time, so a changed environment (a test, a long-lived process)
is honoured, and always passes the cache folder explicitly.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from huggingface_hub import constants, scan_cache_dir, snapshot_download
from huggingface_hub.utils import (
    CacheNotFound,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import tqdm as hf_tqdm

from quantize_cli.errors import InputError, ModelNotFoundError, OptionError, UnsupportedError

ProgressCallback = Callable[[str, float, float | None], None]
"""`progress(description, completed, total)`: one call per update of a download step. `total` is None
when unknown. Descriptions are huggingface_hub's ("Fetching 5 files", "Downloading bytes", ...); one
description is one bar. It may be called from download worker threads."""

# What conversion reads from a repo, top-level files only: config and tokenizer JSONs (config.json,
# model.safetensors.index.json, tokenizer.json, tokenizer_config.json, vocab.json, ...), the
# safetensors weights under llama.cpp's `model*.safetensors` rule (Mistral repos also ship a
# `consolidated.safetensors` copy we must not fetch twice), the SentencePiece model and BPE merges.
# Never .bin/.pt/.gguf weights or sub-folders (onnx/, original/, ...).
ALLOW_PATTERNS = ["*.json", "model*.safetensors", "tokenizer.model", "merges.txt"]
IGNORE_PATTERNS = ["*/*"]

_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")
_SHORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's own truthy values for HF_HUB_OFFLINE
_LISTED = 10  # how many repo ids an error message names at most


@dataclass(frozen=True)
class ResolvedModel:
    kind: Literal["dir", "gguf"]
    path: Path  # absolute: a folder with config.json + safetensors, or a .gguf file
    repo_id: str | None  # "org/name" when it came from the Hugging Face cache or Hub
    source: str  # for logs: "local folder /x", "HF cache org/name@1a2b3c4d5e6f", ...


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, from the environment as it is now."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def _env_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in _TRUE or constants.HF_HUB_OFFLINE


def resolve_model(
    spec: str,
    *,
    revision: str | None = None,
    offline: bool | None = None,
    progress: ProgressCallback | None = None,
    cache_dir: Path | None = None,
) -> ResolvedModel:
    """Resolve MODEL (a folder, a .gguf file, `org/name` or a cached model's short name).

    `offline=None` follows `HF_HUB_OFFLINE`; `cache_dir=None` follows `HF_HUB_CACHE` / `HF_HOME`.
    `revision` (branch, tag or commit) applies to Hub repos only. Raises ModelNotFoundError when MODEL
    names nothing that exists, is cached or can be downloaded.
    """
    if not spec.strip():
        raise InputError("MODEL is empty", hint="pass a folder, a .gguf file or a Hugging Face repo id (org/name)")
    cache = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    offline = _env_offline() if offline is None else offline

    path = Path(spec).expanduser()
    if path.is_dir() or path.is_file():
        kind: Literal["dir", "gguf"] = "dir" if path.is_dir() else "gguf"
        if kind == "gguf" and path.suffix.lower() != ".gguf":
            raise InputError(
                f"{path} is a file but not a .gguf file",
                hint="pass the folder holding config.json and the *.safetensors files, or a .gguf file",
            )
        if revision is not None:
            raise OptionError(f"--revision {revision} applies to Hugging Face repos, not to the local path {path}")
        path = path.resolve()
        return ResolvedModel(kind, path, None, f"local {'folder' if kind == 'dir' else 'file'} {path}")

    is_gguf_name = spec.lower().endswith(".gguf")
    if _REPO_ID.fullmatch(spec) and not is_gguf_name:
        return _resolve_repo(spec, revision=revision, offline=offline, cache=cache, progress=progress)
    if _SHORT_NAME.fullmatch(spec) and not is_gguf_name:
        repo_id = _match_cached(spec, cache)
        return _resolve_repo(repo_id, revision=revision, offline=offline, cache=cache, progress=progress)
    raise ModelNotFoundError(
        f"no such file or folder: {spec}",
        hint="pass an existing folder, a .gguf file, a Hugging Face repo id (org/name) or a cached model's name",
    )


def _resolve_repo(
    repo_id: str, *, revision: str | None, offline: bool, cache: Path, progress: ProgressCallback | None
) -> ResolvedModel:
    """The cached snapshot of `repo_id` when it holds config.json and weights, else a download.

    Offline, a partial snapshot is returned as it is: the reader then names the file that is missing.
    """
    at = f"@{revision}" if revision else ""
    cached = _cached_snapshot(repo_id, revision, cache)
    if cached is None and (spelled := _cached_spelling(repo_id, cache)) is not None:
        repo_id, cached = spelled, _cached_snapshot(spelled, revision, cache)  # Hub ids ignore case; the cache does not
    if cached is not None and (offline or _is_complete(cached)):
        return ResolvedModel("dir", cached, repo_id, f"HF cache {repo_id}@{cached.name[:12]}")

    not_cached = f"{repo_id}{at} is not in the Hugging Face cache at {cache}"
    fetch_hint = (
        f"run `hf download {repo_id}` on a machine with network access and copy {cache} here, or pass a local folder"
    )
    if offline:
        raise ModelNotFoundError(f"{not_cached} and offline mode is on (HF_HUB_OFFLINE)", hint=fetch_hint)
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache,
                allow_patterns=ALLOW_PATTERNS,
                ignore_patterns=IGNORE_PATTERNS,
                tqdm_class=_progress_bar_class(progress),
            )
        )
    except GatedRepoError:
        raise ModelNotFoundError(
            f"{repo_id} is a gated repo and this machine has no access to it",
            hint=f"accept its terms at https://huggingface.co/{repo_id}, then `hf auth login` or set HF_TOKEN",
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"no repo {repo_id} on the Hugging Face Hub (or it is private)",
            hint="check the spelling; for a private repo, `hf auth login` or set HF_TOKEN",
        ) from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(
            f"{repo_id} has no revision {revision}", hint="pass a branch, tag or commit that exists"
        ) from None
    except LocalEntryNotFoundError as error:  # the Hub could not be reached (or refused: offline mode)
        reason = "offline mode is on" if isinstance(error.__cause__, OfflineModeIsEnabled) else "the Hub is unreachable"
        raise ModelNotFoundError(f"{not_cached} and {reason}", hint=fetch_hint) from None
    except HFValidationError as error:
        raise InputError(f"{repo_id} is not a valid Hugging Face repo id: {_first_line(error)}") from None
    except (HfHubHTTPError, OSError) as error:  # Hub errors (5xx, 401), dropped connections, full disk
        raise ModelNotFoundError(f"downloading {repo_id}{at} failed: {_first_line(error)}", hint=fetch_hint) from None

    if not _is_complete(folder):
        raise UnsupportedError(
            f"{repo_id}{at} has no config.json with model*.safetensors weights",
            hint="qconvert converts safetensors checkpoints; from a GGUF repo, download the .gguf file and pass it",
        )
    return ResolvedModel("dir", folder, repo_id, f"downloaded {repo_id}@{folder.name[:12]}")


def _cached_snapshot(repo_id: str, revision: str | None, cache: Path) -> Path | None:
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache,
            local_files_only=True,
            allow_patterns=ALLOW_PATTERNS,
            ignore_patterns=IGNORE_PATTERNS,
        )
    except LocalEntryNotFoundError:  # also huggingface_hub's IncompleteSnapshotError, a subclass
        return None
    except HFValidationError as error:
        raise InputError(f"{repo_id} is not a valid Hugging Face repo id: {_first_line(error)}") from None
    return Path(folder)


def _is_complete(folder: Path) -> bool:
    """config.json plus the weights: every shard the index names, else some model*.safetensors file."""
    if not (folder / "config.json").is_file():
        return False
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return any(folder.glob("model*.safetensors"))
    try:
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False  # an unreadable index is fetched again when online; offline, the reader reports it
    return bool(shards) and all((folder / shard).is_file() for shard in shards)


def _cached_models(cache: Path) -> list[str]:
    """Repo ids of the model repos in the cache that hold at least one snapshot, sorted."""
    try:
        info = scan_cache_dir(cache)
    except CacheNotFound:
        return []
    return sorted(repo.repo_id for repo in info.repos if repo.repo_type == "model" and repo.revisions)


def _cached_spelling(repo_id: str, cache: Path) -> str | None:
    matches = [cached for cached in _cached_models(cache) if cached.lower() == repo_id.lower()]
    return matches[0] if len(matches) == 1 else None


# Separators: '-', '_', '/', whitespace, and '.' unless it sits between two digits ("1.5b" stays one token).
_SEPARATOR = re.compile(r"[-_/\s]+|(?<!\d)\.|\.(?!\d)")


def _key(name: str) -> tuple[str, set[int], set[int]]:
    """`name` lower-cased with separators dropped, and where its tokens start and end in that string.

    Two digit tokens keep a '-' between them, so "llama-3-8b" -> "llama3-8b" but never "llama38b".
    """
    key, starts, ends = "", set(), set()
    for token in filter(None, _SEPARATOR.split(name.lower())):
        if key and key[-1].isdigit() and token[0].isdigit():
            key += "-"
        starts.add(len(key))
        key += token
        ends.add(len(key))
    return key, starts, ends


def _tier(spec: str, name: str) -> int | None:
    """How well short name `spec` names `name`: 0 best ... 3 weakest, None not at all."""
    if spec.lower() == name.lower():
        return 0
    wanted = _key(spec)[0]
    key, starts, ends = _key(name)
    if not wanted:
        return None
    if wanted == key:
        return 1
    aligned = [i for i in starts if key.startswith(wanted, i) and i + len(wanted) in ends]
    if not aligned:
        return None
    return 2 if max(aligned) + len(wanted) == len(key) else 3


def _match_cached(spec: str, cache: Path) -> str:
    """The one cached model repo that short name `spec` names.

    Names are compared lower-case, split into tokens at '-', '_', '/', whitespace and '.' (not inside
    a number such as 1.5), against each repo's name, and against its full id `org/name`; a repo scores
    its better tier of the two. Tiers, first non-empty wins:
      0. exact, case-insensitive:           `Meta-Llama-3-8B`  names  meta-llama/Meta-Llama-3-8B
      1. same tokens, separators ignored:   `meta_llama3_8b`   names  meta-llama/Meta-Llama-3-8B
      2. the spec's tokens end the name:    `llama-3-8b`       names  meta-llama/Meta-Llama-3-8B
      3. the spec's tokens are in the name: `llama-3-8b`       names  meta-llama/Meta-Llama-3-8B-Instruct
    Tokens match whole, never in part (`lama-3` names nothing) and two numbers never merge (`llama-38b`
    does not name Llama-3-8B). Two or more repos in the winning tier is an error that lists them.
    """
    cached = _cached_models(cache)
    tiers: dict[int, list[str]] = {}
    for repo_id in cached:
        found = [t for t in (_tier(spec, repo_id.split("/")[-1]), _tier(spec, repo_id)) if t is not None]
        if found:
            tiers.setdefault(min(found), []).append(repo_id)
    if not tiers:
        hint = (
            f"cached models: {_listing(cached)}; or pass a Hugging Face repo id (org/name) or a local folder"
            if cached
            else "the cache holds no models; pass a Hugging Face repo id (org/name) or a local folder"
        )
        raise ModelNotFoundError(f"no model named {spec} in the Hugging Face cache at {cache}", hint=hint)
    best = tiers[min(tiers)]
    if len(best) > 1:
        raise ModelNotFoundError(
            f"{spec} names {len(best)} cached models: {_listing(best)}",
            hint=f"pass the full repo id, e.g. `qconvert {best[0]}`",
        )
    return best[0]


def _listing(repo_ids: list[str]) -> str:
    shown = ", ".join(repo_ids[:_LISTED])
    return shown + (f" (+{len(repo_ids) - _LISTED} more)" if len(repo_ids) > _LISTED else "")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _ProgressBar(hf_tqdm):
    """A tqdm that draws nothing and reports to `callback`: huggingface_hub would draw on stderr.

    A disabled tqdm keeps neither its count nor its description, so this one keeps both itself.
    """

    callback: ProgressCallback | None = None

    def __init__(self, *args, **kwargs) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)
        self._description = kwargs.get("desc") or ""
        self._count_lock = threading.Lock()  # huggingface_hub updates one bar from several threads

    def update(self, n: float | None = 1) -> bool | None:
        with self._count_lock:
            self.n += n or 0
            completed = self.n
        if self.callback is not None:
            self.callback(self._description, completed, self.total)
        return None

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def set_description(self, desc: str | None = None, refresh: bool | None = True) -> None:
        self._description = desc or ""

    def set_description_str(self, desc: str | None = None, refresh: bool | None = True) -> None:
        self._description = desc or ""


def _progress_bar_class(progress: ProgressCallback | None) -> type[_ProgressBar]:
    return type("ProgressBar", (_ProgressBar,), {"callback": staticmethod(progress) if progress else None})
