"""Model families, found by the HF `architectures` value or the GGUF `general.architecture`."""

from __future__ import annotations

from typing import Any

from quantize_cli.errors import UnsupportedError

_BY_HF: dict[str, type] = {}
_BY_GGUF: dict[str, type] = {}


def register(family: type) -> type:
    for name in family.hf_architectures:
        _BY_HF[name] = family
    _BY_GGUF[family.gguf_arch] = family
    return family


def family_for_config(config: dict[str, Any], *, where: str):
    """Instantiate the family for an HF config.json."""
    archs = config.get("architectures") or []
    if not archs:
        raise UnsupportedError(f"{where}: config.json has no 'architectures' entry")
    for arch in archs:
        if arch in _BY_HF:
            return _BY_HF[arch](config, config_path=where)
    raise UnsupportedError(
        f"{where}: architecture {archs[0]!r} is not supported; supported: {', '.join(sorted(_BY_HF))}"
    )


def family_for_gguf(arch: str, *, where: str) -> type:
    if arch not in _BY_GGUF:
        raise UnsupportedError(
            f"{where}: architecture {arch!r} is not supported; supported: {', '.join(sorted(_BY_GGUF))}"
        )
    return _BY_GGUF[arch]
