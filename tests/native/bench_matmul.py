"""Microbenchmark of kernels.matmul on the matmul shapes of a Q4_K_M 1.5B model (Qwen2.5-1.5B:
hidden 1536, FFN 8960, 2 KV heads of 128, vocab 151936) for a batch of 512 tokens.

    python tests/native/bench_matmul.py [--threads 1 2] [--types q4_k q6_k ...] [--tokens 512]

Prints GFLOP/s (2 * n_tok * n_in * n_out per matmul) per type, shape and thread count, and the
time of one 512-token forward pass's matmuls estimated from the Q4_K_M mix of a Qwen2.5 file.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from gguf import GGMLQuantizationType as T

from quantize_cli import kernels

SHAPES = {"attn_q/o": (1536, 1536), "attn_k/v": (256, 1536), "ffn_gate/up": (8960, 1536), "ffn_down": (1536, 8960),
          "output": (151936, 1536)}


def bench(qtype: T, n_out: int, n_in: int, n_tok: int, threads: int, isa: str | None,
          seconds: float) -> tuple[float, float]:
    """GFLOP/s by the wall clock, and by the CPU time the process got (times threads): on a machine
    shared with other work the second is what the kernels would reach with the cores to themselves."""
    rng = np.random.default_rng(0)
    rows = min(n_out, 8192)  # quantize a slab and tile it: the kernels don't care what the values are
    slab = kernels.quantize_rows(qtype, rng.normal(0, 0.02, (rows, n_in)).astype(np.float32), threads=threads)
    w = np.ascontiguousarray(np.resize(slab, (n_out, slab.shape[1])))
    x = rng.normal(0, 1, (n_tok, n_in)).astype(np.float32)
    out = np.empty((n_tok, n_out), np.float32)
    kernels.matmul(qtype, w, x, out=out, threads=threads, isa=isa)
    runs, t0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        kernels.matmul(qtype, w, x, out=out, threads=threads, isa=isa)
        runs += 1
        if time.perf_counter() - t0 > seconds:
            break
    flop = 2.0 * n_tok * n_in * n_out * runs / 1e9
    return flop / (time.perf_counter() - t0), flop / (time.process_time() - c0) * threads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--types", nargs="+", default=["q4_k", "q5_k", "q6_k", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "f16", "bf16", "f32"])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--isa", default=None)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    print(f"backend {args.isa or kernels.backend()}, {args.tokens} tokens")
    results: dict[tuple[str, str, int], float] = {}
    for name in args.types:
        qtype = T[name.upper()]
        for shape in args.shapes:
            n_out, n_in = SHAPES[shape]
            for th in args.threads:
                g, g_cpu = bench(qtype, n_out, n_in, args.tokens, th, args.isa, args.seconds)
                results[(name, shape, th)] = g
                print(f"{name:5s} {shape:12s} {n_out:6d}x{n_in:<5d} threads {th}: {g:7.1f} GFLOP/s "
                      f"({g_cpu:6.1f} per CPU-second x threads)", flush=True)
    # Qwen2.5-1.5B Q4_K_M: 28 layers; q, k, o, gate, up in Q4_K; v and down in Q6_K in half the
    # layers (use_more_bits), Q4_K in the others; output in Q6_K.
    for th in args.threads:
        need = [("q4_k", "attn_q/o"), ("q4_k", "attn_k/v"), ("q4_k", "ffn_gate/up"), ("q4_k", "ffn_down"),
                ("q6_k", "attn_k/v"), ("q6_k", "ffn_down"), ("q6_k", "output")]
        if not all((t, s, th) in results for t, s in need):
            continue
        def secs(t: str, s: str, times: float) -> float:
            n_out, n_in = SHAPES[s]
            return times * 2.0 * args.tokens * n_in * n_out / (results[(t, s, th)] * 1e9)
        layer = (2 * secs("q4_k", "attn_q/o", 1) + secs("q4_k", "attn_k/v", 1) + 2 * secs("q4_k", "ffn_gate/up", 1)
                 + 0.5 * (secs("q4_k", "attn_k/v", 1) + secs("q4_k", "ffn_down", 1))
                 + 0.5 * (secs("q6_k", "attn_k/v", 1) + secs("q6_k", "ffn_down", 1)))
        total = 28 * layer + secs("q6_k", "output", 1)
        print(f"threads {th}: matmuls of one {args.tokens}-token pass ~{total:.2f} s ({args.tokens / total:.0f} tokens/s)")


if __name__ == "__main__":
    main()
