"""qconvert: Hugging Face checkpoints -> quantized GGUF files, byte-identical to llama.cpp."""

__version__ = "0.1.0"
