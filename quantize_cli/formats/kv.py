"""A GGUF key/value pair as the planner produces it and the writer consumes it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gguf import GGUFValueType


@dataclass(frozen=True)
class KV:
    """One metadata entry. For arrays `vtype` is ARRAY and `sub_type` the element type."""

    key: str
    value: Any
    vtype: GGUFValueType
    sub_type: GGUFValueType | None = None


def kv_str(key: str, value: str) -> KV:
    return KV(key, value, GGUFValueType.STRING)


def kv_u32(key: str, value: int) -> KV:
    return KV(key, int(value), GGUFValueType.UINT32)


def kv_i32(key: str, value: int) -> KV:
    return KV(key, int(value), GGUFValueType.INT32)


def kv_f32(key: str, value: float) -> KV:
    return KV(key, float(value), GGUFValueType.FLOAT32)


def kv_bool(key: str, value: bool) -> KV:
    return KV(key, bool(value), GGUFValueType.BOOL)


def kv_array(key: str, values: list, sub_type: GGUFValueType) -> KV:
    return KV(key, list(values), GGUFValueType.ARRAY, sub_type)
