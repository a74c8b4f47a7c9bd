"""The one table of tensor types and file types qconvert knows.

Block sizes and byte counts come from the `gguf` package (`GGML_QUANT_SIZES`); this module only adds
what it lacks: the user-facing names, which file type (`general.file_type`) each recipe writes and
which ggml type is its default.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from quantize_cli.errors import OptionError

T = GGMLQuantizationType


@dataclass(frozen=True)
class FileType:
    """A `--type` choice: the ftype number llama.cpp writes and its default tensor type."""

    name: str  # as the user types it, lower case: "q4_k_m"
    ftype: LlamaFileType
    default: GGMLQuantizationType

    @property
    def label(self) -> str:
        """Upper-case name used in file names: Q4_K_M."""
        return self.name.upper()


FILE_TYPES: dict[str, FileType] = {
    ft.name: ft
    for ft in (
        FileType("f32", LlamaFileType.ALL_F32, T.F32),
        FileType("f16", LlamaFileType.MOSTLY_F16, T.F16),
        FileType("bf16", LlamaFileType.MOSTLY_BF16, T.BF16),
        FileType("q8_0", LlamaFileType.MOSTLY_Q8_0, T.Q8_0),
        FileType("q6_k", LlamaFileType.MOSTLY_Q6_K, T.Q6_K),
        FileType("q5_k_m", LlamaFileType.MOSTLY_Q5_K_M, T.Q5_K),
        FileType("q5_k_s", LlamaFileType.MOSTLY_Q5_K_S, T.Q5_K),
        FileType("q4_k_m", LlamaFileType.MOSTLY_Q4_K_M, T.Q4_K),
        FileType("q4_k_s", LlamaFileType.MOSTLY_Q4_K_S, T.Q4_K),
    )
}

# Unquantized types: converting between them is exact widening or IEEE rounding, never requantizing.
FLOAT_TYPES = frozenset({T.F32, T.F16, T.BF16})

# Tensor types a user may name in overrides (--output-tensor-type, --tensor-type PATTERN=TYPE).
TENSOR_TYPES: dict[str, GGMLQuantizationType] = {
    t.name.lower(): t
    for t in (T.F32, T.F16, T.BF16, T.Q8_0, T.Q6_K, T.Q5_K, T.Q4_K, T.Q5_0, T.Q5_1, T.Q4_0, T.Q4_1)
}


def file_type(name: str) -> FileType:
    """Look up a `--type` value, case-insensitively; aliases q4_k/q5_k as in llama-quantize."""
    key = {"q4_k": "q4_k_m", "q5_k": "q5_k_m"}.get(name.lower(), name.lower())
    try:
        return FILE_TYPES[key]
    except KeyError:
        raise OptionError(
            f"unknown --type {name!r}; valid types: {', '.join(FILE_TYPES)}"
        ) from None


def tensor_type(name: str) -> GGMLQuantizationType:
    """Look up a tensor type named in an override, case-insensitively."""
    try:
        return TENSOR_TYPES[name.lower()]
    except KeyError:
        raise OptionError(
            f"unknown tensor type {name!r}; valid tensor types: {', '.join(TENSOR_TYPES)}"
        ) from None


def block_size(qtype: GGMLQuantizationType) -> int:
    return GGML_QUANT_SIZES[qtype][0]


def type_size(qtype: GGMLQuantizationType) -> int:
    """Bytes per block."""
    return GGML_QUANT_SIZES[qtype][1]


def row_bytes(qtype: GGMLQuantizationType, n_per_row: int) -> int:
    blk, size = GGML_QUANT_SIZES[qtype]
    if n_per_row % blk:
        raise ValueError(f"row of {n_per_row} is not a multiple of the {qtype.name} block ({blk})")
    return n_per_row // blk * size


def tensor_bytes(qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor whose shape is given numpy-style (last dimension = row)."""
    n_rows = 1
    for d in shape[:-1]:
        n_rows *= d
    return n_rows * row_bytes(qtype, shape[-1])
