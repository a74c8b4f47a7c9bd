"""`qconvert unpack`: a GGUF file -> a Hugging Face folder (safetensors, config, tokenizer).

Tensors are dequantized with gguf-py (bit-exact with ggml for every type it reads), the Q/K row
permute of Llama is undone, and values are stored as F16 or BF16. The folder is assembled under a
temporary name next to the destination and renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

from quantize_cli.archs import family_for_gguf
from quantize_cli.errors import InputError, OptionError, OutputError
from quantize_cli.formats.gguf_reader import gguf_metadata, read_gguf
from quantize_cli.formats.safetensors import write_safetensors
from quantize_cli.formats.tokenizer_export import write_hf_tokenizer

GENERATED_TENSORS = {"rope_freqs.weight"}  # the converter recomputes these from config.json
SAMPLING_KEYS = {  # general.sampling.* -> generation_config.json
    "general.sampling.top_k": "top_k", "general.sampling.top_p": "top_p",
    "general.sampling.temp": "temperature", "general.sampling.penalty_repeat": "repetition_penalty",
    "general.sampling.min_p": "min_p",
}


@dataclass(frozen=True)
class UnpackResult:
    arch: str
    n_tensors: int
    files: list[Path]


def _to_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F16":
        return values.astype(np.float16)
    return gguf.quants.quantize(values.astype(np.float32), T.BF16).view(np.uint16)


def unpack(gguf_path: Path, outdir: Path, *, dtype: str = "f16", force: bool = False) -> UnpackResult:
    dtype = dtype.upper()
    if dtype not in ("F16", "BF16"):
        raise OptionError(f"--dtype {dtype.lower()!r}: choose f16 or bf16")
    if not gguf_path.is_file():
        raise InputError(f"{gguf_path}: no such file")
    reader = read_gguf(gguf_path)
    meta = gguf_metadata(reader)
    arch = meta.get("general.architecture")
    if arch is None:
        raise InputError(f"{gguf_path}: GGUF has no general.architecture key")
    family_cls = family_for_gguf(str(arch), where=str(gguf_path))
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    config = family_cls.hf_config_from_gguf(meta, tied=tied, dtype=dtype)
    family = family_cls(config, config_path=str(gguf_path))

    if outdir.exists() and any(outdir.iterdir()) and not force:
        raise OutputError(f"{outdir}: folder exists and is not empty", hint="pass --force or choose another --outdir")
    outdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", suffix=".partial", dir=outdir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700 folders
    try:
        plan, sources = [], []
        for t in sorted(reader.tensors, key=lambda t: family.hf_name(t.name) if t.name not in GENERATED_TENSORS else ""):
            if t.name in GENERATED_TENSORS:
                continue
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            plan.append((family.hf_name(t.name), dtype, shape))
            sources.append((t, shape))

        def tensor_bytes():
            for t, shape in sources:
                values = gguf.quants.dequantize(t.data, T(t.tensor_type)).reshape(shape)
                unpermute = family.row_unpermute(t.name, shape)
                if unpermute is not None:
                    values = values[unpermute.order]
                yield _to_dtype(values, dtype)

        files = [tmp / "model.safetensors"]
        write_safetensors(files[0], plan, tensor_bytes(), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        files.append(tmp / "config.json")
        generation = {k2: meta[k] for k, k2 in SAMPLING_KEYS.items() if k in meta}
        for key, hf_key in (("tokenizer.ggml.bos_token_id", "bos_token_id"), ("tokenizer.ggml.eos_token_id", "eos_token_id")):
            if key in meta:
                generation[hf_key] = meta[key]
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
        files.append(tmp / "generation_config.json")
        files += write_hf_tokenizer(meta, tmp)
        if outdir.exists():
            shutil.rmtree(outdir)
        tmp.rename(outdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return UnpackResult(str(arch), len(plan), [outdir / p.relative_to(tmp) for p in files])
