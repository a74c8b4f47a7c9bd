"""Commands that run a model on the CPU (perplexity, KL-divergence), registered on the main Typer
app. Kept apart from cli.py so the converter commands load without the runtime."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.markup import escape

from quantize_cli import ui
from quantize_cli.cli import JsonOpt, ThreadsOpt, app, handles_errors
from quantize_cli.errors import OptionError, QConvertError

if TYPE_CHECKING:
    from quantize_cli.runtime.model import Model
    from quantize_cli.runtime.perplexity import ChunkReport
    from quantize_cli.runtime.tokenizer import Tokenizer

KLD_HEADER = ("chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              "
              "Δp RMS            Same top p")


@app.command("perplexity")
@handles_errors
def perplexity_cmd(
    model: Path = typer.Argument(..., help="GGUF model to evaluate (llama or qwen2 architecture)."),
    text: Optional[Path] = typer.Option(None, "--text", "-f",
                                        help="UTF-8 text to score (read like llama-perplexity -f)."),
    ctx: Optional[int] = typer.Option(None, "--ctx", "-c", min=4,
                                      help="Tokens per chunk [default: 512, or the --kld-base file's]."),
    chunks: Optional[int] = typer.Option(None, "--chunks", min=1, help="Score at most N chunks [default: all]."),
    batch: Optional[int] = typer.Option(None, "--batch", "-b", min=1,
                                        help="Tokens per forward pass [default: the whole chunk]."),
    threads: int = ThreadsOpt,
    base: Optional[Path] = typer.Option(None, "--base", help="Base GGUF (e.g. the F16 model): run it on the same "
                                                            "chunks and report KL-divergence against it."),
    kld_base: Optional[Path] = typer.Option(None, "--kld-base", help="Base logits file (from --save-logits or "
                                                                    "llama-perplexity --kl-divergence-base): "
                                                                    "report KL-divergence against it."),
    save_logits: Optional[Path] = typer.Option(None, "--save-logits",
                                               help="Write the base logits (of --base, else of MODEL) in "
                                                    "llama-perplexity's --kl-divergence-base format."),
    json_out: bool = JsonOpt,
) -> None:
    """Perplexity and KL-divergence of a GGUF model on a text, the way llama-perplexity computes them."""
    from quantize_cli.runtime.kld import LogitsFile, format_report
    from quantize_cli.runtime.model import load_model
    from quantize_cli.runtime.perplexity import check_same_vocabulary, read_text, run_perplexity

    if base is not None and kld_base is not None:
        raise OptionError("--base and --kld-base both name a base; give one")
    if kld_base is not None and save_logits is not None:
        raise OptionError("--save-logits cannot be combined with --kld-base: the base logits exist already")
    if text is None and kld_base is None:
        raise OptionError("--text is required (only a --kld-base run can take its tokens from the logits file)")
    if save_logits is not None and save_logits.resolve() in {model.resolve(), *(p.resolve() for p in (text, base) if p)}:
        raise OptionError(f"--save-logits {save_logits} would overwrite an input")

    net = load_model(model)
    base_model = load_model(base) if base is not None else None
    if base_model is not None:
        check_same_vocabulary(net, base_model)
    logits_file = LogitsFile.open(kld_base) if kld_base is not None else None
    tokenizer = _tokenizer(net)
    bos_id = tokenizer.bos_id if tokenizer.add_bos else None
    base_bos_id = None
    if base_model is not None:
        base_tokenizer = _tokenizer(base_model)
        base_bos_id = base_tokenizer.bos_id if base_tokenizer.add_bos else None

    if text is not None:
        tokens = tokenizer.encode(read_text(text), add_bos=tokenizer.add_bos, add_eos=False)
        source = str(text)
    else:
        tokens, source = logits_file.tokens, str(kld_base)
    n_ctx = ctx if ctx is not None else (logits_file.n_ctx if logits_file is not None else 512)
    n_ctx_train = net.metadata.get(f"{net.config.arch}.context_length")
    if n_ctx_train and n_ctx > n_ctx_train:
        ui.info(f"[yellow]warning:[/] {escape(str(model))} was trained on only {n_ctx_train} context tokens "
                f"({n_ctx} asked)")
    mode = "KL-divergence" if (base_model or logits_file) else "perplexity"
    ui.info(f"[bold]{escape(str(model))}[/]: {mode} over {escape(source)}, {len(tokens)} tokens, context {n_ctx}, "
            f"{threads} threads")

    with _chunk_display(kld=mode != "perplexity") as on_chunk:
        result = run_perplexity(
            net, tokens, n_ctx=n_ctx, n_chunk=chunks, n_batch=batch, threads=threads, bos_id=bos_id,
            base=base_model if base_model is not None else logits_file, base_bos_id=base_bos_id,
            save_logits=save_logits, source=source, on_chunk=on_chunk,
        )
    if result.kld is None:
        ui.info(f"Final estimate: PPL = {result.ppl:.4f} +/- {result.ppl_error:.5f}")
    elif result.count >= 100:  # llama-perplexity prints no statistics over fewer tokens
        ui.info(format_report(result.kld))
    ui.info(f"{result.tokens} tokens evaluated in {result.seconds:.1f} s ({result.tokens_per_second:.1f} tokens/s)")
    if save_logits is not None:
        ui.info(f"logits saved to {save_logits}")
    if json_out:
        ui.emit_json({
            "model": str(model), "text": str(text) if text else None, "base": str(base) if base else None,
            "kld_base": str(kld_base) if kld_base else None, "save_logits": str(save_logits) if save_logits else None,
            "threads": threads, "batch": batch or n_ctx, **result.to_json(),
        })


def _tokenizer(model: Model) -> Tokenizer:
    """The model's tokenizer; its errors name the model file."""
    from quantize_cli.runtime.tokenizer import Tokenizer

    try:
        return Tokenizer.from_gguf_metadata(model.metadata)
    except QConvertError as e:
        raise type(e)(f"{model.path}: {e}", hint=e.hint) from None


@contextmanager
def _chunk_display(*, kld: bool) -> Iterator[Callable[[ChunkReport], None]]:
    """Per-chunk output on stderr: on a terminal a progress bar (tokens/s, ETA, running value) and,
    in KLD runs, llama-perplexity's per-chunk table above it; otherwise the plain running list
    "[1]15.5928,[2]18.0898," (PPL runs) or the table lines, as llama-perplexity prints them."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    def kld_line(r: ChunkReport) -> str:
        k = r.kld
        return (f"{r.index:4d}    {k['ppl'][0]:9.4f} ± {k['ppl'][1]:9.4f}    {k['ln_ppl_ratio'][0]:10.5f} ± "
                f"{k['ln_ppl_ratio'][1]:10.5f}    {k['kld'][0]:10.5f} ± {k['kld'][1]:10.5f}    "
                f"{k['rms_dp'][0]:6.3f} ± {k['rms_dp'][1]:6.3f} %    {k['same_top'][0]:6.3f} ± {k['same_top'][1]:6.3f} %")

    if not ui.err.is_terminal:
        if kld:
            ui.info(KLD_HEADER)

        def plain(r: ChunkReport) -> None:
            if kld:
                ui.info(kld_line(r))
            else:
                ui.err.file.write(f"[{r.index}]{r.ppl:.4f},")
                ui.err.file.flush()
        try:
            yield plain
        finally:
            if not kld:
                ui.err.file.write("\n")
        return

    columns = (TextColumn("[bold]chunks"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[speed]}"),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("[dim]{task.fields[value]}"))
    values: list[str] = []
    with Progress(*columns, console=ui.err, transient=False) as bar:
        task = bar.add_task("chunks", total=None, speed="", value="")
        if kld:
            bar.console.print(KLD_HEADER)

        def update(r: ChunkReport) -> None:
            if kld:
                bar.console.print(kld_line(r))
            values.append(f"[{r.index}]{r.ppl:.4f},")
            bar.update(task, total=r.n_chunk, completed=r.index, value=f"PPL {r.ppl:.4f}",
                       speed=f"{r.tokens / r.seconds:.0f} tok/s" if r.seconds else "")
        yield update
    if values and not kld:
        ui.info("".join(values))
