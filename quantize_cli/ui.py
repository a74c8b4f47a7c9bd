"""Everything the CLI shows a person or a pipeline: stderr console, progress bars, tables, JSON.

Logs, progress and tables go to stderr; stdout carries only the `--json` document.
Progress bars are drawn only when stderr is a terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

err = Console(stderr=True, highlight=False)


def emit_json(document: dict[str, Any]) -> None:
    """The one JSON document a --json command prints on stdout."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def error(message: str, hint: str | None = None) -> None:
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    if hint:
        err.print(f"[dim]hint: {hint}[/]", soft_wrap=True)


def info(message: str) -> None:
    err.print(message, soft_wrap=True)


@contextmanager
def byte_progress(total: int, description: str, *, enabled: bool = True) -> Iterator:
    """A bar over `total` bytes; yields `advance(name, nbytes)`. A no-op when stderr is no TTY."""
    if not (enabled and err.is_terminal):
        yield lambda name, n: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("[dim]{task.fields[tensor]}"))
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(description, total=total, tensor="")

        def advance(name: str, n: int) -> None:
            bar.update(task, advance=n, tensor=name)
        yield advance


def table(title: str, columns: list[str], rows: list[list[Any]], *, right: set[int] = frozenset()) -> None:
    t = Table(title=title, title_justify="left", header_style="bold")
    for i, c in enumerate(columns):
        t.add_column(c, justify="right" if i in right else "left")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    err.print(t)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"


@contextmanager
def chunk_progress() -> Iterator[Callable[[Any], None]]:
    """A chunk bar with tokens/s and ETA on a terminal; nothing otherwise (stderr is a log)."""
    if not err.is_terminal:
        yield lambda p: None
        return
    columns = (TextColumn("[bold]chunks"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[speed]}"),
               TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"))
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task("chunks", total=None, speed="", eta="?")

        def update(p) -> None:  # p: calibration.collect.ChunkProgress
            eta = int(p.eta_seconds)
            bar.update(task, total=p.n_chunk, completed=p.index, speed=f"{p.tokens_per_second:.0f} tok/s",
                       eta=f"{eta // 60}:{eta % 60:02d}")
        yield update
