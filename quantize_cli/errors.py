"""The typed errors of qconvert.

Library code raises these; `cli.py` maps them, in one place, to a one-line message, a hint and an
exit code. Every message names the file and the tensor or key it is about.
"""

from __future__ import annotations


class QConvertError(Exception):
    """A problem the user can fix: bad input, missing file, unsupported model. Exit code 1."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class InputError(QConvertError):
    """A file or directory we were given is missing, unreadable or malformed."""


class ModelNotFoundError(QConvertError):
    """MODEL resolved to nothing: no directory, no GGUF file, no cached or downloadable repo."""


class UnsupportedError(QConvertError):
    """The input is well-formed but uses something qconvert does not handle (architecture, dtype, type)."""


class NonFiniteError(QConvertError):
    """A tensor holds NaN or Inf values."""


class OutputError(QConvertError):
    """The output cannot be written: exists already, directory not writable, disk full."""


class OptionError(QConvertError):
    """Options that contradict each other or the model (an override that matches nothing, ...)."""
