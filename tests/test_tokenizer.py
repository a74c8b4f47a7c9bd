"""Tokenizer metadata against llama.cpp's converter, and the GGUF -> HF tokenizer export round trip.

Real data: SmolLM2 (byte-level BPE, pre "smollm"), Qwen2.5-Coder (pre "qwen2"), the converter-made
vocabulary GGUFs that llama.cpp ships in models/ (ggml-vocab-*.gguf, with .inp/.out token ids written
by the original HF tokenizers), and a sentencepiece model trained on the Austen novels.

Round trip: GGUF tokenizer metadata -> write_hf_tokenizer -> tokenizer_metadata == the GGUF's values.
Oracle: llama.cpp's convert_hf_to_gguf.py --vocab-only on the same folders writes the same keys, in the
same order, with the same types and values; HF tokenizers/transformers tokenize like the original.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import gguf
import pytest
import sentencepiece as spm
from gguf import GGUFValueType, TokenType

from quantize_cli.errors import InputError, UnsupportedError
from quantize_cli.formats.tokenizer import (
    PRE_TOKENIZERS,
    detect_pre,
    tokenizer_metadata,
)
from quantize_cli.formats.tokenizer_export import (
    config_token_ids,
    tokenizer_meta_from_reader,
    write_hf_tokenizer,
)
from support import fixtures, llamacpp

HF_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# The vocabulary GGUFs of llama.cpp's models/ that qconvert handles, and the architecture to read them
# back with. Not "qwen2" for foreign vocabularies: for config model_type qwen2, transformers 5 builds
# its Qwen2Tokenizer pipeline and ignores tokenizer.json's pre-tokenizer.
REFERENCE_VOCABS = {"llama-spm": "llama", "phi-3": "llama", "llama-bpe": "llama",
                    "qwen2": "qwen2", "gpt-2": "llama", "starcoder": "llama"}

Entry = tuple[GGUFValueType, "GGUFValueType | None", Any]


# --------------------------------------------------------------------------- helpers


@functools.cache
def _read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, Entry]]:
    """All key/values of a GGUF as plain values, and its tokenizer.* keys in file order as
    key -> (type, element type, value). Cached: GGUFReader takes seconds on a 150k-token vocabulary."""
    reader = gguf.GGUFReader(path)
    kvs: dict[str, Entry] = {}
    for name, field in reader.fields.items():
        if name.startswith("tokenizer."):
            sub = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
            kvs[name] = (field.types[0], sub, field.contents())
    return tokenizer_meta_from_reader(reader), kvs


def _gguf_meta(path: Path) -> dict[str, Any]:
    return _read_gguf(path)[0]


def _gguf_tokenizer_kvs(path: Path) -> dict[str, Entry]:
    return _read_gguf(path)[1]


def _ours(folder: Path, arch: str) -> dict[str, Entry]:
    n_vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    return {kv.key: (kv.vtype, kv.sub_type, kv.value)
            for kv in tokenizer_metadata(folder, arch=arch, vocab_size=n_vocab)}


def _write_config(folder: Path, *, arch: str, n_vocab: int, token_ids: dict[str, int]) -> None:
    """A minimal config.json: enough for the converter's --vocab-only run."""
    config = {"architectures": [HF_ARCH[arch]], "model_type": arch, "vocab_size": n_vocab, "hidden_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 1, "num_key_value_heads": 1, "intermediate_size": 64,
              "max_position_embeddings": 128, "rms_norm_eps": 1e-5, **token_ids}
    (folder / "config.json").write_text(json.dumps(config))


def _export(meta: dict[str, Any], folder: Path, *, arch: str) -> Path:
    write_hf_tokenizer(meta, folder)
    _write_config(folder, arch=arch, n_vocab=len(meta["tokenizer.ggml.tokens"]), token_ids=config_token_ids(meta))
    return folder


def _tokenizer_values(kvs: dict[str, Entry]) -> dict[str, Any]:
    return {key: value for key, (_, _, value) in kvs.items()}


def _reference_dir() -> Path:
    return llamacpp.source_dir() / "models"


def _reference_tests(name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer tests: texts separated by a marker line, one line of ids per text."""
    raw = (_reference_dir() / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8")
    texts = raw.split("\n__ggml_vocab_test__\n")
    if texts[-1] == "":
        texts.pop()
    ids = [[int(t) for t in line.split()] for line in
           (_reference_dir() / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").splitlines()]
    assert len(texts) == len(ids) > 40
    return list(zip(texts, ids))


def _as_todays_converter(values: dict[str, Any]) -> dict[str, Any]:
    """Older converters typed the [PAD{i}] fillers USER_DEFINED or UNKNOWN; today's write UNUSED."""
    values = dict(values)
    tokens, types = values["tokenizer.ggml.tokens"], list(values["tokenizer.ggml.token_type"])
    for i, text in enumerate(tokens):
        if text == f"[PAD{i}]":
            types[i] = TokenType.UNUSED
    values["tokenizer.ggml.token_type"] = types
    return values


# --------------------------------------------------------------------------- pre-tokenizer detection


@pytest.mark.parametrize("entry", PRE_TOKENIZERS, ids=lambda e: e.name)
def test_each_known_configuration_is_named(entry: Any) -> None:
    tokenizer_json = {"normalizer": entry.normalizer, "pre_tokenizer": entry.pre_tokenizer}
    vocab = {"a": 0, **({entry.marker: 1} if entry.marker else {})}
    assert detect_pre(tokenizer_json, vocab, path=Path("tokenizer.json")) == entry.name


def test_offsets_only_settings_do_not_change_the_name() -> None:
    smollm = next(e for e in PRE_TOKENIZERS if e.name == "smollm")
    pre = json.loads(json.dumps(smollm.pre_tokenizer))
    pre["pretokenizers"][1]["trim_offsets"] = False  # offsets only: same token ids, same hash
    assert detect_pre({"normalizer": None, "pre_tokenizer": pre}, {}, path=Path("t.json")) == "smollm"
    pre["pretokenizers"][1]["add_prefix_space"] = True  # changes ids: not SmolLM's any more
    with pytest.raises(UnsupportedError):
        detect_pre({"normalizer": None, "pre_tokenizer": pre}, {}, path=Path("t.json"))


def test_unknown_pre_tokenizer_names_file_and_supported(tmp_path: Path) -> None:
    tokenizer_json = {"added_tokens": [], "normalizer": None, "decoder": {"type": "ByteLevel"},
                      "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                          {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated",
                           "invert": False}, {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}]},
                      "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    with pytest.raises(UnsupportedError) as err:
        tokenizer_metadata(tmp_path, arch="qwen2", vocab_size=3)
    assert str(tmp_path / "tokenizer.json") in str(err.value)
    assert "smollm" in err.value.hint and "qwen2" in err.value.hint and "llama-bpe" in err.value.hint


# --------------------------------------------------------------------------- errors


def test_missing_tokenizer_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError) as err:
        tokenizer_metadata(tmp_path, arch="llama", vocab_size=10)
    assert str(tmp_path) in str(err.value)
    assert "tokenizer.model" in str(err.value) and "tokenizer.json" in str(err.value)


@pytest.mark.parametrize("broken", ["tokenizer.json", "tokenizer_config.json", "config.json"])
def test_malformed_json_names_the_file(tmp_path: Path, broken: str) -> None:
    smollm = next(e for e in PRE_TOKENIZERS if e.name == "smollm")
    files = {"tokenizer.json": json.dumps({"added_tokens": [], "normalizer": None, "pre_tokenizer": smollm.pre_tokenizer,
                                           "decoder": {"type": "ByteLevel"},
                                           "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}),
             "tokenizer_config.json": "{}", "config.json": "{}"}
    files[broken] = '{"vocab_size": 3,'
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(InputError) as err:
        tokenizer_metadata(tmp_path, arch="llama", vocab_size=1)
    assert str(tmp_path / broken) in str(err.value) and "malformed JSON" in str(err.value)


def test_unknown_architecture(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError, match="gemma"):
        tokenizer_metadata(tmp_path, arch="gemma", vocab_size=10)


def test_export_needs_a_known_pre_tokenizer(tmp_path: Path) -> None:
    meta = _gguf_meta(_reference_dir() / "ggml-vocab-deepseek-coder.gguf")
    with pytest.raises(UnsupportedError, match="deepseek-coder"):
        write_hf_tokenizer(meta, tmp_path)
    with pytest.raises(UnsupportedError, match="bert"):
        write_hf_tokenizer(_gguf_meta(_reference_dir() / "ggml-vocab-bert-bge.gguf"), tmp_path)


# --------------------------------------------------------------------------- round trips


def test_smollm2_round_trip(smollm2_gguf: Path, tmp_path: Path) -> None:
    folder = _export(_gguf_meta(smollm2_gguf), tmp_path, arch="llama")
    theirs = _gguf_tokenizer_kvs(smollm2_gguf)
    ours = _ours(folder, "llama")
    assert ours == theirs  # keys, types and values (the order differs: an older converter made it)
    assert len(theirs["tokenizer.ggml.tokens"][2]) == 49152 and len(theirs["tokenizer.ggml.merges"][2]) == 48900

    tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
    assert tokenizer_json["normalizer"] is None
    assert tokenizer_json["pre_tokenizer"] == {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["pad_token"], config["unk_token"]) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert config["add_bos_token"] is False and "add_eos_token" not in config
    assert config["chat_template"] == theirs["tokenizer.chat_template"][2]
    assert config["model_max_length"] == 8192
    assert len(config["added_tokens_decoder"]) == 17
    assert all(t["special"] for t in config["added_tokens_decoder"].values())


@pytest.mark.slow
def test_qwen_coder_round_trip(qwen_coder_gguf: Path, tmp_path: Path) -> None:
    folder = _export(_gguf_meta(qwen_coder_gguf), tmp_path, arch="qwen2")
    theirs = _gguf_tokenizer_kvs(qwen_coder_gguf)
    assert list(_ours(folder, "qwen2").items()) == list(theirs.items())  # order too
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
    assert tokenizer_json["normalizer"] == {"type": "NFC"}
    split = tokenizer_json["pre_tokenizer"]["pretokenizers"][0]
    assert split["pattern"]["Regex"].startswith("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|")


@pytest.mark.parametrize("name", REFERENCE_VOCABS)
def test_reference_vocab_round_trip(name: str, tmp_path: Path) -> None:
    path = _reference_dir() / f"ggml-vocab-{name}.gguf"
    arch = REFERENCE_VOCABS[name]
    folder = _export(_gguf_meta(path), tmp_path, arch=arch)
    ours = _tokenizer_values(_ours(folder, arch))
    theirs = _as_todays_converter(_tokenizer_values(_gguf_tokenizer_kvs(path)))
    if name == "llama-bpe":  # made before add_bos_token was written; Llama 3 adds BOS (its hash includes it)
        assert ours.pop("tokenizer.ggml.add_bos_token") is True
    if name == "starcoder":  # read as "llama": LlamaModel writes add_bos_token=false for 49152 tokens
        assert ours.pop("tokenizer.ggml.add_bos_token") is False
    assert ours == theirs


def test_named_chat_templates_round_trip(tmp_path: Path) -> None:
    meta = dict(_gguf_meta(_reference_dir() / "ggml-vocab-gpt-2.gguf"))
    meta.update({"tokenizer.chat_template": "{{ default }}", "tokenizer.chat_template.tool_use": "{{ tools }}",
                 "tokenizer.chat_template.rag": "{{ documents }}", "tokenizer.chat_templates": ["tool_use", "rag"]})
    values = _tokenizer_values(_ours(_export(meta, tmp_path, arch="llama"), "llama"))
    assert list(values)[-4:] == ["tokenizer.chat_template.tool_use", "tokenizer.chat_template.rag",
                                 "tokenizer.chat_templates", "tokenizer.chat_template"]
    assert {k: values[k] for k in list(values)[-4:]} == {k: meta[k] for k in list(values)[-4:]}


def test_rebuilt_sentencepiece_model_tokenizes_like_the_original(tmp_path: Path) -> None:
    for name in ("llama-spm", "phi-3"):
        _export(_gguf_meta(_reference_dir() / f"ggml-vocab-{name}.gguf"), tmp_path / name, arch="llama")
        sp = spm.SentencePieceProcessor(model_file=str(tmp_path / name / "tokenizer.model"))
        for text, ids in _reference_tests(name):
            assert sp.encode(text) == ids, (name, text)


def _austen_folder(austen_tokenizer: Path, folder: Path) -> Path:
    """An HF folder around the Austen sentencepiece model, with the extras the converter reads:
    added_tokens.json, tokenizer_config added_tokens_decoder (special, looks-special, ▁ in a user token,
    ids past the vocabulary), a chat_template.jinja and config vocab_size past the model (padding)."""
    folder.mkdir()
    shutil.copy(austen_tokenizer, folder / "tokenizer.model")
    _write_config(folder, arch="llama", n_vocab=32064, token_ids={"bos_token_id": 1, "eos_token_id": 32001,
                                                                  "pad_token_id": 32000})
    (folder / "added_tokens.json").write_text(json.dumps({"<|extra|>": 32002, "<custom>": 32003, "past": 40000}))
    decoder = {"0": {"content": "<unk>", "special": True}, "32000": {"content": "<pad>", "special": False},
               "32001": {"content": "<|end|>", "special": False}, "32004": {"content": "▁word", "special": False},
               "32005": {"content": "[MASK]", "special": True}, "99999": {"content": "<far>", "special": True}}
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"add_bos_token": True, "add_eos_token": False, "add_prefix_space": True, "bos_token": "<s>",
         "eos_token": "<|end|>", "unk_token": "<unk>", "pad_token": "<pad>", "added_tokens_decoder": decoder}))
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    return folder


def test_sentencepiece_folder(austen_tokenizer: Path, austen_pride: Path, tmp_path: Path) -> None:
    folder = _austen_folder(austen_tokenizer, tmp_path / "hf")
    kvs = _ours(folder, "llama")
    assert list(kvs) == ["tokenizer.ggml.add_space_prefix", "tokenizer.ggml.model", "tokenizer.ggml.pre",
                         "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                         "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                         "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
                         "tokenizer.ggml.add_eos_token", "tokenizer.chat_template"]
    values = _tokenizer_values(kvs)
    tokens, scores, types = (values[f"tokenizer.ggml.{k}"] for k in ("tokens", "scores", "token_type"))
    sp = spm.SentencePieceProcessor(model_file=str(austen_tokenizer))
    assert len(tokens) == 32064 and tokens[:32000] == [sp.id_to_piece(i) for i in range(32000)]
    assert (tokens[0], types[0], scores[0]) == ("<unk>", TokenType.CONTROL, -1000.0)  # the decoder wins
    assert (tokens[1], types[1], scores[1]) == ("<s>", TokenType.CONTROL, sp.get_score(1))
    assert [(tokens[i], types[i]) for i in range(32000, 32006)] == [
        ("<pad>", TokenType.CONTROL), ("<|end|>", TokenType.CONTROL), ("<|extra|>", TokenType.USER_DEFINED),
        ("<custom>", TokenType.USER_DEFINED), (" word", TokenType.USER_DEFINED), ("[MASK]", TokenType.CONTROL)]
    assert (tokens[32006], types[32006], scores[32006]) == ("[PAD32006]", TokenType.UNUSED, -10000.0)
    assert values["tokenizer.ggml.eos_token_id"] == 32001  # from config.json: there is no tokenizer.json
    assert values["tokenizer.chat_template"].startswith("{% for m in messages %}")

    # Round trip through the export, and the rebuilt sentencepiece model tokenizes Pride and Prejudice alike.
    exported = _export(values, tmp_path / "exported", arch="llama")
    assert _tokenizer_values(_ours(exported, "llama")) == values
    text = austen_pride.read_text(encoding="utf-8")
    rebuilt = spm.SentencePieceProcessor(model_file=str(exported / "tokenizer.model"))
    assert rebuilt.encode(text) == sp.encode(text)


# --------------------------------------------------------------------------- oracle: the converter


def _oracle_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(llamacpp.source_dir() / "gguf-py"))  # the bundled gguf-py, not PyPI's
    env.pop("NO_LOCAL_GGUF", None)
    return env


def _convert_vocab(folder: Path, out: Path) -> Path:
    src = llamacpp.source_dir()
    fixtures.run([llamacpp.oracle_python(), src / "convert_hf_to_gguf.py", "--vocab-only", "--outfile", out, folder],
                 what=f"convert_hf_to_gguf.py --vocab-only {folder.name}", env=_oracle_env())
    return out


def _assert_converter_agrees(folder: Path, arch: str, tmp_path: Path) -> None:
    theirs = _read_gguf.__wrapped__(_convert_vocab(folder, tmp_path / "converted.gguf"))[1]  # not cached
    ours = _ours(folder, arch)
    assert list(ours) == list(theirs)  # same keys in the same order
    for key in theirs:
        assert ours[key][:2] == theirs[key][:2], key  # value type and element type
        assert ours[key][2] == theirs[key][2], key


def _oracle_sources() -> list[Any]:
    return [pytest.param("smollm2", id="smollm2"), pytest.param("qwen_coder", id="qwen_coder"),
            *(pytest.param(name, id=name) for name in REFERENCE_VOCABS)]


def _source_meta(source: str, request: pytest.FixtureRequest) -> tuple[dict[str, Any], str]:
    if source == "smollm2":
        return _gguf_meta(request.getfixturevalue("smollm2_gguf")), "llama"
    if source == "qwen_coder":
        return _gguf_meta(request.getfixturevalue("qwen_coder_gguf")), "qwen2"
    return _gguf_meta(_reference_dir() / f"ggml-vocab-{source}.gguf"), REFERENCE_VOCABS[source]


@pytest.mark.oracle
@pytest.mark.parametrize("source", _oracle_sources())
def test_converter_agrees_on_exported_folder(source: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The converter re-detects the same pre-tokenizer (its hash) and writes what we compute."""
    meta, arch = _source_meta(source, request)
    folder = _export(meta, tmp_path / "hf", arch=arch)
    _assert_converter_agrees(folder, arch, tmp_path)


@pytest.mark.oracle
@pytest.mark.parametrize("name", ["llama-spm", "phi-3"])
def test_converter_agrees_on_llama_hf_path(name: str, tmp_path: Path) -> None:
    """tokenizer.json with byte fallback and no tokenizer.model: the converter's transformers-based path."""
    folder = _export(_gguf_meta(_reference_dir() / f"ggml-vocab-{name}.gguf"), tmp_path / "hf", arch="llama")
    (folder / "tokenizer.model").unlink()
    _assert_converter_agrees(folder, "llama", tmp_path)


@pytest.mark.oracle
def test_converter_agrees_on_sentencepiece_folder(austen_tokenizer: Path, tmp_path: Path) -> None:
    _assert_converter_agrees(_austen_folder(austen_tokenizer, tmp_path / "hf"), "llama", tmp_path)


# --------------------------------------------------------------------------- oracle: tokenization

_HF_ENCODE = """
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
texts = json.loads(sys.stdin.buffer.read().decode("utf-8"))
sys.stdout.write(json.dumps([tok.encode(t, add_special_tokens=False) for t in texts]))
"""


def _hf_encode(folder: Path, texts: list[str]) -> list[list[int]]:
    """Token ids from transformers' AutoTokenizer (oracle venv) for several texts at once."""
    proc = fixtures.run([llamacpp.oracle_python(), "-c", _HF_ENCODE, folder], env=_oracle_env(),
                        stdin=json.dumps(texts).encode(), what=f"AutoTokenizer({folder.name})")
    return json.loads(proc.stdout)


@pytest.mark.oracle
@pytest.mark.parametrize("name", REFERENCE_VOCABS)
def test_hf_tokenizer_matches_reference_ids(name: str, tmp_path: Path) -> None:
    """The exported folder tokenizes llama.cpp's test texts as the original HF tokenizer did."""
    folder = _export(_gguf_meta(_reference_dir() / f"ggml-vocab-{name}.gguf"), tmp_path, arch=REFERENCE_VOCABS[name])
    tests = _reference_tests(name)
    assert _hf_encode(folder, [text for text, _ in tests]) == [ids for _, ids in tests]


@pytest.mark.oracle
@pytest.mark.parametrize("source", ["smollm2", "qwen_coder"])
def test_hf_tokenizer_matches_llama_cpp(source: str, request: pytest.FixtureRequest, austen_pride: Path,
                                        llamacpp: Any, tmp_path: Path) -> None:
    """Pride and Prejudice: llama-tokenize on the original GGUF == AutoTokenizer on the exported folder."""
    gguf_path = request.getfixturevalue(f"{source}_gguf")
    meta, arch = _source_meta(source, request)
    folder = _export(meta, tmp_path, arch=arch)
    reference = llamacpp.tokenize(gguf_path, austen_pride, add_bos=False)
    assert len(reference) > 150_000
    assert llamacpp.hf_tokenize(folder, austen_pride.read_text(encoding="utf-8"), add_special_tokens=False) == reference
    chat = "<|im_start|>user\nIt is a truth universally acknowledged…<|im_end|>\n"
    with_specials = _llama_tokenize_parsing_specials(gguf_path, chat)
    assert with_specials[0] in (1, 151644)  # <|im_start|> came out as one token
    assert llamacpp.hf_tokenize(folder, chat, add_special_tokens=True) == with_specials


def _llama_tokenize_parsing_specials(gguf_path: Path, text: str) -> list[int]:
    """llama-tokenize with its defaults (BOS if the model asks, special tokens parsed).

    support.llamacpp.tokenize(parse_special=True) passes --parse-special, which llama-tokenize
    rejects (parsing is its default; it only has --no-parse-special)."""
    proc = fixtures.run([llamacpp.tool("llama-tokenize"), "-m", gguf_path, "--ids", "--no-escape", "--log-disable",
                         "--stdin"], stdin=text.encode(), what="llama-tokenize")
    line = next(ln for ln in proc.stdout.decode().splitlines() if ln.startswith("["))
    return [int(t) for t in json.loads(line)]


@pytest.mark.oracle
def test_hf_tokenizer_matches_sentencepiece(austen_tokenizer: Path, austen_pride: Path, tmp_path: Path) -> None:
    """The Llama-2-style tokenizer.json written for a sentencepiece GGUF tokenizes like sentencepiece."""
    # A plain folder: the added tokens of _austen_folder are unknown to sentencepiece itself.
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(austen_tokenizer, plain / "tokenizer.model")
    _write_config(plain, arch="llama", n_vocab=32000, token_ids={"bos_token_id": 1, "eos_token_id": 2})
    values = _tokenizer_values(_ours(plain, "llama"))
    folder = _export(values, tmp_path / "exported", arch="llama")
    lines = austen_pride.read_text(encoding="utf-8").split("\n\n")
    sp = spm.SentencePieceProcessor(model_file=str(austen_tokenizer))
    assert _hf_encode(folder, lines) == [sp.encode(line) for line in lines]
