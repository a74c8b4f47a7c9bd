"""Text -> token ids exactly as llama.cpp tokenizes them, from a GGUF file's tokenizer.* metadata.

The reference is llama.cpp's src/llama-vocab.cpp and src/unicode.cpp (the tree vendored in
llama-cpp-python 0.3.36). Two vocabulary types:

- "gpt2": byte-level BPE. The text is split into words by the pre-tokenizer named in
  tokenizer.ggml.pre (llama.cpp's regex lists, several of which it implements by hand in
  unicode.cpp; here they run as Python regexes over its "collapsed" text, see _Collapse), each
  word is byte-encoded and merged by rank (tokenizer.ggml.merges).
- "llama": llama.cpp's SentencePiece tokenizer (llm_tokenizer_spm): spaces become U+2581, a
  space is prefixed where tokenizer.ggml.add_space_prefix asks, adjacent symbols merge by
  highest score, and whatever is left unknown falls back to <0xNN> byte tokens.

Special tokens are never parsed from text (llama-perplexity's parse_special=false), but
user-defined tokens are split out first, as llama.cpp does. Results are cached per word (BPE) or
per U+2581-led chunk (SPM): words repeat, so 100 KB of prose costs a few thousand merges.
"""

from __future__ import annotations

import bisect
import heapq
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntFlag
from typing import Any

from gguf import TokenType

from quantize_cli.errors import InputError, UnsupportedError


class Attr(IntFlag):
    """llama_token_attr: what llama.cpp derives from tokenizer.ggml.token_type and token texts."""

    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8


_ATTR_OF_TYPE = {TokenType.UNKNOWN: Attr.UNKNOWN, TokenType.UNUSED: Attr.UNUSED, TokenType.NORMAL: Attr.NORMAL,
                 TokenType.CONTROL: Attr.CONTROL, TokenType.USER_DEFINED: Attr.USER_DEFINED,
                 TokenType.BYTE: Attr.BYTE}

# --------------------------------------------------------------------------- unicode

# llama.cpp's \s: PropList White_Space, as in scripts/gen-unicode-data.py (not str.isspace: no \x1c-\x1f).
_WHITESPACE = frozenset([*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                         0x2028, 0x2029, 0x202F, 0x205F, 0x3000])

# llama.cpp's category table is Unicode 15.1; Python's unicodedata is 13.0 (3.10) to 15.1 (3.13).
# These code points are unassigned (Cn) in 13.0 and assigned in 15.1, with their major category;
# they are consulted only where unicodedata says Cn. Checked against unicode-data.cpp by a test.
_ASSIGNED_SINCE_13 = """
061DP 0870-0887L 0888S 0889-088EL 0890-0891C 0898-089FM 08B5L 08C8-08C9L 08CA-08D2M 0C3CM 0C5DL
0CDDL 0CF3M 0ECEM 170DL 1715M 171FL 180FM 1AC1-1ACEM 1B4CL 1B7D-1B7EP 1DFAM 20C0S 2C2FL 2C5FL
2E53-2E5DP 2FFC-2FFFS 31EFS 9FFD-9FFFL A7C0-A7C1L A7D0-A7D1L A7D3L A7D5-A7D9L A7F2-A7F4L FBC2S
FD40-FD4FS FDCFS FDFE-FDFFS 10570-1057AL 1057C-1058AL 1058C-10592L 10594-10595L 10597-105A1L
105A3-105B1L 105B3-105B9L 105BB-105BCL 10780-10785L 10787-107B0L 107B2-107BAL 10EFD-10EFFM
10F70-10F81L 10F82-10F85M 10F86-10F89P 11070M 11071-11072L 11073-11074M 11075L 110C2M
1123F-11240L 11241M 116B9P 11740-11746L 11AB0-11ABFL 11B00-11B09P 11F00-11F01M 11F02L 11F03M
11F04-11F10L 11F12-11F33L 11F34-11F3AM 11F3E-11F42M 11F43-11F4FP 11F50-11F59N 12F90-12FF0L
12FF1-12FF2P 1342FL 13439-1343FC 13440M 13441-13446L 13447-13455M 16A70-16ABEL 16AC0-16AC9N
1AFF0-1AFF3L 1AFF5-1AFFBL 1AFFD-1AFFEL 1B11F-1B122L 1B132L 1B155L 1CF00-1CF2DM 1CF30-1CF46M
1CF50-1CFC3S 1D1E9-1D1EAS 1D2C0-1D2D3N 1DF00-1DF1EL 1DF25-1DF2AL 1E030-1E06DL 1E08FM
1E290-1E2ADL 1E2AEM 1E4D0-1E4EBL 1E4EC-1E4EFM 1E4F0-1E4F9N 1E7E0-1E7E6L 1E7E8-1E7EBL
1E7ED-1E7EEL 1E7F0-1E7FEL 1F6DC-1F6DFS 1F774-1F776S 1F77B-1F77FS 1F7D9S 1F7F0S 1F979S 1F9CCS
1FA75-1FA77S 1FA7B-1FA7CS 1FA87-1FA88S 1FAA9-1FAAFS 1FAB7-1FABDS 1FABFS 1FAC3-1FAC5S
1FACE-1FACFS 1FAD7-1FADBS 1FAE0-1FAE8S 1FAF0-1FAF8S 2A6DE-2A6DFL 2B735-2B739L 2EBF0-2EE5DL
31350-323AFL
"""


def _parse_ranges(table: str) -> tuple[list[int], list[tuple[int, str]]]:
    starts, ends = [], []
    for item in table.split():
        first, _, last = item[:-1].partition("-")
        starts.append(int(first, 16))
        ends.append((int(last or first, 16), item[-1]))
    return starts, ends


_LATE_STARTS, _LATE_ENDS = _parse_ranges(_ASSIGNED_SINCE_13)


def major_category(cp: int) -> str:
    """The first letter of the code point's general category in llama.cpp's tables ("n" = unassigned)."""
    cat = unicodedata.category(chr(cp))
    if cat != "Cn":
        return cat[0]
    i = bisect.bisect_right(_LATE_STARTS, cp) - 1
    if i >= 0 and cp <= _LATE_ENDS[i][0]:
        return _LATE_ENDS[i][1]
    return "n"


# llama.cpp's unicode_regex_split matches its regexes against a "collapsed" text: ASCII stays
# itself, any other code point becomes one stand-in for its class. That keeps the character
# boundaries and everything the supported regexes can distinguish.
_STAND_IN = {"N": "\xd1", "L": "\xd2", "P": "\xd3", "M": "\xd4", "S": "\xd5"}


class _Collapse(dict[int, str]):
    """str.translate table for the collapsed text, filled on first sight of each code point."""

    def __missing__(self, cp: int) -> str:
        if cp < 128:
            out = chr(cp)
        elif cp in _WHITESPACE:
            out = "\x0b"
        else:
            out = _STAND_IN.get(major_category(cp), "\xd0")
        self[cp] = out
        return out


# Character classes over collapsed text.
_WS = r"\t\n\x0b\x0c\r "
_LET = r"A-Za-z\xd2"
_NUM = r"0-9\xd1"
_CI_CONTRACTIONS = r"'(?:[sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD])"

# llama.cpp's regex strings (verbatim, the keys its unicode_regex_split_custom dispatches on).
GPT2_RE = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
LLAMA3_RE = ("(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
             "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
QWEN2_RE = ("(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
            "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
QWEN35_RE = ("(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|"
             "\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")

# llama.cpp runs these four through hand-written loops (unicode_regex_split_custom_gpt2, _llama3,
# _qwen2, _qwen35) whose results differ from the regexes in corner cases; these Python regexes
# reproduce the loops, branch for branch, over collapsed text.
_HAND_WRITTEN = {
    GPT2_RE: (rf"'[stmd]|'(?:re|ve|ll)| ?[{_LET}]+| ?[{_NUM}]+| ?[^{_WS}{_LET}{_NUM}]+"
              rf"|[{_WS}]+(?![^{_WS}])|[{_WS}]+"),
    LLAMA3_RE: (rf"{_CI_CONTRACTIONS}|[^\r\n{_LET}{_NUM}]?[{_LET}]+|[{_NUM}]{{1,3}}| ?[^{_WS}{_LET}{_NUM}]+[\r\n]*"
                rf"|[{_WS}]*[\r\n]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+"),
    QWEN2_RE: (rf"{_CI_CONTRACTIONS}|[^\r\n{_LET}{_NUM}]?[{_LET}]+|[{_NUM}]| ?[^{_WS}{_LET}{_NUM}]+[\r\n]*"
               rf"|[{_WS}]*[\r\n]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+"),
    QWEN35_RE: (rf"{_CI_CONTRACTIONS}|[^\r\n{_LET}{_NUM}]?[{_LET}\xd4]+|[{_NUM}]| ?[^{_WS}{_LET}\xd4{_NUM}]+[\r\n]*"
                rf"|[{_WS}]*[\r\n]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+"),
}

# unicode_regex_split's substitution of \p{..} classes in the other regexes (k_ucat_cpt, k_ucat_map).
_CLASS_SUBST = {
    "\\p{N}": "\xd1" + "0-9",
    "\\p{L}": "\xd2" + "A-Za-z",
    "\\p{P}": "\xd3" + "!-#%-*,-/:-;?-@\\[-\\]_\\{\\}",
    "\\p{M}": "\xd4",
    "\\p{S}": "\xd5" + "\\$\\+<-\\>\\^`\\|~",
}


def _collapsed_regex(expr: str) -> str:
    """llama.cpp's rewrite of a regex with \\p{..} classes into one over collapsed text.

    Regexes without \\p{..} stay as they are: llama.cpp matches them against the code points
    (std::wregex), which gives the same spans for the ASCII-only ones registered here.
    """
    out, inside, i = [], False, 0
    while i < len(expr):
        c = expr[i]
        if c == "[" and (i == 0 or expr[i - 1] != "\\"):
            inside = True
        elif inside and c == "]" and expr[i - 1] != "\\":
            inside = False
        elif expr.startswith("\\p{", i) and expr[i:expr.find("}", i) + 1] in _CLASS_SUBST:
            end = expr.find("}", i)
            sub = _CLASS_SUBST[expr[i:end + 1]]
            out.append(sub if inside else f"[{sub}]")
            i = end + 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _compile(expr: str) -> re.Pattern[str]:
    # re.ASCII: \s, \d in the collapsed regexes mean what they mean to std::regex in the C locale.
    return re.compile(_HAND_WRITTEN.get(expr) or _collapsed_regex(expr), re.ASCII)


# --------------------------------------------------------------------------- pre-tokenizers


@dataclass(frozen=True)
class PreTokenizer:
    """One llama.cpp pre-tokenizer type: its regex list and the vocab settings it implies."""

    regexes: tuple[str, ...]       # applied in order, each splitting the pieces of the one before
    ignore_merges: bool = False    # a word that is a token as a whole is taken as it is
    add_bos: bool = False          # default when tokenizer.ggml.add_bos_token is absent
    default_bos: bool = True       # False: no BOS unless tokenizer.ggml.bos_token_id names one


_DEFAULT = PreTokenizer(("[\\p{P}\\$\\+<=>\\^~\\|]+", GPT2_RE, "\\p{N}+", "[0-9][0-9][0-9]"))
_GPT2 = PreTokenizer((GPT2_RE,))
_STARCODER = PreTokenizer(("\\p{N}", GPT2_RE))
_FALCON = PreTokenizer(("[\\p{P}\\$\\+<=>\\^~\\|`]+", GPT2_RE, "[0-9][0-9][0-9]"))
_LLAMA3 = PreTokenizer((LLAMA3_RE,), ignore_merges=True, add_bos=True)
_QWEN2 = PreTokenizer((QWEN2_RE,))


def _same(pre: PreTokenizer, *names: str) -> dict[str, PreTokenizer]:
    return dict.fromkeys(names, pre)


# tokenizer.ggml.pre -> pre-tokenizer, as llama_vocab::impl::load maps them ("" / absent: "default").
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": _DEFAULT,
    **_same(_GPT2, "gpt-2", "phi-2", "gigachat", "a.x-4.0", "mellum", "mpt", "olmo", "jais", "trillion",
            "granite-docling", "exaone4"),
    **_same(_STARCODER, "starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b",
            "mellum2"),
    "falcon": _FALCON,
    **_same(_LLAMA3, "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
            "jina-v5-nano"),
    **_same(PreTokenizer((LLAMA3_RE,)), "dbrx", "smaug-bpe"),
    "chatglm-bpe": PreTokenizer((LLAMA3_RE,), default_bos=False),
    **_same(PreTokenizer((LLAMA3_RE,), ignore_merges=True, default_bos=False), "glm4", "glm5"),
    **_same(_QWEN2, "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan",
            "solar-open"),
    "qwen35": PreTokenizer((QWEN35_RE,)),
}


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character map (unicode_byte_to_utf8_map)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


_BYTE_CHARS = _byte_chars()
_CHAR_BYTES = {c: b for b, c in enumerate(_BYTE_CHARS)}
_SPACE = "\u2581"  # sentencepiece's visible space
_C_SPACES = " \t\n\v\f\r"  # isspace() in the C locale, for LSTRIP/RSTRIP


def _utf8(text: str) -> bytes:
    # Lone surrogates pass through as llama.cpp would see their bytes (it decodes them as Cs).
    return text.encode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------- vocabulary


def _token_attrs(tokens: Sequence[str], types: Sequence[int] | None, token_to_id: dict[str, int],
                 role_ids: dict[str, int | None], model_name: str) -> list[Attr]:
    """Per-token attributes after llama_vocab::impl::load's fix-ups by token text.

    They decide which tokens are split out of raw text: with parse_special=false only
    USER_DEFINED tokens that are not also CONTROL or UNKNOWN.
    """
    attrs = [Attr.NORMAL] * len(tokens) if types is None else [_ATTR_OF_TYPE.get(t, Attr(0)) for t in types]
    has = token_to_id.__contains__

    def mark(texts: Iterable[str], attr: Attr, *, replace: bool = False) -> None:
        for text in texts:
            if has(text):
                i = token_to_id[text]
                attrs[i] = attr if replace else attrs[i] | attr

    # FIM tokens found by text become CONTROL when no tokenizer.ggml.*_token_id names them
    # (llama.cpp takes the first hit in hash order; real vocabularies hold one of each group).
    for role, texts in _FIM_TEXTS.items():
        if role_ids[role] is None:
            mark(texts, Attr.CONTROL)
    mark(_EOG_TEXTS, Attr.CONTROL)  # end-of-generation tokens (EOT and EOM are among them)
    mark(("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"), Attr.USER_DEFINED, replace=True)  # gpt-oss
    calls = has("<|call|>") or has("<|calls|>")
    if has("<|end|>") and calls and (has("<|return|>") or has("<|flush|>")):
        mark(("<|end|>",), Attr.USER_DEFINED, replace=True)  # o200k_harmony, solar-open: <|end|> is no EOG
    if has("<|tool_response>"):
        mark(("</s>",), Attr.NORMAL, replace=True)  # gemma4: </s> is a normal token
    # Per-model attributes, by general.name (the BERT-only cases of llama.cpp left out).
    if "phi-3" in model_name or "phi3" in model_name:
        for i, a in enumerate(attrs):
            if a & (Attr.CONTROL | Attr.USER_DEFINED | Attr.UNKNOWN):
                attrs[i] |= Attr.RSTRIP
        mark(("</s>",), Attr.RSTRIP)
        for text in ("<unk>", "<s>", "<|endoftext|>"):
            if has(text):
                attrs[token_to_id[text]] &= ~Attr.RSTRIP
    elif "modern-bert" in model_name:
        mark(("[MASK]",), Attr.LSTRIP)
    return attrs


_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_FIM_KEYS = {"fim_pre": ("fim_pre", "prefix"), "fim_suf": ("fim_suf", "suffix"), "fim_mid": ("fim_mid", "middle"),
             "fim_pad": ("fim_pad",), "fim_rep": ("fim_rep",), "fim_sep": ("fim_sep",)}
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
              "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
              "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
              "<｜end▁of▁sentence｜>", "[e~[")


def _special_id(meta: dict[str, Any], keys: Sequence[str], default: int | None, n_vocab: int) -> int | None:
    """tokenizer.ggml.<key>_token_id, the last of `keys` present wins; out-of-range ids keep the default."""
    found = default if default is not None and default < n_vocab else None
    for key in keys:
        value = meta.get(f"tokenizer.ggml.{key}_token_id")
        if value is not None and 0 <= int(value) < n_vocab:
            found = int(value)
    return found


# --------------------------------------------------------------------------- the tokenizers


def _merge(syms: list[str], priority: Callable[[str, str], float | None]) -> list[str]:
    """The merge loop of both llama.cpp sessions: join the adjacent pair of best (lowest) priority,
    leftmost on ties, until no pair has one; returns the symbols left.

    Queue entries whose symbols changed since they were queued are skipped. Symbols only grow,
    so an unchanged length means unchanged text (llama.cpp compares texts for BPE, sizes for SPM).
    """
    n = len(syms)
    nxt, prv = [*range(1, n), -1], list(range(-1, n - 1))
    heap: list[tuple[float, int, int, int]] = []

    def push(left: int, right: int) -> None:
        if left >= 0 and right >= 0:
            p = priority(syms[left], syms[right])
            if p is not None:
                heapq.heappush(heap, (p, left, right, len(syms[left]) + len(syms[right])))

    for i in range(n - 1):
        push(i, i + 1)
    while heap:
        _, left, right, size = heapq.heappop(heap)
        if not syms[left] or not syms[right] or len(syms[left]) + len(syms[right]) != size:
            continue
        syms[left], syms[right] = syms[left] + syms[right], ""
        nxt[left] = nxt[right]
        if nxt[left] >= 0:
            prv[nxt[left]] = left
        push(prv[left], left)
        push(left, nxt[left])
    return [sym for sym in syms if sym]


class _Bpe:
    """llm_tokenizer_bpe_session: pre-tokenize, byte-encode, merge by rank."""

    def __init__(self, token_to_id: dict[str, int], meta: dict[str, Any]) -> None:
        self.pre: str = meta.get("tokenizer.ggml.pre") or "default"
        if self.pre not in PRE_TOKENIZERS:
            raise UnsupportedError(f"tokenizer.ggml.pre {self.pre!r} is not supported",
                                   hint=f"supported pre-tokenizers: {', '.join(sorted(PRE_TOKENIZERS))}")
        pre = PRE_TOKENIZERS[self.pre]
        merges = meta.get("tokenizer.ggml.merges")
        if merges is None:
            raise InputError("GGUF metadata has no tokenizer.ggml.merges (a gpt2 vocabulary needs them)")
        # llama.cpp's defaults for what tokenizer.ggml.* leaves out: BOS id, EOS id, add_bos, add_space_prefix
        # (read although only detokenizing uses it for BPE).
        self.defaults = (11 if pre.default_bos else None), 11, pre.add_bos, False
        self.token_to_id = token_to_id
        # "left right" -> rank; the first of duplicate merges wins (std::map::emplace). Symbols hold
        # no spaces (byte 0x20 is encoded as "Ġ"), so the merge text is the lookup key as it is.
        self.ranks: dict[str, int] = {}
        for rank, merge in enumerate(merges):
            self.ranks.setdefault(merge, rank)
        self.patterns = [_compile(expr) for expr in pre.regexes]
        self.ignore_merges = pre.ignore_merges
        self.collapse = _Collapse()
        self.cache: dict[str, list[int]] = {}

    def words(self, text: str) -> list[str]:
        """unicode_regex_split: each regex splits every piece into matches and the gaps between."""
        collapsed = text.translate(self.collapse)
        spans = [(0, len(text))]
        for pattern in self.patterns:
            out = []
            for start, end in spans:
                pos = start
                for m in pattern.finditer(collapsed, start, end):
                    if m.start() > pos:
                        out.append((pos, m.start()))
                    out.append(m.span())
                    pos = m.end()
                if pos < end:
                    out.append((pos, end))
            spans = out
        return [text[a:b] for a, b in spans]

    def encode(self, text: str, out: list[int], *, after_special: bool) -> None:
        cache = self.cache
        for word in self.words(text):
            ids = cache.get(word)
            if ids is None:
                ids = cache[word] = self._word(word)
            out.extend(ids)

    def _word(self, word: str) -> list[int]:
        vocab = self.token_to_id
        encoded = "".join(_BYTE_CHARS[b] for b in _utf8(word))
        if self.ignore_merges and encoded in vocab:
            return [vocab[encoded]]
        ids = []
        # One symbol per byte: each byte character is one code point.
        for sym in _merge(list(encoded), lambda a, b: self.ranks.get(a + " " + b)):
            if sym in vocab:
                ids.append(vocab[sym])
            else:  # llama.cpp tries each byte of the symbol as a token of its own: only ASCII can hit
                ids.extend(vocab[c] for c in sym if ord(c) < 128 and c in vocab)
        return ids

    @staticmethod
    def normal_piece(text: str) -> bytes:
        """llama_decode_text: byte characters back to bytes."""
        return b"".join(bytes([_CHAR_BYTES[c]]) if c in _CHAR_BYTES else _utf8(c) for c in text)


class _Spm:
    """llm_tokenizer_spm_session: merge adjacent symbols by highest score, bytes for the rest."""

    def __init__(self, token_to_id: dict[str, int], meta: dict[str, Any]) -> None:
        self.pre = "default"
        self.defaults = 1, 2, True, True
        n = len(meta["tokenizer.ggml.tokens"])
        scores = meta.get("tokenizer.ggml.scores") or [0.0] * n
        if len(scores) < n:
            raise InputError(f"tokenizer.ggml.scores has {len(scores)} entries for {n} tokens")
        self.token_to_id = token_to_id
        self.scores = [float(s) for s in scores]
        self.add_space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        # Merges never cross a point where U+2581 follows another character unless some token
        # holds such a pair: then each U+2581-led chunk tokenizes alone, and chunks repeat.
        self.chunked = not any(re.search(f"[^{_SPACE}]{_SPACE}", t) for t in token_to_id)
        self.cache: dict[str, list[int]] = {}

    def encode(self, text: str, out: list[int], *, after_special: bool) -> None:
        """A space is prefixed at the start of the text and after each special token."""
        if self.add_space_prefix and after_special:
            text = " " + text
        text = text.replace(" ", _SPACE)
        if not self.chunked:
            out.extend(self._chunk(text))
            return
        cache = self.cache
        for m in re.finditer(f"[^{_SPACE}]+|{_SPACE}+[^{_SPACE}]*", text):
            chunk = m.group()
            ids = cache.get(chunk)
            if ids is None:
                ids = cache[chunk] = self._chunk(chunk)
            out.extend(ids)

    def _chunk(self, text: str) -> list[int]:
        vocab, scores = self.token_to_id, self.scores

        def priority(a: str, b: str) -> float | None:
            tok = vocab.get(a + b)
            return None if tok is None else -scores[tok]  # highest score first

        ids = []
        # One symbol per code point (unicode_len_utf8 of each lead byte).
        for sym in _merge(list(text), priority):
            if sym in vocab:
                ids.append(vocab[sym])
                continue
            for b in _utf8(sym):  # byte fallback: <0xNN>, else the byte itself as a token
                tok = vocab.get(f"<0x{b:02X}>")
                if tok is None:
                    tok = vocab.get(chr(b)) if b < 128 else None
                if tok is None:
                    raise InputError(f"the vocabulary has no byte token <0x{b:02X}> for {sym!r}",
                                     hint="its tokenizer.ggml.tokens lack sentencepiece's byte-fallback pieces")
                ids.append(tok)
        return ids

    @staticmethod
    def normal_piece(text: str) -> bytes:
        return _utf8(text.replace(_SPACE, " "))


# tokenizer.ggml.model -> llama.cpp's tokenizer session for it.
_SESSIONS: dict[str, type[_Bpe | _Spm]] = {"gpt2": _Bpe, "llama": _Spm}
MODELS = tuple(_SESSIONS)


class Tokenizer:
    """llama.cpp's tokenizer for one GGUF vocabulary. Build it with `from_gguf_metadata`."""

    def __init__(self, meta: dict[str, Any]) -> None:
        model = meta.get("tokenizer.ggml.model")
        if model is None:
            raise InputError("GGUF metadata has no tokenizer.ggml.model: the file carries no vocabulary")
        if model not in MODELS:
            raise UnsupportedError(f"tokenizer.ggml.model {model!r} is not supported",
                                   hint=f"supported tokenizer models: {', '.join(MODELS)}")
        tokens = meta.get("tokenizer.ggml.tokens")
        if not tokens:
            raise InputError("GGUF metadata has no tokenizer.ggml.tokens")
        self.model: str = model
        # Empty texts are renamed and the last of duplicate texts wins, as in llama.cpp.
        self.tokens: list[str] = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        self.token_to_id = {t: i for i, t in enumerate(self.tokens)}
        n = self.n_vocab = len(self.tokens)

        self._session = _SESSIONS[model](self.token_to_id, meta)
        self.pre = self._session.pre
        bos, eos, add_bos, add_space_prefix = self._session.defaults
        self.add_space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", add_space_prefix))
        self.bos_id = _special_id(meta, ("bos",), bos, n)
        self.eos_id = _special_id(meta, ("eos",), eos, n)
        self.add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos))
        self.add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))

        types = meta.get("tokenizer.ggml.token_type")
        if types is not None and len(types) < n:
            raise InputError(f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
        role_ids = {role: _special_id(meta, keys, None, n) for role, keys in _FIM_KEYS.items()}
        self.attrs = _token_attrs(self.tokens, types, self.token_to_id, role_ids,
                                  str(meta.get("general.name", "")).lower())
        # Split out of raw text before tokenizing, longest (in bytes) first: cache_special_tokens
        # (whose std::sort leaves ties unordered; here they keep id order).
        self._special = sorted((i for i, a in enumerate(self.attrs)
                                if a & Attr.USER_DEFINED and not a & (Attr.CONTROL | Attr.UNKNOWN)),
                               key=lambda i: -len(_utf8(self.tokens[i])))

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any]) -> Tokenizer:
        """From the plain values of a GGUF's key/value pairs (formats.gguf_reader.gguf_metadata)."""
        return cls(meta)

    def encode(self, text: str, *, add_bos: bool | None = None, add_eos: bool | None = None) -> list[int]:
        """Token ids of `text`, as llama_tokenize(add_special=True, parse_special=False).

        add_bos / add_eos: None follows the model (tokenizer.ggml.add_bos_token / add_eos_token).
        """
        out: list[int] = []
        if self.add_bos if add_bos is None else add_bos:
            out.append(self._required(self.bos_id, "bos"))
        after_special = True
        for piece in self._partition(text):
            if isinstance(piece, int):
                out.append(piece)
            else:
                self._session.encode(piece, out, after_special=after_special)
            after_special = isinstance(piece, int)
        if self.add_eos if add_eos is None else add_eos:
            out.append(self._required(self.eos_id, "eos"))
        return out

    @staticmethod
    def _required(tok: int | None, what: str) -> int:
        if tok is None:
            raise InputError(f"the vocabulary has no {what} token (tokenizer.ggml.{what}_token_id)",
                             hint=f"pass add_{what}=False")
        return tok

    def _partition(self, text: str) -> list[str | int]:
        """tokenizer_st_partition: user-defined tokens split out of the text, longest first."""
        pieces: list[str | int] = [text] if text else []
        for tok in self._special:
            needle, attr = self.tokens[tok], self.attrs[tok]
            out: list[str | int] = []
            for piece in pieces:
                if isinstance(piece, int) or needle not in piece:
                    out.append(piece)
                    continue
                pos = 0
                while (hit := piece.find(needle, pos)) >= 0:
                    left = piece[pos:hit].rstrip(_C_SPACES) if attr & Attr.LSTRIP else piece[pos:hit]
                    if left:
                        out.append(left)
                    out.append(tok)
                    pos = hit + len(needle)
                    if attr & Attr.RSTRIP:
                        while pos < len(piece) and piece[pos] in _C_SPACES:
                            pos += 1
                if pos < len(piece):
                    out.append(piece[pos:])
            pieces = out
        return pieces

    def decode(self, ids: Iterable[int], *, special: bool = False) -> str:
        """Text of `ids` as llama_detokenize(remove_special=True, unparse_special=special) gives it,
        without its clean_spaces pass: pieces joined, invalid UTF-8 replaced. A leading BOS (and a
        trailing EOS) the model adds is dropped; otherwise the first piece loses one leading
        space where tokenizer.ggml.add_space_prefix is set."""
        ids = list(ids)
        strip_space = self.add_space_prefix
        if self.add_bos and ids and ids[0] == self.bos_id:
            ids, strip_space = ids[1:], False
        if self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        out = bytearray()
        for tok in ids:
            piece = self._piece(tok, special)
            if strip_space and piece.startswith(b" "):
                piece = piece[1:]
            strip_space = False
            out += piece
        return out.decode("utf-8", "replace")

    def _piece(self, tok: int, special: bool) -> bytes:
        """llama_token_to_piece."""
        text, attr = self.tokens[tok], self.attrs[tok]
        if attr & (Attr.CONTROL | Attr.UNKNOWN):
            return _utf8(text) if special else b""
        if attr & Attr.USER_DEFINED:
            return _utf8(text)
        if attr & Attr.NORMAL:
            return self._session.normal_piece(text)
        if attr & Attr.BYTE:
            return bytes([int(text[3:5], 16)])
        return b""
