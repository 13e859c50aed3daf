"""Checks of the arguments users give in Python: whole numbers and real numbers of any type.

The tiling options, the writers' options and the tissue threshold take numbers from Python
callers as well as from the command line; these say what counts as one (numpy's scalars do, a
bool does not), so every room checks them alike.
"""

from __future__ import annotations

from numbers import Integral, Real


def is_integer(value: object) -> bool:
    """An integer of any integer type (numpy's too), but not a bool or a float like ``512.0``."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A real number of any type (numpy's too; NaN and infinities included), but not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool)
