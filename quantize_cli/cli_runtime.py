"""Commands that run a model on the CPU (perplexity, KL-divergence, imatrix), registered on the
main Typer app. Kept apart from cli.py so the converter commands load without the runtime."""

from __future__ import annotations

from quantize_cli.cli import app  # noqa: F401
