"""The GGUF metadata llama.cpp's converter writes for an HF model, in its order (llamacpp-notes 5.4).

The general.* keys come from gguf-py's own `Metadata` heuristics (model card, config, directory
name), and every key is recorded through a `gguf.GGUFWriter` used only as a typed KV collector,
so names and value types are the gguf package's, not a copy of them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gguf

from quantize_cli.archs.base import DecoderFamily
from quantize_cli.formats.kv import KV
from quantize_cli.formats.tokenizer import tokenizer_metadata

log = logging.getLogger(__name__)


def general_metadata(model_dir: Path, *, total_params: int, shared_params: int,
                     name: str | None) -> gguf.Metadata:
    """gguf-py's Metadata as the bundled converter computes it."""
    meta = gguf.Metadata.load(None, model_dir, None, total_params)
    # The converter bundled with llama.cpp also reads HF's `repetition_penalty` (PyPI gguf 0.19.0 does not).
    gen_path = model_dir / "generation_config.json"
    if gen_path.is_file():
        gen = json.loads(gen_path.read_text(encoding="utf-8"))
        if "penalty_repeat" not in gen and "repetition_penalty" in gen:
            meta.sampling_penalty_repeat = gen["repetition_penalty"]
    if name is not None:
        meta.name = name
    if meta.name is None:
        meta.name = model_dir.name
    if meta.size_label is None and total_params > 0:
        meta.size_label = gguf.size_label(total_params, shared_params, 0, 0)
    return meta


def writer_kvs(w: gguf.GGUFWriter) -> list[KV]:
    return [KV(k, v.value, v.type, v.sub_type) for k, v in w.kv_data[0].items()]


def merge_kvs(first: list[KV], then: list[KV]) -> list[KV]:
    """Append `then` to `first`; a key already present keeps its place and takes the new value
    (GGUFWriter.add_key_value's behaviour)."""
    merged = {kv.key: kv for kv in first}
    for kv in then:
        merged[kv.key] = kv
    return list(merged.values())


def converter_kvs(*, family: DecoderFamily, model_dir: Path, file_type: int,
                  tensor_shapes: list[tuple[int, ...]], name: str | None = None) -> tuple[list[KV], gguf.Metadata]:
    """All KV pairs convert_hf_to_gguf.py writes for this model, and the Metadata used for naming."""
    total = 0
    for shape in tensor_shapes:
        n = 1
        for d in shape:
            n *= d
        total += n
    meta = general_metadata(model_dir, total_params=total, shared_params=total, name=name)
    w = gguf.GGUFWriter(path=None, arch=family.gguf_arch)
    w.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(w)
    family.add_hparams(w, file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab = tokenizer_metadata(model_dir, arch=family.gguf_arch, vocab_size=family.config.get("vocab_size"))
    return merge_kvs(writer_kvs(w), vocab), meta


def requantized_kvs(kvs: list[KV], *, file_type: int) -> list[KV]:
    """llama-quantize's KV edits: split.* dropped, general.quantization_version and
    general.file_type removed and appended last (notes 4.7)."""
    drop = {"general.quantization_version", "general.file_type", "split.no", "split.count", "split.tensors.count"}
    out = [kv for kv in kvs if kv.key not in drop]
    out.append(KV("general.quantization_version", gguf.GGML_QUANT_VERSION, gguf.GGUFValueType.UINT32))
    out.append(KV("general.file_type", int(file_type), gguf.GGUFValueType.UINT32))
    return out
