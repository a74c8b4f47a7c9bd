"""The inference kernels: matmul against the scalar reference and numpy, activation conversion
against llama.cpp's quantizers (re-derived in numpy), attention/RoPE/RMSNorm/SwiGLU/log-softmax
against numpy, thread-count invariance.

The SIMD matmul (AVX2 here, NEON in test_kernels_native.py) must give the scalar reference's bits
for every quantized type: the integer block sums are exact and the float steps are the same
operations in the same order. Float weights (F32/F16/BF16) use FMA and another summation order,
so they are held to FLOAT_WEIGHT_RTOL of sum |w| |x| instead.
"""

from __future__ import annotations

import math
import platform

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from quantize_cli import kernels
from quantize_cli.errors import UnsupportedError

T = GGMLQuantizationType
QUANTIZED = (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K)
FLOATS = (T.F32, T.F16, T.BF16)
K_QUANTS = (T.Q4_K, T.Q5_K, T.Q6_K)

# Named tolerances, relative to sum_k |w_k| |x_k| of each output.
FLOAT_WEIGHT_RTOL = 2e-6  # float weights: FMA and 16 partial sums vs one sequential float32 sum
BLOCK_FLOAT_RTOL = 2e-6  # quantized weights vs float64 numpy: per-block float32 steps, rounded sums
ATTENTION_ATOL = 2e-6  # attention vs float64 numpy, |v| ~ 1: float32 products, exp within 2 ulp
ARM = platform.machine().lower() in ("aarch64", "arm64")
# The best ISA this CPU runs, whatever QCONVERT_KERNELS says (the tests name the ISA they run).
BEST = next(name for name, isa in kernels._ISAS.items() if isa == kernels._lib.qk_best_isa())
needs_simd = pytest.mark.skipif(BEST == "scalar", reason="this CPU runs only the scalar kernels (NEON: test_kernels_native.py)")


def rng_for(*key: object) -> np.random.Generator:
    return np.random.default_rng(abs(hash(tuple(str(k) for k in key))) % 2**32)


def weights(qtype: T, n_out: int, n_in: int, case: str, rng: np.random.Generator) -> np.ndarray:
    """uint8 rows of qtype: quantized Gaussian rows, random bytes (fp16/bf16/f32 fields kept finite),
    every level and scale at its extreme (Q8_0 levels -128, Q6_K scales -128, d = 1), or zeros."""
    q = kernels.quantize_rows(qtype, rng.normal(0, 0.02, (n_out, n_in)).astype(np.float32))
    if case == "quantized":
        return q
    if case == "zeros":  # every field zero, d included
        return np.zeros_like(q)
    block, size = GGML_QUANT_SIZES[qtype]
    blocks = q.reshape(n_out, n_in // block, size)
    if qtype in FLOATS:
        values = rng.normal(0, 1, (n_out, n_in)).astype(np.float32) if case == "random" else -np.ones((n_out, n_in), np.float32)
        return kernels.quantize_rows(qtype, values)
    blocks[...] = rng.integers(0, 256, blocks.shape, dtype=np.uint8) if case == "random" else 0xFF
    if case == "extreme" and qtype == T.Q8_0:
        blocks[..., 2:] = 0x80
    if case == "extreme" and qtype == T.Q6_K:
        blocks[..., 192:208] = 0x80
    half_fields = {T.Q4_0: (0,), T.Q5_0: (0,), T.Q8_0: (0,), T.Q6_K: (208,)}.get(qtype, (0, 2))
    for at in half_fields:
        halves = rng.uniform(-1, 1, blocks.shape[:2]).astype(np.float16) if case == "random" else np.float16(1.0)
        blocks[..., at:at + 2] = np.broadcast_to(np.asarray(halves, np.float16)[..., None].view(np.uint8), blocks[..., at:at + 2].shape)
    return q


def activations(case: str, n_tok: int, n_in: int, rng: np.random.Generator) -> np.ndarray:
    if case == "zeros":  # zero tokens (Q8 d = 0) between Gaussian ones
        return np.where(np.arange(n_tok)[:, None] % 2, rng.normal(0, 1, (n_tok, n_in)), 0).astype(np.float32)
    if case == "extreme":  # every Q8 level at +-127: all of one sign (the int16 sums peak), or mixed
        i = np.arange(n_tok * n_in).reshape(n_tok, n_in)
        mixed = np.where(i % 3, 1.0, -1.0)
        return np.select([i // n_in % 3 == 0, i // n_in % 3 == 1], [1.0, -1.0], mixed).astype(np.float32)
    return rng.normal(0, 1, (n_tok, n_in)).astype(np.float32)


def magnitude(qtype: T, w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """sum_k |w_k| |x_k| for every (token, row): the scale of a dot product's rounding error."""
    wd = kernels.dequantize_rows(qtype, w, x.shape[1]).astype(np.float64)
    return np.abs(x.astype(np.float64)) @ np.abs(wd).T


# --------------------------------------------------------------------------- SIMD vs scalar


@needs_simd
@pytest.mark.parametrize("case", ["quantized", "random", "extreme", "zeros"])
@pytest.mark.parametrize("qtype", QUANTIZED, ids=lambda t: t.name)
def test_simd_matmul_has_the_scalar_bits(qtype: T, case: str) -> None:
    rng = rng_for(qtype, case)
    for n_out, n_in, n_tok in ((13, 256, 5), (9, 512, 17), (6, 768, 1)):
        w = weights(qtype, n_out, n_in, case, rng)
        x = activations(case, n_tok, n_in, rng)
        ref = kernels.matmul(qtype, w, x, isa="scalar")
        got = kernels.matmul(qtype, w, x, threads=2, isa=BEST)
        assert np.isfinite(ref).all()
        bad = np.argwhere(ref.view(np.uint32) != got.view(np.uint32))
        assert not bad.size, f"{qtype.name} {case} {n_out}x{n_in} by {n_tok}: {len(bad)} differ, first {bad[0]}: " \
                             f"{ref[tuple(bad[0])]!r} != {got[tuple(bad[0])]!r}"


@needs_simd
@pytest.mark.parametrize("case", ["quantized", "random", "extreme", "zeros"])
@pytest.mark.parametrize("qtype", FLOATS, ids=lambda t: t.name)
def test_simd_matmul_of_float_weights_within_tolerance(qtype: T, case: str) -> None:
    rng = rng_for(qtype, case)
    for n_out, n_in, n_tok in ((13, 256, 5), (7, 37, 9), (5, 1, 3)):
        w = weights(qtype, n_out, n_in, case, rng)
        x = activations(case, n_tok, n_in, rng)
        ref = kernels.matmul(qtype, w, x, isa="scalar")
        got = kernels.matmul(qtype, w, x, isa=BEST)
        tol = FLOAT_WEIGHT_RTOL * magnitude(qtype, w, x) + 1e-30
        assert (np.abs(ref - got) <= tol).all(), f"{qtype.name} {case}: max excess {np.max(np.abs(ref - got) - tol)}"


# --------------------------------------------------------------------------- activation conversion


def fp16_round(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def q8_k_ref(x: np.ndarray) -> np.ndarray:
    """quantize_row_q8_K_ref then q * d (notes 2.12), float32 throughout."""
    b = x.reshape(x.shape[0], -1, 256)
    signed_max = np.take_along_axis(b, np.abs(b).argmax(axis=2)[..., None], axis=2)
    with np.errstate(divide="ignore"):
        iscale = np.where(signed_max != 0, np.float32(-127) / signed_max, np.float32(0)).astype(np.float32)
        d = np.where(iscale != 0, np.float32(1) / iscale, np.float32(0)).astype(np.float32)
    q = np.minimum(np.rint(b * iscale), 127).astype(np.float32)
    return (d * q).reshape(x.shape)


def q8_0_ref(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml-cpu's quantize_row_q8_1 on this architecture (notes 3.5): q * fp16(d) and s per block."""
    b = x.reshape(x.shape[0], -1, 32)
    amax = np.abs(b).max(axis=2, keepdims=True)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        if ARM:
            inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
        else:
            inv = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.clip(np.rint(b * inv), -128, 127).astype(np.float32)
    s = fp16_round(d[..., 0] * q.sum(axis=2, dtype=np.float32))
    return (fp16_round(d) * q).reshape(x.shape), s


def pack_q6_k(levels: np.ndarray, scales: np.ndarray, d: float) -> np.ndarray:
    """Q6_K rows (notes 1.4) from levels (n_rows, n) in 0..63 and int8 scales (n_rows, n/16)."""
    n_rows, n = levels.shape
    lv = levels.astype(np.uint8).reshape(n_rows, n // 256, 2, 4, 32)  # value 128h + 32k + l
    ql = np.concatenate([(lv[:, :, :, 0] & 15) | (lv[:, :, :, 2] & 15) << 4,
                         (lv[:, :, :, 1] & 15) | (lv[:, :, :, 3] & 15) << 4], axis=3)
    qh = lv[:, :, :, 0] >> 4 | (lv[:, :, :, 1] >> 4) << 2 | (lv[:, :, :, 2] >> 4) << 4 | (lv[:, :, :, 3] >> 4) << 6
    sc = scales.astype(np.int8).reshape(n_rows, n // 256, 16).view(np.uint8)
    dd = np.full((n_rows, n // 256, 1), d, np.float16).view(np.uint8)
    return np.concatenate([ql.reshape(n_rows, -1, 128), qh.reshape(n_rows, -1, 64), sc, dd], axis=2).reshape(n_rows, -1)


def identity(qtype: T, n: int) -> np.ndarray:
    """W = I in qtype, so that x @ W.T gives back x as the kernels converted it."""
    if qtype == T.Q6_K:
        levels = np.full((n, n), 32) + np.eye(n, dtype=np.int64)
        return pack_q6_k(levels, np.ones((n, n // 16)), 1.0)
    if qtype == T.Q8_0:
        blocks = np.zeros((n, n // 32, 34), np.uint8)
        blocks[..., :2] = np.float16(1.0).reshape(1).view(np.uint8)
        blocks[..., 2:] = np.eye(n, dtype=np.int8).reshape(n, n // 32, 32).view(np.uint8)
        return blocks.reshape(n, -1)
    return kernels.quantize_rows(qtype, np.eye(n, dtype=np.float32))


def test_q6_k_packer_matches_the_dequantizer() -> None:
    rng = np.random.default_rng(7)
    levels, scales = rng.integers(0, 64, (3, 512)), rng.integers(-128, 128, (3, 32))
    got = kernels.dequantize_rows(T.Q6_K, pack_q6_k(levels, scales, 0.5), 512)
    assert np.array_equal(got, np.float32(0.5) * np.repeat(scales, 16, axis=1) * (levels - 32))


@pytest.mark.parametrize("case", ["gaussian", "outliers", "zero_blocks", "ties"])
def test_activations_are_llamacpp_q8_k_and_q8_0(case: str) -> None:
    rng = rng_for("act", case)
    n = 512
    x = rng.normal(0, 1, (11, n)).astype(np.float32)
    if case == "outliers":
        x[:, ::97] *= 1000
    if case == "zero_blocks":
        x[3] = 0
        x[:, 256:] = 0
    if case == "ties":  # amax 127 with d = 1: x * id lands on halves
        x = np.round(rng.normal(0, 30, (11, n))).astype(np.float32) + 0.5
        x[:, ::32] = 127
    for isa in sorted({"scalar", BEST}):
        assert np.array_equal(kernels.matmul(T.Q6_K, identity(T.Q6_K, n), x, isa=isa), q8_k_ref(x)), isa
        want, s = q8_0_ref(x)
        assert np.array_equal(kernels.matmul(T.Q8_0, identity(T.Q8_0, n), x, isa=isa), want), isa
        # Q8_1's s: a Q4_1 row with d = 0, m = 1 in block b and zeros elsewhere returns s of block b
        selector = np.zeros((n // 32, n // 32, 20), np.uint8)
        selector[np.arange(n // 32), np.arange(n // 32), 2:4] = np.float16(1.0).reshape(1).view(np.uint8)
        got_s = kernels.matmul(T.Q4_1, selector.reshape(n // 32, -1), x, isa=isa)
        assert np.array_equal(got_s, s), isa


@pytest.mark.parametrize("qtype", FLOATS, ids=lambda t: t.name)
def test_float_activations_are_rounded_to_the_weight_type(qtype: T) -> None:
    x = np.random.default_rng(3).normal(0, 1, (5, 64)).astype(np.float32)
    got = kernels.matmul(qtype, identity(qtype, 64), x)
    want = kernels.dequantize_rows(qtype, kernels.quantize_rows(qtype, x), 64)
    assert np.array_equal(got, want)


# --------------------------------------------------------------------------- against numpy


@pytest.mark.parametrize("qtype", QUANTIZED + FLOATS, ids=lambda t: t.name)
def test_matmul_matches_numpy_on_the_converted_activations(qtype: T) -> None:
    rng = rng_for("numpy", qtype)
    n_out, n_in, n_tok = 37, 768, 19
    w = weights(qtype, n_out, n_in, "quantized", rng)
    x = rng.normal(0, 1, (n_tok, n_in)).astype(np.float32)
    if qtype in K_QUANTS:
        xa = q8_k_ref(x)
    elif qtype in FLOATS:
        xa = kernels.dequantize_rows(qtype, kernels.quantize_rows(qtype, x), n_in)
    else:
        xa, s = q8_0_ref(x)
    want = xa.astype(np.float64) @ kernels.dequantize_rows(qtype, w, n_in).astype(np.float64).T
    if qtype in (T.Q4_1, T.Q5_1):  # llama.cpp's m term uses s = fp16(d * sum q), not the block's sum of q * d
        m = w.reshape(n_out, n_in // 32, -1)[:, :, 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
        block_sums = xa.reshape(n_tok, n_in // 32, 32).sum(axis=2, dtype=np.float64)
        want += (s.astype(np.float64) - block_sums) @ m.T
    tol = (FLOAT_WEIGHT_RTOL if qtype in FLOATS else BLOCK_FLOAT_RTOL) * magnitude(qtype, w, xa) + 1e-30
    for isa in sorted({"scalar", BEST}):
        got = kernels.matmul(qtype, w, x, isa=isa)
        assert (np.abs(got - want) <= tol).all(), f"{qtype.name} {isa}: max excess {np.max(np.abs(got - want) - tol)}"


def test_a_real_sized_matmul_is_close_to_float() -> None:
    rng = np.random.default_rng(11)
    w = rng.normal(0, 0.02, (300, 1536)).astype(np.float32)
    x = rng.normal(0, 1, (70, 1536)).astype(np.float32)
    want = x @ w.T
    for qtype, rel in ((T.Q8_0, 0.01), (T.Q6_K, 0.025), (T.Q4_K, 0.08), (T.F16, 1e-3)):  # Gaussian weights
        got = kernels.matmul(qtype, kernels.quantize_rows(qtype, w), x, threads=2)
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < rel, qtype.name


# --------------------------------------------------------------------------- API


@pytest.mark.parametrize("qtype", (T.Q4_K, T.Q5_1, T.F16), ids=lambda t: t.name)
def test_any_thread_count_gives_the_same_bits(qtype: T) -> None:
    rng = rng_for("threads", qtype)
    w = weights(qtype, 101, 512, "quantized", rng)
    x = rng.normal(0, 1, (23, 512)).astype(np.float32)
    one = kernels.matmul(qtype, w, x)
    for threads in (2, 3, 8, 200):
        assert np.array_equal(kernels.matmul(qtype, w, x, threads=threads), one), threads
    acts = kernels.quantize_activations(qtype, x, threads=5)
    assert np.array_equal(acts.data, kernels.quantize_activations(qtype, x).data)


def test_weights_from_a_read_only_memmap_and_out_as_a_column_slice(tmp_path) -> None:
    rng = np.random.default_rng(5)
    w = kernels.quantize_rows(T.Q4_K, rng.normal(0, 0.02, (40, 512)).astype(np.float32))
    path = tmp_path / "w.bin"
    w.tofile(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=w.shape)
    x = rng.normal(0, 1, (9, 512)).astype(np.float32)
    full = kernels.matmul(T.Q4_K, w, x)
    wide = np.full((9, 100), 7.0, np.float32)
    out = kernels.matmul(T.Q4_K, mm[10:30], x, out=wide[:, 50:70], threads=2)
    assert out.base is wide or out.base is wide.base
    assert np.array_equal(wide[:, 50:70], full[:, 10:30])
    assert (wide[:, :50] == 7).all() and (wide[:, 70:] == 7).all()


def test_float_weights_take_their_natural_dtype() -> None:
    rng = np.random.default_rng(6)
    w = rng.normal(0, 1, (8, 40)).astype(np.float32)
    x = rng.normal(0, 1, (3, 40)).astype(np.float32)
    f32 = kernels.matmul(T.F32, w, x)
    assert np.array_equal(f32, kernels.matmul(T.F32, w.view(np.uint8), x))
    w16 = w.astype(np.float16)
    assert np.array_equal(kernels.matmul(T.F16, w16, x), kernels.matmul(T.F16, w16.view(np.uint16), x))


def test_one_conversion_serves_every_weight_of_its_format() -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(0, 1, (6, 256)).astype(np.float32)
    acts = kernels.quantize_activations(T.Q4_K, x)
    assert {kernels.activation_format(t) for t in K_QUANTS} == {acts.format}
    assert kernels.activation_format(T.Q8_0) == kernels.activation_format(T.Q4_1) != acts.format
    for qtype in K_QUANTS:
        w = kernels.quantize_rows(qtype, rng.normal(0, 0.02, (5, 256)).astype(np.float32))
        assert np.array_equal(kernels.matmul(qtype, w, acts), kernels.matmul(qtype, w, x))
    with pytest.raises(ValueError, match="another weight format"):
        kernels.matmul(T.Q8_0, kernels.quantize_rows(T.Q8_0, np.zeros((2, 256), np.float32)), acts)


def test_matmul_checks_its_arguments() -> None:
    w = kernels.quantize_rows(T.Q4_K, np.zeros((4, 256), np.float32))
    x = np.zeros((3, 256), np.float32)
    with pytest.raises(ValueError, match="float32"):
        kernels.matmul(T.Q4_K, w, x.astype(np.float64))
    with pytest.raises(ValueError, match="144 bytes"):
        kernels.matmul(T.Q4_K, w[:, :100], x)
    with pytest.raises(ValueError, match="multiple of the Q4_K block"):
        kernels.matmul(T.Q4_K, w, np.zeros((3, 200), np.float32))
    with pytest.raises(ValueError, match="out must be"):
        kernels.matmul(T.Q4_K, w, x, out=np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="isa must be"):
        kernels.matmul(T.Q4_K, w, x, isa="sse9")
    with pytest.raises(UnsupportedError):
        kernels.matmul(T.Q2_K, w, x)
    assert kernels.matmul(T.Q4_K, w, np.zeros((0, 256), np.float32)).shape == (0, 4)


def test_backend_names_the_isa_and_the_env_var_forces_scalar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QCONVERT_KERNELS", raising=False)
    best = kernels.backend()
    assert best == BEST in ("avx2", "neon", "scalar")
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert best in ("avx2", "scalar")
    monkeypatch.setenv("QCONVERT_KERNELS", "scalar")
    assert kernels.backend() == "scalar"
    w = kernels.quantize_rows(T.Q4_K, np.random.default_rng(1).normal(0, 1, (4, 256)).astype(np.float32))
    x = np.random.default_rng(2).normal(0, 1, (3, 256)).astype(np.float32)
    assert np.array_equal(kernels.matmul(T.Q4_K, w, x), kernels.matmul(T.Q4_K, w, x, isa="scalar"))
    monkeypatch.setenv("QCONVERT_KERNELS", "avx512")
    with pytest.raises(UnsupportedError, match="QCONVERT_KERNELS"):
        kernels.backend()
    if best != "scalar":
        other = {"avx2": "neon", "neon": "avx2"}[best]
        monkeypatch.delenv("QCONVERT_KERNELS")
        with pytest.raises(ValueError, match="instruction set"):
            kernels.matmul(T.Q4_K, w, x, isa=other)


# --------------------------------------------------------------------------- per-token ops


def attention_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    n_tok, n_head, _ = q.shape
    n_kv_tok, n_head_kv, _ = k.shape
    group, past = n_head // n_head_kv, n_kv_tok - n_tok
    out = np.empty(q.shape)
    future = np.arange(n_kv_tok)[None, :] > (past + np.arange(n_tok))[:, None]
    for h in range(n_head):
        s = q[:, h].astype(np.float64) @ k[:, h // group].astype(np.float64).T * scale
        s[future] = -np.inf
        p = np.exp(s - s.max(axis=1, keepdims=True))
        out[:, h] = (p / p.sum(axis=1, keepdims=True)) @ v[:, h // group]
    return out


@pytest.mark.parametrize(("n_tok", "n_kv_tok", "n_head", "n_head_kv", "head_dim"),
                         [(37, 37, 6, 2, 64), (5, 40, 4, 4, 24), (1, 9, 8, 1, 128), (16, 16, 12, 2, 128)])
def test_attention_matches_numpy(n_tok: int, n_kv_tok: int, n_head: int, n_head_kv: int, head_dim: int) -> None:
    rng = rng_for("attn", n_tok, n_kv_tok, n_head)
    q = rng.normal(0, 1, (n_tok, n_head, head_dim)).astype(np.float32)
    k = rng.normal(0, 1, (n_kv_tok, n_head_kv, head_dim)).astype(np.float32)
    v = rng.normal(0, 1, (n_kv_tok, n_head_kv, head_dim)).astype(np.float32)
    want = attention_ref(q, k, v, 1 / math.sqrt(head_dim))
    got = kernels.attention(q, k, v, isa=BEST)
    assert np.abs(got - want).max() < ATTENTION_ATOL
    assert np.abs(kernels.attention(q, k, v, isa="scalar") - want).max() < ATTENTION_ATOL
    # a head-major cache (n_head_kv, T, head_dim) passes as a strided view; any thread count
    cache_k = np.zeros((n_head_kv, n_kv_tok + 7, head_dim), np.float32)
    cache_v = np.zeros_like(cache_k)
    cache_k[:, :n_kv_tok] = k.transpose(1, 0, 2)
    cache_v[:, :n_kv_tok] = v.transpose(1, 0, 2)
    for threads in (1, 3):
        viewed = kernels.attention(q, cache_k[:, :n_kv_tok].transpose(1, 0, 2), cache_v[:, :n_kv_tok].transpose(1, 0, 2),
                                   threads=threads, isa=BEST)
        assert np.array_equal(viewed, got)


def test_attention_checks_its_arguments() -> None:
    q = np.zeros((4, 4, 8), np.float32)
    kv = np.zeros((4, 3, 8), np.float32)
    with pytest.raises(ValueError, match="multiple of n_head_kv"):
        kernels.attention(q, kv, kv)
    with pytest.raises(ValueError, match="at least as many positions"):
        kernels.attention(q, np.zeros((3, 2, 8), np.float32), np.zeros((3, 2, 8), np.float32))
    with pytest.raises(ValueError, match="contiguous head_dim"):
        kv2 = np.zeros((4, 2, 16), np.float32)[:, :, ::2]
        kernels.attention(q, kv2, kv2)


def rope_ref(x: np.ndarray, pos: np.ndarray, n_dims: int, base: float, neox: bool,
             freq_scale: float = 1.0, freq_factors: np.ndarray | None = None) -> np.ndarray:
    """ggml_rope_cache_init's float32 angles (theta *= base^(-2/n_dims)), rotation in float64."""
    half = n_dims // 2
    theta_scale = np.float32(base) ** np.float32(-2.0 / n_dims)
    theta = np.empty((len(pos), half), np.float32)
    theta[:, 0] = pos.astype(np.float32)
    for i in range(1, half):
        theta[:, i] = theta[:, i - 1] * theta_scale
    if freq_factors is not None:
        theta = theta / freq_factors[:half]
    angle = (np.float32(freq_scale) * theta).astype(np.float64)
    c, s = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    out = x.astype(np.float64)
    i0 = np.arange(half) if neox else 2 * np.arange(half)
    i1 = i0 + half if neox else i0 + 1
    x0, x1 = out[:, :, i0].copy(), out[:, :, i1].copy()
    out[:, :, i0] = x0 * c - x1 * s
    out[:, :, i1] = x0 * s + x1 * c
    return out


@pytest.mark.parametrize("neox", [False, True])
def test_rope_matches_numpy(neox: bool) -> None:
    rng = rng_for("rope", neox)
    x = rng.normal(0, 1, (9, 3, 64)).astype(np.float32)
    pos = np.array([0, 1, 2, 3, 100, 511, 1000, 4095, 7], np.int32)
    for n_dims, ff, fs in ((64, None, 1.0), (32, None, 0.25), (64, rng.uniform(1, 8, 32).astype(np.float32), 1.0)):
        want = rope_ref(x, pos, n_dims, 10000.0, neox, fs, ff)
        got = kernels.rope(x.copy(), pos, freq_base=10000.0, neox=neox, n_dims=n_dims, freq_scale=fs, freq_factors=ff)
        assert np.abs(got - want).max() < 5e-6
        assert np.array_equal(got[:, :, n_dims:], x[:, :, n_dims:])


def test_rms_norm_swiglu_and_log_softmax_match_numpy() -> None:
    rng = np.random.default_rng(12)
    x = rng.normal(0, 3, (7, 576)).astype(np.float32)
    w = rng.normal(1, 0.1, 576).astype(np.float32)
    want = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=1, keepdims=True) + 1e-5) * w
    assert np.allclose(kernels.rms_norm(x, w, 1e-5), want, rtol=1e-6, atol=0)
    inplace = x.copy()
    kernels.rms_norm(inplace, None, 1e-5, out=inplace)
    assert np.allclose(inplace, want / w, rtol=1e-6, atol=0)

    g = rng.normal(0, 4, (5, 1000)).astype(np.float32)
    g[0, :4] = [-100, 100, 0, -88]
    u = rng.normal(0, 1, (5, 1000)).astype(np.float32)
    g64 = g.astype(np.float64)
    want = g64 / (1 + np.exp(-g64)) * u
    got = kernels.swiglu(g, u, threads=3, isa=BEST)
    assert np.allclose(got, want, rtol=1e-6, atol=1e-30)
    assert np.array_equal(kernels.swiglu(g.copy(), u, out=g.copy(), isa=BEST), got)
    assert np.array_equal(kernels.swiglu(g, u, isa="scalar"), got)  # the same exp operations on every ISA

    logits = rng.normal(0, 5, (4, 3001)).astype(np.float32)
    ref = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    ref -= np.log(np.exp(ref).sum(axis=1, keepdims=True))
    got = kernels.log_softmax(logits, threads=2, isa=BEST)
    assert np.allclose(got, ref, rtol=4e-7, atol=1e-6)
    assert np.array_equal(kernels.log_softmax(logits, isa="scalar"), got)
