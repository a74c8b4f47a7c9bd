"""Which ggml type each tensor gets.

Two rule sets, both llama.cpp's:
- `converter_type`: what convert_hf_to_gguf.py writes for --outtype f32/f16/bf16/q8_0
  (llamacpp-notes 5.2);
- `quantize_types`: llama-quantize's mixed-precision recipes (Q4_K_M, Q5_K_M, ...; notes 4.2-4.6),
  applied to tensors in llama-quantize's order, with the user's overrides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType as F

from quantize_cli.errors import OptionError
from quantize_cli.qtypes import FileType, block_size

QUANTIZED = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K}

# Shape fallback for row lengths the block size does not divide (tensor_type_fallback).
FALLBACK = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


def converter_keeps_f32(name: str, shape: tuple[int, ...]) -> bool:
    """1-D tensors, norms and biases: the converter writes them F32 whatever the --outtype."""
    return len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight")


def converter_type(name: str, shape: tuple[int, ...], ftype: FileType) -> T:
    """The type convert_hf_to_gguf.py gives tensor `name` for `--outtype ftype`."""
    if converter_keeps_f32(name, shape):
        return T.F32
    target = ftype.default
    if shape[-1] % block_size(target):
        return T.F16  # gguf-py's QuantError, which the converter answers with F16
    return target


# --- llama-quantize ------------------------------------------------------------------------


def _category(name: str) -> str:
    """tensor_get_category: exact names first, then substrings in this order."""
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for key in ("attn_qkv.weight", "attn_kv_b.weight", "attn_v.weight", "attn_k.weight", "attn_q.weight",
                "attn_output.weight", "ffn_up", "ffn_gate", "ffn_down"):
        if key in name:
            return key.removesuffix(".weight")
    return "other"


ATTN_V_LIKE = {"attn_v", "attn_qkv", "attn_kv_b"}


def allows_quantization(name: str, shape: tuple[int, ...], *, leave_output: bool) -> bool:
    """tensor_allows_quantization for the names a Llama or Qwen2 model has."""
    n_dims = len(shape)
    while n_dims > 1 and shape[len(shape) - n_dims] == 1:  # ggml_n_dims ignores leading numpy 1s
        n_dims -= 1
    if n_dims < 2 or not name.endswith("weight") or "_norm.weight" in name:
        return False
    if leave_output and name == "output.weight":
        return False
    return not any(s in name for s in ("ffn_gate_inp.weight", "altup", "laurel", "per_layer_model_proj",
                                        "ssm_conv1d", "shortconv.conv.weight"))


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


@dataclass
class Overrides:
    """llama-quantize's options that change per-tensor types."""

    output_tensor_type: T | None = None
    token_embedding_type: T | None = None
    tensor_types: list[tuple[str, T]] = field(default_factory=list)  # (regex, type), first match wins
    pure: bool = False
    leave_output_tensor: bool = False


def _recipe(cat: str, default: T, ftype: F, nx: int, *, tied: bool, i_wv: int, n_wv: int,
            i_down: int, n_down: int, is_70b: bool) -> T:
    """llama_tensor_get_type_impl for the K-quant and Q8_0 file types."""
    if cat == "output" or (tied and cat == "token_embd"):
        if nx % block_size(default):
            return T.Q8_0
        return T.Q6_K if default != T.Q8_0 else default
    if cat in ATTN_V_LIKE:
        new = default
        if ftype in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and use_more_bits(i_wv, n_wv):
            new = T.Q6_K
        elif ftype == F.MOSTLY_Q4_K_S and i_wv < 4:
            new = T.Q5_K
        # 70B Llamas share attn_v across 8 heads: it is small, so llama.cpp spends more bits on it.
        return T.Q5_K if is_70b and new == T.Q4_K else new
    if cat == "ffn_down":
        if ftype in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and use_more_bits(i_down, n_down):
            return T.Q6_K
        if ftype == F.MOSTLY_Q4_K_S and i_down < n_down // 8:
            return T.Q5_K
    return default


def quantize_types(tensors: list[tuple[str, tuple[int, ...], T]], ftype: FileType, n_layer: int,
                   overrides: Overrides | None = None, *, is_70b: bool = False) -> list[T]:
    """llama_tensor_get_type for every tensor, in the given (llama-quantize) order.

    `tensors` holds (name, numpy shape, current type). Raises OptionError for a --tensor-type
    pattern that matches no tensor."""
    ov = overrides or Overrides()
    patterns = [(re.compile(p), t) for p, t in ov.tensor_types]
    used = [False] * len(patterns)
    cats = [_category(name) for name, _, _ in tensors]
    n_wv = sum(c in ATTN_V_LIKE for c in cats)
    tied = "output" not in cats
    quantized_default = ftype.default in QUANTIZED
    i_wv = i_down = 0
    out: list[T] = []
    for (name, shape, current), cat in zip(tensors, cats):
        if not allows_quantization(name, shape, leave_output=ov.leave_output_tensor):
            out.append(current)
            continue
        if ov.token_embedding_type is not None and cat == "token_embd":
            out.append(ov.token_embedding_type)
            continue
        if ov.output_tensor_type is not None and cat == "output":
            out.append(ov.output_tensor_type)
            continue
        new = ftype.default
        if quantized_default:
            manual = False
            for k, (pattern, qtype) in enumerate(patterns):
                if pattern.search(name):
                    new, manual, used[k] = qtype, True, True
                    break
            if not manual and not ov.pure:
                new = _recipe(cat, new, ftype.ftype, shape[-1], tied=tied, i_wv=i_wv, n_wv=n_wv,
                              i_down=i_down, n_down=n_layer, is_70b=is_70b)
            if cat in ATTN_V_LIKE and not manual and not ov.pure:
                i_wv += 1
            if cat == "ffn_down" and not manual and not ov.pure:
                i_down += 1
            if shape[-1] % block_size(new):
                new = FALLBACK.get(new, new)
                if shape[-1] % block_size(new):
                    new = T.F16
        out.append(new)
    for (pattern, _), was_used in zip(ov.tensor_types, used):
        if not was_used:
            raise OptionError(f"--tensor-type pattern {pattern!r} matches no tensor of this model")
    return out


def llama_tensor_order(names: list[str]) -> list[int]:
    """Indices of `names` in llama-quantize's order (weight_name_comparer, notes 4.7):
    by block number (-1 for non-block tensors) then by plain string order."""
    def key(i: int) -> tuple[int, str]:
        m = re.match(r"blk\.(\d+)\.", names[i])
        return (int(m.group(1)) if m else -1, names[i])
    return sorted(range(len(names)), key=key)
