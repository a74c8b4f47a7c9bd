"""Reading GGUF files through gguf-py's memory-mapped reader, with our errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf

from quantize_cli.errors import InputError
from quantize_cli.formats.kv import KV


def read_gguf(path: Path) -> gguf.GGUFReader:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return gguf.GGUFReader(path, "r")
    except (ValueError, OSError, IndexError, KeyError, OverflowError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a readable GGUF file: {e}") from e


def gguf_kvs(reader: gguf.GGUFReader) -> list[KV]:
    """Every KV pair in file order, with its value types (the GGUF.* header fields left out)."""
    out = []
    for field in reader.fields.values():
        if field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        out.append(KV(field.name, field.contents(), vtype, sub))
    return out


def gguf_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    """Plain Python values of every KV pair."""
    return {kv.key: kv.value for kv in gguf_kvs(reader)}
