"""runtime.tokenizer gives llama.cpp's token ids.

Unit tests: small hand-built vocabularies whose ids can be worked out by hand (byte-level BPE with
merge ranks, the pre-tokenizer splits, sentencepiece scores and byte fallback, user-defined tokens).
Oracle tests: llama-tokenize on real vocabularies, SmolLM2 (pre "smollm"), Qwen2.5-Coder ("qwen2"),
a sentencepiece model trained on Austen ("llama") and the vocabulary GGUFs in llama.cpp's models/:
100 KB of Pride and Prejudice, llama.cpp's own tokenizer test texts and adversarial strings.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import re
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from gguf import TokenType

from quantize_cli.errors import UnsupportedError
from quantize_cli.formats.gguf_reader import gguf_metadata, read_gguf
from quantize_cli.runtime.tokenizer import (
    _BYTE_CHARS,
    _WHITESPACE,
    PRE_TOKENIZERS,
    Attr,
    Tokenizer,
    major_category,
)
from support import fixtures, llamacpp

SPACE_CHAR = "Ġ"  # byte 0x20 in GPT-2's byte -> character table


# --------------------------------------------------------------------------- hand-built vocabularies


def _byte_level(pre: str, merges: list[str], *, extra: tuple[tuple[str, int], ...] = ()) -> Tokenizer:
    """A gpt2-model vocabulary: all 256 byte characters, then one token per merge result."""
    tokens = list(_BYTE_CHARS) + [m.replace(" ", "") for m in merges] + [t for t, _ in extra]
    types = [TokenType.NORMAL] * (len(tokens) - len(extra)) + [ty for _, ty in extra]
    return Tokenizer.from_gguf_metadata({
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [int(t) for t in types], "tokenizer.ggml.merges": merges})


def _texts(tok: Tokenizer, ids: list[int]) -> list[str]:
    return [tok.tokens[i] for i in ids]


def _words(tok: Tokenizer, text: str) -> list[str]:
    return tok._session.words(text)  # type: ignore[union-attr]


def test_bpe_merges_lowest_rank_first_and_leftmost_on_ties() -> None:
    tok = _byte_level("gpt-2", ["a a", "aa a", "b c", "a b"])
    # "aaa": (a,a) rank 0 at the left first, then (aa,a) rank 1.
    assert _texts(tok, tok.encode("aaa")) == ["aaa"]
    # "aaaa": two (a,a) merges, leftmost first; (aa,aa) is no merge.
    assert _texts(tok, tok.encode("aaaa")) == ["aa", "aa"]
    # "abc": (b,c) rank 2 beats (a,b) rank 3; then (a,bc) is no merge.
    assert _texts(tok, tok.encode("abc")) == ["a", "bc"]


def test_bpe_first_of_duplicate_merges_wins_and_bytes_are_encoded() -> None:
    tok = _byte_level("gpt-2", ["x y", "y z", "x y", f"{SPACE_CHAR} x"])
    assert _texts(tok, tok.encode("xyz")) == ["xy", "z"]
    assert _texts(tok, tok.encode(" x")) == [f"{SPACE_CHAR}x"]
    assert _texts(tok, tok.encode("é")) == ["Ã", "©"]  # U+00E9 is bytes c3 a9
    assert tok.decode(tok.encode("é x\n")) == "é x\n"


def test_llama3_takes_whole_words_that_are_tokens() -> None:
    # ignore_merges: "abc" is a token, so llama-bpe takes it although no merge chain reaches it.
    extra = (("abc", TokenType.NORMAL),)
    gpt2 = _byte_level("gpt-2", ["a b"], extra=extra)
    assert _texts(gpt2, gpt2.encode("abc")) == ["ab", "c"]
    llama3 = _byte_level("llama-bpe", ["a b"], extra=extra)
    assert _texts(llama3, llama3.encode("abc", add_bos=False)) == ["abc"]


@pytest.mark.parametrize(("pre", "text", "words"), [
    ("gpt-2", "it's I'M we're", ["it", "'s", " I", "'", "M", " we", "'re"]),
    ("llama-bpe", "it's I'M we're", ["it", "'s", " I", "'M", " we", "'re"]),
    ("gpt-2", "a   b  \n\n c ", ["a", "  ", " b", "  \n\n", " c", " "]),
    ("qwen2", "a   b  \n\n c ", ["a", "  ", " b", "  \n\n", " c", " "]),
    ("gpt-2", "12345 x1", ["12345", " x", "1"]),
    ("smollm", "12345 x1", ["1", "2", "3", "4", "5", " x", "1"]),
    ("qwen2", "12345 x1", ["1", "2", "3", "4", "5", " x", "1"]),
    ("llama-bpe", "12345 x1", ["123", "45", " x", "1"]),
    ("qwen2", "(hello) .\n\nok", ["(hello", ")", " .\n\n", "ok"]),
    ("gpt-2", "(hello) .\n\nok", ["(", "hello", ")", " .", "\n", "\n", "ok"]),
    ("default", "£5,000!!", ["£", "5", ",", "000", "!!"]),
    ("qwen2", "naïve café 日本語", ["naïve", " café", " 日本語"]),
    ("qwen2", "\x1c\x1d x", ["\x1c\x1d", " x"]),  # \x1c-\x1f are no whitespace to llama.cpp
    ("qwen2", "a\u00a0b\u3000c", ["a", "\u00a0b", "\u3000c"]),
    ("qwen35", "e\u0301 x\u0301", ["e\u0301", " x\u0301"]),
    ("qwen2", "e\u0301 x\u0301", ["e", "\u0301", " x", "\u0301"]),
])
def test_pre_tokenizer_splits(pre: str, text: str, words: list[str]) -> None:
    tok = _byte_level(pre, [])
    assert _words(tok, text) == words
    assert "".join(words) == text


def test_user_defined_tokens_are_split_out_control_tokens_are_not() -> None:
    tok = _byte_level("qwen2", [], extra=(("<|im_start|>", TokenType.CONTROL), ("<tool>", TokenType.USER_DEFINED),
                                          ("<tool><tool>", TokenType.USER_DEFINED)))
    ids = tok.encode("<|im_start|>x<tool>y<tool><tool>")
    im_start, tool, tool2 = (tok.token_to_id[t] for t in ("<|im_start|>", "<tool>", "<tool><tool>"))
    assert im_start not in ids
    assert ids[-4:] == [tok.token_to_id["x"], tool, tok.token_to_id["y"], tool2]  # longest first
    assert tok.decode(ids) == "<|im_start|>x<tool>y<tool><tool>"


def _spm(tokens: list[tuple[str, float, TokenType]], **meta: Any) -> Tokenizer:
    return Tokenizer.from_gguf_metadata({
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [t for t, _, _ in tokens],
        "tokenizer.ggml.scores": [s for _, s, _ in tokens],
        "tokenizer.ggml.token_type": [int(ty) for _, _, ty in tokens], **meta})


SPM_VOCAB = [("<unk>", 0.0, TokenType.UNKNOWN), ("<s>", 0.0, TokenType.CONTROL), ("</s>", 0.0, TokenType.CONTROL),
             *((f"<0x{b:02X}>", 0.0, TokenType.BYTE) for b in range(256)),
             ("▁", -1.0, TokenType.NORMAL), ("a", -2.0, TokenType.NORMAL), ("b", -2.0, TokenType.NORMAL),
             ("▁a", -3.0, TokenType.NORMAL), ("ab", -1.5, TokenType.NORMAL), ("▁ab", -4.0, TokenType.NORMAL),
             ("bb", -1.5, TokenType.NORMAL)]


def test_sentencepiece_merges_by_score_with_byte_fallback() -> None:
    tok = _spm(SPM_VOCAB)
    t = tok.token_to_id
    assert tok.add_bos and (tok.bos_id, tok.eos_id) == (1, 2)
    # " ab": (a,b) scores -1.5 > (▁,a) -3.0, then (▁,ab) -> "▁ab".
    assert tok.encode("ab") == [1, t["▁ab"]]
    # "abb": (a,b) and (b,b) tie at -1.5: the left one merges first.
    assert tok.encode("abb", add_bos=False) == [t["▁ab"], t["b"]]
    # "é" is no piece: its UTF-8 bytes c3 a9 become byte tokens.
    assert tok.encode("aé", add_bos=False) == [t["▁a"], t["<0xC3>"], t["<0xA9>"]]
    assert tok.decode(tok.encode("ab aé", add_bos=False)) == "ab aé"
    assert tok.decode(tok.encode("ab")) == " ab"  # llama_detokenize keeps the space after a BOS
    assert tok.encode("", add_bos=False) == []
    no_prefix = _spm(SPM_VOCAB, **{"tokenizer.ggml.add_space_prefix": False, "tokenizer.ggml.add_bos_token": False})
    assert no_prefix.encode("ab") == [t["ab"]]


def test_sentencepiece_merges_across_spaces_where_a_token_does() -> None:
    # Without a token like "b▁" every "▁"-led chunk tokenizes alone (and is cached); with one, the
    # text is one sequence of symbols, as llama.cpp always treats it.
    plain, spaced = _spm(SPM_VOCAB), _spm([*SPM_VOCAB, ("b▁", -0.5, TokenType.NORMAL)])
    assert _texts(plain, plain.encode("ab ab", add_bos=False)) == ["▁ab", "▁ab"]
    assert _texts(spaced, spaced.encode("ab ab", add_bos=False)) == ["▁a", "b▁", "ab"]


def test_metadata_defaults_and_overrides() -> None:
    tok = _spm(SPM_VOCAB, **{"tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 99999,
                             "tokenizer.ggml.add_eos_token": True})
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos) == (2, 2, True, True)  # out of range: default
    assert tok.n_vocab == len(SPM_VOCAB)
    assert tok.encode("a") == [2, tok.token_to_id["▁a"], 2]
    bpe = _byte_level("llama-bpe", [])
    assert (bpe.add_bos, bpe.bos_id) == (True, 11)
    assert not _byte_level("qwen2", []).add_bos


@pytest.mark.parametrize(("meta", "names"), [
    ({"tokenizer.ggml.model": "bert"}, ["'bert'", "gpt2", "llama"]),
    ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "tekken", "tokenizer.ggml.tokens": ["a"],
      "tokenizer.ggml.merges": []}, ["'tekken'", "smollm", "qwen2", "llama-bpe", "gpt-2", "default"]),
])
def test_unsupported_names_what_is_supported(meta: dict[str, Any], names: list[str]) -> None:
    with pytest.raises(UnsupportedError) as err:
        Tokenizer.from_gguf_metadata(meta)
    message = f"{err.value} {err.value.hint}"
    assert all(name in message for name in names), message


# --------------------------------------------------------------------------- oracle: llama-tokenize

ADVERSARIAL = [
    # digits
    "1", "12", "123", "1234", "12345678901234567890", "3.14159", "1,000,000", "v1.2.3", "0123456789" * 5,
    "٣٤٥ ٦", "x² ½ Ⅻ", "10th 2nd",
    # contractions
    "it's don't we're I've I'm you'll he'd", "IT'S DON'T WE'RE I'VE", "'s 't 're 've 'm 'll 'd", "''s' 'tis",
    "rock'n'roll o'clock y'all'd've", "She'S", "'", "'''", "ab'", "'x",
    # whitespace
    " ", "  ", "   ", "a  b", "a   b", "a \tb", "\t", "\t\t", "\n", "\n\n\n", "a\n\nb", " \n \n  x", "\r\n", "a\r\nb",
    "trailing   ", "   leading", "\u00a0nbsp\u00a0", "a\u3000b", "\u2003em\u2009thin", "x\x0by\x0cz",
    "\x1c\x1d\x1e\x1f", "\u0085next", "line\u2028sep", "tab\t\tand  \n\t spaces \n",
    # CJK and other scripts
    "日本語のテキスト", "中文测试，标点。", "한국어 텍스트", "混合English文本123", "Привет, мир!", "ΑΒΓ αβγ",
    "مرحبا بالعالم", "שלום", "हिन्दी भाषा", "ภาษาไทย", "ខ្មែរ", "𠀋𠂉 𪜀 \U0002ebf0",
    # emoji
    "😀", "👍🏽", "👨‍👩‍👧", "🫨🪿", "🇬🇧🇫🇷", "emoji😀text", "\U0001F600" * 3, "❤️",
    # accents and compatibility characters
    "café naïve Ångström Zürich", "e\u0301 a\u0308", "ﬁnance", "İstanbul straße", "ÀÉÎÕÜ àéîõü", "Å",
    # symbols
    "£100", "€5 $5 ¥5", "©®™", "→←↑↓", "∑∫√∞", "<>", "~!@#$%^&*()_+", "{}[]|\\", "`code`", "--", "...", "…",
    "«»", "“quotes” ‘single’", "£", "a£b", " £ ",
    # code-ish
    "def f(x):\n    return x**2\n", "if (a && b) { c++; }", "http://example.com/path?q=1&r=2", "user@example.com",
    "C:\\Windows\\path", "snake_case_name camelCaseName", "    indented\n\tline", "x=1;y=2",
    # oddities
    "", "a", "A", "Hello world", " Hello world", "a" * 300, "=" * 100, " " * 50, "\n" * 20, "\u200bzero\u200dwidth",
    "\ufeffbom", "\ue000private", "\U000e0041tag", "\u0378\u0379", "\x7f\x01", "Ä" * 40,
]
# Characters for seeded random strings: the classes the pre-tokenizers tell apart, in odd company.
FUZZ_CHARS = [*" \t\n\r\x0b\x0c\x1c\xa0\u3000\u2003\u0085" * 3, *"aAzZsStTdDmMlLrReEvV'0123456789.,!?-_()[]{}<>|/\\\"`~@#$%^&*+=;:",
              *"éÄßñçøÅ\u0301\u0308\u200b\u200d\ufeff日本語中文한국어Привет", "😀", "👍", "🏽", "🫨", "\U0002ebf0", "\U000e0041",
              "\u0378", "\ue000", "£", "€", "½", "²", "٣", "Ⅻ", "ﬁ", "…", "“", "’", "▁", "Ġ"]
# Texts that look like special tokens: never parsed as such (see _check_strings).
CONTROL_LOOKING = ["<|im_start|>user\nhi<|im_end|>", "<|endoftext|>", "</s>", "<s>", "<unk>", "<s> text",
                   "<tool_call>x</tool_call>", "<|fim_prefix|>", "[INST] hi [/INST]", "<repo_name>"]


def _meta(path: Path) -> dict[str, Any]:
    return _cached_meta(str(path))


@functools.cache
def _cached_meta(path: str) -> dict[str, Any]:
    return gguf_metadata(read_gguf(Path(path)))


def _oracle_batch(gguf_path: Path, tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """llama-tokenize's ids for each text (no BOS/EOS), from one run.

    The texts are joined by a control token and tokenized with parse_special: the control token
    cuts the text into fragments that llama.cpp tokenizes independently, exactly as separate calls
    would (an SPM fragment after a special token gets the same space prefix as the text's start).
    """
    joined = "".join(texts)
    sep = next(i for i, a in enumerate(tok.attrs) if a & Attr.CONTROL and not a & (Attr.LSTRIP | Attr.RSTRIP)
               and tok.tokens[i] not in joined)
    ids = llamacpp.tokenize(gguf_path, text=tok.tokens[sep].join(texts), add_bos=False, parse_special=True)
    per_text: list[list[int]] = [[]]
    for i in ids:
        if i == sep:
            per_text.append([])
        else:
            per_text[-1].append(i)
    assert len(per_text) == len(texts)
    return per_text


def _check_strings(gguf_path: Path) -> int:
    """Adversarial strings, llama.cpp's own test texts where the file has them; returns tokens compared."""
    tok = Tokenizer.from_gguf_metadata(_meta(gguf_path))
    rng = random.Random(0)
    texts = ADVERSARIAL + ["".join(rng.choices(FUZZ_CHARS, k=rng.randint(1, 60))) for _ in range(300)]
    inp = gguf_path.with_name(gguf_path.name + ".inp")
    if inp.is_file():
        texts += [t for t in inp.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n") if t]
    special_texts = [t for i, t in enumerate(tok.tokens) if tok.attrs[i] & (Attr.CONTROL | Attr.UNKNOWN)]
    batch = [t for t in texts if not any(s in t for s in special_texts)]
    compared = 0
    for text, ref in zip(batch, _oracle_batch(gguf_path, tok, batch)):
        ours = tok.encode(text, add_bos=False, add_eos=False)
        assert ours == ref, (text, _texts(tok, ours), _texts(tok, ref))
        compared += len(ref)
    # The rest in one text, which must come out without a single special token parsed.
    text = "\n".join(CONTROL_LOOKING + [t for t in texts if t not in batch])
    ref = llamacpp.tokenize(gguf_path, text=text, add_bos=True, parse_special=False)
    assert tok.encode(text) == ref, (text, _texts(tok, tok.encode(text)), _texts(tok, ref))
    return compared + len(ref)


def _check_austen(gguf_path: Path, text: str) -> Tokenizer:
    tok = Tokenizer.from_gguf_metadata(_meta(gguf_path))
    start = time.perf_counter()
    ours = tok.encode(text)
    elapsed = time.perf_counter() - start
    ref = llamacpp.tokenize(gguf_path, text=text, add_bos=True)
    first = next((i for i, (a, b) in enumerate(zip(ours, ref)) if a != b), min(len(ours), len(ref)))
    assert ours == ref, (f"{gguf_path.name}: {len(ours)} vs {len(ref)} tokens, first difference at {first}: "
                         f"{_texts(tok, ours[first:first + 8])} vs {_texts(tok, ref[first:first + 8])}")
    assert elapsed < 5.0, f"{len(text)} characters took {elapsed:.1f} s"
    return tok


@pytest.fixture(scope="module")
def pride_100k(austen_pride: Path) -> str:
    return austen_pride.read_text(encoding="utf-8")[:100_000]


@pytest.fixture(scope="module")
def austen_vocab_gguf(synthetic_1layer: Path, tmp_path_factory: pytest.TempPathFactory,
                      llamacpp: ModuleType) -> Path:
    """llama.cpp's converter, --vocab-only, on the synthetic model: its Austen sentencepiece vocabulary."""
    out = tmp_path_factory.mktemp("austen-vocab") / "austen-vocab.gguf"
    src = llamacpp.source_dir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(src / "gguf-py"))  # its bundled gguf-py
    fixtures.run([llamacpp.oracle_python(), src / "convert_hf_to_gguf.py", "--vocab-only", "--outfile", out,
                  synthetic_1layer], what="convert_hf_to_gguf.py --vocab-only", env=env)
    return out


@pytest.mark.oracle
def test_smollm2_austen(smollm2_gguf: Path, pride_100k: str, llamacpp: ModuleType) -> None:
    tok = _check_austen(smollm2_gguf, pride_100k)
    assert (tok.pre, tok.add_bos) == ("smollm", False)


@pytest.mark.oracle
def test_qwen_coder_austen(qwen_coder_gguf: Path, pride_100k: str, llamacpp: ModuleType) -> None:
    tok = _check_austen(qwen_coder_gguf, pride_100k)
    assert tok.pre == "qwen2"


@pytest.mark.oracle
def test_sentencepiece_austen(austen_vocab_gguf: Path, pride_100k: str) -> None:
    tok = _check_austen(austen_vocab_gguf, pride_100k)
    assert (tok.model, tok.add_bos, tok.bos_id) == ("llama", True, 1)
    assert tok.decode(tok.encode(pride_100k[:5000], add_bos=False)) == pride_100k[:5000]


@pytest.mark.oracle
@pytest.mark.parametrize("source", ["smollm2", "qwen_coder"])
def test_adversarial_strings(source: str, request: pytest.FixtureRequest, llamacpp: ModuleType) -> None:
    path = request.getfixturevalue(f"{source}_gguf")
    assert _check_strings(path) > 400
    tok = Tokenizer.from_gguf_metadata(_meta(path))
    assert tok.token_to_id["<|im_start|>"] not in tok.encode("<|im_start|>")  # CONTROL: never parsed
    if source == "qwen_coder":  # USER_DEFINED: split out of any text, as llama.cpp does
        assert tok.encode("a<tool_call>b") == [tok.token_to_id[t] for t in ("a", "<tool_call>", "b")]


@pytest.mark.oracle
def test_adversarial_strings_sentencepiece(austen_vocab_gguf: Path) -> None:
    assert _check_strings(austen_vocab_gguf) > 400


# llama.cpp's vocabulary files with a supported model and pre-tokenizer (aquila and gpt-neox have none: "default").
REFERENCE_VOCABS = ["gpt-2", "starcoder", "refact", "command-r", "mpt", "falcon", "qwen2", "qwen35", "llama-bpe",
                    "aquila", "gpt-neox", "llama-spm", "phi-3", "baichuan"]


@pytest.mark.oracle
@pytest.mark.parametrize("name", REFERENCE_VOCABS)
def test_reference_vocabularies(name: str, llamacpp: ModuleType) -> None:
    path = llamacpp.source_dir() / "models" / f"ggml-vocab-{name}.gguf"
    assert _check_strings(path) > 400


@pytest.mark.oracle
def test_unicode_categories_match_llama_cpp(llamacpp: ModuleType) -> None:
    """Our major categories and whitespace agree with llama.cpp's unicode-data.cpp on every code point."""
    data = (llamacpp.source_dir() / "src" / "unicode-data.cpp").read_text()
    table = data[data.index("unicode_ranges_flags"):data.index("unicode_set_whitespace")]
    starts = [(int(a, 16), int(b, 16)) for a, b in re.findall(r"\{0x([0-9A-F]+), 0x([0-9A-F]+)\}", table)]
    names = {0x1: "n", 0x2: "N", 0x4: "L", 0x8: "Z", 0x10: "M", 0x20: "P", 0x40: "S", 0x80: "C"}
    for (start, flags), (end, _) in itertools.pairwise(starts):
        for cp in range(start, end):
            assert major_category(cp) == names[flags], hex(cp)
    block = data[data.index("unicode_set_whitespace"):data.index("unicode_map_lowercase")]
    assert {int(h, 16) for h in re.findall(r"0x([0-9A-F]+),", block)} == _WHITESPACE


def test_registry_names_llama_cpp_pre_types() -> None:
    for name in ("smollm", "qwen2", "llama-bpe", "default", "gpt-2"):
        assert name in PRE_TOKENIZERS
