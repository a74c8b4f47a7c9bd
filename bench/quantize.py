"""Issue 3 benchmark, one run, 2 threads, synthetic TinyLlama-1.1B-shaped BF16 model:

1. one step `qconvert HF_DIR --type q4_k_m` vs llama.cpp's two steps
   (convert_hf_to_gguf.py --outtype bf16, then llama-quantize Q4_K_M);
2. GGUF -> GGUF `qconvert F16.gguf --type q4_k_m` vs `llama-quantize F16.gguf Q4_K_M`;
3. single-core quantizer throughput (MB/s of float32 input) per k-quant type, reference and
   importance-matrix paths.

    python bench/quantize.py [--layers 22] [--skip-throughput]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T

from measure import measure, print_table, qconvert_cmd
from quantize_cli import kernels
from tests.support import fixtures, llamacpp


def throughput_rows() -> list[list[str]]:
    rng = np.random.default_rng(0)
    rows = (rng.standard_t(5, size=(256, 4096)) * 0.02).astype(np.float32)
    imatrix = rng.gamma(2.0, 1.0, size=4096).astype(np.float32)
    out = []
    for qtype in (T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_0, T.Q5_0, T.Q5_1):
        speeds = []
        for weights in (None, imatrix):
            kernels.quantize_rows(qtype, rows[:8], imatrix=weights)  # warm up
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                kernels.quantize_rows(qtype, rows, imatrix=weights, threads=1)
                best = min(best, time.perf_counter() - start)
            speeds.append(rows.nbytes / best / 1e6)
        out.append([qtype.name, f"{speeds[0]:.0f}", f"{speeds[1]:.0f}" if qtype != T.Q8_0 else "(ignored)"])
    return out


def _same(a: Path, b: Path) -> bool:
    """Compare by streamed digests: reading GBs into this process would raise the peak RSS that
    forked children inherit, and spoil the next measurement."""
    return fixtures.sha256_file(a) == fixtures.sha256_file(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    model = fixtures.synthetic_model(layers=args.layers)
    python, src = llamacpp.oracle_python(), llamacpp.source_dir()
    quantize_tool = llamacpp.tool("llama-quantize")
    env = {"PYTHONPATH": str(src / "gguf-py"), "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(dir=fixtures.cache_root()) as tmp:
        work = Path(tmp)
        ours = measure("qconvert one step", qconvert_cmd(str(model), "--type", "q4_k_m", "--threads", "2",
                                                         "-o", str(work / "ours.gguf")), log=work / "ours.log")
        conv = measure("convert_hf_to_gguf bf16", [str(python), str(src / "convert_hf_to_gguf.py"), str(model),
                                                    "--outtype", "bf16", "--outfile", str(work / "bf16.gguf")],
                       env=env, log=work / "conv.log")
        quant = measure("llama-quantize", [str(quantize_tool), str(work / "bf16.gguf"), str(work / "ref.gguf"),
                                           "Q4_K_M", "2"], log=work / "quant.log")
        same = _same(work / "ours.gguf", work / "ref.gguf")
        for f in ("bf16.gguf", "ref.gguf", "ours.gguf"):
            (work / f).unlink()
        two_step = conv.seconds + quant.seconds
        rows = [["HF BF16 -> Q4_K_M", f"{ours.seconds:.1f}", f"{ours.peak_rss_mb:.0f}",
                 f"{conv.seconds:.1f} + {quant.seconds:.1f}", f"{max(conv.peak_rss_mb, quant.peak_rss_mb):.0f}",
                 f"{ours.seconds / two_step:.2f}x", "yes" if same else "NO"]]

        f16 = llamacpp.convert_hf(model, outtype="f16")
        ours = measure("qconvert gguf", qconvert_cmd(str(f16), "--type", "q4_k_m", "--threads", "2",
                                                     "-o", str(work / "ours.gguf")), log=work / "ours2.log")
        quant = measure("llama-quantize", [str(quantize_tool), str(f16), str(work / "ref.gguf"), "Q4_K_M", "2"],
                        log=work / "quant2.log")
        same = _same(work / "ours.gguf", work / "ref.gguf")
        rows.append(["F16 GGUF -> Q4_K_M", f"{ours.seconds:.1f}", f"{ours.peak_rss_mb:.0f}", f"{quant.seconds:.1f}",
                     f"{quant.peak_rss_mb:.0f}", f"{ours.seconds / quant.seconds:.2f}x", "yes" if same else "NO"])
    print_table(f"Quantize, synthetic TinyLlama shapes ({args.layers} layers), 2 threads", rows,
                ["job", "qconvert s", "qconvert RSS MB", "llama.cpp s", "llama.cpp RSS MB", "time ratio",
                 "identical"])
    if not args.skip_throughput:
        print_table("Quantizer throughput, 1 core, MB/s of float32 input (256 x 4096 Student-t rows)",
                    throughput_rows(), ["type", "reference path", "imatrix path"])


if __name__ == "__main__":
    main()
