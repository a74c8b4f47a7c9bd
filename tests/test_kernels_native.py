"""The C kernels outside the Python extension, through the driver in tests/native/kernel_driver.c:

- the NEON build: cross-compiled for aarch64 (gcc-aarch64-linux-gnu, static) and run under
  qemu-aarch64 (qemu-user), NEON against the scalar reference on random and extreme blocks;
- an AddressSanitizer + UBSan build run natively (this CPU's ISA against scalar, every entry point).

Missing toolchains are installed with apt-get (CI runs as root with Debian package access); where
that cannot happen the tests fail and say what to install, they do not skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels_c"
DRIVER = ROOT / "tests" / "native" / "kernel_driver.c"
# The extension's own float model (kernels_c/build_ffi.py): no contraction, no fast-math.
CFLAGS = ["-std=c11", "-ffp-contract=off", "-fno-fast-math", "-Wall", "-Wextra", "-Werror", f"-I{KERNELS}"]

pytestmark = pytest.mark.slow


def sources() -> list[str]:
    return [str(p) for p in sorted(KERNELS.glob("*.c"))] + [str(DRIVER)]


def require_tools(tools: dict[str, tuple[str, ...]], packages: list[str]) -> dict[str, str]:
    """Path of the first available name for each tool, installing `packages` with apt-get if needed."""

    def found() -> dict[str, str]:
        return {tool: path for tool, names in tools.items() for path in [next(filter(None, map(shutil.which, names)), None)] if path}

    have = found()
    if len(have) == len(tools):
        return have
    need = ", ".join(packages)
    if shutil.which("apt-get") is None:
        pytest.fail(f"needs the Debian packages {need} (tools {', '.join(tools)}), and apt-get is not available here: "
                    "install them with this system's package manager")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        pytest.fail(f"needs the Debian packages {need}: run `apt-get install -y {' '.join(packages)}` as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:  # stale package lists: refresh once
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env)
        result = subprocess.run(install, capture_output=True, text=True, env=env)
    have = found()
    if len(have) != len(tools):
        missing = ", ".join(set(tools) - set(have))
        pytest.fail(f"`{' '.join(install)}` did not provide {missing}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return have


def run(cmd: list[str], what: str, *, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{what} failed (exit {result.returncode}):\n{output[-6000:]}"
    return output


def test_neon_kernels_match_scalar_under_qemu(tmp_path: Path) -> None:
    tools = require_tools({"cc": ("aarch64-linux-gnu-gcc",), "qemu": ("qemu-aarch64", "qemu-aarch64-static")},
                          ["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross", "qemu-user"])
    exe = tmp_path / "kernel_driver_aarch64"
    run([tools["cc"], "-O2", "-static", *CFLAGS, *sources(), "-lm", "-o", str(exe)], "aarch64 cross build")
    output = run([tools["qemu"], str(exe)], "NEON driver under qemu-aarch64")
    assert "isa neon:" in output and ", 0 failures" in output, output[-3000:]


def test_sanitized_build_runs_clean(tmp_path: Path) -> None:
    tools = require_tools({"cc": ("gcc", "cc")}, ["gcc"])
    exe = tmp_path / "kernel_driver_asan"
    run([tools["cc"], "-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all", *CFLAGS, *sources(), "-lm", "-o", str(exe)], "sanitizer build")
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}
    output = run([str(exe)], "sanitized driver", env=env)
    assert ", 0 failures" in output and "runtime error" not in output, output[-3000:]
