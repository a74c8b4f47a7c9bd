"""The fixtures hold real data, and the llama.cpp oracle runs: checked on the real files."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import sentencepiece as spm

from support import fixtures


def _field(reader: gguf.GGUFReader, key: str):  # type: ignore[no-untyped-def]
    return reader.fields[key].contents()


def test_austen_novels_decode() -> None:
    texts = fixtures.austen_texts()
    assert sorted(texts) == sorted(fixtures.AUSTEN_BOOKS)
    for book, text in texts.items():
        assert 400_000 < len(text) < 1_000_000, book
        assert text.endswith("\n") and "\r" not in text and "\n\n" in text, book
    pride = texts["pride"]
    assert pride.startswith("PRIDE AND PREJUDICE\n\nBy Jane Austen\n")
    assert "It is a truth universally acknowledged, that a single man in possession\n" in pride
    assert pride.count("\n") == 13030  # one line per element of janeaustenr's prideprejudice
    assert texts["emma"].startswith("EMMA\n")
    assert "£" in texts["mansfield"]  # non-ASCII survives the R decoding


def test_smollm2_gguf_is_smollm2(smollm2_gguf: Path) -> None:
    assert smollm2_gguf.read_bytes()[:4] == b"GGUF"
    reader = gguf.GGUFReader(smollm2_gguf)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.block_count") == 30
    assert _field(reader, "llama.embedding_length") == 576
    assert _field(reader, "tokenizer.ggml.pre") == "smollm"
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_1


def test_qwen_coder_gguf_is_qwen2(qwen_coder_gguf: Path) -> None:
    reader = gguf.GGUFReader(qwen_coder_gguf)
    assert _field(reader, "general.architecture") == "qwen2"
    assert _field(reader, "qwen2.block_count") == 28
    assert _field(reader, "qwen2.embedding_length") == 1536
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert len(reader.tensors) == 339
    end = max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    assert end == qwen_coder_gguf.stat().st_size  # all 22 parts, nothing missing or extra


def test_austen_tokenizer_is_llama_style(austen_tokenizer: Path, austen_pride: Path) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(austen_tokenizer))
    assert sp.vocab_size() == 32000
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert [sp.id_to_piece(i) for i in (3, 13, 258)] == ["<0x00>", "<0x0A>", "<0xFF>"]
    text = austen_pride.read_text(encoding="utf-8")[:20_000]
    ids = sp.encode(text)
    assert sp.decode(ids) == text
    assert len(text) / len(ids) > 3  # a trained vocabulary, not bytes
    assert sp.encode("in 1813", out_type=str) == ["▁in", "▁", "1", "8", "1", "3"]  # split digits
    assert sp.encode("日", out_type=str) == ["▁", "<0xE6>", "<0x97>", "<0xA5>"]  # byte fallback


def test_austen_tokenizer_is_deterministic(austen_tokenizer: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(fixtures.austen_text("pride").parent, tmp_path / "austen")
    monkeypatch.setenv("QCONVERT_CACHE", str(tmp_path))
    retrained = fixtures.sentencepiece_austen_model()
    assert retrained.parent.parent.parent == tmp_path
    assert retrained.read_bytes() == austen_tokenizer.read_bytes()


def _read_safetensors_header(path: Path) -> tuple[int, dict]:  # type: ignore[type-arg]
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        assert n % 8 == 0 and n < 1 << 24
        return 8 + n, json.loads(f.read(n))


def test_synthetic_model_headers(synthetic_1layer: Path) -> None:
    config = json.loads((synthetic_1layer / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"], config["intermediate_size"], config["vocab_size"]) == \
        (2048, 1, 32, 4, 5632, 32000)
    assert config["tie_word_embeddings"] is False
    tok_config = json.loads((synthetic_1layer / "tokenizer_config.json").read_text())
    assert tok_config["add_bos_token"] is True and tok_config["tokenizer_class"] == "LlamaTokenizer"
    assert (synthetic_1layer / "tokenizer.model").read_bytes() == fixtures.sentencepiece_austen_model().read_bytes()

    index = json.loads((synthetic_1layer / "model.safetensors.index.json").read_text())
    seen: dict[str, list[int]] = {}
    total = 0
    for shard in sorted(set(index["weight_map"].values())):
        path = synthetic_1layer / shard
        data_start, header = _read_safetensors_header(path)
        assert header.pop("__metadata__") == {"format": "pt"}
        offset = 0
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
            assert info["dtype"] == "BF16"
            assert info["data_offsets"] == [offset, offset + 2 * math.prod(info["shape"])], name
            assert index["weight_map"][name] == shard
            offset = info["data_offsets"][1]
            seen[name] = info["shape"]
        assert path.stat().st_size == data_start + offset  # contiguous, nothing after the last tensor
        total += offset
    assert index["metadata"]["total_size"] == total
    assert seen.keys() == index["weight_map"].keys()
    assert seen["model.embed_tokens.weight"] == seen["lm_head.weight"] == [32000, 2048]
    assert seen["model.layers.0.self_attn.k_proj.weight"] == [256, 2048]
    assert seen["model.layers.0.mlp.down_proj.weight"] == [2048, 5632]
    assert seen["model.norm.weight"] == [2048]
    assert len(seen) == 2 + 9 + 1


def _bf16_tensor(folder: Path, name: str) -> np.ndarray:
    shard = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"][name]
    data_start, header = _read_safetensors_header(folder / shard)
    begin, end = header[name]["data_offsets"]
    raw = np.fromfile(folder / shard, dtype="<u2", count=(end - begin) // 2, offset=data_start + begin)
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(header[name]["shape"])


def test_synthetic_weights_are_student_t_and_deterministic(synthetic_1layer: Path, tmp_path: Path) -> None:
    w = _bf16_tensor(synthetic_1layer, "model.layers.0.mlp.gate_proj.weight").astype(np.float64)
    # 0.02 * t(5): mean 0, std 0.02 * sqrt(5/3), excess kurtosis 6 (heavy tails)
    assert abs(w.mean()) < 1e-4
    assert w.std() == pytest.approx(0.02 * math.sqrt(5 / 3), rel=0.01)
    assert ((w - w.mean()) ** 4).mean() / w.var() ** 2 > 5
    norm = _bf16_tensor(synthetic_1layer, "model.layers.0.input_layernorm.weight")
    assert norm.mean() == pytest.approx(1.0, abs=0.01)
    assert not np.array_equal(_bf16_tensor(synthetic_1layer, "model.layers.0.mlp.up_proj.weight"), w)

    script = Path(__file__).resolve().parents[1] / "bench" / "synthetic_model.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "again"), "--layers", "1",
                    "--tokenizer", str(synthetic_1layer / "tokenizer.model")], check=True, capture_output=True)
    for path in sorted(synthetic_1layer.glob("*")):
        if not path.name.startswith("."):
            assert fixtures.sha256_file(path) == fixtures.sha256_file(tmp_path / "again" / path.name), path.name


@pytest.mark.oracle
def test_llamacpp_tokenizes_synthetic_model_like_hf(llamacpp, synthetic_1layer: Path,  # type: ignore[no-untyped-def]
                                                     austen_pride: Path) -> None:
    converted = llamacpp.convert_hf(synthetic_1layer, outtype="f16")
    reader = gguf.GGUFReader(converted)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "tokenizer.ggml.model") == "llama"
    text = austen_pride.read_text(encoding="utf-8")[:5000] + " 1234 £ 日本\n"
    ids = llamacpp.tokenize(converted, text=text)
    assert ids[0] == 1 and len(ids) > 1000
    assert ids == llamacpp.hf_tokenize(synthetic_1layer, text)
    assert llamacpp.tokenize(converted, text=text, add_bos=False) == ids[1:]


@pytest.mark.oracle
def test_llamacpp_quantize_perplexity_imatrix_run(llamacpp, synthetic_1layer: Path, austen_pride: Path,  # type: ignore[no-untyped-def]
                                                  austen_emma: Path, tmp_path: Path) -> None:
    f16 = llamacpp.convert_hf(synthetic_1layer, outtype="f16")
    q8 = llamacpp.quantize(f16, tmp_path / "q8_0.gguf", "Q8_0")
    assert _field(gguf.GGUFReader(q8), "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0

    result = llamacpp.perplexity(q8, austen_pride, ctx=128, chunks=2)
    assert result.ppl is not None and math.isfinite(result.ppl) and result.ppl > 1
    assert len(result.chunks) == 2 and result.chunks[-1] == result.ppl

    imatrix = llamacpp.imatrix(f16, austen_emma, out=tmp_path / "imatrix.gguf", ctx=128, chunks=2)
    reader = gguf.GGUFReader(imatrix)
    assert _field(reader, "general.type") == "imatrix"
    assert _field(reader, "imatrix.chunk_count") == 2
    assert "blk.0.ffn_down.weight.in_sum2" in {t.name for t in reader.tensors}
