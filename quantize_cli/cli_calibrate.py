"""Calibration commands (`qconvert imatrix`), registered on the main Typer app."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from quantize_cli import ui
from quantize_cli.cli import JsonOpt, ThreadsOpt, app, handles_errors
from quantize_cli.errors import OptionError, OutputError

if TYPE_CHECKING:
    from quantize_cli.calibration.collect import ChunkProgress


@app.command("imatrix")
@handles_errors
def imatrix_cmd(
    model: Optional[str] = typer.Argument(None, help="Model: .gguf file, HF folder, repo id or cached name "
                                                     "(not needed to only merge --in-file files)."),
    text: Optional[Path] = typer.Option(None, "--text", "-f", help="UTF-8 calibration text (read like llama-imatrix -f)."),
    outfile: Path = typer.Option(..., "--outfile", "-o", help="Importance matrix to write (.gguf, or .dat for the legacy format)."),
    ctx: int = typer.Option(512, "--ctx", "-c", min=1, help="Tokens per chunk."),
    chunks: Optional[int] = typer.Option(None, "--chunks", min=1, help="Use at most N chunks [default: all]."),
    fmt: Optional[str] = typer.Option(None, "--format", help="gguf or dat [default: dat for a .dat outfile, else gguf]."),
    in_files: list[Path] = typer.Option([], "--in-file", help="Importance matrix to add to (repeatable)."),
    process_output: bool = typer.Option(False, "--process-output", help="Also collect output.weight."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing outfile."),
    threads: int = ThreadsOpt,
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit)."),
    json_out: bool = JsonOpt,
) -> None:
    """Compute an importance matrix (llama-imatrix's statistics and file formats) on a text."""
    from quantize_cli.calibration.imatrix_writer import FORMATS, merge_files, write_imatrix

    fmt = (fmt or ("dat" if outfile.suffix.lower() == ".dat" else "gguf")).lower()
    if fmt not in FORMATS:
        raise OptionError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if outfile.exists() and not force:
        raise OutputError(f"{outfile}: output file exists", hint="pass --force to overwrite it, or choose --outfile")
    if text is None and not in_files:
        raise OptionError("give --text to collect statistics, or --in-file files to merge")
    if text is not None and model is None:
        raise OptionError("--text needs a MODEL to run")
    if outfile.resolve() in {p.resolve() for p in (*in_files, *((text,) if text else ()))}:
        raise OptionError(f"--outfile {outfile} would overwrite an input")

    stats = merge_files(list(in_files), chunk_size=ctx) if in_files else None
    started = time.perf_counter()
    tokens_done = 0
    if text is not None:
        stats, tokens_done = _collect(model, text, ctx=ctx, chunks=chunks, stats=stats, process_output=process_output,
                                      threads=threads, revision=revision, outdir=outfile.parent)
    write_imatrix(stats, outfile, fmt=fmt)
    seconds = time.perf_counter() - started
    ui.info(f"wrote {outfile} ({fmt}): {len(stats.sums)} entries, {stats.chunk_count} chunks of {stats.chunk_size}"
            + (f", {tokens_done} tokens in {seconds:.1f} s" if tokens_done else ""))
    if json_out:
        ui.emit_json({"output": str(outfile), "format": fmt, "entries": len(stats.sums),
                      "chunk_count": stats.chunk_count, "chunk_size": stats.chunk_size,
                      "datasets": stats.datasets, "tokens": tokens_done, "seconds": round(seconds, 3)})


def _collect(model_arg: str, text: Path, *, ctx: int, chunks: int | None, stats, process_output: bool,
             threads: int, revision: str | None, outdir: Path):
    from quantize_cli.calibration.collect import calibrate
    from quantize_cli.hub import resolve_model

    resolved = resolve_model(model_arg, revision=revision)
    ui.info(f"[bold]{resolved.path}[/]: importance matrix over {text}, context {ctx}, {threads} threads")
    with _progress() as on_chunk:
        result = calibrate(resolved.path, text, n_ctx=ctx, n_chunk=chunks, process_output=process_output,
                           previous=stats, threads=threads, workdir=outdir, on_chunk=on_chunk, on_status=ui.info)
    ui.info(f"{result.n_chunk} chunks, {result.n_chunk * ctx} tokens in {result.seconds:.1f} s "
            f"({result.n_chunk * ctx / max(result.seconds, 1e-9):.0f} tokens/s)")
    return result.stats, result.n_chunk * ctx


@contextmanager
def _progress() -> Iterator[Callable[[ChunkProgress], None]]:
    """A chunk bar with tokens/s and ETA on a terminal; nothing otherwise (stderr is a log)."""
    if not ui.err.is_terminal:
        yield lambda p: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("[bold]chunks"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[speed]}"),
               TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"))
    with Progress(*columns, console=ui.err, transient=False) as bar:
        task = bar.add_task("chunks", total=None, speed="", eta="?")

        def update(p: ChunkProgress) -> None:
            eta = int(p.eta_seconds)
            bar.update(task, total=p.n_chunk, completed=p.index, speed=f"{p.tokens_per_second:.0f} tok/s",
                       eta=f"{eta // 60}:{eta % 60:02d}")
        yield update
