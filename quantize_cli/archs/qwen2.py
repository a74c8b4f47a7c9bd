"""Qwen2 (Qwen2ForCausalLM): q/k/v biases, NEOX RoPE so no row permute, no vocab_size key."""

from __future__ import annotations

from typing import Any

from quantize_cli.archs.base import DecoderFamily
from quantize_cli.archs.llama import hf_decoder_config
from quantize_cli.archs.registry import register
from quantize_cli.errors import UnsupportedError


@register
class Qwen2Family(DecoderFamily):
    gguf_arch = "qwen2"
    hf_architectures = ("Qwen2ForCausalLM",)

    def add_hparams(self, w, file_type: int) -> None:
        super().add_hparams(w, file_type)
        # The converter's _try_set_pooling_type: only sentence-transformers checkpoints have modules.json.
        if self.config.get("classifier_pooling") is not None:
            raise UnsupportedError(f"{self.where}: classifier pooling is not supported")

    @classmethod
    def hf_config_from_gguf(cls, meta: dict[str, Any], *, tied: bool, dtype: str) -> dict[str, Any]:
        config = hf_decoder_config(meta, arch="qwen2", hf_arch="Qwen2ForCausalLM", model_type="qwen2",
                                   tied=tied, dtype=dtype)
        config["use_sliding_window"] = False
        return config
