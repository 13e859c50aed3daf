"""The one family of errors a user can cause.

Every error that bad input, a bad model, bad options or an output in the way can raise derives
from :class:`SegtileError`: the CLI reports these in one line with exit status 2, and anything
else as a failure of segtile itself (exit status 1). Most also derive from ``ValueError``, the
Python convention for a bad argument, so ``except ValueError`` keeps working in user code.
"""

from __future__ import annotations


class SegtileError(Exception):
    """Something the user can fix: the message says what, in one line."""


_TORCHSCRIPT_PREAMBLE = "The following operation failed in the TorchScript interpreter"


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line: its first line, except for TorchScript errors, whose
    first line only says that something failed (the cause is their last line); the type's name
    when the message is empty."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith(_TORCHSCRIPT_PREAMBLE):
        return lines[-1]
    return lines[0]


def root_cause_line(exc: BaseException) -> str:
    """:func:`one_line` of the innermost cause of ``exc``: libraries wrap the useful message
    (rasterio wraps GDAL's in "Read failed. See previous exception")."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return one_line(exc)
