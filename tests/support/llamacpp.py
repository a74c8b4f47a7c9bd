"""llama.cpp as the reference oracle: its tools, its converter and the original HF tokenizers.

The source is the llama.cpp tree vendored in the PyPI sdist llama-cpp-python 0.3.36 (ggml commit
0c1e570, bundled gguf-py 0.19.0). Everything is built or installed on first use and cached next to
the fixtures (see fixtures.py for the cache root):

    src/llama_cpp_python-0.3.36.tar.gz                  the sdist
    src/llama_cpp_python-0.3.36/vendor/llama.cpp/        its llama.cpp tree
        build/bin/llama-{quantize,perplexity,imatrix,tokenize}   (~12 min on 2 cores)
    oracle-venv/                                        python with torch (CPU) + transformers;
                                                        .qconvert-complete = its `pip freeze`
    converted/<folder>-<key>-<outtype>.gguf             convert_hf() results (latest key only)
    logs/{llamacpp-cmake,llamacpp-build,oracle-venv}.log
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .fixtures import FixtureError, atomic_path, cache_lock, cache_root, ensure, pip_download, remove, run

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
TOOLS = ("llama-quantize", "llama-perplexity", "llama-imatrix", "llama-tokenize")
# These exact options are part of the cache: an existing build/ was configured with them.
CMAKE_OPTIONS = ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF")
BUILD_JOBS = "2"

# The oracle environment: torch==2.13.0 resolves to the CPU wheel in the local wheel directory
# (plain `torch` would pull GBs of CUDA packages). Two pip calls, torch first, as in the original
# setup. Only the converter and hf_tokenize() run in it; qconvert never imports torch.
ORACLE_STEPS = (("torch==2.13.0",),
                # transformers is pinned: the converter reads config.json through its AutoConfig, whose
                # defaults (e.g. Llama's head_dim) decide which keys the GGUF gets.
                ("transformers==5.23.0", "tokenizers==0.23.3", "sentencepiece", "numpy", "safetensors", "protobuf",
                 "jinja2"))
ORACLE_IMPORTS = ("torch", "transformers", "sentencepiece", "tokenizers", "safetensors",
                  "google.protobuf", "numpy", "jinja2")
ORACLE_MARKER = ".qconvert-complete"  # written last, after the imports were checked


# --------------------------------------------------------------------------- building


def source_dir() -> Path:
    """The llama.cpp tree from the llama-cpp-python sdist, downloaded and unpacked on first use."""
    src_root = cache_root() / "src"
    unpacked = src_root / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
    tree = unpacked / "vendor" / "llama.cpp"
    if (tree / "convert_hf_to_gguf.py").is_file():
        return tree

    with cache_lock("llamacpp-src"):
        if (tree / "convert_hf_to_gguf.py").is_file():
            return tree
        sdist = src_root / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
        src_root.mkdir(parents=True, exist_ok=True)
        if not sdist.is_file():
            pip_download([f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"], src_root,
                         extra=("--no-binary", ":all:"))
        with tempfile.TemporaryDirectory(dir=src_root) as tmp, tarfile.open(sdist) as tar:
            if hasattr(tarfile, "tar_filter"):  # Python >= 3.10.12 / 3.11.4 warn without a filter
                tar.extractall(tmp, filter="tar")
            else:
                tar.extractall(tmp)
            remove(unpacked)  # what an interrupted extraction left
            os.replace(Path(tmp) / unpacked.name, unpacked)
    if not (tree / "convert_hf_to_gguf.py").is_file():
        raise FixtureError(f"{unpacked} has no vendor/llama.cpp/convert_hf_to_gguf.py; delete it and retry")
    return tree


def tool(name: str) -> Path:
    """Path of a built llama.cpp tool (one of TOOLS); configures and builds them on first use.

    A stamp file per tool records a successful build by this module. Without it we run the
    (incremental) cmake build for all four tools, which is a no-op check when they are up to date.
    """
    if name not in TOOLS:
        raise ValueError(f"unknown llama.cpp tool {name!r}; choose one of {TOOLS}")
    src = source_dir()
    build_dir = src / "build"
    exe = build_dir / "bin" / name
    if exe.is_file() and (build_dir / f".qconvert-built-{name}").is_file():
        return exe
    with cache_lock("llamacpp-build"):
        if exe.is_file() and (build_dir / f".qconvert-built-{name}").is_file():
            return exe
        log_dir = cache_root() / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        if not (build_dir / "CMakeCache.txt").is_file():
            _logged(["cmake", "-B", "build", *CMAKE_OPTIONS], cwd=src, log=log_dir / "llamacpp-cmake.log",
                    what="cmake configure of llama.cpp")
        _logged(["cmake", "--build", "build", "-j", BUILD_JOBS, "--target", *TOOLS], cwd=src,
                log=log_dir / "llamacpp-build.log", what="cmake build of llama.cpp tools")
        for t in TOOLS:
            if not (build_dir / "bin" / t).is_file():
                raise FixtureError(f"cmake build finished but {build_dir / 'bin' / t} is missing")
            (build_dir / f".qconvert-built-{t}").touch()
    return exe


def _logged(cmd: Sequence[str], *, cwd: Path, log: Path, what: str) -> None:
    """Run a long command with its output appended to a log file (a build prints megabytes)."""
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.run(list(cmd), cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_bytes()[-4000:].decode("utf-8", "replace")
        raise FixtureError(f"{what} failed (exit {proc.returncode}), log {log}:\n{tail}")


def oracle_python() -> Path:
    """Python of the oracle venv (torch CPU, transformers, sentencepiece, ...), created on first use."""
    venv = cache_root() / "oracle-venv"
    python = venv / "bin" / "python"
    if (venv / ORACLE_MARKER).is_file():
        return python
    with cache_lock("oracle-venv"):
        if (venv / ORACLE_MARKER).is_file():
            return python
        if not _imports_ok(python):  # an older setup may be complete but unmarked
            remove(venv)
            run([sys.executable, "-m", "venv", venv], what="python -m venv oracle-venv")
            log_dir = cache_root() / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            for step in ORACLE_STEPS:
                _logged([str(python), "-m", "pip", "install", *step], cwd=venv,
                        log=log_dir / "oracle-venv.log", what=f"pip install {' '.join(step)} into {venv}")
            if not _imports_ok(python):
                raise FixtureError(f"{venv}: packages installed but `import {', '.join(ORACLE_IMPORTS)}` fails")
        versions = run([python, "-m", "pip", "freeze"], what="pip freeze").stdout
        (venv / ORACLE_MARKER).write_bytes(versions)
    return python


def _imports_ok(python: Path) -> bool:
    if not python.is_file():
        return False
    probe = subprocess.run([str(python), "-c", "import " + ", ".join(ORACLE_IMPORTS)], capture_output=True)
    return probe.returncode == 0


# --------------------------------------------------------------------------- conversion


def convert_hf(model_dir: Path, *, outtype: str, outfile: Path | None = None) -> Path:
    """Run llama.cpp's convert_hf_to_gguf.py on an HF folder and return the GGUF path.

    Uses the oracle python with the bundled gguf-py first on PYTHONPATH (the PyPI gguf differs)
    and HF_HUB_OFFLINE=1. With no `outfile`, the result is cached under converted/, keyed by the
    folder's path and the name, size and mtime of every file in it, plus `outtype`.
    """
    model_dir = Path(model_dir).resolve()
    if outfile is not None:
        _convert(model_dir, outtype, Path(outfile))
        return Path(outfile)
    dest = cache_root() / "converted" / f"{model_dir.name}-{_folder_key(model_dir)}-{outtype}.gguf"

    def build(tmp: Path) -> None:
        # Drop results for older contents of the same folder name: converted files are GBs.
        stale = re.compile(re.escape(model_dir.name) + r"-[0-9a-f]{16}-" + re.escape(outtype) + r"\.gguf")
        for old in dest.parent.iterdir():
            if stale.fullmatch(old.name):
                old.unlink()
        _convert(model_dir, outtype, tmp)

    return ensure(dest, build)


def _convert(model_dir: Path, outtype: str, outfile: Path) -> None:
    src = source_dir()
    python = oracle_python()
    outfile.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(outfile) as tmp:
        run([python, src / "convert_hf_to_gguf.py", model_dir, "--outtype", outtype, "--outfile", tmp],
            what=f"convert_hf_to_gguf.py {model_dir.name} --outtype {outtype}", env=_oracle_env(src))


def _oracle_env(src: Path) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(src / "gguf-py"))
    env.pop("NO_LOCAL_GGUF", None)
    return env


def _folder_key(folder: Path) -> str:
    digest = hashlib.sha256(str(folder).encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = path.stat()
        digest.update(f"\0{path.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- tools


def quantize(src: Path, dst: Path, type: str, *, imatrix: Path | None = None,
             threads: int = 2, extra_args: Sequence[str] = ()) -> Path:
    """`llama-quantize [--imatrix F] [extra_args] src dst TYPE threads`, written atomically to dst.

    Note: llama-quantize stores the imatrix path as given in `quantize.imatrix.file`, so compare
    files produced with the same imatrix path string.
    """
    args = [*(("--imatrix", str(imatrix)) if imatrix is not None else ()), *extra_args]
    dst = Path(dst)
    with atomic_path(dst) as tmp:
        run([tool("llama-quantize"), *args, src, tmp, type, str(threads)],
            what=f"llama-quantize {Path(src).name} {type}")
    return dst


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    ppl: float | None              # "Final estimate: PPL = ..." (absent in --kl-divergence runs)
    ppl_error: float | None        # its "+/-" term
    chunks: list[float]            # running PPL after each chunk: the "[1]12.3456,[2]..." list
    stats: dict[str, tuple[float, float | None]]  # KLD-mode report: "Mean KLD" -> (value, ±)
    stdout: str
    stderr: str


def perplexity(model: Path, text_file: Path, *, ctx: int = 512, chunks: int | None = None, threads: int = 2,
               extra_args: Sequence[str] = ()) -> PerplexityResult:
    """Run llama-perplexity and parse its report.

    For KL-divergence pass extra_args=("--kl-divergence-base", base_file) on the base model (it saves
    the logits) and then ("--kl-divergence-base", base_file, "--kl-divergence") on the other one.
    """
    cmd: list[str | Path] = [tool("llama-perplexity"), "-m", model, "-f", text_file, "-c", str(ctx), "-t", str(threads)]
    if chunks is not None:
        cmd += ["--chunks", str(chunks)]
    proc = run([*cmd, *extra_args], what=f"llama-perplexity {Path(model).name}")
    stdout, stderr = proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    output = stdout + stderr  # the chunk list goes to stdout, the final estimate to the log (stderr)
    final = re.search(r"Final estimate: PPL = ([0-9.]+|nan|inf) \+/- ([0-9.]+|nan|inf)", output)
    running = [float(v) for v in re.findall(r"\[\d+\]([0-9.]+|nan|inf),", output)]
    return PerplexityResult(ppl=float(final[1]) if final else None, ppl_error=float(final[2]) if final else None,
                            chunks=running, stats=_parse_stats(output), stdout=stdout, stderr=stderr)


def _parse_stats(output: str) -> dict[str, tuple[float, float | None]]:
    """The "Label : value ± unc" lines after "====== Perplexity statistics ======"."""
    start = output.find("====== Perplexity statistics ======")
    stats: dict[str, tuple[float, float | None]] = {}
    if start < 0:
        return stats
    # Labels start with a capital ("Mean KLD", "Same top p") or a percentile ("99.9%   KLD");
    # log lines that start with a timestamp are not labels.
    line_re = re.compile(r"^\s*([A-Z][^:]*?|\d+\.\d%\s+\S+)\s*:\s*(-?[0-9.]+|nan|-?inf)\s*%?"
                         r"(?:\s*±\s*(-?[0-9.]+|nan|inf))?")
    for line in output[start:].splitlines():
        m = line_re.match(line)
        if m:
            label = re.sub(r"\s+", " ", m[1])
            stats[label] = (float(m[2]), float(m[3]) if m[3] is not None else None)
    return stats


def imatrix(model: Path, text_file: Path, *, out: Path, ctx: int = 512, chunks: int | None = None,
            threads: int = 2, output_format: str = "gguf", extra_args: Sequence[str] = ()) -> Path:
    """Run llama-imatrix and return `out` (format "gguf" or the legacy "dat")."""
    out = Path(out)
    cmd: list[str | Path] = [tool("llama-imatrix"), "-m", model, "-f", text_file, "-c", str(ctx), "-t", str(threads),
           "--output-format", output_format]
    if chunks is not None:
        cmd += ["--chunks", str(chunks)]
    # llama-imatrix refuses a GGUF output whose name does not end in .gguf, so the temporary file
    # keeps the final name, inside a temporary folder.
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp_dir:
        tmp = Path(tmp_dir) / out.name
        run([*cmd, "-o", tmp, *extra_args], what=f"llama-imatrix {Path(model).name}")
        os.replace(tmp, out)
    return out


def tokenize(model_gguf: Path, text_file: Path | None = None, *, text: str | None = None,
             add_bos: bool = True, parse_special: bool = False) -> list[int]:
    """Token ids from llama-tokenize (vocab only; the file's bytes exactly, no escape processing).

    `add_bos=True` adds BOS only if the model's metadata asks for it (llama-tokenize's rule).
    Give either `text_file` or `text`.
    """
    if (text_file is None) == (text is None):
        raise ValueError("give exactly one of text_file and text")
    cmd: list[str | Path] = [tool("llama-tokenize"), "-m", model_gguf, "--ids", "--no-escape", "--log-disable"]
    cmd += [] if add_bos else ["--no-bos"]
    if not parse_special:  # llama-tokenize parses special tokens by default; only the opt-out exists
        cmd += ["--no-parse-special"]
    if text is not None:
        proc = run([*cmd, "--stdin"], stdin=text.encode("utf-8"), what="llama-tokenize")
    else:
        proc = run([*cmd, "-f", text_file], what="llama-tokenize")  # type: ignore[list-item]
    lines = [ln for ln in proc.stdout.decode().splitlines() if ln.startswith("[")]
    if len(lines) != 1:
        raise FixtureError(f"llama-tokenize printed {len(lines)} id lists:\n{proc.stdout[-2000:]!r}")
    return [int(t) for t in json.loads(lines[0])]


_HF_TOKENIZE = """
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
text = sys.stdin.buffer.read().decode("utf-8")
ids = tok.encode(text, add_special_tokens=sys.argv[2] == "1")
sys.stdout.write(json.dumps(ids))
"""


def hf_tokenize(model_dir: Path, text: str, *, add_special_tokens: bool = True) -> list[int]:
    """Token ids from the original Hugging Face tokenizer (AutoTokenizer, in the oracle venv)."""
    src = source_dir()
    proc = run([oracle_python(), "-c", _HF_TOKENIZE, Path(model_dir), "1" if add_special_tokens else "0"],
               stdin=text.encode("utf-8"), env=_oracle_env(src), what=f"AutoTokenizer({Path(model_dir).name})")
    return [int(t) for t in json.loads(proc.stdout)]
