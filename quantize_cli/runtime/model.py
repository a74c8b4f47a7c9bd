"""A GGUF model on the CPU, laid out like llama2.c.

    Config    hyperparameters from the GGUF metadata
    Weights   the tensors, still quantized and memory-mapped (only norms and biases are copied)
    RunState  preallocated activations and KV cache for one sequence of up to n_ctx positions
    forward   runs a batch of tokens at consecutive positions and returns logits

Supported families are entries in ARCHS (llama, qwen2). The forward pass mirrors llama.cpp's graph
(llm_build_llama / llm_build_qwen2): RMSNorm, Q/K/V (+ biases), RoPE, causal GQA attention with an
f16 KV cache, output projection, residual, RMSNorm, SwiGLU FFN, residual, final norm, lm head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from quantize_cli import kernels
from quantize_cli.errors import InputError, UnsupportedError
from quantize_cli.formats.gguf_reader import GGUFFile, Tensor, gguf_metadata, read_gguf
from quantize_cli.runtime import ops
from quantize_cli.runtime.ops import QTensor

T = GGMLQuantizationType


@dataclass(frozen=True)
class ArchSpec:
    """What differs between the supported families (llama.cpp's llm_build_* graphs)."""

    rope_neox: bool  # True: rotate pairs (i, i + n_rot/2) (qwen2); False: adjacent pairs (llama)
    qkv_bias: bool   # attn_q/k/v biases are required (llama: used when present)


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec(rope_neox=False, qkv_bias=False),
    "qwen2": ArchSpec(rope_neox=True, qkv_bias=True),
}


@dataclass(frozen=True)
class Config:
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_rot: int            # leading dimensions of each head that RoPE rotates
    rms_eps: float
    rope_base: float
    rope_freq_scale: float  # 1/factor for linear RoPE scaling, else 1
    rope_neox: bool
    qkv_bias: bool

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], *, n_vocab: int, path: Path) -> Config:
        arch = meta.get("general.architecture")
        if arch not in ARCHS:
            raise UnsupportedError(f"{path}: architecture {arch!r} is not supported by the runtime",
                                   hint=f"supported: {', '.join(ARCHS)}")

        def key(name: str, default: Any, kind: type) -> Any:
            value = meta.get(f"{arch}.{name}", default)
            if value is None:
                raise InputError(f"{path}: metadata key {arch}.{name} is missing")
            ok = (isinstance(value, int) and not isinstance(value, bool) and value > 0 if kind is int
                  else isinstance(value, (int, float)) and math.isfinite(value) and value >= 0)
            if not ok:
                raise InputError(f"{path}: metadata key {arch}.{name} = {value!r} is not a "
                                 f"{'positive integer' if kind is int else 'finite number'}")
            return kind(value)

        n_embd, n_head = key("embedding_length", None, int), key("attention.head_count", None, int)
        head_dim = key("attention.key_length", n_embd // n_head, int)
        if key("attention.value_length", head_dim, int) != head_dim:
            raise UnsupportedError(f"{path}: attention.key_length != attention.value_length is not supported")
        scaling = meta.get(f"{arch}.rope.scaling.type", "none")
        if scaling not in ("none", "linear"):
            raise UnsupportedError(f"{path}: RoPE scaling {scaling!r} ({arch}.rope.scaling.type) is not supported",
                                   hint="supported: none, linear")
        factor = key("rope.scaling.factor", 1.0, float) if scaling == "linear" else 1.0
        spec = ARCHS[arch]
        config = cls(
            arch=arch, n_layer=key("block_count", None, int), n_embd=n_embd, n_head=n_head,
            n_head_kv=key("attention.head_count_kv", n_head, int), head_dim=head_dim,
            n_ff=key("feed_forward_length", None, int), n_vocab=n_vocab,
            n_rot=key("rope.dimension_count", head_dim, int),
            rms_eps=key("attention.layer_norm_rms_epsilon", None, float),
            rope_base=key("rope.freq_base", 10000.0, float), rope_freq_scale=1.0 / factor if factor else 1.0,
            rope_neox=spec.rope_neox, qkv_bias=spec.qkv_bias,
        )
        if n_head % config.n_head_kv or config.n_rot % 2 or config.n_rot > head_dim:
            raise InputError(f"{path}: inconsistent attention shape (heads {n_head}, KV heads "
                             f"{config.n_head_kv}, head size {head_dim}, RoPE dims {config.n_rot})")
        return config


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: np.ndarray  # (n_embd,)
    wq: QTensor            # (n_head*head_dim, n_embd)
    wk: QTensor            # (n_head_kv*head_dim, n_embd)
    wv: QTensor            # (n_head_kv*head_dim, n_embd)
    bq: np.ndarray | None  # (n_head*head_dim,)
    bk: np.ndarray | None  # (n_head_kv*head_dim,)
    bv: np.ndarray | None  # (n_head_kv*head_dim,)
    wo: QTensor            # (n_embd, n_head*head_dim)
    ffn_norm: np.ndarray   # (n_embd,)
    w_gate: QTensor        # (n_ff, n_embd)
    w_up: QTensor          # (n_ff, n_embd)
    w_down: QTensor        # (n_embd, n_ff)


@dataclass(frozen=True)
class Weights:
    token_embd: QTensor              # (n_vocab, n_embd)
    layers: list[LayerWeights]
    output_norm: np.ndarray          # (n_embd,)
    output: QTensor                  # (n_vocab, n_embd); token_embd when the embeddings are tied
    rope_freqs: np.ndarray | None    # (n_rot/2,) llama3 frequency factors


class _TensorTable:
    """The file's tensors by name, checked before use: shape, type, data inside the file."""

    def __init__(self, reader: GGUFFile, path: Path) -> None:
        self.path = path
        self.file_size = path.stat().st_size
        self.tensors = {t.name: t for t in reader.tensors}

    def _get(self, name: str, ne: tuple[int, ...], required: bool) -> Tensor | None:
        t = self.tensors.get(name)
        if t is None:
            if required:
                raise InputError(f"{self.path}: tensor {name} is missing")
            return None
        if tuple(int(d) for d in t.shape) != ne:
            raise InputError(f"{self.path}: tensor {name} has shape {list(map(int, t.shape))}, expected {list(ne)}")
        qtype = T(t.tensor_type)
        if qtype not in kernels.SUPPORTED:
            raise UnsupportedError(f"{self.path}: tensor {name} has type {qtype.name}, which the runtime cannot run",
                                   hint="supported: " + ", ".join(q.name for q in sorted(kernels.SUPPORTED)))
        block, size = GGML_QUANT_SIZES[qtype]
        if ne[0] % block:
            raise InputError(f"{self.path}: tensor {name}: row of {ne[0]} is not a multiple of the "
                             f"{qtype.name} block ({block})")
        if t.data_offset + t.n_bytes > self.file_size or t.data.nbytes != t.n_bytes:
            raise InputError(f"{self.path}: tensor {name} data lies past the end of the file "
                             f"(truncated download?)")
        return t

    def vector(self, name: str, n: int, *, required: bool = True) -> np.ndarray | None:
        """A small 1-D tensor (norm, bias), copied into memory as float32."""
        t = self._get(name, (n,), required)
        if t is None:
            return None
        if T(t.tensor_type) == T.F32:
            return np.array(t.data, dtype=np.float32).reshape(n)
        return kernels.dequantize_rows(T(t.tensor_type), np.ascontiguousarray(t.data).view(np.uint8).reshape(1, -1),
                                       n).reshape(n)

    def matrix(self, name: str, n_in: int, n_out: int, *, required: bool = True) -> QTensor | None:
        """A 2-D weight (n_out rows of n_in values), left quantized and memory-mapped."""
        t = self._get(name, (n_in, n_out), required)
        if t is None:
            return None
        qtype = T(t.tensor_type)
        data = t.data.reshape(n_out, n_in) if qtype == T.F32 else t.data.view(np.uint8).reshape(n_out, -1)
        return QTensor(name, qtype, n_out, n_in, data)


@dataclass
class Model:
    path: Path
    config: Config
    weights: Weights
    metadata: dict[str, Any]  # every GGUF key (the tokenizer reads its keys from here)


def load_model(path: Path) -> Model:
    """Open a GGUF file for the CPU runtime; tensors stay in the file (memory-mapped)."""
    path = Path(path)
    reader = read_gguf(path)
    meta = gguf_metadata(reader)
    table = _TensorTable(reader, path)
    embd = table.tensors.get("token_embd.weight")
    if embd is None:
        raise InputError(f"{path}: tensor token_embd.weight is missing")
    config = Config.from_metadata(meta, n_vocab=int(embd.shape[1]), path=path)
    n_tokens = len(meta.get("tokenizer.ggml.tokens", ())) or config.n_vocab
    if n_tokens != config.n_vocab:
        raise InputError(f"{path}: token_embd.weight has {config.n_vocab} rows but the vocabulary has {n_tokens} tokens")
    return Model(path, config, _load_weights(table, config), meta)


def _load_weights(table: _TensorTable, c: Config) -> Weights:
    q_dim, kv_dim = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
    layers = []
    for i in range(c.n_layer):
        p = f"blk.{i}."
        layers.append(LayerWeights(
            attn_norm=table.vector(p + "attn_norm.weight", c.n_embd),
            wq=table.matrix(p + "attn_q.weight", c.n_embd, q_dim),
            wk=table.matrix(p + "attn_k.weight", c.n_embd, kv_dim),
            wv=table.matrix(p + "attn_v.weight", c.n_embd, kv_dim),
            bq=table.vector(p + "attn_q.bias", q_dim, required=c.qkv_bias),
            bk=table.vector(p + "attn_k.bias", kv_dim, required=c.qkv_bias),
            bv=table.vector(p + "attn_v.bias", kv_dim, required=c.qkv_bias),
            wo=table.matrix(p + "attn_output.weight", q_dim, c.n_embd),
            ffn_norm=table.vector(p + "ffn_norm.weight", c.n_embd),
            w_gate=table.matrix(p + "ffn_gate.weight", c.n_embd, c.n_ff),
            w_up=table.matrix(p + "ffn_up.weight", c.n_embd, c.n_ff),
            w_down=table.matrix(p + "ffn_down.weight", c.n_ff, c.n_embd),
        ))
    token_embd = table.matrix("token_embd.weight", c.n_embd, c.n_vocab)
    output = table.matrix("output.weight", c.n_embd, c.n_vocab, required=False) or token_embd
    return Weights(token_embd=token_embd, layers=layers, output_norm=table.vector("output_norm.weight", c.n_embd),
                   output=output, rope_freqs=table.vector("rope_freqs.weight", c.n_rot // 2, required=False))


class RunState:
    """Every buffer of a forward pass, allocated once for batches of up to n_batch tokens."""

    def __init__(self, c: Config, *, n_ctx: int, n_batch: int, n_logits: int) -> None:
        n, q_dim, kv_dim = n_batch, c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        self.n_ctx, self.n_batch = n_ctx, n_batch
        f32 = np.float32
        self.x = np.empty((n, c.n_embd), f32)       # residual stream
        self.xb = np.empty((n, c.n_embd), f32)      # normed input of a block
        self.xb2 = np.empty((n, c.n_embd), f32)     # output of a block (attn_output / ffn_down)
        self.q = np.empty((n, q_dim), f32)          # queries, heads side by side
        self.k = np.empty((n, kv_dim), f32)         # keys of the batch
        self.v = np.empty((n, kv_dim), f32)         # values of the batch
        self.att = np.empty((n, q_dim), f32)        # attention output, heads side by side
        self.hb = np.empty((n, c.n_ff), f32)        # ffn gate, then silu(gate) * up
        self.hb2 = np.empty((n, c.n_ff), f32)       # ffn up
        # keys and values of every layer and position, rounded to f16 as in llama.cpp's default cache
        self.key_cache = np.zeros((c.n_layer, n_ctx, c.n_head_kv, c.head_dim), f32)
        self.value_cache = np.zeros((c.n_layer, n_ctx, c.n_head_kv, c.head_dim), f32)
        self.logits = np.empty((n_logits, c.n_vocab), f32)  # lm head output for the requested rows


def forward(model: Model, s: RunState, tokens: np.ndarray, pos: int, *, logits_from: int = 0,
            threads: int = 1) -> np.ndarray:
    """Run `tokens` (n,) at positions pos..pos+n-1 of one sequence; the KV cache in `s` must hold
    positions 0..pos-1 of it. Returns the logits of batch rows logits_from..n-1, a view
    (n - logits_from, n_vocab) of s.logits valid until the next call.
    """
    c, w = model.config, model.weights
    n = len(tokens)
    if not (0 < n <= s.n_batch and pos + n <= s.n_ctx and 0 <= logits_from <= n
            and n - logits_from <= s.logits.shape[0]):
        raise ValueError(f"batch of {n} at position {pos} (logits from {logits_from}) does not fit the RunState")
    if int(tokens.min()) < 0 or int(tokens.max()) >= c.n_vocab:
        raise ValueError(f"token id out of range 0..{c.n_vocab - 1}")
    x, xb, xb2, hb, hb2 = s.x[:n], s.xb[:n], s.xb2[:n], s.hb[:n], s.hb2[:n]
    q = s.q[:n].reshape(n, c.n_head, c.head_dim)
    k = s.k[:n].reshape(n, c.n_head_kv, c.head_dim)
    v = s.v[:n].reshape(n, c.n_head_kv, c.head_dim)
    att = s.att[:n].reshape(n, c.n_head, c.head_dim)
    positions = np.arange(pos, pos + n, dtype=np.int32)
    rope = dict(base=c.rope_base, neox=c.rope_neox, n_rot=c.n_rot, freq_scale=c.rope_freq_scale,
                freq_factors=w.rope_freqs)

    x[...] = w.token_embd.rows(tokens, threads=threads)
    for li, lw in enumerate(w.layers):
        # attention
        ops.rmsnorm(x, lw.attn_norm, c.rms_eps, out=xb)
        ops.matmul(xb, [(lw.wq, s.q[:n]), (lw.wk, s.k[:n]), (lw.wv, s.v[:n])], threads=threads)
        for bias, dst in ((lw.bq, s.q[:n]), (lw.bk, s.k[:n]), (lw.bv, s.v[:n])):
            if bias is not None:
                dst += bias
        ops.rope(q, positions, **rope)
        ops.rope(k, positions, **rope)
        kc, vc = s.key_cache[li, :pos + n], s.value_cache[li, :pos + n]  # (pos+n, n_head_kv, head_dim)
        kc[pos:] = k.astype(np.float16)
        vc[pos:] = v.astype(np.float16)
        ops.attention(q, kc, vc, out=att, threads=threads)
        ops.matmul(s.att[:n], [(lw.wo, xb2)], threads=threads)
        x += xb2
        # feed-forward
        ops.rmsnorm(x, lw.ffn_norm, c.rms_eps, out=xb)
        ops.matmul(xb, [(lw.w_gate, hb), (lw.w_up, hb2)], threads=threads)
        ops.swiglu(hb, hb2, threads=threads)
        ops.matmul(hb, [(lw.w_down, xb2)], threads=threads)
        x += xb2

    logits = s.logits[:n - logits_from]
    if n - logits_from:
        xo = ops.rmsnorm(x[logits_from:], w.output_norm, c.rms_eps, out=xb[logits_from:])
        ops.matmul(xo, [(w.output, logits)], threads=threads)
    return logits
