"""A small grid over a large image, read whole, window by window: for previews and tissue detection.

A look at a gigapixel image, or the search for a slide's tissue, needs the whole image at a
thousand or a few thousand pixels a side, never the image itself. :func:`coarse_source` gives that
grid (a :class:`~segtile.sources.resample.ResampledSource`, read from the coarsest pyramid level
still fine enough, with the masks of a :class:`~segtile.sources.masked.MaskedSource` put on it),
and :func:`read_whole` reads it in windows that each cover at most :data:`READ_SIDE` pixels a side
of the level read: without a pyramid a 1024 px grid over a 30000 px image reads every
full-resolution pixel, and one window of all of it would hold gigabytes.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from rasterio.windows import Window

from segtile.sources.base import Source
from segtile.sources.masked import MaskedSource
from segtile.sources.resample import ResampledSource

READ_SIDE = 2048  # pixels a side of the level read, at most, per window
READ_THREADS = 4  # windows read at once, at most: each holds a READ_SIDE² window of the level, as float32


def coarse_source(source: Source, max_size: int) -> Source:
    """``source`` on a grid over the same area whose longer side is ``max_size`` pixels, or
    ``source`` itself when it is no larger. A source already resampled is resampled again from
    the image it was made from, so the pixels are averaged once; a masked source is masked again
    on the coarse grid, so its image is read from the pyramid, not at full resolution."""
    if isinstance(source, MaskedSource):
        inner = coarse_source(source.inner, max_size)
        return source if inner is source.inner else MaskedSource(inner, source.mask.on_grid(inner))
    longer = max(source.height, source.width)
    if longer <= max_size:
        return source
    shape = (max(1, round(source.height * max_size / longer)), max(1, round(source.width * max_size / longer)))
    return ResampledSource(source.inner if isinstance(source, ResampledSource) else source, shape)


def read_whole(source: Source) -> np.ndarray:
    """All of ``source`` (a small grid) as float32 ``(bands, h, w)``, NaN where invalid, read in
    windows of at most about :data:`READ_SIDE` pixels a side of the level read, up to
    :data:`READ_THREADS` at a time (so memory does not grow with the machine's cores)."""
    side = _window_side(source)
    windows = [Window(column, row, min(side, source.width - column), min(side, source.height - row))
               for row in range(0, source.height, side) for column in range(0, source.width, side)]
    pixels = np.empty(source.shape, dtype=np.float32)
    with ThreadPoolExecutor(max_workers=min(READ_THREADS, os.cpu_count() or 1)) as pool:
        for window, block in zip(windows, pool.map(lambda window: _read_float(source, window), windows)):
            pixels[:, window.row_off:window.row_off + window.height,
                   window.col_off:window.col_off + window.width] = block
    return pixels


def _window_side(source: Source) -> int:
    """The side of the windows of ``source`` that :func:`read_whole` reads at once."""
    while isinstance(source, MaskedSource):
        source = source.inner
    if not isinstance(source, ResampledSource):
        return READ_SIDE
    level_height, level_width = source.inner.level_shapes[source.read_level]
    span = max(level_height / source.height, level_width / source.width)  # pixels read per pixel
    return max(1, int(READ_SIDE / span))


def _read_float(source: Source, window: Window) -> np.ndarray:
    pixels, valid = source.read_with_valid(window)
    pixels = pixels.astype(np.float32)
    if valid is not None:
        pixels[:, ~valid] = np.nan
    return pixels
