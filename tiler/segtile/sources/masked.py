"""A source with pixels left out: a slide's background glass, or everything outside an area of
interest.

The engine's rule does the rest: a tile without a valid pixel is never run, and invalid pixels
are nodata in every output. So a mask is a wrapper whose ``read_valid`` is the inner source's
validity and the mask's, and nothing downstream hears of tissue or areas.
"""

from __future__ import annotations

import copy
from typing import Protocol, Sequence

import numpy as np
from rasterio.windows import Window

from segtile.sources.base import Source


class Mask(Protocol):
    """Which pixels of a window of the working grid to keep (True) and which to leave out."""

    def inside(self, window: Window) -> np.ndarray: ...

    def on_grid(self, grid: Source) -> Mask:
        """The same mask for ``grid``, another grid over the same image (a preview's, coarser)."""


class MaskedSource(Source):
    """``inner`` with only the pixels ``mask`` keeps valid.

    Attributes (beside the :class:`Source` ones):
        inner: the source masked.
        mask: what decides which pixels are kept.
    """

    def __init__(self, inner: Source, mask: Mask) -> None:
        self.inner = inner
        self.mask = mask
        self.shape = inner.shape
        self.dtype = inner.dtype
        self.band_names = inner.band_names
        self.georef = inner.georef
        self.level_shapes = inner.level_shapes[:1]
        self.has_mask = True
        self.files = inner.files

    def read(self, window: Window, level: int = 0) -> np.ndarray:
        return self.inner.read(window, level)

    def read_valid(self, window: Window, level: int = 0) -> np.ndarray | None:
        return self.read_with_valid(window, level)[1]

    def read_with_valid(self, window: Window, level: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """The window's pixels, valid where ``inner`` says so and the mask keeps them. The
        pixels are not read at all when the mask keeps none of the window."""
        inside = self.mask.inside(window)
        if not inside.any():
            return np.zeros((self.count, *inside.shape), dtype=self.dtype), inside
        pixels, valid = self.inner.read_with_valid(window, level)
        return pixels, inside if valid is None else valid & inside

    def select_bands(self, bands: Sequence[int]) -> MaskedSource:
        selected = copy.copy(self)
        selected.inner = self.inner.select_bands(bands)
        selected.shape = selected.inner.shape
        selected.band_names = selected.inner.band_names
        return selected

    def close(self) -> None:
        self.inner.close()
