"""Shared by the bench scripts: run a command, measure wall time and peak RSS of it and its
children (wait4 rusage), and print a ratio table."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@dataclass(frozen=True)
class Run:
    label: str
    seconds: float
    peak_rss_mb: float


def measure(label: str, cmd: list[str], *, env: dict[str, str] | None = None, log: Path | None = None) -> Run:
    """Run `cmd` to completion; peak RSS is the largest of the process tree's (ru_maxrss of waited children)."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if log:
        out.close()
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log else ""
        raise RuntimeError(f"{label}: exit {proc.returncode}: {' '.join(map(str, cmd))}\n{tail}")
    return Run(label, seconds, usage.ru_maxrss / 1024.0)


def qconvert_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "quantize_cli", *args]


def print_table(title: str, rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
    sys.stdout.flush()
