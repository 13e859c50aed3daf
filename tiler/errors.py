"""The one family of errors a user can cause.

Every error that bad input, a bad model, bad options or an output in the way can raise derives
from :class:`SegtileError`: the CLI reports these in one line with exit status 2, and anything
else as a failure of segtile itself (exit status 1). Most also derive from ``ValueError``, the
Python convention for a bad argument, so ``except ValueError`` keeps working in user code.
"""

from __future__ import annotations


class SegtileError(Exception):
    """Something the user can fix: the message says what, in one line."""
