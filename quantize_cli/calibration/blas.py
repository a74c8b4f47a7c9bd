"""Run numpy's BLAS on one thread for a while.

The optimizing quantizer and the H accumulation do many mid-sized matrix products. OpenBLAS's own
thread pool then fights our worker threads (and other processes) for the cores, which made GPTQ
six times slower on a busy 2-core machine, and its results may depend on how it splits the work.
On one BLAS thread, with our own fixed split of the rows, the bytes do not depend on --threads.
This finds the OpenBLAS that numpy loaded (numpy's wheels ship scipy-openblas) and sets its thread
count through its C API; with another BLAS it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np  # noqa: F401  (numpy must be loaded for its BLAS to be found)

_PREFIXES = ("scipy_openblas_", "openblas_")
_SUFFIXES = ("64_", "")
_lock = threading.Lock()
_depth = 0
_saved = 0


def _openblas() -> tuple[object, object] | None:
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        return None
    libs = {line.split()[-1] for line in maps.read_text().splitlines() if "openblas" in line.lower() and "/" in line}
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in _PREFIXES:
            for suffix in _SUFFIXES:
                get = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                set_ = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    set_.argtypes = [ctypes.c_int]
                    return get, set_
    return None


_API = _openblas()


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """numpy's BLAS on one thread inside the block (re-entrant, thread-safe)."""
    global _depth, _saved
    if _API is None:
        yield
        return
    get, set_ = _API
    with _lock:
        if _depth == 0:
            _saved = int(get())
            set_(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                set_(_saved)
