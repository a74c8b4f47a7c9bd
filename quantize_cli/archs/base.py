"""What every decoder family shares: the HF <-> GGUF tensor-name table, the hparam keys the
converter writes, and the hooks a family overrides (row permutes, extra tensors)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

import gguf
import numpy as np

from quantize_cli.errors import InputError, UnsupportedError

# GGUF name stem <-> HF name stem for the Llama-style layout that Llama, Mistral and Qwen2 share.
# `{bid}` is the block index. The .weight / .bias suffix carries over unchanged.
DECODER_TENSOR_NAMES: dict[str, str] = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "blk.{bid}.attn_norm": "model.layers.{bid}.input_layernorm",
    "blk.{bid}.attn_q": "model.layers.{bid}.self_attn.q_proj",
    "blk.{bid}.attn_k": "model.layers.{bid}.self_attn.k_proj",
    "blk.{bid}.attn_v": "model.layers.{bid}.self_attn.v_proj",
    "blk.{bid}.attn_output": "model.layers.{bid}.self_attn.o_proj",
    "blk.{bid}.ffn_norm": "model.layers.{bid}.post_attention_layernorm",
    "blk.{bid}.ffn_gate": "model.layers.{bid}.mlp.gate_proj",
    "blk.{bid}.ffn_up": "model.layers.{bid}.mlp.up_proj",
    "blk.{bid}.ffn_down": "model.layers.{bid}.mlp.down_proj",
}

# Names the converter drops without a word.
IGNORED_HF_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")


def _compile(table: dict[str, str]) -> list[tuple[re.Pattern[str], str]]:
    out = []
    for src, dst in table.items():
        pattern = re.escape(src).replace(re.escape("{bid}"), r"(?P<bid>\d+)")
        out.append((re.compile(f"^{pattern}(?P<suffix>\\.weight|\\.bias)$"), dst))
    return out


_TO_GGUF = _compile({hf: gg for gg, hf in DECODER_TENSOR_NAMES.items()})
_TO_HF = _compile(DECODER_TENSOR_NAMES)


def _rename(name: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in rules:
        if m := pattern.match(name):
            bid = m.groupdict().get("bid")
            return template.format(bid=bid) + m["suffix"]
    return None


def config_value(config: dict[str, Any], keys: list[str], *, where: str, required: bool = True) -> Any:
    """The first of `keys` present in config.json (as the converter's find_hparam)."""
    for k in keys:
        if k in config:
            return config[k]
    if required:
        raise InputError(f"{where}: config.json has none of the keys {keys}")
    return None


@dataclass(frozen=True)
class RowPermute:
    """Output row r of a tensor is input row `order[r]`; it only moves rows within groups of
    `group` consecutive rows, so slabs aligned to `group` can be permuted on their own."""

    order: np.ndarray
    group: int


class DecoderFamily:
    """A Llama-style decoder. Subclasses set `gguf_arch` and `hf_architectures` and override hooks."""

    gguf_arch: ClassVar[str]
    hf_architectures: ClassVar[tuple[str, ...]]

    def __init__(self, config: dict[str, Any], *, config_path: str = "config.json") -> None:
        self.config = config
        self.where = config_path
        self.n_layer = config_value(config, ["n_layers", "num_hidden_layers", "n_layer", "num_layers"], where=self.where)

    # --- names -----------------------------------------------------------------------------
    def gguf_name(self, hf_name: str) -> str | None:
        """GGUF name of an HF tensor, or None for tensors the converter drops."""
        if hf_name.endswith(IGNORED_HF_SUFFIXES):
            return None
        name = _rename(hf_name, _TO_GGUF)
        if name is None:
            raise UnsupportedError(f"{self.where}: cannot map tensor {hf_name!r} of a {self.gguf_arch} model")
        return name

    @staticmethod
    def hf_name(gguf_name: str) -> str:
        name = _rename(gguf_name, _TO_HF)
        if name is None:
            raise UnsupportedError(f"no Hugging Face name for GGUF tensor {gguf_name!r}")
        return name

    # --- hooks -----------------------------------------------------------------------------
    def row_permute(self, gguf_name: str, shape: tuple[int, ...]) -> RowPermute | None:
        """Rows to reorder on the way HF -> GGUF (None: keep the order)."""
        return None

    def row_unpermute(self, gguf_name: str, shape: tuple[int, ...]) -> RowPermute | None:
        """The inverse of row_permute, for GGUF -> HF."""
        p = self.row_permute(gguf_name, shape)
        if p is None:
            return None
        return RowPermute(np.argsort(p.order), p.group)

    def extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        """Tensors the converter generates (name, float32 array); they come first in the file."""
        return []

    # --- metadata --------------------------------------------------------------------------
    def rope_parameters(self) -> dict[str, Any]:
        c = self.config
        rope = dict(c.get("rope_parameters", c.get("rope_scaling")) or {})
        if "full_attention" not in rope and "sliding_attention" not in rope:
            theta = config_value(
                c, ["global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta", "rotary_emb_base"],
                where=self.where, required=False,
            )
            if "rope_theta" not in rope and theta is not None:
                rope["rope_theta"] = theta
            if "rope_type" not in rope and (t := rope.get("type")) is not None:
                rope["rope_type"] = t
            omp = c.get("original_max_position_embeddings")
            if "original_max_position_embeddings" not in rope and omp is not None:
                rope["original_max_position_embeddings"] = omp
        return rope.get("full_attention", rope)

    def add_hparams(self, w: gguf.GGUFWriter, file_type: int) -> None:
        """The keys of the converter's TextModel.set_gguf_parameters, in its order."""
        c, where = self.config, self.where
        w.add_block_count(self.n_layer)
        keys = [
            (w.add_context_length, ["max_position_embeddings", "n_ctx", "n_positions", "max_length",
                                    "max_sequence_length", "model_max_length"]),
            (w.add_embedding_length, ["hidden_size", "n_embd", "dim"]),
            (w.add_feed_forward_length, ["prefix_dense_intermediate_size", "dense_intermediate_size",
                                         "intermediate_size", "n_inner", "hidden_dim"]),
            (w.add_head_count, ["num_attention_heads", "n_head", "n_heads"]),
            (w.add_head_count_kv, ["num_key_value_heads", "n_kv_heads"]),
        ]
        for add, names in keys:
            if (v := config_value(c, names, where=where, required=False)) is not None:
                add(v)
        if c.get("is_causal") is False:
            w.add_causal_attention(False)
        rope = self.rope_parameters()
        rope_type, factor = rope.get("rope_type"), rope.get("factor")
        if rope_type == "linear" and factor is not None:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(factor)
        elif rope_type not in (None, "llama3", "default"):
            raise UnsupportedError(f"{where}: rope scaling type {rope_type!r} is not supported")
        if (theta := rope.get("rope_theta")) is not None:
            w.add_rope_freq_base(theta)
        if (eps := config_value(c, ["rms_norm_eps", "norm_eps"], where=where, required=False)) is not None:
            w.add_layer_norm_rms_eps(eps)
        if config_value(c, ["num_local_experts", "num_experts", "n_routed_experts"], where=where, required=False):
            raise UnsupportedError(f"{where}: mixture-of-experts models are not supported yet")
        if (head_dim := c.get("head_dim")) is not None:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        w.add_file_type(file_type)

    # --- unpack: GGUF -> config.json ----------------------------------------------------------
    @classmethod
    def hf_config_from_gguf(cls, meta: dict[str, Any], *, tied: bool, dtype: str) -> dict[str, Any]:
        raise NotImplementedError


def n_heads(config: dict[str, Any], where: str) -> tuple[int, int]:
    n_head = config_value(config, ["n_heads", "num_attention_heads"], where=where)
    n_kv = config_value(config, ["n_kv_heads", "num_key_value_heads"], where=where, required=False)
    return n_head, (n_kv if n_kv is not None else n_head)
