"""The numeric operations of the forward pass, behind one small seam.

`matmul` is the one hot function: about 95% of the time of a forward pass. It multiplies float32
activations by a weight that stays quantized (memory-mapped from the GGUF file). The C kernels
(`kernels.matmul` and friends, kernels_c/) do the work; they convert the activations to the weight's
dot-product format first (Q8_0/Q8_1/Q8_K, F16, BF16), as llama.cpp's CPU backend does, so the
logits agree with llama-perplexity's to its noise level.

When the compiled extension predates the inference kernels, numpy stands in: it rounds the
activations the same way, dequantizes the weight one block of rows at a time and lets BLAS do the
product, so no whole tensor is dequantized into memory. That choice is made once, below.

Shapes: n = tokens in the batch, T = positions in the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType

from quantize_cli import kernels

T = GGMLQuantizationType


@dataclass(frozen=True)
class QTensor:
    """A 2-D weight as the file stores it: n_out rows of n_in values (ggml ne = [n_in, n_out]).

    `data` is uint8 (n_out, row_bytes), memory-mapped, for every type but F32, which is a float32
    (n_out, n_in) view of the file.
    """

    name: str
    qtype: GGMLQuantizationType
    n_out: int
    n_in: int
    data: np.ndarray

    def rows(self, index: np.ndarray, *, threads: int = 1) -> np.ndarray:
        """Rows `index` dequantized to float32 (len(index), n_in): embedding lookups."""
        picked = np.ascontiguousarray(self.data[index])
        if self.qtype == T.F32:
            return picked
        return kernels.dequantize_rows(self.qtype, picked, self.n_in, threads=threads)


# --------------------------------------------------------------------------- C kernels


def _matmuls_c(x: np.ndarray, pairs: list[tuple[QTensor, np.ndarray]], threads: int) -> None:
    converted: dict[GGMLQuantizationType, kernels.Activations] = {}  # x for each weight type, converted once
    for w, out in pairs:
        if w.qtype not in converted:
            converted[w.qtype] = kernels.quantize_activations(w.qtype, x, threads=threads)
        kernels.matmul(w.qtype, w.data, converted[w.qtype], out=out, threads=threads)


def _attention_c(q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray, threads: int) -> np.ndarray:
    return kernels.attention(q, k, v, out=out, threads=threads)


def _rope_c(x: np.ndarray, positions: np.ndarray, *, base: float, neox: bool, n_rot: int, freq_scale: float,
            freq_factors: np.ndarray | None) -> None:
    kernels.rope(x, positions, freq_base=base, neox=neox, n_dims=n_rot, freq_scale=freq_scale,
                 freq_factors=freq_factors)


def _rmsnorm_c(x: np.ndarray, weight: np.ndarray, eps: float, out: np.ndarray) -> np.ndarray:
    return kernels.rms_norm(x, weight, eps, out=out)


def _swiglu_c(gate: np.ndarray, up: np.ndarray, threads: int) -> np.ndarray:
    return kernels.swiglu(gate, up, out=gate, threads=threads)


# --------------------------------------------------------------------------- numpy stand-ins

_BLOCK_VALUES = 1 << 20  # weight values dequantized at once by the numpy matmul (4 MB of float32)


def _round_f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def _round_bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even bfloat16 (ggml_compute_fp32_to_bf16), kept as float32."""
    u = x.view(np.uint32).astype(np.uint64)
    return (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)


def _round_q8_0(x: np.ndarray) -> np.ndarray:
    """x as x86 quantize_row_q8_0/q8_1 store it (notes 3.5): blocks of 32, d = amax/127 kept as
    fp16, q = round-half-even(x * 127/amax); returns q*d."""
    n, k = x.shape
    b = x.reshape(n, k // 32, 32)
    amax = np.abs(b).max(axis=2, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0))
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    return (np.rint(b * inv) * d).reshape(n, k)


def _round_q8_k(x: np.ndarray) -> np.ndarray:
    """x as quantize_row_q8_K_ref stores it: blocks of 256, iscale = -127/max where max is the
    first value of largest magnitude, q = min(127, round(iscale*x)), d = 1/iscale; returns q*d."""
    n, k = x.shape
    b = x.reshape(n, k // 256, 256)
    signed_max = np.take_along_axis(b, np.abs(b).argmax(axis=2)[..., None], axis=2)
    with np.errstate(divide="ignore"):
        iscale = np.where(signed_max != 0, np.float32(-127) / signed_max, np.float32(0))
        d = np.where(iscale != 0, np.float32(1) / iscale, np.float32(0))
    return (np.minimum(np.rint(b * iscale), 127) * d).astype(np.float32).reshape(n, k)


# The format llama.cpp's CPU matmul converts activations to (type_traits_cpu[type].vec_dot_type).
_ACTIVATION_ROUNDING = {
    T.F32: None, T.F16: _round_f16, T.BF16: _round_bf16,
    T.Q4_0: _round_q8_0, T.Q5_0: _round_q8_0, T.Q8_0: _round_q8_0, T.Q4_1: _round_q8_0, T.Q5_1: _round_q8_0,
    T.Q4_K: _round_q8_k, T.Q5_K: _round_q8_k, T.Q6_K: _round_q8_k,
}


def _matmuls_numpy(x: np.ndarray, pairs: list[tuple[QTensor, np.ndarray]], threads: int) -> None:
    rounded: dict[object, np.ndarray] = {}
    for w, out in pairs:
        rounding = _ACTIVATION_ROUNDING[w.qtype]
        if rounding not in rounded:
            rounded[rounding] = x if rounding is None else rounding(x)
        xr = rounded[rounding]
        if w.qtype == T.F32:
            np.matmul(xr, w.data.T, out=out)
            continue
        step = max(1, _BLOCK_VALUES // w.n_in)
        for r0 in range(0, w.n_out, step):
            r1 = min(w.n_out, r0 + step)
            block = kernels.dequantize_rows(w.qtype, w.data[r0:r1], w.n_in, threads=threads)  # (r1-r0, n_in)
            np.matmul(xr, block.T, out=out[:, r0:r1])


def _attention_numpy(q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray, threads: int) -> np.ndarray:
    n, n_head, hd = q.shape
    t, n_kv, _ = k.shape
    group = n_head // n_kv
    # (n, n_kv, group, hd) -> (n_kv, group*n, hd): the queries of one KV head, head-major
    qg = q.reshape(n, n_kv, group, hd).transpose(1, 2, 0, 3).reshape(n_kv, group * n, hd)
    att = np.matmul(qg, k.transpose(1, 2, 0))  # (n_kv, group*n, t)
    att *= np.float32(1.0 / np.sqrt(hd))
    future = np.arange(t)[None, :] > (t - n + np.arange(n))[:, None]  # (n, t): query i sees keys <= t-n+i
    att.reshape(n_kv, group, n, t)[:, :, future] = -np.inf
    att -= att.max(axis=2, keepdims=True)
    np.exp(att, out=att)
    att /= att.sum(axis=2, keepdims=True)
    heads = np.matmul(att, v.transpose(1, 0, 2))  # (n_kv, group*n, hd)
    out[...] = heads.reshape(n_kv, group, n, hd).transpose(2, 0, 1, 3).reshape(n, n_head, hd)
    return out


def _rope_numpy(x: np.ndarray, positions: np.ndarray, *, base: float, neox: bool, n_rot: int, freq_scale: float,
                freq_factors: np.ndarray | None) -> None:
    # theta_i = pos * base^(-2i/n_rot), built by repeated float multiplication as ggml_rope_cache_init does
    half = n_rot // 2
    steps = np.full((len(positions), half), np.float32(base) ** np.float32(-2.0 / n_rot), dtype=np.float32)
    steps[:, 0] = positions
    theta = np.cumprod(steps, axis=1, dtype=np.float32)
    if freq_factors is not None:
        theta /= freq_factors[:half]
    theta *= np.float32(freq_scale)
    c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    if neox:
        x0, x1 = x[:, :, :half], x[:, :, half:n_rot]
    else:
        pairs = x[:, :, :n_rot].reshape(x.shape[0], x.shape[1], half, 2)
        x0, x1 = pairs[..., 0], pairs[..., 1]
    r0 = x0 * c - x1 * s
    x1[...] = x0 * s + x1 * c
    x0[...] = r0


def _rmsnorm_numpy(x: np.ndarray, weight: np.ndarray, eps: float, out: np.ndarray) -> np.ndarray:
    ms = np.einsum("ij,ij->i", x, x, dtype=np.float64) / x.shape[1]  # ggml sums the squares in double
    np.multiply(x, (1.0 / np.sqrt(ms.astype(np.float32) + np.float32(eps)))[:, None], out=out)
    out *= weight
    return out


def _swiglu_numpy(gate: np.ndarray, up: np.ndarray, threads: int) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) = inf for x << 0: silu = -0, as in ggml
        denominator = np.exp(-gate)
    denominator += 1.0
    np.divide(gate, denominator, out=gate)
    gate *= up
    return gate


# --------------------------------------------------------------------------- the seam

if hasattr(kernels, "matmul"):
    _matmuls, _attention, _rope, _rmsnorm, _swiglu = _matmuls_c, _attention_c, _rope_c, _rmsnorm_c, _swiglu_c
else:
    _matmuls, _attention, _rope, _rmsnorm, _swiglu = (_matmuls_numpy, _attention_numpy, _rope_numpy,
                                                      _rmsnorm_numpy, _swiglu_numpy)


def matmul(x: np.ndarray, pairs: list[tuple[QTensor, np.ndarray]], *, threads: int = 1) -> None:
    """For each (W, out): out (n, W.n_out) = x (n, W.n_in) @ W.T, with W still quantized. Weights
    of one type (Q, K and V; gate and up) share one conversion of x to their dot-product format."""
    _matmuls(x, pairs, threads)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, out: np.ndarray, threads: int = 1) -> np.ndarray:
    """Causal grouped-query attention: q (n, n_head, hd) are the last n of the T positions of
    k, v (T, n_kv, hd) (any strides, contiguous hd); query i sees keys 0..T-n+i; query head h
    reads KV head h // (n_head/n_kv); scale 1/sqrt(hd). Returns out (n, n_head, hd)."""
    return _attention(q, k, v, out, threads)


def rope(x: np.ndarray, positions: np.ndarray, *, base: float, neox: bool, n_rot: int, freq_scale: float = 1.0,
         freq_factors: np.ndarray | None = None) -> None:
    """Rotate x (n, n_head, hd) in place at int32 `positions` (n,): angle pos * base^(-2i/n_rot)
    * freq_scale / freq_factors[i] for pair i of the first n_rot values of each head. Normal mode
    (llama, whose Q/K rows the converter permuted) pairs (2i, 2i+1); NEOX (qwen2) (i, i+n_rot/2)."""
    _rope(x, positions, base=base, neox=neox, n_rot=n_rot, freq_scale=freq_scale, freq_factors=freq_factors)


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float, *, out: np.ndarray) -> np.ndarray:
    """out (n, d) = x / sqrt(mean(x^2) + eps) * weight (ggml_rms_norm, then the weight multiply)."""
    return _rmsnorm(x, weight, eps, out)


def swiglu(gate: np.ndarray, up: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """gate (n, n_ff) <- silu(gate) * up, in place."""
    return _swiglu(gate, up, threads)
