"""Calibration commands (`qconvert imatrix`), registered on the main Typer app."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from quantize_cli import ui
from quantize_cli.cli import JsonOpt, ThreadsOpt, app, handles_errors
from quantize_cli.errors import OptionError, OutputError


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
    from quantize_cli.calibration.imatrix_writer import FORMATS, format_for, merge_files, write_imatrix

    fmt = (fmt or format_for(outfile)).lower()
    if fmt not in FORMATS:
        raise OptionError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if outfile.exists() and not force:
        raise OutputError(f"{outfile}: output file exists", hint="pass --force to overwrite it, or choose --outfile")
    if not outfile.parent.is_dir():
        raise OutputError(f"{outfile.parent}: output directory does not exist")
    if text is None and not in_files:
        raise OptionError("give --text to collect statistics, or --in-file files to merge")
    if (text is None) != (model is None):
        raise OptionError("--text needs a MODEL to run" if model is None else
                          f"MODEL {model} is only run with --text; merging --in-file files needs no model")
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
    from quantize_cli.hub import resolve_model

    resolved = resolve_model(model_arg, revision=revision)
    ui.info(f"[bold]{resolved.path}[/]: importance matrix over {text}, context {ctx}, {threads} threads")
    result = _run_calibration(resolved.path, text, ctx=ctx, chunks=chunks, previous=stats,
                              process_output=process_output, threads=threads, workdir=outdir)
    return result.stats, result.n_chunk * ctx


def _run_calibration(model_path: Path, text: Path, *, ctx: int, chunks: int | None, threads: int, workdir: Path,
                     **options):
    """calibration.collect.calibrate with the chunk progress bar and a tokens/s summary line."""
    from quantize_cli.calibration.collect import calibrate

    with ui.chunk_progress() as on_chunk:
        result = calibrate(model_path, text, n_ctx=ctx, n_chunk=chunks, threads=threads, workdir=workdir,
                           on_chunk=on_chunk, on_status=ui.info, **options)
    n_tokens = result.n_chunk * ctx
    ui.info(f"{result.n_chunk} chunks, {n_tokens} tokens in {result.seconds:.1f} s "
            f"({n_tokens / max(result.seconds, 1e-9):.0f} tokens/s)")
    return result


def calibrate_for_convert(model_path: Path, text: Path, *, ctx: int, chunks: int | None, hessians: bool,
                          save_imatrix: Path | None, threads: int, workdir: Path):
    """`qconvert MODEL --calibrate TEXT`: the statistics of the model on the text, as the importance
    matrix the planner takes; the same one `qconvert imatrix` then `--imatrix FILE` would give (when
    saved, the file is read back, exactly as --imatrix reads it). hessians: also collect H = X^T X
    for --optimize (inputs up to MAX_HESSIAN_INPUTS wide). Returns (imatrix, stats, JSON report)."""
    from quantize_cli.calibration.collect import hessians_up_to
    from quantize_cli.calibration.imatrix_writer import format_for, write_imatrix
    from quantize_cli.formats.imatrix import load_imatrix

    ui.info(f"[bold]{model_path}[/]: calibrating on {text}, context {ctx}, {threads} threads"
            + (", with second moments for --optimize" if hessians else ""))
    result = _run_calibration(model_path, text, ctx=ctx, chunks=chunks, threads=threads, workdir=workdir,
                              hessians=hessians_up_to() if hessians else False)
    n_tokens = result.n_chunk * ctx
    report = {"calibration": {"text": str(text), "ctx": ctx, "chunks": result.n_chunk, "tokens": n_tokens,
                              "seconds": round(result.seconds, 3)}}
    if save_imatrix is None:
        return result.stats.importance_matrix(str(text)), result.stats, report
    fmt = format_for(save_imatrix)
    write_imatrix(result.stats, save_imatrix, fmt=fmt)
    ui.info(f"wrote {save_imatrix} ({fmt}): {len(result.stats.sums)} entries")
    report["calibration"]["imatrix"] = str(save_imatrix)
    return load_imatrix(str(save_imatrix)), result.stats, report
