"""The `qconvert` command: thin Typer commands over the library.

`qconvert MODEL --type T` is the main job; MODEL that is not a subcommand name is routed to the
hidden `convert` command. Errors are mapped to a one-line message, a hint and an exit code here
and nowhere else: 1 for user errors (QConvertError), 2 for usage errors, 130 for Ctrl-C.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Optional

import typer

from quantize_cli import __version__, ui
from quantize_cli.errors import OutputError, QConvertError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="Turn Hugging Face checkpoints into quantized GGUF files that llama.cpp loads as they are.")

JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout (logs stay on stderr).")
ThreadsOpt = typer.Option(min(2, os.cpu_count() or 1), "--threads", "-t", min=1,
                          help="Worker threads. Output bytes do not depend on it.")


def handles_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QConvertError as e:
            ui.error(str(e), e.hint)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            ui.error("interrupted; no output file was left behind")
            raise typer.Exit(130) from None
    return wrapper


def _bits_per_weight(nbytes: int, n_params: int) -> float:
    return 8.0 * nbytes / n_params if n_params else 0.0


@app.command("convert", hidden=True)
@handles_errors
def convert_cmd(
    model: str = typer.Argument(..., help="Local folder, .gguf file, HF repo id (org/name) or a cached repo's short name."),
    type_: str = typer.Option("q8_0", "--type", help="Target type: f32 f16 bf16 q8_0 q6_k q5_k_m q5_k_s q4_k_m q4_k_s."),
    outfile: Optional[Path] = typer.Option(None, "--outfile", "-o", help="Output path (default: <Name>-<Size>-<TYPE>.gguf here)."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing output file."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (tensors, types, sizes) and write nothing."),
    threads: int = ThreadsOpt,
    allow_nonfinite: bool = typer.Option(False, "--allow-nonfinite", help="Convert tensors holding NaN/Inf instead of failing."),
    allow_requantize: bool = typer.Option(False, "--allow-requantize", help="Allow re-quantizing already quantized GGUF tensors."),
    output_tensor_type: Optional[str] = typer.Option(None, "--output-tensor-type", help="Type for output.weight."),
    token_embedding_type: Optional[str] = typer.Option(None, "--token-embedding-type", help="Type for token_embd.weight."),
    tensor_type: list[str] = typer.Option([], "--tensor-type", help="PATTERN=TYPE override (regex on tensor names); repeatable."),
    pure: bool = typer.Option(False, "--pure", help="Every quantizable tensor gets the default type of --type."),
    leave_output_tensor: bool = typer.Option(False, "--leave-output-tensor", help="Keep output.weight unquantized."),
    imatrix: Optional[str] = typer.Option(None, "--imatrix", help="llama.cpp importance matrix (.gguf or legacy .dat)."),
    calibrate: Optional[Path] = typer.Option(None, "--calibrate", help="UTF-8 text: collect an importance matrix "
                                             "on it (as llama-imatrix does) and quantize with it, in one step."),
    save_imatrix: Optional[Path] = typer.Option(None, "--save-imatrix", help="With --calibrate: keep the importance "
                                                "matrix in this file (.gguf, or .dat for the legacy format)."),
    ctx: int = typer.Option(512, "--ctx", "-c", min=1, help="With --calibrate: tokens per chunk."),
    chunks: Optional[int] = typer.Option(None, "--chunks", min=1, help="With --calibrate: use at most N chunks "
                                         "[default: all]."),
    optimize: bool = typer.Option(False, "--optimize", help="With --imatrix: search k-quant blocks against importance-"
                                  "weighted error; with --calibrate: GPTQ error feedback inside the k-quant grids. "
                                  "Standard blocks llama.cpp runs, not llama.cpp's bytes."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit)."),
    json_out: bool = JsonOpt,
) -> None:
    from quantize_cli.convert import write_plan
    from quantize_cli.formats.imatrix import load_imatrix
    from quantize_cli.hub import resolve_model
    from quantize_cli.plan import plan_from_gguf, plan_from_hf
    from quantize_cli.qtypes import file_type
    from quantize_cli.qtypes import tensor_type as parse_tensor_type
    from quantize_cli.recipes import Overrides

    ftype = file_type(type_)
    overrides = Overrides(
        output_tensor_type=parse_tensor_type(output_tensor_type) if output_tensor_type else None,
        token_embedding_type=parse_tensor_type(token_embedding_type) if token_embedding_type else None,
        tensor_types=[_parse_tensor_type_override(s) for s in tensor_type],
        pure=pure,
        leave_output_tensor=leave_output_tensor,
    )
    _check_calibration_options(ftype, imatrix=imatrix, calibrate=calibrate, save_imatrix=save_imatrix, ctx=ctx,
                               chunks=chunks, optimize=optimize, force=force)
    resolved = resolve_model(model, revision=revision)
    weights = load_imatrix(imatrix) if imatrix else None

    def make_plan(weights):
        if resolved.kind == "gguf":
            return plan_from_gguf(resolved.path, ftype, overrides=overrides, imatrix=weights,
                                  allow_requantize=allow_requantize)
        return plan_from_hf(resolved.path, ftype, overrides=None if overrides == Overrides() else overrides,
                            imatrix=weights, name=resolved.repo_id)

    plan = make_plan(weights)  # with --calibrate: checks the model before the long calibration run
    out = outfile if outfile is not None else Path.cwd() / plan.default_name
    if out.is_dir():
        out = out / plan.default_name
    if not dry_run and out.exists() and not force:
        raise OutputError(f"{out}: output file exists", hint="pass --force to overwrite it, or choose --outfile")
    if not dry_run and not out.parent.is_dir():  # checked before calibrating, which works in that directory
        raise OutputError(f"{out.parent}: output directory does not exist")
    if save_imatrix is not None and save_imatrix.resolve() == out.resolve():
        raise OutputError(f"--save-imatrix {save_imatrix} is the output file")

    report: dict = {}
    if calibrate is not None and not dry_run:
        from quantize_cli.cli_calibrate import calibrate_for_convert

        weights, stats, report = calibrate_for_convert(resolved.path, calibrate, ctx=ctx, chunks=chunks,
                                                       hessians=optimize, save_imatrix=save_imatrix, threads=threads,
                                                       workdir=out.parent)
        plan = make_plan(weights)
    elif calibrate is not None:
        ui.info(f"dry run: the importance matrix over {calibrate} is not collected")
    if optimize and not dry_run:
        from quantize_cli.calibration.optimize import optimize_plan

        plan, methods = optimize_plan(plan, stats if calibrate is not None else None, threads=threads)
        report["optimized"] = dict(sorted(Counter(methods.values()).items()))
        ui.info("--optimize: " + ", ".join(f"{n} tensors by {'GPTQ' if m == 'gptq' else 'the weighted search'}"
                                           for m, n in report["optimized"].items()))
    type_counts = Counter(t.qtype.name for t in plan.tensors)
    bpw = _bits_per_weight(plan.nbytes, plan.n_params)

    if dry_run:
        _print_plan(plan)
        if json_out:
            ui.emit_json({
                "input": str(resolved.path), "output": str(out), "dry_run": True, "type": ftype.label,
                "size": plan.nbytes, "n_params": plan.n_params, "bits_per_weight": round(bpw, 4),
                "tensor_types": dict(sorted(type_counts.items())),
                "tensors": [{"name": t.name, "shape": list(t.shape), "type": t.qtype.name, "bytes": t.nbytes}
                            for t in plan.tensors],
            })
        return

    ui.info(f"[bold]{resolved.path}[/] -> [bold]{out}[/] ({ftype.label}, {len(plan.tensors)} tensors, "
            f"{ui.human_bytes(plan.nbytes)})")
    with ui.byte_progress(plan.nbytes, "quantizing" if ftype.default.name.startswith("Q") else "converting") as advance:
        result = write_plan(plan, out, threads=threads, allow_nonfinite=allow_nonfinite, progress=advance)
    ui.table("summary", ["type", "tensors", "parameters", "size"], _type_rows(plan), right={1, 2, 3})
    ui.info(f"[bold]{out}[/]: {ui.human_bytes(result.size)}, {bpw:.2f} bits per weight, {plan.n_params:,} parameters, "
            f"{result.seconds:.1f} s, peak RSS {result.peak_rss_mb:.0f} MB")
    ui.info(f"sha256 {result.sha256}")
    if json_out:
        ui.emit_json({
            "input": str(resolved.path), "output": str(out), "type": ftype.label, "sha256": result.sha256,
            "size": result.size, "n_params": plan.n_params, "bits_per_weight": round(bpw, 4),
            "tensor_types": dict(sorted(type_counts.items())), "seconds": round(result.seconds, 3),
            "peak_rss_mb": round(result.peak_rss_mb, 1), "threads": threads, **report,
        })


def _check_calibration_options(ftype, *, imatrix: str | None, calibrate: Path | None, save_imatrix: Path | None,
                               ctx: int, chunks: int | None, optimize: bool, force: bool) -> None:
    """The option combinations --imatrix, --calibrate and --optimize allow, checked before any work."""
    from quantize_cli.errors import OptionError
    from quantize_cli.qtypes import FLOAT_TYPES

    if imatrix is not None and calibrate is not None:
        raise OptionError("--imatrix and --calibrate both give the importance matrix; pass one of them")
    if calibrate is None:
        for name, given in (("--save-imatrix", save_imatrix is not None), ("--ctx", ctx != 512),
                            ("--chunks", chunks is not None)):
            if given:
                raise OptionError(f"{name} is a calibration option; it needs --calibrate TEXT")
    if optimize and imatrix is None and calibrate is None:
        raise OptionError("--optimize needs --imatrix or --calibrate (the importance of each input column)")
    if calibrate is not None:
        if ftype.default in FLOAT_TYPES:
            raise OptionError(f"--calibrate needs a quantized --type, not {ftype.name}",
                              hint="f32/f16/bf16 conversions keep every tensor's values as they are")
        if not calibrate.is_file():
            raise OptionError(f"--calibrate {calibrate}: no such file")
    if save_imatrix is not None:
        if save_imatrix.exists() and not force:
            raise OutputError(f"{save_imatrix}: importance matrix file exists", hint="pass --force to overwrite it")
        if not save_imatrix.parent.is_dir():
            raise OutputError(f"{save_imatrix.parent}: output directory does not exist")


def _type_rows(plan) -> list[list[str]]:
    """One row per tensor type: how many tensors, parameters and bytes it holds."""
    stats: dict[str, list[int]] = {}
    for t in plan.tensors:
        n = 1
        for d in t.shape:
            n *= d
        row = stats.setdefault(t.qtype.name, [0, 0, 0])
        row[0] += 1
        row[1] += n
        row[2] += t.nbytes
    return [[name, str(c), f"{p:,}", ui.human_bytes(b)] for name, (c, p, b) in sorted(stats.items())]


def _parse_tensor_type_override(spec: str):
    import re

    from quantize_cli.errors import OptionError
    from quantize_cli.qtypes import tensor_type

    pattern, sep, name = spec.rpartition("=")
    if not sep or not pattern:
        raise OptionError(f"--tensor-type {spec!r}: expected PATTERN=TYPE, e.g. 'attn_v=q8_0'")
    try:
        re.compile(pattern)
    except re.error as e:
        raise OptionError(f"--tensor-type {spec!r}: bad regular expression: {e}") from None
    return pattern, tensor_type(name)


def _print_plan(plan) -> None:
    rows = [[t.name, "x".join(str(d) for d in reversed(t.shape)), t.qtype.name, ui.human_bytes(t.nbytes)]
            for t in plan.tensors]
    ui.table(f"plan: {plan.source.name} -> {plan.ftype.label}", ["tensor", "ne", "type", "bytes"], rows, right={3})
    ui.info(f"{len(plan.tensors)} tensors, {plan.n_params:,} parameters, tensor data {ui.human_bytes(plan.nbytes)}, "
            f"{_bits_per_weight(plan.nbytes, plan.n_params):.2f} bits per weight")


@app.command("unpack")
@handles_errors
def unpack_cmd(
    gguf_file: Path = typer.Argument(..., help="GGUF file to turn into a Hugging Face folder."),
    outdir: Path = typer.Option(..., "--outdir", help="Folder to create (must not exist, or be empty)."),
    dtype: str = typer.Option("f16", "--dtype", help="Safetensors dtype: f16 or bf16."),
    force: bool = typer.Option(False, "--force", "-f", help="Write into a non-empty folder."),
    json_out: bool = JsonOpt,
) -> None:
    from quantize_cli.unpack import unpack

    result = unpack(gguf_file, outdir, dtype=dtype, force=force)
    ui.info(f"unpacked {result.n_tensors} tensors ({result.arch}) into {outdir}")
    if json_out:
        ui.emit_json({"input": str(gguf_file), "outdir": str(outdir), "arch": result.arch,
                      "tensors": result.n_tensors, "files": [str(p) for p in result.files]})


@app.command("inspect")
@handles_errors
def inspect_cmd(
    gguf_file: Path = typer.Argument(..., help="GGUF file to describe."),
    json_out: bool = JsonOpt,
    all_keys: bool = typer.Option(False, "--all", help="Show long arrays (token lists) in full."),
) -> None:
    from quantize_cli.inspect import inspect_gguf

    report = inspect_gguf(gguf_file)
    if json_out:
        ui.emit_json(report.to_json(full_arrays=all_keys))
        return
    ui.table(f"{gguf_file.name}: metadata", ["key", "type", "value"],
             [[k, t, v] for k, t, v in report.metadata_rows(full_arrays=all_keys)])
    ui.table(f"{gguf_file.name}: tensors", ["tensor", "ne", "type", "bytes"],
             [[t.name, "x".join(map(str, t.ne)), t.type, t.nbytes] for t in report.tensors], right={3})
    ui.info(f"{len(report.tensors)} tensors, {report.n_params:,} parameters, "
            f"{ui.human_bytes(report.tensor_bytes)} of tensor data, {report.bits_per_weight:.2f} bits per weight")


def _version_callback(value: bool) -> None:
    if value:
        from quantize_cli import kernels

        typer.echo(f"qconvert {__version__} (kernels: {kernels.backend()})")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logs on stderr."),
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and the kernel backend."),
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


def _route(argv: list[str]) -> list[str]:
    """`qconvert MODEL ...` means `qconvert convert MODEL ...`."""
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    for i, arg in enumerate(argv):
        if arg in ("--help", "-h", "--version"):
            return argv
        if arg.startswith("-"):
            continue
        if arg not in commands:
            return argv[:i] + ["convert"] + argv[i:]
        return argv
    return argv


def main() -> None:
    from quantize_cli import cli_calibrate, cli_runtime  # noqa: F401  (register their commands)

    app(args=_route(sys.argv[1:]), prog_name="qconvert")
