"""A small but real Llama checkpoint for fast tests: the layout, config and tokenizer files of an
HF LlamaForCausalLM folder, random weights of any dtype, optionally sharded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from quantize_cli.formats.safetensors import write_safetensors

ST_DTYPE = {"F32": np.float32, "F16": np.float16}


def tiny_llama(out: Path, *, tokenizer_model: Path, vocab: int = 32000, hidden: int = 64, layers: int = 2,
               heads: int = 4, kv_heads: int = 2, ffn: int = 128, dtype: str = "F32", shards: int = 1,
               tied: bool = False, seed: int = 0) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    hd = hidden // heads
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not tied:
        shapes["lm_head.weight"] = (vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (heads * hd, hidden), p + "self_attn.k_proj.weight": (kv_heads * hd, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * hd, hidden), p + "self_attn.o_proj.weight": (hidden, heads * hd),
            p + "mlp.gate_proj.weight": (ffn, hidden), p + "mlp.up_proj.weight": (ffn, hidden),
            p + "mlp.down_proj.weight": (hidden, ffn),
        }
    names = sorted(shapes)
    groups = [names[k::shards] for k in range(shards)]
    weight_map = {}
    for k, group in enumerate(groups):
        fname = "model.safetensors" if shards == 1 else f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        arrays = []
        for n in group:
            a = (rng.standard_normal(shapes[n]) * 0.02).astype(np.float32)
            if n.endswith("norm.weight"):
                a = 1.0 + a
            if dtype == "BF16":
                arrays.append((a.view(np.uint32) >> 16).astype(np.uint16))
            else:
                arrays.append(a.astype(ST_DTYPE[dtype]))
            weight_map[n] = fname
        write_safetensors(out / fname, [(n, dtype, shapes[n]) for n in group], arrays)
    if shards > 1:
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "vocab_size": vocab, "tie_word_embeddings": tied, "bos_token_id": 1,
        "eos_token_id": 2, "torch_dtype": {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype],
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(tokenizer_model, out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "tokenizer_class": "LlamaTokenizer", "legacy": False,
    }, indent=2))
    return out
