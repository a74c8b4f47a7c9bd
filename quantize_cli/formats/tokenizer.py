"""Tokenizer metadata (`tokenizer.*` keys) as llama.cpp's converter writes it, without transformers.

`tokenizer_metadata(model_dir, arch=..., vocab_size=...)` reads the tokenizer files of a Hugging Face
folder and returns the key/value pairs in the order the converter writes them. The reference is the
converter bundled with llama-cpp-python 0.3.36: `conversion/base.py` (TextModel vocab paths),
`conversion/llama.py` and `conversion/qwen.py` (which path each architecture takes) and the bundled
`gguf-py/gguf/vocab.py` (SpecialVocab), which is newer than PyPI gguf 0.19.0.

    arch "llama":  tokenizer.model                          -> sentencepiece path ("llama", scores, types)
                   tokenizer.json, BPE + byte_fallback       -> Llama-2 HF path    ("llama", scores -1000)
                   tokenizer.json, byte-level BPE            -> GPT-2 path         ("gpt2", merges)
    arch "qwen2":  tokenizer.model -> sentencepiece path, else the GPT-2 path

The converter names the pre-tokenizer (`tokenizer.ggml.pre`) by hashing the token ids transformers gives
for a probe text. We name it from the tokenizer.json normalizer and pre_tokenizer configuration instead
(PRE_TOKENIZERS); tokenizer_export.py writes those same configurations back.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import ascii_letters, digits
from typing import Any

from gguf import GGUFValueType, TokenType

from quantize_cli.errors import InputError, UnsupportedError
from quantize_cli.formats.kv import KV, kv_array, kv_bool, kv_str, kv_u32

# Key names. Two of them are missing from PyPI gguf 0.19.0's constants, so all live here.
K_MODEL = "tokenizer.ggml.model"
K_PRE = "tokenizer.ggml.pre"
K_TOKENS = "tokenizer.ggml.tokens"
K_TYPES = "tokenizer.ggml.token_type"
K_SCORES = "tokenizer.ggml.scores"
K_MERGES = "tokenizer.ggml.merges"
K_ADD_PREFIX = "tokenizer.ggml.add_space_prefix"
K_CHAT_TEMPLATE = "tokenizer.chat_template"
K_CHAT_TEMPLATE_N = "tokenizer.chat_template.{name}"
K_CHAT_TEMPLATES = "tokenizer.chat_templates"
K_LOWERCASE = "tokenizer.ggml.normalizer.lowercase"
K_STRIP_ACCENTS = "tokenizer.ggml.normalizer.strip_accents"
# Special token kinds that have a GGUF key ("cls", "prefix", "suffix", "middle" have none: skipped).
ID_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",  # sic, as in llama.cpp
    "pad": "tokenizer.ggml.padding_token_id",
    "mask": "tokenizer.ggml.mask_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
    "eom": "tokenizer.ggml.eom_token_id",
}
ADD_KEYS = {
    "bos": "tokenizer.ggml.add_bos_token",
    "eos": "tokenizer.ggml.add_eos_token",
    "sep": "tokenizer.ggml.add_sep_token",
}
SPECIAL_KINDS = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")

SCORE_ADDED = -1000.0  # score the converter gives added / user-defined / HF-path tokens
SCORE_PAD = -10000.0  # score of the [PAD{i}] holes of a sentencepiece vocabulary
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


# ---------------------------------------------------------------------------------------------------
# Pre-tokenizers: one table, used to name `tokenizer.ggml.pre` here and to write tokenizer.json back.

def _byte_level(trim_offsets: bool, use_regex: bool) -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": trim_offsets, "use_regex": use_regex}


def _split(pattern: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}


def _sequence(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Sequence", "pretokenizers": list(steps)}


LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class PreTokenizer:
    """A `tokenizer.ggml.pre` name and the tokenizer.json configuration of the models it stands for."""

    name: str
    normalizer: dict[str, Any] | None
    pre_tokenizer: dict[str, Any]
    ignore_merges: bool = False  # BPE `ignore_merges` of the original (Llama-3)
    adds_bos: bool = False  # the original prepends BOS; it changes the converter's hash
    marker: str | None = None  # a token present only in this entry's models, to part entries with one config


PRE_TOKENIZERS: tuple[PreTokenizer, ...] = (
    # meta-llama/Meta-Llama-3-8B
    PreTokenizer("llama-bpe", None, _sequence(_split(LLAMA3_REGEX), _byte_level(True, False)),
                 ignore_merges=True, adds_bos=True),
    # Qwen/Qwen1.5-7B, Qwen2, Qwen2.5 (incl. Coder)
    PreTokenizer("qwen2", {"type": "NFC"}, _sequence(_split(QWEN2_REGEX), _byte_level(False, False))),
    # HuggingFaceTB/SmolLM-135M, SmolLM2
    PreTokenizer("smollm", None, _sequence({"type": "Digits", "individual_digits": True}, _byte_level(True, True))),
    # bigcode/starcoder2-3b: SmolLM's configuration, told apart by its FIM tokens
    PreTokenizer("starcoder", None, _sequence({"type": "Digits", "individual_digits": True}, _byte_level(True, True)),
                 marker="<fim_prefix>"),
    # openai-community/gpt2
    PreTokenizer("gpt-2", None, _byte_level(True, True)),
)


def pre_tokenizer_named(name: str) -> PreTokenizer:
    for entry in PRE_TOKENIZERS:
        if entry.name == name:
            return entry
    raise UnsupportedError(f"tokenizer.ggml.pre {name!r} has no known tokenizer.json configuration",
                           hint=f"supported: {', '.join(_supported_names())}")


def _supported_names() -> list[str]:
    return [entry.name for entry in PRE_TOKENIZERS]


def _fingerprint(normalizer: Any, pre_tokenizer: Any) -> str:
    """The parts of a configuration that change token ids (`trim_offsets` changes offsets only)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "trim_offsets"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return json.dumps([strip(normalizer), strip(pre_tokenizer)], sort_keys=True)


def detect_pre(tokenizer_json: dict[str, Any], vocab: dict[str, int], *, path: Path) -> str:
    """Name the pre-tokenizer of a byte-level BPE tokenizer.json, as the converter's hash would."""
    fingerprint = _fingerprint(tokenizer_json.get("normalizer"), tokenizer_json.get("pre_tokenizer"))
    matches = [e for e in PRE_TOKENIZERS if _fingerprint(e.normalizer, e.pre_tokenizer) == fingerprint]
    marked = [e for e in matches if e.marker is not None and e.marker in vocab]
    unmarked = [e for e in matches if e.marker is None]
    if marked or unmarked:
        return (marked or unmarked)[0].name
    raise UnsupportedError(
        f"{path}: unknown pre-tokenizer (normalizer {json.dumps(tokenizer_json.get('normalizer'))}, "
        f"pre_tokenizer {json.dumps(tokenizer_json.get('pre_tokenizer'))})",
        hint=f"qconvert knows the pre-tokenizers {', '.join(_supported_names())}",
    )


def looks_special(token: str) -> bool:
    """Added tokens the converter makes CONTROL even when they are not marked special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


_UNICODE_TO_BYTE = {c: b for b, c in bytes_to_unicode().items()}


# ---------------------------------------------------------------------------------------------------
# The files of a model folder, read once.

@dataclass
class _Folder:
    path: Path
    tokenizer_json: dict[str, Any] | None
    tokenizer_config: dict[str, Any] | None
    config: dict[str, Any] | None
    has_spm: bool  # tokenizer.model exists


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when the file does not exist."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})",
                         hint="re-download the file or fix it by hand") from e
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot be read ({e})") from e
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _read_folder(model_dir: Path) -> _Folder:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: not a directory")
    has_spm = (model_dir / "tokenizer.model").is_file()
    tokenizer_json = _read_json(model_dir / "tokenizer.json")
    if not has_spm and tokenizer_json is None:
        raise InputError(f"{model_dir}: no tokenizer found (looked for tokenizer.model and tokenizer.json)",
                         hint="copy the tokenizer files of the model into this directory")
    return _Folder(model_dir, tokenizer_json, _read_json(model_dir / "tokenizer_config.json"),
                   _read_json(model_dir / "config.json"), has_spm)


# ---------------------------------------------------------------------------------------------------
# Output: GGUFWriter semantics (insertion order; a re-added key keeps its place; empty values skipped).

class _Writer:
    def __init__(self) -> None:
        self._kv: dict[str, KV] = {}

    def put(self, kv: KV) -> None:
        self._kv[kv.key] = kv

    def string(self, key: str, value: str) -> None:
        if value:
            self.put(kv_str(key, value))

    def array(self, key: str, values: list[Any], sub_type: GGUFValueType) -> None:
        if values:
            self.put(kv_array(key, values, sub_type))

    def vocab(self, model: str, pre: str, tokens: list[str], types: list[int], scores: list[float] | None) -> None:
        self.string(K_MODEL, model)
        self.string(K_PRE, pre)
        self.array(K_TOKENS, tokens, GGUFValueType.STRING)
        if scores is not None:
            self.array(K_SCORES, scores, GGUFValueType.FLOAT32)
        self.array(K_TYPES, types, GGUFValueType.INT32)

    def items(self) -> list[KV]:
        return list(self._kv.values())


# ---------------------------------------------------------------------------------------------------
# Entry point and the per-architecture choice of path.

def tokenizer_metadata(model_dir: Path, *, arch: str, vocab_size: int | None) -> list[KV]:
    """The `tokenizer.*` keys the converter writes for `model_dir`, in its order.

    `vocab_size` is config.json's `vocab_size` (None when absent: the tokenizer's own size is used).
    """
    try:
        choose = _ARCH_VOCAB[arch]
    except KeyError:
        raise UnsupportedError(f"no tokenizer rules for architecture {arch!r}",
                               hint=f"supported: {', '.join(_ARCH_VOCAB)}") from None
    folder = _read_folder(Path(model_dir))
    out = _Writer()
    choose(out, folder, vocab_size)
    return out.items()


def _llama_vocab(out: _Writer, folder: _Folder, vocab_size: int | None) -> None:
    """LlamaModel.set_vocab (also Mistral)."""
    config = folder.tokenizer_config or {}
    if (add_prefix := config.get("add_prefix_space")) is not None:
        out.put(kv_bool(K_ADD_PREFIX, add_prefix))
    if folder.has_spm:
        _sentencepiece_path(out, folder, vocab_size)
    elif _is_llama_hf(folder):
        _llama_hf_path(out, folder)
    else:
        _gpt2_path(out, folder, vocab_size)

    size = vocab_size if vocab_size is not None else 32000
    if size == 32016:  # CodeLlama: FIM ids; only "eot" has a GGUF key
        special = _SpecialVocab(folder, load_merges=False, n_vocab=None,
                                kinds=("prefix", "suffix", "middle", "eot"))
        for kind, token_id in (("prefix", 32007), ("suffix", 32008), ("middle", 32009), ("eot", 32010)):
            special.set_id(kind, token_id)
        special.emit(out)
    if size == 49152:  # granite small models, and SmolLM/SmolLM2, which share the vocabulary size
        out.put(kv_bool(ADD_KEYS["bos"], False))


def _qwen2_vocab(out: _Writer, folder: _Folder, vocab_size: int | None) -> None:
    """Qwen2Model.set_vocab."""
    if folder.has_spm:
        _sentencepiece_path(out, folder, vocab_size)
    else:
        _gpt2_path(out, folder, vocab_size)


_ARCH_VOCAB: dict[str, Callable[[_Writer, _Folder, int | None], None]] = {
    "llama": _llama_vocab,
    "qwen2": _qwen2_vocab,
}


def _is_llama_hf(folder: _Folder) -> bool:
    """The checks of gguf-py's LlamaHfVocab: Llama-2-style BPE with byte fallback, not Llama-3."""
    tj = folder.tokenizer_json
    if tj is None:
        return False
    model = _model_section(folder)
    if model.get("type") == "BPE" and model.get("ignore_merges", False) and not model.get("byte_fallback", True):
        return False  # Llama 3
    decoder = tj.get("decoder")
    return (model.get("type") == "BPE" and bool(model.get("byte_fallback", False))
            and isinstance(decoder, dict) and decoder.get("type") == "Sequence")


def _model_section(folder: _Folder) -> dict[str, Any]:
    model = (folder.tokenizer_json or {}).get("model")
    if not isinstance(model, dict):
        raise InputError(f"{folder.path / 'tokenizer.json'}: has no 'model' object")
    return model


# ---------------------------------------------------------------------------------------------------
# Sentencepiece path (_set_vocab_sentencepiece / _create_vocab_sentencepiece).

def _sentencepiece_path(out: _Writer, folder: _Folder, vocab_size: int | None) -> None:
    tokens, scores, types = _sentencepiece_vocab(folder, vocab_size)
    out.vocab("llama", "default", tokens, types, scores)
    _SpecialVocab(folder, load_merges=False, n_vocab=len(tokens)).emit(out)


def _sentencepiece_vocab(folder: _Folder, vocab_size: int | None) -> tuple[list[str], list[float], list[int]]:
    from sentencepiece import SentencePieceProcessor

    path = folder.path / "tokenizer.model"
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as e:
        raise InputError(f"{path}: not a sentencepiece model ({e})") from e
    n_vocab = vocab_size or sp.vocab_size()
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [SCORE_PAD] * n_vocab
    types = [int(TokenType.UNUSED)] * n_vocab
    for i in range(min(sp.vocab_size(), n_vocab)):
        tokens[i] = sp.IdToPiece(i)
        scores[i] = sp.GetScore(i)
        if sp.IsUnknown(i):
            types[i] = TokenType.UNKNOWN
        elif sp.IsControl(i):
            types[i] = TokenType.CONTROL
        elif sp.IsUnused(i):
            types[i] = TokenType.UNUSED
        elif sp.IsByte(i):
            types[i] = TokenType.BYTE
        else:
            types[i] = TokenType.NORMAL

    added = _read_json(folder.path / "added_tokens.json") or {}
    for text, token_id in added.items():
        if token_id < n_vocab:
            tokens[token_id], scores[token_id], types[token_id] = text, SCORE_ADDED, TokenType.USER_DEFINED

    decoder = (folder.tokenizer_config or {}).get("added_tokens_decoder", {})
    for key, data in decoder.items():
        token_id, text = int(key), data["content"]
        if token_id >= n_vocab:
            continue
        if data.get("special") or looks_special(text):
            types[token_id] = TokenType.CONTROL
        else:
            text = text.replace("▁", " ")  # user-defined tokens are matched on raw text
            types[token_id] = TokenType.USER_DEFINED
        tokens[token_id], scores[token_id] = text, SCORE_ADDED
    return tokens, scores, [int(t) for t in types]


# ---------------------------------------------------------------------------------------------------
# What transformers' AutoTokenizer shows the converter: vocabulary, added tokens, named special tokens.

@dataclass
class _Added:
    content: str
    special: bool
    normalized: bool


class _HfView:
    """The tokenizer as transformers loads it from tokenizer.json + tokenizer_config.json.

    Added tokens are tokenizer.json's, then tokenizer_config's `added_tokens_decoder` entries it lacks,
    then named special tokens (bos_token, ...) that are not yet added, given the next free id the way
    the tokenizers library assigns them.
    """

    LLAMA_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", "CodeLlamaTokenizerFast")

    def __init__(self, folder: _Folder) -> None:
        path = folder.path / "tokenizer.json"
        model = _model_section(folder)
        vocab = model.get("vocab")
        if not isinstance(vocab, dict):
            raise UnsupportedError(f"{path}: model type {model.get('type')!r} is not supported",
                                   hint="qconvert reads BPE tokenizers (byte-level or with byte fallback)")
        self.base: dict[str, int] = vocab
        self.added: dict[int, _Added] = {}
        for entry in (folder.tokenizer_json or {}).get("added_tokens", []):
            special = bool(entry.get("special", False))
            self.added[entry["id"]] = _Added(entry["content"], special, bool(entry.get("normalized", not special)))
        config = folder.tokenizer_config or {}
        for key, entry in config.get("added_tokens_decoder", {}).items():
            if int(key) not in self.added:
                special = bool(entry.get("special", False))
                self.added[int(key)] = _Added(entry["content"], special,
                                              bool(entry.get("normalized", not special)))
        self.named = self._named_special_tokens(folder)
        for text in self.named:
            if text not in {a.content for a in self.added.values()}:
                self.added[self._next_id(text)] = _Added(text, True, False)
        self.vocab = {**self.base, **{a.content: i for i, a in sorted(self.added.items())}}

    def _named_special_tokens(self, folder: _Folder) -> list[str]:
        config = folder.tokenizer_config or {}
        cls = config.get("tokenizer_class")
        if cls is None:
            cls = {"llama": "LlamaTokenizer", "mistral": "LlamaTokenizer"}.get((folder.config or {}).get("model_type"))
        defaults = {"unk": "<unk>", "bos": "<s>", "eos": "</s>"} if cls in self.LLAMA_CLASSES else {}
        names: list[str] = []
        for kind in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
            value = config.get(f"{kind}_token", defaults.get(kind))
            text = _token_content(value)
            if text is not None and text not in names:
                names.append(text)
        extra = config.get("extra_special_tokens", config.get("additional_special_tokens")) or []
        for value in (extra.values() if isinstance(extra, dict) else extra):
            text = _token_content(value)
            if text is not None and text not in names:
                names.append(text)
        return names

    def _next_id(self, text: str) -> int:
        if text in self.base:
            return self.base[text]
        top = max(self.added, default=-1)
        return top + 1 if top >= len(self.base) else len(self.base)


def _token_content(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


# ---------------------------------------------------------------------------------------------------
# GPT-2 path (_set_vocab_gpt2 / get_vocab_base).

def _gpt2_path(out: _Writer, folder: _Folder, vocab_size: int | None) -> None:
    tokens, types, pre = _gpt2_vocab(folder, vocab_size)
    out.vocab("gpt2", pre, tokens, types, None)
    _SpecialVocab(folder, load_merges=True, n_vocab=None).emit(out)


def _gpt2_vocab(folder: _Folder, vocab_size: int | None) -> tuple[list[str], list[int], str]:
    path = folder.path / "tokenizer.json"
    tj = folder.tokenizer_json
    if tj is None:
        raise InputError(f"{folder.path}: no tokenizer.json (needed for a BPE tokenizer without tokenizer.model)")
    model = _model_section(folder)
    decoder = tj.get("decoder") or {}
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel":
        raise UnsupportedError(f"{path}: not a byte-level BPE tokenizer (model {model.get('type')!r}, "
                               f"decoder {decoder.get('type')!r})",
                               hint="qconvert reads byte-level BPE, sentencepiece and Llama-2-style BPE tokenizers")
    hf = _HfView(folder)
    n_vocab = vocab_size if vocab_size is not None else len(hf.vocab)
    if max(hf.vocab.values()) >= n_vocab:
        raise InputError(f"{path}: token id {max(hf.vocab.values())} is beyond config.json vocab_size {n_vocab}")
    pre = detect_pre(tj, hf.vocab, path=path)

    reverse = {i: text for text, i in hf.vocab.items()}
    added_texts = {a.content for a in hf.added.values()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        text = reverse[i]
        added = hf.added.get(i)
        if text in added_texts and added is not None:
            if not added.normalized:  # the converter takes decode(encode(text)) for these
                text = _byte_level_decode(text)
            if added.special or looks_special(text):
                types.append(TokenType.CONTROL)
            else:
                text = text.replace("▁", " ")
                types.append(TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
        tokens.append(text)
    return tokens, [int(t) for t in types], pre


def _byte_level_decode(text: str) -> str:
    """What tokenizers' ByteLevel decoder makes of one added token: its characters read as GPT-2 byte
    symbols when every one of them is one, else the text unchanged."""
    try:
        raw = bytes(_UNICODE_TO_BYTE[c] for c in text)
    except KeyError:
        return text
    return raw.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------------
# Llama-2 HF path (_set_vocab_llama_hf / gguf-py LlamaHfVocab).

def _llama_hf_path(out: _Writer, folder: _Folder) -> None:
    hf = _HfView(folder)
    base_size = len(hf.base)
    reverse = {i: text for text, i in hf.vocab.items()}
    special_ids = {hf.vocab[text] for text in hf.named}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(base_size):
        if i not in reverse:
            raise InputError(f"{folder.path / 'tokenizer.json'}: token id {i} is missing from the vocabulary")
        text = reverse[i]
        tokens.append(text)
        if BYTE_TOKEN.fullmatch(text):
            types.append(TokenType.BYTE)
        else:
            types.append(TokenType.CONTROL if i in special_ids else TokenType.NORMAL)
    for i, added in sorted(hf.added.items()):
        if i >= base_size:
            tokens.append(added.content)
            types.append(TokenType.CONTROL if added.content in hf.named else TokenType.USER_DEFINED)
    out.vocab("llama", "default", tokens, [int(t) for t in types], [SCORE_ADDED] * len(tokens))
    _SpecialVocab(folder, load_merges=False, n_vocab=len(tokens)).emit(out)


# ---------------------------------------------------------------------------------------------------
# SpecialVocab (bundled gguf-py/gguf/vocab.py): merges, special ids, add_* flags, chat template.

class _SpecialVocab:
    def __init__(self, folder: _Folder, *, load_merges: bool, n_vocab: int | None,
                 kinds: tuple[str, ...] = SPECIAL_KINDS) -> None:
        self.folder = folder
        self.n_vocab = n_vocab
        self.load_merges = load_merges
        self.kinds = list(kinds)
        self.ids: dict[str, int] = {}
        self.add: dict[str, bool] = {}
        self.merges: list[str] = []
        self.chat_template: Any = None
        self.lowercase: bool | None = None
        self.strip_accents: bool | None = None
        self._from_tokenizer_files()
        self._from_config_json()
        if load_merges and not self.merges:
            self._merges_txt()

    def set_id(self, kind: str, token_id: Any) -> None:
        if not isinstance(token_id, int):
            return
        if token_id < 0:
            raise InputError(f"{self.folder.path}: invalid id {token_id} for the {kind} token")
        if (self.n_vocab is None or token_id < self.n_vocab) and kind not in self.ids:
            self.ids[kind] = token_id

    def emit(self, out: _Writer) -> None:
        out.array(K_MERGES, self.merges, GGUFValueType.STRING)
        for kind, token_id in self.ids.items():
            if kind in ID_KEYS:
                out.put(kv_u32(ID_KEYS[kind], token_id))
        for kind, value in self.add.items():
            if kind in ADD_KEYS:
                out.put(kv_bool(ADD_KEYS[kind], value))
        if self.chat_template is not None:
            _emit_chat_template(out, self.chat_template)
        if self.lowercase is not None:
            out.put(kv_bool(K_LOWERCASE, self.lowercase))
        if self.strip_accents is not None:
            out.put(kv_bool(K_STRIP_ACCENTS, self.strip_accents))

    def _parse_normalizer(self, normalizer: dict[str, Any]) -> None:
        kind = normalizer.get("type")
        if kind == "Lowercase":
            self.lowercase = True
        elif kind == "StripAccents":
            self.strip_accents = True
        elif kind == "BertNormalizer":
            if "lowercase" in normalizer:
                self.lowercase = normalizer["lowercase"]
            if "strip_accents" in normalizer:
                self.strip_accents = normalizer["strip_accents"]
        elif kind == "Sequence":
            for step in normalizer.get("normalizers", []):
                self._parse_normalizer(step)

    def _from_tokenizer_files(self) -> None:
        tj = self.folder.tokenizer_json
        added_tokens: list[dict[str, Any]] = []
        if tj is not None:
            if self.load_merges:
                self.merges = _merges(tj.get("model", {}).get("merges"), self.folder.path / "tokenizer.json")
            if normalizer := tj.get("normalizer"):
                self._parse_normalizer(normalizer)
            added_tokens = tj.get("added_tokens", [])
        # The converter edits tokenizer_config in memory (bos from cls, eos from sep, ...): work on a copy.
        config = copy.deepcopy(self.folder.tokenizer_config)
        if tj:
            self._post_processor(tj, config)
        if not config:
            return
        self._load_chat_template(config)
        for kind in self.kinds:
            flag = config.get(f"add_{kind}_token")
            if isinstance(flag, bool) and kind not in self.add:
                self.add[kind] = flag  # the post-processor's value wins over tokenizer_config's
            text = _token_content(config.get(f"{kind}_token"))
            if text is None:
                continue
            token_id = next((t.get("id") for t in added_tokens if t.get("content") == text), None)
            self.set_id(kind, token_id)

    def _post_processor(self, tj: dict[str, Any], config: dict[str, Any] | None) -> None:
        """add_bos/add_eos/add_sep from tokenizer.json's post_processor, as SpecialVocab parses it."""
        cfg = config or {}
        bos, cls, eos, sep = (cfg.get("bos_token"), cfg.get("cls_token"), cfg.get("eos_token"), cfg.get("sep_token"))
        if not bos and cls and config:
            config["bos_token"] = bos = cls
        if not eos and sep and config:
            config["eos_token"] = eos = sep
        post = tj.get("post_processor")
        if not post:
            return
        for proc in post.get("processors", [post]):
            kind = proc.get("type")
            if kind == "ByteLevel":
                self.add.setdefault("bos", False)
                self.add.setdefault("eos", False)
            elif kind == "RobertaProcessing":
                self.add.update(bos=True, eos=True, sep=True)
                if not cls and config:
                    config["cls_token"] = cls = proc.get("cls", [bos])[0]
                if not sep and config:
                    config["sep_token"] = sep = proc.get("sep", [eos])[0]
            elif kind == "TemplateProcessing":
                bos, cls, eos, sep = self._template(proc, config, bos, cls, eos, sep)

    def _template(self, proc: dict[str, Any], config: dict[str, Any] | None,
                  bos: Any, cls: Any, eos: Any, sep: Any) -> tuple[Any, Any, Any, Any]:
        """The converter's reading of a TemplateProcessing (simple templates only, as it says itself)."""
        single, pair = proc.get("single", []), proc.get("pair", [])
        first = last = None
        if len(single) > 1:
            if first := single[0].get("SpecialToken", {}).get("id"):
                if not config:
                    bos = first
                elif first not in (bos, cls):
                    if not bos:
                        config["bos_token"] = bos = first
                    if not cls:
                        config["cls_token"] = cls = first
                self.add["bos"] = first in (bos, cls)
            if last := single[-1].get("SpecialToken", {}).get("id"):
                if not config:
                    eos = last
                elif last != eos:
                    for extra in ("eot", "eom"):  # keep the old eos as eot (or eom)
                        if extra not in self.kinds:
                            self.kinds.append(extra)
                            config[f"{extra}_token"] = eos
                            break
                    config["eos_token"] = eos = last
                self.add["eos"] = last == eos
        if pair:
            start = 1 if first and pair[0].get("SpecialToken", {}).get("id") == first else 0
            stop = -1 if last and pair[-1].get("SpecialToken", {}).get("id") == last else None
            pair = pair[start:stop]
            if pair:
                seq_a = pair[0].get("Sequence", {}).get("id")
                seq_b = pair[-1].get("Sequence", {}).get("id")
                middle = pair[1:-1]
                if seq_a == "A" and seq_b == "B" and middle:
                    add_sep = False
                    entry = middle[0].get("SpecialToken", {}).get("id")
                    if entry and entry in (sep, eos) and not last:
                        add_sep = True
                    if len(middle) == 2:
                        entry = middle[1].get("SpecialToken", {}).get("id")
                        if entry and entry in (sep, eos):
                            add_sep = True
                    self.add["sep"] = add_sep
                    if add_sep and not sep and config:
                        config["sep_token"] = eos
        return bos, cls, eos, sep

    def _load_chat_template(self, config: dict[str, Any]) -> None:
        path = self.folder.path
        alternative: Any = None
        if (path / "chat_template.jinja").is_file():
            alternative = (path / "chat_template.jinja").read_text(encoding="utf-8")
            extra = sorted((path / "additional_chat_templates").glob("*.jinja"))
            if extra:
                alternative = [{"name": "default", "template": alternative}]
                alternative += [{"name": p.stem, "template": p.read_text(encoding="utf-8")} for p in extra]
        elif (path / "chat_template.json").is_file():
            alternative = (_read_json(path / "chat_template.json") or {}).get("chat_template")
        template = config.get("chat_template", alternative)
        if template is None or isinstance(template, (str, list)):
            self.chat_template = template

    def _from_config_json(self) -> None:
        config = self.folder.config
        if config is None:
            return
        for kind in self.kinds:
            token_id = config.get(f"{kind}_token_id")
            if token_id is None and "text_config" in config:
                token_id = config["text_config"].get(f"{kind}_token_id")
            self.set_id(kind, token_id)

    def _merges_txt(self) -> None:
        path = self.folder.path / "merges.txt"
        if not path.is_file():
            return
        merges = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            line = line.strip()
            if not line or (number == 0 and line.startswith("#")):
                continue
            parts = line.split(None, 3)
            if len(parts) == 2:
                merges.append(f"{parts[0]} {parts[1]}")
        self.merges = merges


def _merges(merges: Any, path: Path) -> list[str]:
    """tokenizer.json merges as GGUF strings "a b"; spaces inside a part become U+0120 (new pair format)."""
    if not isinstance(merges, list) or not merges:
        return []
    if isinstance(merges[0], str):
        return list(merges)
    if isinstance(merges[0], list) and len(merges[0]) == 2 and isinstance(merges[0][0], str):
        return [" ".join(part.replace(" ", "\u0120") for part in pair) for pair in merges]
    raise InputError(f"{path}: unknown merges format")


def _emit_chat_template(out: _Writer, template: str | list[dict[str, str]]) -> None:
    """GGUFWriter.add_chat_template: a string, or named templates plus `tokenizer.chat_templates`.

    The converter lists the names from a Python set (arbitrary order); we keep the file's order.
    """
    if isinstance(template, str):
        out.string(K_CHAT_TEMPLATE, template)
        return
    default = None
    names: list[str] = []
    for choice in template:
        name = "".join(c if c in ascii_letters + digits else "_" for c in choice.get("name", ""))
        text = choice.get("template")
        if not name or text is None:
            continue
        if name == "default":
            default = text
        else:
            if name not in names:
                names.append(name)
            out.string(K_CHAT_TEMPLATE_N.format(name=name), text)
    out.array(K_CHAT_TEMPLATES, names, GGUFValueType.STRING)
    if default is not None:
        out.string(K_CHAT_TEMPLATE, default)
