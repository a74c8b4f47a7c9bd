"""Running the real `qconvert` command in a subprocess, offline, and reading its one error line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def qconvert(*args: str, cwd: Path | None = None, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quantize_cli", *args], capture_output=True, text=True, cwd=cwd,
                          preexec_fn=preexec_fn, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The single `error:` line on stderr."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def user_error(proc: subprocess.CompletedProcess) -> str:
    """The error line of a run that failed on bad input (exit code 1)."""
    assert proc.returncode == 1, proc.stderr
    return error_line(proc)
