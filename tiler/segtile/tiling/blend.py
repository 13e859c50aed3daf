"""Blend weights: how much each tile's prediction counts at each of its pixels.

Predictions near a tile's edge see less context than those near its centre, so overlapping tiles
are averaged with weights that fall off towards the tile edges. Where a tile side lies on the
image border there is no neighbour to hand over to, so the weight stays full up to that border:
edges are never darkened and never divided by a near-zero sum. The stitcher divides by the exact
sum of the weights it used, so any positive weights give a partition of unity.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from segtile.errors import BlendError

BLENDS = ("gaussian", "cosine", "linear", "constant")

# The gaussian's standard deviation as a fraction of the tile size (as in most sliding-window
# inference code: it keeps the edge weight near exp(-8) of the centre's).
GAUSSIAN_SIGMA_SCALE = 0.125


def check_blend(blend: str) -> None:
    if blend not in BLENDS:
        raise BlendError(f"unknown blend {blend!r}: choose one of {', '.join(BLENDS)}")


def profile(blend: str, size: int, overlap: int) -> np.ndarray:
    """The 1-D weight profile across a tile of ``size`` pixels, peak value 1, all values > 0.

    * ``gaussian``: a gaussian centred on the tile, sigma = size / 8;
    * ``cosine``: a Hann window over the whole tile, sampled at pixel centres;
    * ``linear``: a ramp over the ``overlap`` pixels at each end, flat in between;
    * ``constant``: all ones (a plain average in the overlaps).
    """
    check_blend(blend)
    centres = np.arange(size, dtype=np.float64) + 0.5
    if blend == "gaussian":
        sigma = GAUSSIAN_SIGMA_SCALE * size
        weights = np.exp(-((centres - size / 2) ** 2) / (2 * sigma**2))
    elif blend == "cosine":
        weights = np.sin(np.pi * centres / size) ** 2
    elif blend == "linear" and overlap > 0:
        weights = np.minimum(1.0, np.minimum(centres, size - centres) / overlap)
    else:
        weights = np.ones(size)
    return weights / weights.max()


def edge_profile(blend: str, size: int, overlap: int, full_start: bool, full_end: bool) -> np.ndarray:
    """:func:`profile`, held at its peak from the peak to any end that lies on the image border."""
    weights = profile(blend, size, overlap)
    peak = int(np.argmax(weights))
    if full_start:
        weights[:peak] = 1.0
    if full_end:
        weights[peak:] = 1.0
    return weights


@lru_cache(maxsize=64)
def tile_weight(
    blend: str, size: int, overlap: int, edges: tuple[bool, bool, bool, bool]
) -> np.ndarray:
    """The ``(size, size)`` float32 weight of a tile whose sides ``(top, bottom, left, right)``
    lie on the image border where ``edges`` says so. Cached and read-only."""
    top, bottom, left, right = edges
    rows = edge_profile(blend, size, overlap, top, bottom)
    cols = edge_profile(blend, size, overlap, left, right)
    weight = np.outer(rows, cols).astype(np.float32)
    weight.flags.writeable = False
    return weight
