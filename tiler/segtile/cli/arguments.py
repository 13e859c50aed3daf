"""Argument types shared by the subcommands: each rejects a bad value with a one-line usage
error before any work starts (argparse reports it, exit status 2)."""

from __future__ import annotations

import argparse
import math
from typing import Callable


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _integer(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _integer(text, 0, "a non-negative integer")


def _integer(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def finite_float(minimum: float = 0.0, *, strict: bool = False, below: float | None = None) -> Callable[[str], float]:
    """A type accepting finite numbers ``>= minimum`` (``> minimum`` when ``strict``), and
    ``< below`` when given."""
    what = f"a finite number {'>' if strict else '>='} {minimum:g}" + ("" if below is None else f" and < {below:g}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (not math.isfinite(value) or value < minimum or (strict and value == minimum)
                or (below is not None and value >= below)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in its message
    return parse


def grid_size(unit: str) -> Callable[[str], float | str]:
    """A type accepting a positive finite pixel size in ``unit``, or the name of a grid: ``native``
    (the image's own) or ``model`` (the model card's), as :func:`segtile.sources.working_grid.choose_grid`
    takes them."""
    size = finite_float(0.0, strict=True)
    what = f"a positive number of {unit} per pixel, native or model"

    def parse(text: str) -> float | str:
        if text.strip().lower() in ("native", "model"):
            return text.strip().lower()
        try:
            return size(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

    parse.__name__ = what  # argparse names the type in its message
    return parse


def band_list(text: str) -> list[int]:
    """``"3,2,1"`` -> ``[3, 2, 1]`` (1-based band indices)."""
    try:
        bands = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bands must be comma-separated integers, got {text!r}") from None
    if not bands:
        raise argparse.ArgumentTypeError("bands must name at least one band")
    if min(bands) < 1:
        raise argparse.ArgumentTypeError(f"bands are numbered from 1, got {text!r}")
    return bands


def name_list(text: str) -> list[str]:
    """``"a,b , c"`` -> ``["a", "b", "c"]`` (at least one non-empty name)."""
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def scale_list(text: str) -> tuple[float, ...]:
    """``"0.5,1,1.5"`` -> ``(0.5, 1.0, 1.5)``: positive scales, at most 8."""
    try:
        scales = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"scales must be comma-separated numbers, got {text!r}") from None
    if not scales or any(not (math.isfinite(s) and 0 < s <= 8) for s in scales):
        raise argparse.ArgumentTypeError(f"scales must be positive numbers up to 8, got {text!r}")
    return scales


def creation_option(text: str) -> tuple[str, str]:
    """``"compress=zstd"`` -> ``("compress", "zstd")``: a GDAL creation option (the writer
    upper-cases the key, :func:`segtile.writers.geotiff.cog_options`)."""
    key, equals, value = text.partition("=")
    if not equals or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. COMPRESS=ZSTD), got {text!r}")
    return key.strip(), value.strip()


def memory_size(text: str) -> int:
    """``"1.5G"`` -> bytes (see :func:`segtile.tiling.budget.parse_size`)."""
    from segtile.errors import BudgetError
    from segtile.tiling.budget import parse_size

    try:
        return parse_size(text)
    except BudgetError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
