"""Llama and Mistral (LlamaForCausalLM, MistralForCausalLM): Q/K rows permuted for ggml's RoPE,
optional tied embeddings, llama3 rope scaling as a generated `rope_freqs.weight`."""

from __future__ import annotations

import math
from typing import Any

import gguf
import numpy as np

from quantize_cli.archs.base import DecoderFamily, RowPermute, n_heads
from quantize_cli.archs.registry import register
from quantize_cli.formats.tokenizer_export import config_token_ids


def qk_permute_order(n_rows: int, n_head: int) -> np.ndarray:
    """Row order that turns HF's rotate-half layout into ggml's interleaved pairs:
    out[h*hd + 2*i + p] = in[h*hd + p*hd/2 + i] (llamacpp-notes 5.3)."""
    hd = n_rows // n_head
    h, i, p = np.meshgrid(np.arange(n_head), np.arange(hd // 2), np.arange(2), indexing="ij")
    return (h * hd + p * (hd // 2) + i).reshape(-1)


@register
class LlamaFamily(DecoderFamily):
    gguf_arch = "llama"
    hf_architectures = ("LlamaForCausalLM", "LLaMAForCausalLM", "MistralForCausalLM")

    def __init__(self, config: dict[str, Any], *, config_path: str = "config.json") -> None:
        # The converter reads config.json through transformers' AutoConfig, whose LlamaConfig
        # (transformers 5.x) fills in head_dim when the file has none; llama.cpp then writes
        # attention.key_length / value_length. Do the same so the metadata matches.
        config = dict(config)
        if config.get("head_dim") is None and "hidden_size" in config and "num_attention_heads" in config:
            config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
        super().__init__(config, config_path=config_path)

    def row_permute(self, gguf_name: str, shape: tuple[int, ...]) -> RowPermute | None:
        n_head, n_kv = n_heads(self.config, self.where)
        if gguf_name.endswith(("attn_q.weight", "attn_q.bias")):
            heads = n_head
        elif gguf_name.endswith(("attn_k.weight", "attn_k.bias")):
            heads = n_kv
        else:
            return None
        return RowPermute(qk_permute_order(shape[0], heads), shape[0] // heads)

    def head_dim(self) -> int:
        c = self.config
        return c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]

    def extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        rope = self.rope_parameters()
        if str(rope.get("rope_type", "")).lower() != "llama3":
            return []
        # Computed as the converter does: float32 frequencies, then Python floats per factor.
        base = rope.get("rope_theta", 10000.0)
        dim = self.head_dim()
        freqs = 1.0 / (np.float32(base) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
        factor = rope.get("factor", 8.0)
        low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
        old_ctx = rope.get("original_max_position_embeddings", 8192)
        factors = []
        for freq in freqs.astype(np.float32):
            wavelen = 2 * math.pi / float(freq)
            if wavelen < old_ctx / high:
                factors.append(1)
            elif wavelen > old_ctx / low:
                factors.append(factor)
            else:
                smooth = (old_ctx / wavelen - low) / (high - low)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        return [("rope_freqs.weight", np.array(factors, dtype=np.float32))]

    def add_hparams(self, w: gguf.GGUFWriter, file_type: int) -> None:
        super().add_hparams(w, file_type)
        w.add_vocab_size(self.config["vocab_size"])
        w.add_rope_dimension_count(self.head_dim())

    @classmethod
    def hf_config_from_gguf(cls, meta: dict[str, Any], *, tied: bool, dtype: str) -> dict[str, Any]:
        return hf_decoder_config(meta, arch="llama", hf_arch="LlamaForCausalLM", model_type="llama",
                                 tied=tied, dtype=dtype)


def hf_decoder_config(meta: dict[str, Any], *, arch: str, hf_arch: str, model_type: str,
                      tied: bool, dtype: str) -> dict[str, Any]:
    """config.json for a GGUF's hparams (used by `qconvert unpack`)."""
    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        # GGUF floats are float32: write their shortest decimal form (1e-05, not 9.99999974e-06).
        return float(str(np.float32(value))) if isinstance(value, float) else value

    n_embd, n_head = get("embedding_length"), get("attention.head_count")
    config: dict[str, Any] = {
        "architectures": [hf_arch],
        "model_type": model_type,
        "hidden_size": n_embd,
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": get("attention.head_count_kv", n_head),
        "max_position_embeddings": get("context_length"),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
        "rope_theta": get("rope.freq_base", 10000.0),
        "vocab_size": len(meta["tokenizer.ggml.tokens"]) if "tokenizer.ggml.tokens" in meta else get("vocab_size"),
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "torch_dtype": {"F16": "float16", "BF16": "bfloat16"}[dtype],
    }
    if (head_dim := get("attention.key_length")) is not None and head_dim != n_embd // n_head:
        config["head_dim"] = head_dim
    config.update(config_token_ids(meta))  # the converter falls back to these for special tokens
    if get("rope.scaling.type") == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": get("rope.scaling.factor")}
    return config
