"""Hugging Face tokenizer files from a GGUF's tokenizer metadata (for `qconvert unpack`).

`write_hf_tokenizer(meta, outdir)` writes files that (a) make HF `tokenizers` / transformers tokenize as
the GGUF's vocabulary does, and (b) make llama.cpp's converter (and `tokenizer.tokenizer_metadata`) write
the same `tokenizer.*` values back:

- `tokenizer.ggml.model == "gpt2"` (byte-level BPE): tokenizer.json with the pre-tokenizer configuration
  that `tokenizer.ggml.pre` stands for (tokenizer.PRE_TOKENIZERS), so the converter's hash names the same
  pre-tokenizer; tokenizer_config.json.
- `tokenizer.ggml.model == "llama"` (sentencepiece): tokenizer.model rebuilt from tokens, scores and types
  (a BPE sentencepiece model; llama.cpp's SPM tokenizer is score-driven BPE, so it tokenizes alike), the
  `-1000`-score added tokens in tokenizer_config.json `added_tokens_decoder` / added_tokens.json as the
  converter reads them, and a Llama-2-style tokenizer.json (BPE with byte fallback) for HF.

tokenizer_class is PreTrainedTokenizerFast, so transformers uses tokenizer.json as written (except for
config model_types such as qwen2 and phi3, where transformers 5 builds its own class's pipeline).

What does not come back as it was:
- `[PAD{i}]` holes inside the vocabulary (not at its end) become ordinary vocabulary entries and come
  back NORMAL (at the end they come back UNUSED, from config.json `vocab_size`);
- GGUFs made by older converters: `[PAD{i}]` holes typed USER_DEFINED/UNKNOWN come back UNUSED; a missing
  add_bos_token comes back explicit when the tokenizer adds BOS (sentencepiece, llama-bpe: llama.cpp's
  default too); key order follows today's converter;
- eot/eom ids (converter quirks), and lstrip/rstrip/single_word flags of added tokens (not in a GGUF).

config.json must carry `vocab_size` = the number of GGUF tokens and the ids of `config_token_ids(meta)`
(special tokens that are not added tokens, or that break the converter's key order, are found there).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from gguf import TokenType

from quantize_cli.errors import OutputError, UnsupportedError
from quantize_cli.formats.tokenizer import (
    ADD_KEYS,
    ID_KEYS,
    K_ADD_PREFIX,
    K_CHAT_TEMPLATE,
    K_CHAT_TEMPLATE_N,
    K_CHAT_TEMPLATES,
    K_MERGES,
    K_MODEL,
    K_PRE,
    K_SCORES,
    K_TOKENS,
    K_TYPES,
    SCORE_ADDED,
    SCORE_PAD,
    SPECIAL_KINDS,
    looks_special,
    pre_tokenizer_named,
)

K_REMOVE_EXTRA_WS = "tokenizer.ggml.remove_extra_whitespaces"
ADDED_TYPES = (TokenType.CONTROL, TokenType.USER_DEFINED)
# Kinds in the order SpecialVocab reads them from tokenizer_config.json (and then from config.json).
# eot/eom ids come only from quirks of the converter (CodeLlama, odd templates) and are not written back.
ID_KIND_ORDER = [kind for kind in SPECIAL_KINDS if kind in ID_KEYS]


def tokenizer_meta_from_reader(reader: Any) -> dict[str, Any]:
    """All key/value pairs of a `gguf.GGUFReader` as plain Python values."""
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def config_token_ids(meta: dict[str, Any]) -> dict[str, int]:
    """The `*_token_id` entries config.json should carry (the converter falls back to them)."""
    return {f"{kind}_token_id": meta[ID_KEYS[kind]] for kind in ID_KIND_ORDER if ID_KEYS[kind] in meta}


def write_hf_tokenizer(meta: dict[str, Any], outdir: Path) -> list[Path]:
    """Write the tokenizer files for `meta` (GGUF key -> value) into `outdir`; return their paths."""
    model = meta.get(K_MODEL)
    if K_TOKENS not in meta or K_TYPES not in meta:
        raise UnsupportedError("the GGUF has no tokenizer.ggml.tokens / token_type: no tokenizer to write")
    if model == "gpt2":
        files = _gpt2_files(meta)
    elif model == "llama":
        files = _spm_files(meta)
    else:
        raise UnsupportedError(f"tokenizer.ggml.model {model!r} cannot be written as a Hugging Face tokenizer",
                               hint="qconvert writes 'gpt2' (byte-level BPE) and 'llama' (sentencepiece) tokenizers")
    outdir = Path(outdir)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{outdir}: cannot create the directory ({e})") from e
    written = []
    for name, content in files.items():
        data = content if isinstance(content, bytes) else (json.dumps(content, indent=2, ensure_ascii=False) + "\n").encode()
        written.append(_write_atomic(outdir / name, data))
    return written


def _write_atomic(path: Path, data: bytes) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot be written ({e})") from e
    return path


# ---------------------------------------------------------------------------------------------------
# The layout of the vocabulary: which ids are model vocabulary, which are added tokens.

class _Vocab:
    """Tokens, types and scores of a GGUF, and how they split into tokenizer.json parts."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.tokens: list[str] = list(meta[K_TOKENS])
        self.types: list[int] = [int(t) for t in meta[K_TYPES]]
        self.scores: list[float] = [float(s) for s in meta.get(K_SCORES, [0.0] * len(self.tokens))]
        if not (len(self.tokens) == len(self.types) == len(self.scores)):
            raise UnsupportedError("tokenizer.ggml.tokens, token_type and scores differ in length")

    def is_hole(self, i: int) -> bool:
        """A `[PAD{i}]` filler the converter writes for ids without a token (typed UNUSED today; older
        converters typed them USER_DEFINED or UNKNOWN)."""
        return self.tokens[i] == f"[PAD{i}]"

    def is_added(self, i: int) -> bool:
        return self.types[i] in ADDED_TYPES and not self.is_hole(i)

    def model_end(self) -> int:
        """End of the model vocabulary: after it come only a run of added tokens, then holes.

        tokenizers gives added tokens that are not in the model vocabulary consecutive ids from the
        vocabulary size on, so that run must be unbroken; anything earlier stays in the vocabulary.
        """
        end = len(self.tokens)
        while end > 0 and self.is_hole(end - 1):
            end -= 1
        while end > 0 and self.is_added(end - 1):
            end -= 1
        return end

    def model_vocab(self, end: int) -> dict[str, int]:
        vocab: dict[str, int] = {}
        for i in range(end):
            text = self.tokens[i]
            if text in vocab:
                raise UnsupportedError(f"token {text!r} appears twice (ids {vocab[text]} and {i}); "
                                       "a Hugging Face vocabulary cannot hold that")
            vocab[text] = i
        return vocab

    def added_tokens(self, kinds: tuple[int, ...] = ADDED_TYPES) -> list[dict[str, Any]]:
        return [_added_token(i, text, special=t != TokenType.USER_DEFINED)
                for i, (text, t) in enumerate(zip(self.tokens, self.types))
                if t in kinds and not self.is_hole(i)]


def _added_token(token_id: int, content: str, *, special: bool) -> dict[str, Any]:
    return {"id": token_id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


# ---------------------------------------------------------------------------------------------------
# Special tokens, add_bos/add_eos, post-processor, tokenizer_config.json (shared by both kinds).

def _special_ids(meta: dict[str, Any]) -> list[tuple[str, int]]:
    """(kind, id) in the GGUF's own key order."""
    by_key = {key: kind for kind, key in ID_KEYS.items()}
    return [(by_key[key], int(value)) for key, value in meta.items() if key in by_key]


def _named_in_config(meta: dict[str, Any], added_ids: set[int]) -> dict[str, int]:
    """Special tokens to name in tokenizer_config.json; the others come from config.json.

    SpecialVocab resolves tokenizer_config names first, in SPECIAL_KINDS order, then config.json ids; naming
    the longest prefix of the GGUF's order that follows that order reproduces the GGUF's key order. Only
    added tokens can be named: transformers turns every named token into a special added token.
    """
    named: dict[str, int] = {}
    last = -1
    for kind, token_id in _special_ids(meta):
        if kind not in ID_KIND_ORDER:
            continue
        rank = ID_KIND_ORDER.index(kind)
        if rank < last or token_id not in added_ids:
            break
        named[kind], last = token_id, rank
    return named


def _template_processing(meta: dict[str, Any], vocab: _Vocab, add_bos: bool, add_eos: bool) -> dict[str, Any] | None:
    """A TemplateProcessing that SpecialVocab reads back as the GGUF's add_bos / add_eos / add_sep."""
    ids = dict(_special_ids(meta))
    bos = vocab.tokens[ids["bos"]] if add_bos and "bos" in ids else None
    eos = vocab.tokens[ids["eos"]] if add_eos and "eos" in ids else None
    if bos is None and eos is None:
        return None

    def special(text: str, type_id: int) -> dict[str, Any]:
        return {"SpecialToken": {"id": text, "type_id": type_id}}

    def sequence(name: str, type_id: int) -> dict[str, Any]:
        return {"Sequence": {"id": name, "type_id": type_id}}

    head = [special(bos, 0)] if bos else []
    tail = [special(eos, 0)] if eos else []
    # SpecialVocab sets add_sep from the tokens between A and B of the pair template: none -> no key;
    # an eos there -> true (it needs two when the template also ends with eos); another token -> false.
    middle: list[str] = []
    add_sep = meta.get(ADD_KEYS["sep"])
    if add_sep and "eos" in ids:
        middle = [vocab.tokens[ids["eos"]]] * (2 if eos else 1)
    elif add_sep is not None and not add_sep and bos:
        middle = [bos]
    texts = {t for t in (bos, eos, *middle) if t}
    return {
        "type": "TemplateProcessing",
        "single": [*head, sequence("A", 0), *tail],
        "pair": [*head, sequence("A", 0), *(special(t, 1) for t in middle), sequence("B", 1), *tail],
        "special_tokens": {t: {"id": t, "ids": [vocab.tokens.index(t)], "tokens": [t]} for t in sorted(texts)},
    }


def _tokenizer_config(meta: dict[str, Any], vocab: _Vocab, named: dict[str, int],
                      decoder_tokens: list[dict[str, Any]]) -> dict[str, Any]:
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    for kind in ("bos", "eos"):
        if ADD_KEYS[kind] in meta:
            config[f"add_{kind}_token"] = bool(meta[ADD_KEYS[kind]])
    if K_ADD_PREFIX in meta:
        config["add_prefix_space"] = bool(meta[K_ADD_PREFIX])
    for kind in ("bos", "eos", "unk", "sep", "pad", "mask"):
        config[f"{kind}_token"] = vocab.tokens[named[kind]] if kind in named else None
    if (template := _chat_template(meta)) is not None:
        config["chat_template"] = template
    arch = meta.get("general.architecture")
    if arch and f"{arch}.context_length" in meta:
        config["model_max_length"] = int(meta[f"{arch}.context_length"])
    config["added_tokens_decoder"] = {
        str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
        for t in decoder_tokens
    }
    return config


def _chat_template(meta: dict[str, Any]) -> str | list[dict[str, str]] | None:
    default = meta.get(K_CHAT_TEMPLATE)
    names = meta.get(K_CHAT_TEMPLATES) or []
    if not names:
        return default
    named = [{"name": "default", "template": default}] if default is not None else []
    return named + [{"name": n, "template": meta[K_CHAT_TEMPLATE_N.format(name=n)]} for n in names]


# ---------------------------------------------------------------------------------------------------
# Byte-level BPE ("gpt2").

def _gpt2_files(meta: dict[str, Any]) -> dict[str, Any]:
    vocab = _Vocab(meta)
    pre = pre_tokenizer_named(meta.get(K_PRE, ""))
    end = vocab.model_end()
    added = vocab.added_tokens()
    named = _named_in_config(meta, {t["id"] for t in added})

    add_bos = meta.get(ADD_KEYS["bos"], pre.adds_bos)
    add_eos = meta.get(ADD_KEYS["eos"], False)
    processors = []
    if ADD_KEYS["bos"] in meta and ADD_KEYS["eos"] in meta:  # ByteLevel: SpecialVocab defaults both to false
        processors.append({"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True})
    if (template := _template_processing(meta, vocab, add_bos, add_eos)) is not None:
        processors.append(template)

    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": pre.normalizer,
        "pre_tokenizer": pre.pre_tokenizer,
        "post_processor": _sequence_or_single(processors),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": pre.ignore_merges,
            "vocab": vocab.model_vocab(end),
            "merges": [_merge_pair(m) for m in meta.get(K_MERGES, [])],
        },
    }
    return {"tokenizer.json": tokenizer_json,
            "tokenizer_config.json": _tokenizer_config(meta, vocab, named, added)}


def _sequence_or_single(processors: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not processors:
        return None
    if len(processors) == 1:
        return processors[0]
    return {"type": "Sequence", "processors": processors}


def _merge_pair(merge: str) -> list[str]:
    parts = merge.split(" ")
    if len(parts) != 2:
        raise UnsupportedError(f"merge {merge!r} is not two space-separated parts")
    return parts


# ---------------------------------------------------------------------------------------------------
# Sentencepiece ("llama").

def _spm_files(meta: dict[str, Any]) -> dict[str, Any]:
    vocab = _Vocab(meta)
    n = len(vocab.tokens)
    unk_id = _unknown_id(meta, vocab)
    # Tokens the converter sets from tokenizer_config `added_tokens_decoder` (score -1000, CONTROL or
    # USER_DEFINED), or from added_tokens.json when a USER_DEFINED one looks special (the decoder would
    # make it CONTROL). Everything else below the last such "piece" is a sentencepiece piece.
    overridden = {i for i in range(n) if vocab.is_added(i) and vocab.scores[i] == SCORE_ADDED}
    from_json = {i for i in overridden if vocab.types[i] == TokenType.USER_DEFINED and looks_special(vocab.tokens[i])}
    holes = {i for i in range(n) if vocab.is_hole(i) and vocab.scores[i] == SCORE_PAD}
    pieces_end = 1 + max((i for i in range(n) if i not in overridden and i not in holes), default=-1)

    pieces = []
    for i in range(pieces_end):
        text, kind = vocab.tokens[i], vocab.types[i]
        if i == unk_id:
            kind = TokenType.UNKNOWN
        if i in overridden:  # placeholder piece; the converter takes the text, type and score from the decoder
            pieces.append((text.replace(" ", "▁"), 0.0, kind))
        else:
            pieces.append((text, vocab.scores[i], kind))
    if len({p[0] for p in pieces}) != len(pieces):
        raise UnsupportedError("the sentencepiece vocabulary has a token twice; it cannot be rebuilt")

    added = vocab.added_tokens((TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN))
    decoder_tokens = [t for t in added if t["id"] in overridden and t["id"] not in from_json]
    named = _named_in_config(meta, {t["id"] for t in added})
    model = _sentencepiece_model(meta, vocab, pieces, unk_id)

    files: dict[str, Any] = {
        "tokenizer.model": model,
        "tokenizer.json": _spm_tokenizer_json(meta, vocab, pieces, added, unk_id),
        "tokenizer_config.json": _tokenizer_config(meta, vocab, named, decoder_tokens),
    }
    if from_json:
        files["added_tokens.json"] = {vocab.tokens[i]: i for i in sorted(from_json)}
    return files


def _unknown_id(meta: dict[str, Any], vocab: _Vocab) -> int:
    if (unk := meta.get(ID_KEYS["unk"])) is not None:
        return int(unk)
    for i, kind in enumerate(vocab.types):
        if kind == TokenType.UNKNOWN and not vocab.is_hole(i):
            return i
    if "<unk>" in vocab.tokens:  # typed CONTROL by tokenizer_config's added_tokens_decoder
        return vocab.tokens.index("<unk>")
    raise UnsupportedError("the sentencepiece vocabulary has no unknown token; sentencepiece needs one")


def _spm_tokenizer_json(meta: dict[str, Any], vocab: _Vocab, pieces: list[tuple[str, float, int]],
                        added: list[dict[str, Any]], unk_id: int) -> dict[str, Any]:
    """A Llama-2-style HF tokenizer: BPE with byte fallback, merges ranked by piece score."""
    prefix = bool(meta.get(K_ADD_PREFIX, True))
    end = vocab.model_end()
    model_vocab = vocab.model_vocab(max(end, len(pieces)))
    normalizers: list[dict[str, Any]] = [{"type": "Prepend", "prepend": "▁"}] if prefix else []
    normalizers.append({"type": "Replace", "pattern": {"String": " "}, "content": "▁"})
    decoders: list[dict[str, Any]] = [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    if prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": None,
        "post_processor": _template_processing(meta, vocab, bool(meta.get(ADD_KEYS["bos"], True)),
                                               bool(meta.get(ADD_KEYS["eos"], False))),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": vocab.tokens[unk_id], "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
            "vocab": model_vocab,
            "merges": _spm_merges(pieces),
        },
    }


def _spm_merges(pieces: list[tuple[str, float, int]]) -> list[list[str]]:
    """BPE merges equivalent to sentencepiece's score-driven merging of NORMAL pieces: every split of a
    piece into two pieces, ranked by the merged piece's score (higher first), then its id."""
    ids = {text: i for i, (text, _, kind) in enumerate(pieces) if kind == TokenType.NORMAL}
    ranked = []
    for text, i in ids.items():
        splits = [(text[:k], text[k:]) for k in range(1, len(text)) if text[:k] in ids and text[k:] in ids]
        splits.sort(key=lambda pair: (ids[pair[0]], ids[pair[1]]))
        ranked.extend((-pieces[i][1], i, n, pair) for n, pair in enumerate(splits))
    ranked.sort(key=lambda r: r[:3])
    return [list(r[3]) for r in ranked]


def _sentencepiece_model(meta: dict[str, Any], vocab: _Vocab, pieces: list[tuple[str, float, int]],
                         unk_id: int) -> bytes:
    """A sentencepiece ModelProto (sentencepiece_model.proto), encoded by hand: BPE, identity normalizer."""
    ids = dict(_special_ids(meta))

    def control_id(kind: str) -> int:
        i = ids.get(kind, -1)
        return i if 0 <= i < len(pieces) and pieces[i][2] == TokenType.CONTROL else -1

    trainer = b"".join([
        _field_varint(3, 2),  # model_type = BPE
        _field_varint(4, len(pieces)),  # vocab_size
        _field_varint(35, any(p[2] == TokenType.BYTE for p in pieces)),  # byte_fallback
        _field_varint(40, unk_id),
        _field_varint(41, control_id("bos")),
        _field_varint(42, control_id("eos")),
        _field_varint(43, control_id("pad")),
        _field_bytes(45, pieces[unk_id][0].encode()),
        *(_field_bytes(46 + n, pieces[control_id(kind)][0].encode())
          for n, kind in enumerate(("bos", "eos", "pad"), start=0) if control_id(kind) >= 0),
    ])
    normalizer = b"".join([
        _field_bytes(1, b"identity"),
        _field_varint(3, bool(meta.get(K_ADD_PREFIX, True))),  # add_dummy_prefix
        _field_varint(4, bool(meta.get(K_REMOVE_EXTRA_WS, False))),  # remove_extra_whitespaces
        _field_varint(5, True),  # escape_whitespaces
    ])
    body = [_field_bytes(1, _field_bytes(1, text.encode()) + _field_float(2, score) + _field_varint(3, int(kind)))
            for text, score, kind in pieces]
    return b"".join([*body, _field_bytes(2, trainer), _field_bytes(3, normalizer)])


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32 values are encoded as 64-bit two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3 | 0) + _varint(int(value))


def _field_float(number: int, value: float) -> bytes:
    return _varint(number << 3 | 5) + struct.pack("<f", value)


def _field_bytes(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value
