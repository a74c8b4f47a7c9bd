"""Calibration commands (`qconvert imatrix`), registered on the main Typer app."""

from __future__ import annotations

from quantize_cli.cli import app  # noqa: F401
