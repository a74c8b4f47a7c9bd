"""runtime.model: the CPU forward pass against a plain float64 numpy transcription of the model.

Tiny random models (2 layers, 64 wide, GQA with 4 query and 2 KV heads) are written with gguf-py's
GGUFWriter in llama and qwen2 flavours, F32 and Q8_0 weights. The reference dequantizes with
gguf-py (not our kernels) and does every step in float64, so the only differences are the
llama.cpp-faithful roundings the runtime makes: the f16 KV cache and, for quantized weights, the
8-bit activations of the dot products. Bad files must give one clear error naming file and tensor.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType

from quantize_cli import kernels
from quantize_cli.errors import InputError, UnsupportedError
from quantize_cli.runtime import ops
from quantize_cli.runtime.model import Config, RunState, forward, load_model

T = GGMLQuantizationType


@dataclass(frozen=True)
class Tiny:
    arch: str = "llama"
    qtype: GGMLQuantizationType = T.F32
    tied: bool = False
    rope_freqs: bool = False
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_vocab: int = 96
    rope_base: float = 10000.0
    eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def tiny_tensors(spec: Tiny, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 tensors in numpy (rows, cols) order, keyed by GGUF name."""
    rng = np.random.default_rng(seed)
    e, hd, ff = spec.n_embd, spec.head_dim, spec.n_ff
    q_dim, kv_dim = spec.n_head * hd, spec.n_head_kv * hd

    def mat(n_out: int, n_in: int) -> np.ndarray:
        return (rng.standard_normal((n_out, n_in)) / math.sqrt(n_in)).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    t = {"token_embd.weight": rng.standard_normal((spec.n_vocab, e)).astype(np.float32),
         "output_norm.weight": norm(e)}
    if not spec.tied:
        t["output.weight"] = mat(spec.n_vocab, e)
    if spec.rope_freqs:
        t["rope_freqs.weight"] = np.linspace(1.0, 8.0, hd // 2).astype(np.float32)
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = norm(e)
        t[p + "attn_q.weight"], t[p + "attn_k.weight"], t[p + "attn_v.weight"] = \
            mat(q_dim, e), mat(kv_dim, e), mat(kv_dim, e)
        if spec.arch == "qwen2":
            for name, n in (("attn_q.bias", q_dim), ("attn_k.bias", kv_dim), ("attn_v.bias", kv_dim)):
                t[p + name] = (0.5 * rng.standard_normal(n)).astype(np.float32)
        t[p + "attn_output.weight"] = mat(e, q_dim)
        t[p + "ffn_norm.weight"] = norm(e)
        t[p + "ffn_gate.weight"], t[p + "ffn_up.weight"] = mat(ff, e), mat(ff, e)
        t[p + "ffn_down.weight"] = mat(e, ff)
    return t


def write_tiny(path: Path, spec: Tiny, tensors: dict[str, np.ndarray], *, skip: str | None = None,
               raw: dict[str, tuple[np.ndarray, GGMLQuantizationType]] | None = None) -> Path:
    """A GGUF as llama.cpp's converter lays it out; 2-D weights in spec.qtype, vectors in F32.
    `skip` leaves a tensor out; `raw` stores given bytes of a given type instead."""
    w = gguf.GGUFWriter(path, spec.arch)
    w.add_block_count(spec.n_layer)
    w.add_context_length(256)
    w.add_embedding_length(spec.n_embd)
    w.add_feed_forward_length(spec.n_ff)
    w.add_head_count(spec.n_head)
    w.add_head_count_kv(spec.n_head_kv)
    w.add_rope_freq_base(spec.rope_base)
    w.add_layer_norm_rms_eps(spec.eps)
    w.add_rope_dimension_count(spec.head_dim)
    for name, arr in tensors.items():
        if name == skip:
            continue
        if raw and name in raw:
            w.add_tensor(name, raw[name][0], raw_dtype=raw[name][1])
        elif arr.ndim == 2 and spec.qtype != T.F32:
            w.add_tensor(name, gguf.quants.quantize(arr, spec.qtype), raw_dtype=spec.qtype)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def stored_weights(spec: Tiny, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The values the file holds, float64, dequantized by gguf-py."""
    out = {}
    for name, arr in tensors.items():
        if arr.ndim == 2 and spec.qtype != T.F32:
            arr = gguf.quants.dequantize(gguf.quants.quantize(arr, spec.qtype), spec.qtype)
        out[name] = arr.astype(np.float64)
    return out


def reference_logits(spec: Tiny, wt: dict[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """The model written out plainly in float64: every logit of every position."""
    n, hd, half = len(tokens), spec.head_dim, spec.head_dim // 2
    group = spec.n_head // spec.n_head_kv

    def rmsnorm(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x * x).mean(axis=1, keepdims=True) + spec.eps) * w

    freqs = spec.rope_base ** (-2.0 * np.arange(half) / hd)
    if spec.rope_freqs:
        freqs = freqs / wt["rope_freqs.weight"]
    angle = np.arange(n)[:, None] * freqs[None, :]  # (n, half)

    def rope(x: np.ndarray) -> np.ndarray:  # (n, heads, hd)
        out = x.copy()
        if spec.arch == "qwen2":  # NEOX: pairs (i, i + hd/2)
            a, b = x[..., :half], x[..., half:]
        else:                     # normal: pairs (2i, 2i+1)
            a, b = x[..., 0::2], x[..., 1::2]
        c, s = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
        ra, rb = a * c - b * s, a * s + b * c
        if spec.arch == "qwen2":
            out[..., :half], out[..., half:] = ra, rb
        else:
            out[..., 0::2], out[..., 1::2] = ra, rb
        return out

    x = wt["token_embd.weight"][tokens]
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        h = rmsnorm(x, wt[p + "attn_norm.weight"])
        q, k, v = (h @ wt[p + f"attn_{m}.weight"].T + wt.get(p + f"attn_{m}.bias", 0.0) for m in "qkv")
        q, k = rope(q.reshape(n, spec.n_head, hd)), rope(k.reshape(n, spec.n_head_kv, hd))
        v = v.reshape(n, spec.n_head_kv, hd)
        heads = np.empty((n, spec.n_head, hd))
        for head in range(spec.n_head):
            kv = head // group
            scores = q[:, head] @ k[:, kv].T / math.sqrt(hd)
            scores[np.triu_indices(n, 1)] = -np.inf
            p_att = np.exp(scores - scores.max(axis=1, keepdims=True))
            p_att /= p_att.sum(axis=1, keepdims=True)
            heads[:, head] = p_att @ v[:, kv]
        x = x + heads.reshape(n, -1) @ wt[p + "attn_output.weight"].T
        h = rmsnorm(x, wt[p + "ffn_norm.weight"])
        gate, up = h @ wt[p + "ffn_gate.weight"].T, h @ wt[p + "ffn_up.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ wt[p + "ffn_down.weight"].T
    out_w = wt.get("output.weight", wt["token_embd.weight"])
    return rmsnorm(x, wt["output_norm.weight"]) @ out_w.T


def run_forward(path: Path, tokens: np.ndarray, *, n_batch: int | None = None, logits_from: int = 0) -> np.ndarray:
    """Our logits for positions logits_from.. of `tokens`, fed in batches of n_batch."""
    model = load_model(path)
    n = len(tokens)
    n_batch = n_batch or n
    state = RunState(model.config, n_ctx=n, n_batch=n_batch, n_logits=n_batch)
    rows = []
    for b0 in range(0, n, n_batch):
        b1 = min(n, b0 + n_batch)
        skip = min(b1 - b0, max(0, logits_from - b0))
        rows.append(forward(model, state, tokens[b0:b1], b0, logits_from=skip).copy())
    return np.concatenate(rows)


TOKENS = np.random.default_rng(7).integers(0, 96, size=40).astype(np.int32)

# Largest |ours - reference| allowed, relative to the largest |logit|. F32 weights: only the f16 KV
# cache rounds (2^-11 relative); Q8_0: the activations are rounded to 8 bits before each dot product.
CASES = {
    "llama-f32": (Tiny(), 6e-4),
    "llama-f32-tied-rope_freqs": (Tiny(tied=True, rope_freqs=True), 6e-4),
    "qwen2-f32": (Tiny(arch="qwen2"), 6e-4),
    "llama-q8_0": (Tiny(qtype=T.Q8_0), 2e-2),
    "qwen2-q8_0-tied": (Tiny(arch="qwen2", qtype=T.Q8_0, tied=True), 2e-2),
}


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_float64_reference(tmp_path: Path, case: str) -> None:
    spec, tolerance = CASES[case]
    tensors = tiny_tensors(spec)
    path = write_tiny(tmp_path / "tiny.gguf", spec, tensors)
    ours = run_forward(path, TOKENS)
    ref = reference_logits(spec, stored_weights(spec, tensors), TOKENS)
    assert ours.shape == ref.shape == (len(TOKENS), spec.n_vocab)
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err < tolerance, f"{case}: max relative logit error {err:.2e}"
    assert (ours.argmax(axis=1) == ref.argmax(axis=1)).mean() > 0.9


def test_batches_and_requested_rows_give_the_same_logits(tmp_path: Path) -> None:
    spec = Tiny(qtype=T.Q8_0)
    path = write_tiny(tmp_path / "tiny.gguf", spec, tiny_tensors(spec))
    whole = run_forward(path, TOKENS)
    np.testing.assert_allclose(run_forward(path, TOKENS, n_batch=7), whole, rtol=0, atol=1e-5)
    np.testing.assert_allclose(run_forward(path, TOKENS, n_batch=16, logits_from=21), whole[21:], rtol=0, atol=1e-5)


def test_config_from_metadata(tmp_path: Path) -> None:
    spec = Tiny(arch="qwen2", tied=True)
    model = load_model(write_tiny(tmp_path / "tiny.gguf", spec, tiny_tensors(spec)))
    c = model.config
    assert (c.arch, c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_ff, c.n_vocab, c.n_rot) == \
        ("qwen2", 2, 64, 4, 2, 16, 128, 96, 16)
    assert c.rope_neox and c.qkv_bias and c.rms_eps == pytest.approx(1e-5)
    assert model.weights.output is model.weights.token_embd  # tied embeddings
    assert model.weights.layers[0].bq is not None


# --------------------------------------------------------------------------- the numpy stand-ins


def test_numpy_stand_ins_agree_with_the_c_kernels() -> None:
    """ops falls back to numpy when the compiled kernels lack the inference functions."""
    rng = np.random.default_rng(3)
    n, n_head, n_kv, hd = 12, 4, 2, 16
    q = rng.standard_normal((n, n_head, hd)).astype(np.float32)
    k = rng.standard_normal((20, n_kv, hd)).astype(np.float32)
    v = rng.standard_normal((20, n_kv, hd)).astype(np.float32)
    np.testing.assert_allclose(ops._attention_numpy(q, k, v, np.empty_like(q), 1),
                               ops._attention_c(q, k, v, np.empty_like(q), 1), atol=2e-6)
    for neox in (False, True):
        a, b = q.copy(), q.copy()
        pos = np.arange(100, 100 + n, dtype=np.int32)
        ops._rope_numpy(a, pos, base=10000.0, neox=neox, n_rot=hd, freq_scale=0.5, freq_factors=None)
        ops._rope_c(b, pos, base=10000.0, neox=neox, n_rot=hd, freq_scale=0.5, freq_factors=None)
        np.testing.assert_allclose(a, b, atol=2e-5)
    x = rng.standard_normal((n, 64)).astype(np.float32)
    w = rng.standard_normal(64).astype(np.float32)
    np.testing.assert_allclose(ops._rmsnorm_numpy(x, w, 1e-5, np.empty_like(x)),
                               ops._rmsnorm_c(x, w, 1e-5, np.empty_like(x)), rtol=1e-6, atol=1e-6)
    g, u = 5 * x, x.copy()
    np.testing.assert_allclose(ops._swiglu_numpy(g.copy(), u, 1), ops._swiglu_c(g.copy(), u, 1), rtol=1e-6, atol=1e-6)
    # Q4_1's dot product uses the activation block sum rounded to fp16 (block_q8_1.s), which the
    # stand-in does not reproduce: 2^-11 of the min term.
    for qtype, tolerance in ((T.F32, 1e-5), (T.F16, 1e-5), (T.Q8_0, 1e-5), (T.Q4_1, 3e-3), (T.Q4_K, 1e-5),
                             (T.Q6_K, 1e-5)):
        rows = rng.standard_normal((48, 256)).astype(np.float32)
        data = rows if qtype == T.F32 else kernels.quantize_rows(qtype, rows)
        wt = ops.QTensor("w", qtype, 48, 256, data)
        xs = rng.standard_normal((n, 256)).astype(np.float32)
        a, b = np.empty((n, 48), np.float32), np.empty((n, 48), np.float32)
        ops._matmuls_numpy(xs, [(wt, a)], 1)
        ops._matmuls_c(xs, [(wt, b)], 1)
        np.testing.assert_allclose(a, b, rtol=0, atol=tolerance * np.abs(b).max(), err_msg=qtype.name)


# --------------------------------------------------------------------------- bad files


def _tiny_file(tmp_path: Path, **kw) -> Path:
    spec = Tiny(**kw)
    return write_tiny(tmp_path / "tiny.gguf", spec, tiny_tensors(spec))


def test_truncated_file_names_file(tmp_path: Path) -> None:
    path = _tiny_file(tmp_path)
    data = path.read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 40):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(InputError, match=str(bad)):
            load_model(bad)


def test_bad_magic(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + _tiny_file(tmp_path).read_bytes()[4:])
    with pytest.raises(InputError, match="bad.gguf"):
        load_model(bad)


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    spec = Tiny()
    path = write_tiny(tmp_path / "tiny.gguf", spec, tiny_tensors(spec), skip="blk.1.ffn_up.weight")
    with pytest.raises(InputError, match=r"tensor blk\.1\.ffn_up\.weight is missing"):
        load_model(path)


def test_qwen2_needs_its_biases(tmp_path: Path) -> None:
    spec = Tiny(arch="qwen2")
    path = write_tiny(tmp_path / "tiny.gguf", spec, tiny_tensors(spec), skip="blk.0.attn_k.bias")
    with pytest.raises(InputError, match=r"blk\.0\.attn_k\.bias is missing"):
        load_model(path)


def test_unsupported_architecture(tmp_path: Path) -> None:
    spec = Tiny(arch="gpt2")
    path = write_tiny(tmp_path / "tiny.gguf", spec, tiny_tensors(spec))
    with pytest.raises(UnsupportedError, match="architecture 'gpt2'"):
        load_model(path)


def test_unsupported_tensor_type(tmp_path: Path) -> None:
    spec = Tiny(n_ff=256)  # ffn_down rows of 256 values: one Q2_K block (84 bytes) each
    q2k = (np.zeros((64, 84), np.uint8), T.Q2_K)
    path = write_tiny(tmp_path / "q2k.gguf", spec, tiny_tensors(spec), raw={"blk.0.ffn_down.weight": q2k})
    with pytest.raises(UnsupportedError, match=r"blk\.0\.ffn_down\.weight has type Q2_K"):
        load_model(path)


@pytest.mark.parametrize("key, value, message", [
    ("llama.attention.head_count", 0, "llama.attention.head_count = 0 is not a positive integer"),
    ("llama.attention.head_count_kv", [2, 2], "llama.attention.head_count_kv = [2, 2] is not a positive integer"),
    ("llama.attention.layer_norm_rms_epsilon", "tiny", "is not a finite number"),
])
def test_bad_hyperparameters_are_named(tmp_path: Path, key: str, value, message: str) -> None:
    spec = Tiny()
    path = write_tiny(tmp_path / "tiny.gguf", spec, tiny_tensors(spec))
    meta = dict(load_model(path).metadata, **{key: value})
    with pytest.raises(InputError, match=re.escape(message)):
        Config.from_metadata(meta, n_vocab=spec.n_vocab, path=path)
