"""Microbenchmark of kernels.matmul on the matmul shapes of a Q4_K_M 1.5B model (Qwen2.5-1.5B:
hidden 1536, FFN 8960, 2 KV heads of 128, vocab 151936) for a batch of 512 tokens.

    python tests/native/bench_matmul.py [--threads 1 2] [--types q4_k q6_k ...] [--vs-llamacpp]

Prints GFLOP/s (2 * n_tok * n_in * n_out per matmul) per type, shape and thread count, twice: by
the wall clock, and per CPU-second the process got (times threads), which is what the kernels reach
with the cores to themselves on a machine shared with other work. --vs-llamacpp also times
llama.cpp's own CPU matmul (tests/native/ggml_matmul_bench.c, built against the llama.cpp tree of
the oracle tests) on the same shapes in the same run and prints the ratio of the per-CPU-second
figures. Then it estimates the matmul time of one 512-token pass of a Qwen2.5-1.5B Q4_K_M file.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T

from quantize_cli import kernels

HERE = Path(__file__).resolve().parent
SHAPES = {"attn_q/o": (1536, 1536), "attn_k/v": (256, 1536), "ffn_gate/up": (8960, 1536), "ffn_down": (1536, 8960),
          "output": (151936, 1536)}
# Qwen2.5-1.5B Q4_K_M, per 28 layers: q, k, o, gate, up in Q4_K; v and down in Q6_K in half the
# layers (use_more_bits), Q4_K in the others; output.weight in Q6_K.
MIX = [("q4_k", "attn_q/o", 2 * 28), ("q4_k", "attn_k/v", 1.5 * 28), ("q6_k", "attn_k/v", 0.5 * 28),
       ("q4_k", "ffn_gate/up", 2 * 28), ("q4_k", "ffn_down", 0.5 * 28), ("q6_k", "ffn_down", 0.5 * 28),
       ("q6_k", "output", 1)]


def bench(qtype: T, n_out: int, n_in: int, n_tok: int, threads: int, isa: str | None,
          seconds: float) -> tuple[float, float]:
    """GFLOP/s by the wall clock and per CPU-second x threads; activations converted in every call."""
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


def llamacpp_bench() -> Path:
    """ggml_matmul_bench built against the oracle tests' llama.cpp (built on first use)."""
    sys.path.insert(0, str(HERE.parent))
    from support import llamacpp  # tests/support: fetches and builds llama.cpp like the oracle tests

    bin_dir = llamacpp.tool("llama-perplexity").parent
    src = llamacpp.source_dir()
    exe = bin_dir / "qconvert-ggml-matmul-bench"
    source = HERE / "ggml_matmul_bench.c"
    if not exe.is_file() or exe.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["gcc", "-O2", f"-I{src / 'ggml' / 'include'}", str(source), f"-L{bin_dir}", "-lggml",
                        "-lggml-base", "-lggml-cpu", f"-Wl,-rpath,{bin_dir}", "-o", str(exe)], check=True)
    return exe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--types", nargs="+", default=["q4_k", "q5_k", "q6_k", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1",
                                                    "f16", "bf16", "f32"])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--isa", default=None, help="override kernels.backend()")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--vs-llamacpp", action="store_true")
    args = ap.parse_args()
    ggml = llamacpp_bench() if args.vs_llamacpp else None
    print(f"backend {args.isa or kernels.backend()}, {args.tokens} tokens; GFLOP/s wall (per CPU-second x threads)")
    cpu: dict[tuple[str, str, int], float] = {}
    for name in args.types:
        qtype = T[name.upper()]
        for shape in args.shapes:
            n_out, n_in = SHAPES[shape]
            for th in args.threads:
                g, g_cpu = bench(qtype, n_out, n_in, args.tokens, th, args.isa, args.seconds)
                cpu[(name, shape, th)] = g_cpu
                line = f"{name:5s} {shape:12s} {n_out:6d}x{n_in:<5d} threads {th}: {g:6.1f} ({g_cpu:6.1f})"
                if ggml is not None:
                    run = subprocess.run([str(ggml), str(int(qtype)), str(n_out), str(n_in), str(args.tokens), str(th),
                                          str(args.seconds)], capture_output=True, text=True, check=True)
                    lw, lc = map(float, run.stdout.split())
                    line += f"   llama.cpp {lw:6.1f} ({lc:6.1f})   ratio {g_cpu / lc:4.2f}"
                print(line, flush=True)
    for th in args.threads:
        if all((t, s, th) in cpu for t, s, _ in MIX):
            secs = sum(k * 2.0 * args.tokens * SHAPES[s][0] * SHAPES[s][1] / (cpu[(t, s, th)] * 1e9) for t, s, k in MIX)
            print(f"threads {th}: matmuls of one {args.tokens}-token Qwen2.5-1.5B Q4_K_M pass ~{secs:.2f} s "
                  f"with {th} free core(s) ({args.tokens / secs:.0f} tokens/s)")


if __name__ == "__main__":
    main()
