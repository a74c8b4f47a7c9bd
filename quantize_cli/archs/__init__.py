"""Model families behind a registry; importing this package registers them all."""

from quantize_cli.archs import llama, qwen2  # noqa: F401  (registration side effect)
from quantize_cli.archs.base import DecoderFamily, RowPermute
from quantize_cli.archs.registry import family_for_config, family_for_gguf

__all__ = ["DecoderFamily", "RowPermute", "family_for_config", "family_for_gguf"]
