"""Issue 2 benchmark: HF BF16 checkpoint -> Q8_0 GGUF, qconvert vs llama.cpp's convert_hf_to_gguf.py,
measured in the same run on the synthetic TinyLlama-1.1B-shaped model (and a 2x deeper variant to
show that qconvert's peak memory does not grow with model size). 2 threads.

    python bench/convert.py [--layers 22 44] [--outtype q8_0]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from measure import measure, print_table, qconvert_cmd
from tests.support import fixtures, llamacpp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, nargs="+", default=[22, 44])
    ap.add_argument("--outtype", default="q8_0")
    ap.add_argument("--skip-llamacpp-for-deeper", action="store_true", default=True)
    args = ap.parse_args()
    python, src = llamacpp.oracle_python(), llamacpp.source_dir()
    rows = []
    with tempfile.TemporaryDirectory(dir=fixtures.cache_root()) as tmp:
        work = Path(tmp)
        for i, layers in enumerate(args.layers):
            model = fixtures.synthetic_model(layers=layers)
            ours = measure(f"qconvert L{layers}", qconvert_cmd(str(model), "--type", args.outtype, "--threads", "2",
                                                              "-o", str(work / "ours.gguf"), "--force"),
                           log=work / "ours.log")
            (work / "ours.gguf").unlink()
            ref = None
            if i == 0 or not args.skip_llamacpp_for_deeper:
                ref = measure(f"convert_hf_to_gguf L{layers}",
                              [str(python), str(src / "convert_hf_to_gguf.py"), str(model), "--outtype", args.outtype,
                               "--outfile", str(work / "ref.gguf")],
                              env={"PYTHONPATH": str(src / "gguf-py"), "HF_HUB_OFFLINE": "1"}, log=work / "ref.log")
                (work / "ref.gguf").unlink()
            rows.append([f"{layers} layers", f"{ours.seconds:.1f}", f"{ours.peak_rss_mb:.0f}",
                         f"{ref.seconds:.1f}" if ref else "-", f"{ref.peak_rss_mb:.0f}" if ref else "-",
                         f"{ours.seconds / ref.seconds:.2f}x" if ref else "-"])
    print_table(f"HF BF16 -> {args.outtype.upper()}, 2 threads (synthetic TinyLlama shapes)", rows,
                ["model", "qconvert s", "qconvert peak RSS MB", "llama.cpp s", "llama.cpp peak RSS MB",
                 "time ratio (ours/llama.cpp)"])


if __name__ == "__main__":
    main()
