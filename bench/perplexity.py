"""Issue 4 benchmark: `qconvert perplexity` vs `llama-perplexity`, same GGUF, same text, 2 threads,
in one run. Tokens/s = chunks x ctx / wall time of the whole command (load, tokenize, evaluate);
peak RSS of each process tree.

    python bench/perplexity.py [--chunks 8] [--models smollm2 qwen2.5] [--types Q4_K_M Q8_0]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from measure import measure, print_table, qconvert_cmd
from tests.support import fixtures, llamacpp


def model_files(name: str, types: list[str], work: Path) -> dict[str, Path]:
    """The model quantized to each type by llama-quantize from its lossless F16 conversion."""
    source = {"smollm2": fixtures.smollm2_gguf, "qwen2.5": fixtures.qwen_coder_gguf}[name]()
    hf = work / f"{name}-hf"
    measure("unpack", qconvert_cmd("unpack", str(source), "--outdir", str(hf)))
    f16 = llamacpp.convert_hf(hf, outtype="f16")
    return {t: llamacpp.quantize(f16, work / f"{name}-{t}.gguf", t) for t in types}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--models", nargs="+", default=["smollm2", "qwen2.5"])
    ap.add_argument("--types", nargs="+", default=["Q4_K_M", "Q8_0"])
    args = ap.parse_args()
    text = fixtures.austen_text("pride")
    tool = llamacpp.tool("llama-perplexity")
    rows = []
    with tempfile.TemporaryDirectory(dir=fixtures.cache_root()) as tmp:
        work = Path(tmp)
        for name in args.models:
            for qtype, gguf_file in model_files(name, args.types, work).items():
                ours = measure("qconvert perplexity", qconvert_cmd(
                    "perplexity", str(gguf_file), "--text", str(text), "--ctx", str(args.ctx),
                    "--chunks", str(args.chunks), "--threads", "2", "--json"), log=work / "ours.log")
                doc = _json_tail(work / "ours.log")
                ref = measure("llama-perplexity", [str(tool), "-m", str(gguf_file), "-f", str(text), "-c", str(args.ctx),
                                                   "--chunks", str(args.chunks), "-t", "2"], log=work / "ref.log")
                ref_ppl = _llama_ppl(work / "ref.log")
                n = args.chunks * args.ctx
                rows.append([name, qtype, f"{doc['ppl']:.4f}", f"{ref_ppl:.4f}",
                             f"{100 * (doc['ppl'] / ref_ppl - 1):+.3f}%", f"{n / ours.seconds:.0f}",
                             f"{n / ref.seconds:.0f}", f"{ref.seconds / ours.seconds:.2f}x",
                             f"{ours.peak_rss_mb:.0f}", f"{ref.peak_rss_mb:.0f}"])
    print_table(f"Perplexity, Pride and Prejudice, {args.chunks} chunks of {args.ctx}, 2 threads", rows,
                ["model", "type", "qconvert PPL", "llama.cpp PPL", "diff", "qconvert tok/s", "llama.cpp tok/s",
                 "speed ratio", "qconvert RSS MB", "llama.cpp RSS MB"])


def _json_tail(log: Path) -> dict:
    """The --json document: the last top-level JSON object in a log that also holds stderr."""
    text = log.read_text()
    start = text.rfind("\n{")
    return json.loads(text[start + 1:] if start >= 0 else text[text.index("{"):])


def _llama_ppl(log: Path) -> float:
    for line in log.read_text().splitlines():
        if "Final estimate: PPL =" in line:
            return float(line.split("PPL =")[1].split("+/-")[0])
    raise RuntimeError(f"no final estimate in {log}")


if __name__ == "__main__":
    main()
