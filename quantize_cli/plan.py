"""Plan before touching data: from headers, config.json and the tokenizer alone, the full list of
output tensors (name, shape, type, row source) and every KV pair of the output file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf
from gguf import GGMLQuantizationType as T

from quantize_cli.archs import family_for_config, family_for_gguf
from quantize_cli.errors import InputError, OptionError, UnsupportedError
from quantize_cli.formats.gguf_reader import gguf_kvs, read_gguf
from quantize_cli.formats.gguf_writer import TensorInfo
from quantize_cli.formats.imatrix import ImportanceMatrix
from quantize_cli.formats.kv import KV
from quantize_cli.formats.safetensors import open_checkpoint
from quantize_cli.model_metadata import converter_kvs, requantized_kvs
from quantize_cli.qtypes import FLOAT_TYPES, FileType
from quantize_cli.recipes import (
    QUANTIZED,
    Overrides,
    converter_keeps_f32,
    converter_type,
    llama_tensor_order,
    quantize_types,
)
from quantize_cli.sources import ArrayRows, GGUFRows, RowSource, SafetensorsRows


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]  # numpy order
    qtype: T
    source: RowSource
    imatrix: object = None  # float32 vector of length shape[-1], or None

    @property
    def info(self) -> TensorInfo:
        return TensorInfo(self.name, self.shape, self.qtype)

    @property
    def nbytes(self) -> int:
        return self.info.nbytes


@dataclass(frozen=True)
class Plan:
    source: Path
    ftype: FileType
    kvs: list[KV]
    tensors: list[PlannedTensor]
    default_name: str  # file name without directory, e.g. SmolLM2-135M-Instruct-Q8_0.gguf

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def n_params(self) -> int:
        total = 0
        for t in self.tensors:
            n = 1
            for d in t.shape:
                n *= d
            total += n
        return total


def _load_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise InputError(f"{model_dir}: config.json is missing", hint="an HF checkpoint folder needs its config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot parse: {e}") from e
    if not isinstance(config, dict):
        raise InputError(f"{path}: not a JSON object")
    if "text_config" in config:
        config = {**config, **config["text_config"]}
    return config


def plan_from_hf(model_dir: Path, ftype: FileType, *, overrides: Overrides | None = None,
                 imatrix: ImportanceMatrix | None = None, name: str | None = None) -> Plan:
    """Plan the conversion of an HF safetensors folder.

    f32/f16/bf16/q8_0 follow convert_hf_to_gguf.py; the k-quant types are what llama-quantize
    gives on the converter's lossless output (BF16 for BF16 sources, F16 for F16, F32 for F32)."""
    config = _load_config(model_dir)
    family = family_for_config(config, where=str(model_dir / "config.json"))
    checkpoint = open_checkpoint(model_dir)

    entries: list[tuple[str, RowSource]] = [(n, ArrayRows(a)) for n, a in family.extra_tensors()]
    for hf_name, tensor in checkpoint.tensors.items():
        gguf_name = family.gguf_name(hf_name)
        if gguf_name is None:
            continue
        entries.append((gguf_name, SafetensorsRows(tensor, family.row_permute(gguf_name, tensor.shape))))

    # Q8_0 is what the converter writes, unless llama-quantize's options are asked for: then, like
    # the k-quants, it is llama-quantize's output on the converter's lossless file.
    customised = imatrix is not None or (overrides is not None and overrides != Overrides())
    one_step_quant = ftype.default in QUANTIZED and (ftype.default != T.Q8_0 or customised)
    if customised and not one_step_quant:
        raise OptionError(f"--imatrix and tensor-type overrides need a quantized --type, not {ftype.name}",
                          hint="f32/f16/bf16 conversions keep every tensor's values as they are")
    shapes = [src.shape for _, src in entries]

    if not one_step_quant:
        kvs, meta = converter_kvs(family=family, model_dir=model_dir, file_type=int(ftype.ftype),
                                  tensor_shapes=shapes, name=name)
        tensors = [PlannedTensor(n, src.shape, converter_type(n, src.shape, ftype), src) for n, src in entries]
    else:
        # The lossless intermediate the converter would write (outtype auto), then llama-quantize.
        lossless = _lossless_file_type(entries)
        kvs, meta = converter_kvs(family=family, model_dir=model_dir, file_type=lossless,
                                  tensor_shapes=shapes, name=name)
        kvs = requantized_kvs(kvs, file_type=int(ftype.ftype)) + (imatrix.kvs() if imatrix else [])
        current = [(n, src.shape, _converter_stored_type(n, src)) for n, src in entries]
        order = llama_tensor_order([n for n, _ in entries])
        current = [current[i] for i in order]
        types = quantize_types(current, ftype, family.n_layer, overrides)
        tensors = [_planned(entries[i][0], entries[i][1], t, cur[2], imatrix)
                   for i, t, cur in zip(order, types, current)]
    output_type = ftype.label
    default = gguf.naming_convention(meta.name, meta.basename, meta.finetune, meta.version, meta.size_label, output_type)
    return Plan(model_dir, ftype, kvs, tensors, f"{default}.gguf")


def _planned(name: str, src: RowSource, qtype: T, current: T, imatrix: ImportanceMatrix | None) -> PlannedTensor:
    """A tensor with its importance vector, which llama-quantize passes only when the type changes."""
    weights = None
    if imatrix is not None and qtype != current and qtype in QUANTIZED:
        weights = imatrix.for_tensor(name, src.shape[-1])
    return PlannedTensor(name, src.shape, qtype, src, weights)


def _lossless_file_type(entries: list[tuple[str, RowSource]]) -> int:
    """convert_hf_to_gguf.py --outtype auto: the first tensor with 2+ dims decides (bf16, else f16)."""
    for _, src in entries:
        if len(src.shape) >= 2:
            return int(gguf.LlamaFileType.MOSTLY_BF16 if src.stored_type == T.BF16 else gguf.LlamaFileType.MOSTLY_F16)
    return int(gguf.LlamaFileType.MOSTLY_F16)


def _converter_stored_type(name: str, src: RowSource) -> T:
    """The type a tensor has in the converter's lossless output."""
    return T.F32 if converter_keeps_f32(name, src.shape) else src.stored_type


# --- GGUF input ------------------------------------------------------------------------------

def plan_from_gguf(path: Path, ftype: FileType, *, overrides: Overrides | None = None,
                   imatrix: ImportanceMatrix | None = None, allow_requantize: bool = False) -> Plan:
    """Plan re-typing a GGUF file, as llama-quantize does."""
    reader = read_gguf(path)
    kvs = gguf_kvs(reader)
    meta = {kv.key: kv.value for kv in kvs}
    arch = meta.get("general.architecture")
    if arch is None:
        raise InputError(f"{path}: GGUF has no general.architecture key")
    family_for_gguf(str(arch), where=str(path))
    n_layer = meta.get(f"{arch}.block_count")
    if n_layer is None:
        raise InputError(f"{path}: GGUF has no {arch}.block_count key")
    kvs = requantized_kvs(kvs, file_type=int(ftype.ftype)) + (imatrix.kvs() if imatrix else [])

    entries = []
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        entries.append((t.name, GGUFRows(path, t.data_offset, shape, T(t.tensor_type))))
    order = llama_tensor_order([n for n, _ in entries])
    current = [(entries[i][0], entries[i][1].shape, entries[i][1].stored_type) for i in order]
    types = quantize_types(current, ftype, int(n_layer), overrides,
                           is_70b=(arch == "llama" and int(n_layer) == 80))
    tensors = []
    for i, t in zip(order, types):
        name, src = entries[i]
        if t != src.stored_type and src.stored_type not in FLOAT_TYPES and not allow_requantize:
            raise UnsupportedError(
                f"{path}: tensor {name!r} is already quantized ({src.stored_type.name}); "
                f"requantizing to {t.name} loses quality",
                hint="pass --allow-requantize to do it anyway, or start from an F16/BF16/F32 file",
            )
        tensors.append(_planned(name, src, t, src.stored_type, imatrix))
    base = path.name.removesuffix(".gguf")
    for label in ("F32", "F16", "BF16", "Q8_0", "Q4_K_M", "Q5_K_M", "Q4_K_S", "Q5_K_S", "Q6_K", "Q4_1", "Q4_0"):
        if base.upper().endswith("-" + label):
            base = base[: -len(label) - 1]
            break
    return Plan(path, ftype, kvs, tensors, f"{base}-{ftype.label}.gguf")
