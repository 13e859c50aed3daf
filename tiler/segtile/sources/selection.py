"""Which bands and which pixels a read asks for: validated once, shared by every backend."""

from __future__ import annotations

import numbers
from typing import Sequence

from rasterio.windows import Window

from segtile.errors import SourceError


def band_positions(bands: Sequence[int] | None, count: int) -> tuple[int, ...]:
    """0-based positions of the 1-based ``bands`` (GDAL / CLI numbering) among ``count`` bands.

    ``None`` selects every band in order. Order is kept and repeats are allowed (``[1, 1, 1]``
    turns a grey image into three channels).
    """
    if bands is None:
        return tuple(range(count))
    if isinstance(bands, (str, bytes)) or not isinstance(bands, Sequence):
        raise SourceError(f"bands must be a list of 1-based band indices, not {bands!r}")
    if len(bands) == 0:
        raise SourceError("no bands selected: give at least one 1-based band index")
    positions = []
    for band in bands:
        if isinstance(band, bool) or not isinstance(band, numbers.Integral):
            raise SourceError(f"band indices must be whole numbers, not {band!r}")
        if not 1 <= band <= count:
            raise SourceError(f"band {band} is out of range: the image has {_plural(count, 'band')}")
        positions.append(int(band) - 1)
    return tuple(positions)


def compose_bands(current: Sequence[int], bands: Sequence[int]) -> tuple[int, ...]:
    """The 1-based indices, among the original bands, of ``bands`` taken from a selection.

    ``current`` holds the original 1-based indices a source reads now; ``bands`` are 1-based
    indices into that selection (what a user sees as the source's bands).
    """
    return tuple(current[p] for p in band_positions(bands, len(current)))


def window_bounds(window: Window, level_shapes: Sequence[tuple[int, int]], level: int) -> tuple[int, int, int, int]:
    """``(row_start, row_stop, col_start, col_stop)`` of ``window`` in ``level``'s pixel grid.

    Sources read whole pixels inside the image only (callers pad themselves): a fractional,
    empty or overhanging window, or a level that does not exist, is a :class:`SourceError`.
    """
    if isinstance(level, bool) or not isinstance(level, numbers.Integral) or not 0 <= level < len(level_shapes):
        raise SourceError(f"level {level!r} does not exist: the image has {_plural(len(level_shapes), 'level')}")
    height, width = level_shapes[level]
    values = (window.col_off, window.row_off, window.width, window.height)
    if any(float(v) != int(v) for v in values):
        raise SourceError(f"window {tuple(values)} is not made of whole pixels")
    col, row, w, h = (int(v) for v in values)
    if w < 1 or h < 1 or col < 0 or row < 0 or col + w > width or row + h > height:
        raise SourceError(
            f"window (col {col}, row {row}, {w}x{h}) is not inside the level-{level} image of {width}x{height}"
        )
    return row, row + h, col, col + w


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
