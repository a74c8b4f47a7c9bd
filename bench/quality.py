"""Calibration benchmark: what an importance matrix and the optimizing quantizer buy, measured the
way llama.cpp users measure it (llama-perplexity's KL-divergence against the F16 model), in one run.

For one model: the F16 GGUF (qconvert's converter, byte-identical to convert_hf_to_gguf.py), then
for each type
    llama.cpp   llama-quantize                          (no importance matrix)
    llama.cpp   llama-imatrix on Emma + llama-quantize --imatrix
    qconvert    our importance matrix on Emma + `qconvert F16.gguf --type T --imatrix`
    qconvert    optimized: GPTQ inside the standard blocks with H = X^T X from the same chunks
                (wider inputs than --max-hessian-inputs get the importance-weighted search)
all scored by llama-perplexity --kl-divergence on Pride and Prejudice (held out) against the F16
logits. Calibration time (collecting the statistics) is reported apart from quantization time.

    python bench/quality.py [--model smollm2|qwen2.5] [--types Q4_K_M Q5_K_M] [--calib-chunks 16]
                            [--eval-chunks 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import gguf

from measure import measure, print_table, qconvert_cmd
from tests.support import fixtures, llamacpp


def tensor_bits(path: Path) -> tuple[int, float]:
    """(file size in bytes, bits per weight of the tensor data)."""
    reader = gguf.GGUFReader(path)
    n_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    return path.stat().st_size, 8.0 * n_bytes / n_params


def kld_row(label: str, model: Path, text: Path, base: Path, args: argparse.Namespace, quant_s: float | None,
            calib_s: float | None) -> list[str]:
    result = llamacpp.perplexity(model, text, ctx=args.ctx, chunks=args.eval_chunks, threads=args.threads,
                                 extra_args=("--kl-divergence-base", str(base), "--kl-divergence"))
    s = result.stats
    size, bpw = tensor_bits(model)
    return [label, f"{size / 2**20:.1f}", f"{bpw:.3f}", f"{s['Mean PPL(Q)'][0]:.4f}", f"{s['Mean KLD'][0]:.5f}",
            f"{s['99.0% KLD'][0]:.4f}", f"{s['Same top p'][0]:.2f}",
            "" if quant_s is None else f"{quant_s:.1f}", "" if calib_s is None else f"{calib_s:.1f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["smollm2", "qwen2.5"], default="smollm2")
    ap.add_argument("--types", nargs="+", default=["Q4_K_M", "Q5_K_M"])
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--calib-chunks", type=int, default=16)
    ap.add_argument("--eval-chunks", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-hessian-inputs", type=int, default=4096,
                    help="collect H only for inputs at most this wide (H takes n_in^2 floats per layer)")
    args = ap.parse_args()

    from quantize_cli.calibration.collect import calibrate
    from quantize_cli.calibration.imatrix_writer import write_imatrix
    from quantize_cli.calibration.optimize import optimize_plan
    from quantize_cli.convert import write_plan
    from quantize_cli.plan import plan_from_gguf
    from quantize_cli.qtypes import file_type

    source = {"smollm2": fixtures.smollm2_gguf, "qwen2.5": fixtures.qwen_coder_gguf}[args.model]()
    emma, pride = fixtures.austen_text("emma"), fixtures.austen_text("pride")
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(dir=fixtures.cache_root()) as tmp:
        work = Path(tmp)
        hf = work / f"{args.model}-hf"
        measure("unpack", qconvert_cmd("unpack", str(source), "--outdir", str(hf)))
        f16 = work / f"{args.model}-F16.gguf"
        measure("convert f16", qconvert_cmd(str(hf), "--type", "f16", "-o", str(f16)))
        shutil.rmtree(hf)

        theirs_imatrix = work / "llama.imatrix.gguf"
        calib_llama = measure("llama-imatrix", [str(llamacpp.tool("llama-imatrix")), "-m", str(f16), "-f", str(emma),
                                                "-c", str(args.ctx), "-t", str(args.threads), "--chunks",
                                                str(args.calib_chunks), "-o", str(theirs_imatrix)],
                              log=work / "imatrix.log").seconds
        started = time.perf_counter()
        calibration = calibrate(f16, emma, n_ctx=args.ctx, n_chunk=args.calib_chunks, threads=args.threads,
                                hessians=lambda name, n_in: n_in <= args.max_hessian_inputs)
        calib_ours = time.perf_counter() - started
        ours_imatrix = write_imatrix(calibration.stats, work / "qconvert.imatrix.gguf")
        print(f"calibration: llama-imatrix {calib_llama:.1f} s, qconvert (with H) {calib_ours:.1f} s", flush=True)

        base = work / "f16.kld"
        llamacpp.perplexity(f16, pride, ctx=args.ctx, chunks=args.eval_chunks, threads=args.threads,
                            extra_args=("--kl-divergence-base", str(base)))
        rows.append(kld_row("F16", f16, pride, base, args, None, None))
        for qtype in args.types:
            tool = str(llamacpp.tool("llama-quantize"))
            variants = []
            out = work / f"llama-{qtype}.gguf"
            t = measure("llama-quantize", [tool, str(f16), str(out), qtype, str(args.threads)]).seconds
            variants.append((f"{qtype} llama.cpp", out, t, None))
            out = work / f"llama-imatrix-{qtype}.gguf"
            t = measure("llama-quantize imatrix", [tool, "--imatrix", str(theirs_imatrix), str(f16), str(out), qtype,
                                                   str(args.threads)]).seconds
            variants.append((f"{qtype} llama.cpp imatrix", out, t, calib_llama))
            out = work / f"qconvert-imatrix-{qtype}.gguf"
            t = measure("qconvert imatrix", qconvert_cmd(str(f16), "--type", qtype.lower(), "--imatrix",
                                                         str(ours_imatrix), "-t", str(args.threads), "-o",
                                                         str(out))).seconds
            variants.append((f"{qtype} qconvert imatrix", out, t, calib_ours))
            out = work / f"qconvert-optimized-{qtype}.gguf"
            started = time.perf_counter()
            plan = plan_from_gguf(f16, file_type(qtype.lower()),
                                  imatrix=calibration.stats.importance_matrix(str(ours_imatrix)))
            plan, methods = optimize_plan(plan, calibration.stats, threads=args.threads)
            write_plan(plan, out, threads=args.threads)
            t = time.perf_counter() - started
            counts = {m: list(methods.values()).count(m) for m in sorted(set(methods.values()))}
            print(f"{qtype} optimized: {counts} tensors, {t:.1f} s", flush=True)
            variants.append((f"{qtype} qconvert optimized", out, t, calib_ours))
            for label, path, quant_s, calib_s in variants:
                rows.append(kld_row(label, path, pride, base, args, quant_s, calib_s))
                print(" | ".join(rows[-1]), flush=True)
                path.unlink()
    print_table(f"{args.model}: KL-divergence vs F16 on Pride and Prejudice ({args.eval_chunks} x {args.ctx} tokens); "
                f"calibration on Emma ({args.calib_chunks} x {args.ctx} tokens), {args.threads} threads",
                rows, ["model", "MiB", "bpw", "PPL", "mean KLD", "99% KLD", "same top %", "quant s", "calib s"])


if __name__ == "__main__":
    main()
