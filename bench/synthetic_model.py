"""Write a TinyLlama-1.1B-shaped LlamaForCausalLM checkpoint with random weights.

    python bench/synthetic_model.py OUTDIR [--layers 22] [--tokenizer tokenizer.model]

The output is a Hugging Face folder: BF16 sharded safetensors (~2 GB shards) with
model.safetensors.index.json, config.json, generation_config.json and a sentencepiece tokenizer
(by default the Llama-style BPE model trained on Jane Austen by tests/support/fixtures.py).
The weights are deterministic: the same layer count gives the same bytes on every run, and the
tensors of layer N are the same whatever the layer count (each tensor's random stream is seeded
from its name).

Weights are 0.02 * t with t ~ Student-t(df=5) (norm weights: 1 + 0.02 * t), which gives the heavy
tails of real checkpoints. Sampling goes through the inverse CDF on a 16-bit grid: a uniform
random uint16 k picks the t quantile at (k + 0.5) / 65536, already rounded to BF16. That is about
10x faster than numpy's standard_t and indistinguishable once rounded to BF16 (the grid only cuts
the tails at |t| ~ 13). Tensors are written slab by slab, so memory stays under ~100 MB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

SEED = 20240501
DF = 5
SCALE = 0.02
SLAB = 1 << 24  # elements generated and written at a time
MAX_SHARD_BYTES = 2_000_000_000

HIDDEN = 2048
HEADS = 32
KV_HEADS = 4
FFN = 5632
VOCAB = 32000
HEAD_DIM = HIDDEN // HEADS

Shape = tuple[int, ...]


def tensor_shapes(layers: int) -> list[tuple[str, Shape]]:
    """Tensor names and shapes ([out, in] like torch) in state-dict order."""
    shapes: list[tuple[str, Shape]] = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        p = f"model.layers.{i}"
        shapes += [
            (f"{p}.self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN)),
            (f"{p}.self_attn.k_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
            (f"{p}.self_attn.v_proj.weight", (KV_HEADS * HEAD_DIM, HIDDEN)),
            (f"{p}.self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM)),
            (f"{p}.mlp.gate_proj.weight", (FFN, HIDDEN)),
            (f"{p}.mlp.up_proj.weight", (FFN, HIDDEN)),
            (f"{p}.mlp.down_proj.weight", (HIDDEN, FFN)),
            (f"{p}.input_layernorm.weight", (HIDDEN,)),
            (f"{p}.post_attention_layernorm.weight", (HIDDEN,)),
        ]
    shapes += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]
    return shapes


def student_t_quantiles(df: int, n: int) -> np.ndarray:
    """Quantiles of Student-t(df) at (k + 0.5) / n, k = 0..n-1 (float64), df odd.

    For odd df the CDF is elementary: with theta = atan(t / sqrt(df)),
    F(t) = 1/2 + (theta + sin(theta) * sum_{j=0}^{(df-3)/2} c_j cos(theta)^(2j+1)) / pi,
    c_0 = 1, c_j = c_{j-1} * 2j / (2j + 1). F is increasing in theta, so we bisect on theta.
    """
    assert df % 2 == 1
    p = (np.arange(n, dtype=np.float64) + 0.5) / n
    lo = np.full(n, -math.pi / 2)
    hi = np.full(n, math.pi / 2)
    for _ in range(64):
        theta = (lo + hi) / 2
        cos, series, coef = np.cos(theta), np.zeros(n), 1.0
        for j in range((df - 1) // 2):
            if j > 0:
                coef *= 2 * j / (2 * j + 1)
            series += coef * cos ** (2 * j + 1)
        cdf = 0.5 + (theta + np.sin(theta) * series) / math.pi
        below = cdf < p
        lo = np.where(below, theta, lo)
        hi = np.where(below, hi, theta)
    return math.sqrt(df) * np.tan((lo + hi) / 2)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float -> BF16 bit patterns (uint16), round to nearest even (values here are finite)."""
    u = x.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def write_tensor(f, name: str, n: int, table: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    """Append n BF16 values drawn through `table` (65536 BF16 bit patterns) to the open file."""
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    rng = np.random.default_rng([SEED, seed])
    for start in range(0, n, SLAB):
        k = rng.integers(0, 1 << 16, size=min(SLAB, n - start), dtype=np.uint16)
        f.write(table[k].data)


def plan_shards(shapes: list[tuple[str, Shape]]) -> list[list[tuple[str, Shape]]]:
    """Fill shards in state-dict order, starting a new one before MAX_SHARD_BYTES is passed."""
    shards: list[list[tuple[str, Shape]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = 2 * math.prod(shape)
        if shards[-1] and size + nbytes > MAX_SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def write_shard(path: Path, tensors: list[tuple[str, Shape]], tables: dict[str, np.ndarray]) -> None:
    """One safetensors file: u64 LE header length, JSON header (space-padded to 8 bytes), data.

    Tensors are laid out in name order, like the safetensors library does for one dtype.
    """
    tensors = sorted(tensors)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        nbytes = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, shape in tensors:
            table = tables["norm"] if name.endswith("norm.weight") else tables["weight"]
            write_tensor(f, name, math.prod(shape), table)


def write_config(out: Path, layers: int) -> None:
    config = {  # the keys of TinyLlama-1.1B-Chat-v1.0's config.json
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": FFN,
        "max_position_embeddings": 2048,
        "model_type": "llama",
        "num_attention_heads": HEADS,
        "num_hidden_layers": layers,
        "num_key_value_heads": KV_HEADS,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.35.0",
        "use_cache": True,
        "vocab_size": VOCAB,
    }
    generation = {"bos_token_id": 1, "eos_token_id": 2, "max_length": 2048, "pad_token_id": 0}
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", generation)


def write_tokenizer(out: Path, tokenizer_model: Path) -> None:
    """tokenizer.model plus a Llama-2/TinyLlama-style tokenizer_config.json (BOS added, no EOS)."""
    shutil.copyfile(tokenizer_model, out / "tokenizer.model")
    special = {"<unk>": 0, "<s>": 1, "</s>": 2}
    added = {
        str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": True}
        for s, i in special.items()
    }
    _write_json(out / "tokenizer_config.json", {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": 2048,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    })
    _write_json(out / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def generate(out: Path, *, layers: int, tokenizer_model: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    q = student_t_quantiles(DF, 1 << 16)
    tables = {"weight": bf16_bits(SCALE * q), "norm": bf16_bits(1.0 + SCALE * q)}
    shards = plan_shards(tensor_shapes(layers))
    weight_map: dict[str, str] = {}
    total = 0
    for i, tensors in enumerate(shards, 1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        write_shard(out / filename, tensors, tables)
        for name, shape in tensors:
            weight_map[name] = filename
            total += 2 * math.prod(shape)
    _write_json(out / "model.safetensors.index.json",
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
    write_config(out, layers)
    write_tokenizer(out, tokenizer_model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="sentencepiece tokenizer.model (default: the cached Austen BPE model)")
    args = parser.parse_args()
    if args.layers < 1:
        parser.error("--layers must be at least 1")
    tokenizer = args.tokenizer
    if tokenizer is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from support.fixtures import sentencepiece_austen_model

        tokenizer = sentencepiece_austen_model()
    start = time.perf_counter()
    generate(args.outdir, layers=args.layers, tokenizer_model=tokenizer)
    print(f"wrote {args.outdir} ({args.layers} layers) in {time.perf_counter() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
