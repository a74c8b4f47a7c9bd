"""The numeric operations of the forward pass, behind one small seam.

`matmul` is the one hot function: about 99% of the FLOPs of a forward pass. It multiplies float32
activations by a weight that stays quantized (memory-mapped from the GGUF file). When the C kernels
provide `kernels.matmul` it runs there; until then it dequantizes the weight one block of rows at a
time and lets numpy's BLAS do the product, so no whole tensor is ever dequantized into memory.

The other operations are numpy, written with `out=` buffers so that the caller's preallocated
RunState arrays are reused. Shapes use n = tokens in the batch, T = positions in the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType

from quantize_cli import kernels

T = GGMLQuantizationType

# Rows of a weight dequantized at once by the numpy matmul: about 4 MB of float32 per block.
_BLOCK_VALUES = 1 << 20


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
        picked = self.data[index]
        if self.qtype == T.F32:
            return np.ascontiguousarray(picked, dtype=np.float32)
        return kernels.dequantize_rows(self.qtype, np.ascontiguousarray(picked), self.n_in, threads=threads)


def _round_f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def _round_bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even bfloat16 (ggml_compute_fp32_to_bf16), kept as float32."""
    u = x.view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


def _round_q8_0(x: np.ndarray) -> np.ndarray:
    """x as the x86 quantize_row_q8_0 / q8_1 store it: blocks of 32, d = amax/127 kept as fp16,
    q = round-half-even(x * 127/amax); returns q*d (notes 3.5)."""
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


# The format llama.cpp's CPU matmul converts the activations to before its dot products
# (type_traits_cpu[type].vec_dot_type, notes 3.2): rounding x the same way keeps our logits within
# a few 1e-4 of llama-perplexity's instead of ~1% off in PPL.
_ACTIVATION_ROUNDING = {
    T.F32: None, T.F16: _round_f16, T.BF16: _round_bf16,
    T.Q4_0: _round_q8_0, T.Q5_0: _round_q8_0, T.Q8_0: _round_q8_0, T.Q4_1: _round_q8_0, T.Q5_1: _round_q8_0,
    T.Q4_K: _round_q8_k, T.Q5_K: _round_q8_k, T.Q6_K: _round_q8_k,
}


def _matmul_numpy(w: QTensor, x: np.ndarray, out: np.ndarray, threads: int) -> np.ndarray:
    rounding = _ACTIVATION_ROUNDING[w.qtype]
    if rounding is not None:
        x = rounding(x)
    if w.qtype == T.F32:
        return np.matmul(x, w.data.T, out=out)
    step = max(1, _BLOCK_VALUES // w.n_in)
    for r0 in range(0, w.n_out, step):
        r1 = min(w.n_out, r0 + step)
        block = kernels.dequantize_rows(w.qtype, w.data[r0:r1], w.n_in, threads=threads)  # (r1-r0, n_in)
        np.matmul(x, block.T, out=out[:, r0:r1])
    return out


def _matmul_c(w: QTensor, x: np.ndarray, out: np.ndarray, threads: int) -> np.ndarray:
    return kernels.matmul(w.qtype, w.data, x, out=out, threads=threads)


_matmul_impl = _matmul_c if hasattr(kernels, "matmul") else _matmul_numpy


def matmul(w: QTensor, x: np.ndarray, out: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """out (n, w.n_out) = x (n, w.n_in) @ W.T, with W still quantized."""
    return _matmul_impl(w, x, out, threads)


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float, out: np.ndarray) -> np.ndarray:
    """out (n, d) = x / sqrt(mean(x^2) + eps) * weight: ggml_rms_norm followed by the weight multiply."""
    ms = np.einsum("ij,ij->i", x, x, dtype=np.float64) / x.shape[1]  # ggml sums squares in double
    scale = (1.0 / np.sqrt(ms.astype(np.float32) + np.float32(eps))).astype(np.float32)
    np.multiply(x, scale[:, None], out=out)
    np.multiply(out, weight, out=out)
    return out


def rope_tables(n_ctx: int, n_rot: int, base: float, freq_scale: float,
                freq_factors: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (n_ctx, n_rot/2) as ggml_rope_cache_init builds them, in float32.

    theta for pair i is pos * base^(-2i/n_rot), built by repeated multiplication like ggml does,
    then divided by the llama3 frequency factor (if any) and scaled by freq_scale (linear scaling).
    """
    half = n_rot // 2
    theta_scale = np.float32(base) ** np.float32(-2.0 / n_rot)
    steps = np.full((n_ctx, half), theta_scale, dtype=np.float32)
    steps[:, 0] = np.arange(n_ctx, dtype=np.float32)
    theta = np.cumprod(steps, axis=1, dtype=np.float32)
    if freq_factors is not None:
        theta = theta / freq_factors.astype(np.float32)
    theta = np.float32(freq_scale) * theta
    return np.cos(theta), np.sin(theta)


def rope(x: np.ndarray, n_head: int, head_dim: int, cos: np.ndarray, sin: np.ndarray, *, neox: bool) -> None:
    """Rotate x (n, n_head*head_dim) in place; cos, sin (n, n_rot/2) for the batch's positions.

    Normal mode (llama; its Q/K rows were permuted by the converter) rotates adjacent pairs
    (2i, 2i+1); NEOX mode (qwen2) rotates pairs (i, i + n_rot/2). Dimensions past n_rot are kept.
    """
    half = cos.shape[1]
    heads = x.reshape(x.shape[0], n_head, head_dim)
    if neox:
        x0, x1 = heads[:, :, :half], heads[:, :, half:2 * half]
    else:
        pairs = heads[:, :, :2 * half].reshape(x.shape[0], n_head, half, 2)
        x0, x1 = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]
    r0 = x0 * c - x1 * s
    x1[...] = x0 * s + x1 * c
    x0[...] = r0


def attention(q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos: int, scores: np.ndarray,
              out: np.ndarray) -> np.ndarray:
    """Causal grouped-query attention for a batch of n queries at positions pos..pos+n-1.

    q (n, n_head*hd); k_cache, v_cache (n_kv, T, hd) hold positions 0..pos+n-1; scores is a
    scratch buffer of at least (n_kv, group*n, pos+n); out (n, n_head*hd).
    Query heads h*group .. h*group+group-1 share KV head h, as in llama.cpp.
    """
    n_kv, _, hd = k_cache.shape
    n = q.shape[0]
    group = q.shape[1] // hd // n_kv
    t = pos + n
    # (n, n_kv, group, hd) -> (n_kv, group*n, hd): the rows of one KV head's queries, head-major
    qg = q.reshape(n, n_kv, group, hd).transpose(1, 2, 0, 3).reshape(n_kv, group * n, hd)
    att = scores.reshape(-1)[: n_kv * group * n * t].reshape(n_kv, group * n, t)
    np.matmul(qg, k_cache[:, :t].transpose(0, 2, 1), out=att)
    att *= np.float32(1.0 / np.sqrt(hd))
    # causal mask: query i (position pos+i) sees keys 0..pos+i
    future = np.arange(t)[None, :] > (pos + np.arange(n))[:, None]  # (n, t)
    att.reshape(n_kv, group, n, t)[:, :, future] = -np.inf
    att -= att.max(axis=2, keepdims=True)
    np.exp(att, out=att)
    att /= att.sum(axis=2, keepdims=True)
    heads = np.matmul(att, v_cache[:, :t])  # (n_kv, group*n, hd)
    out.reshape(n, n_kv, group, hd)[...] = heads.reshape(n_kv, group, n, hd).transpose(2, 0, 1, 3)
    return out


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """gate (n, n_ff) <- silu(gate) * up, in place."""
    with np.errstate(over="ignore"):  # exp(-x) = inf for x << 0 gives silu = -0, as in ggml
        silu = np.exp(-gate)
    silu += 1.0
    np.divide(gate, silu, out=gate)
    gate *= up
    return gate
