"""Multiscale pyramids of chunked rasters: each level half the size of the one before.

Levels are built one from the other, each read back from where the previous one was stored,
so no level is ever held whole and the inference behind level 0 runs once. Each output pixel
reduces a 2x2 block of the level above it: labels by their most frequent class (a class that
occurs under the pixel, never a blend), probabilities by their mean. Odd sizes are rounded up,
the missing row or column counting as nodata.
"""

from __future__ import annotations

from typing import Callable

import dask.array as da
import numpy as np


def level_shapes(shape: tuple[int, int], chunks: tuple[int, int]) -> list[tuple[int, int]]:
    """``(height, width)`` of every level from ``shape`` down: halved (rounded up) until the
    level fits in one chunk of ``chunks``."""
    shapes = [tuple(shape)]
    while shapes[-1][0] > chunks[0] or shapes[-1][1] > chunks[1]:
        height, width = shapes[-1]
        shapes.append((-(-height // 2), -(-width // 2)))
    return shapes


def mode_2x2(block: np.ndarray, nodata: int) -> np.ndarray:
    """The most frequent label of each 2x2 block of ``block`` (even height and width), ``nodata``
    left out of the count; ties go to the first in reading order; ``nodata`` where all four are."""
    candidates = _blocks_of_four(block)
    valid = candidates != nodata
    same = candidates[..., :, np.newaxis] == candidates[..., np.newaxis, :]
    votes = np.sum(same & valid[..., np.newaxis, :], axis=-1)
    votes[~valid] = -1
    return np.take_along_axis(candidates, np.argmax(votes, axis=-1)[..., np.newaxis], axis=-1)[..., 0]


def mean_2x2(block: np.ndarray) -> np.ndarray:
    """The mean of the non-NaN values of each 2x2 block over the last two axes of ``block``
    (even sizes); NaN where all four are NaN."""
    candidates = _blocks_of_four(block)
    known = ~np.isnan(candidates)
    count = known.sum(axis=-1)
    total = np.where(known, candidates, 0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(block.dtype)


def halved(level: da.Array, reduce: Callable[[np.ndarray], np.ndarray], fill: float,
           chunks: tuple[int, int]) -> da.Array:
    """``level`` (``(..., H, W)``) at half its size, chunked by ``chunks`` along its last two axes:
    each pixel is ``reduce`` of a 2x2 block, an odd edge padded with ``fill``."""
    height, width = level.shape[-2:]
    leading = [(0, 0)] * (level.ndim - 2)
    if height % 2 or width % 2:
        level = da.pad(level, [*leading, (0, height % 2), (0, width % 2)], constant_values=fill)
    level = level.rechunk({level.ndim - 2: 2 * chunks[0], level.ndim - 1: 2 * chunks[1]})
    out_chunks = level.chunks[:-2] + tuple(tuple(size // 2 for size in sizes) for sizes in level.chunks[-2:])
    return level.map_blocks(reduce, chunks=out_chunks, dtype=level.dtype)


def _blocks_of_four(block: np.ndarray) -> np.ndarray:
    """``(..., H, W)`` -> ``(..., H/2, W/2, 4)``: the four pixels of each 2x2 block, in reading order."""
    *leading, height, width = block.shape
    quads = block.reshape(*leading, height // 2, 2, width // 2, 2)
    return np.moveaxis(quads, -3, -2).reshape(*leading, height // 2, width // 2, 4)
