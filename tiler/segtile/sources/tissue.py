"""Where the tissue is on a slide, and masks that keep only it, or only an area of interest.

Most of a whole-slide image is often bare glass, and running a network over it costs as much as
over tissue. The tissue is found once, on an overview of the slide whose longer side is at most
``OVERVIEW`` px (its finest pyramid level that small, else its coarsest level resampled to that
size window by window, so that a slide without a pyramid is never read whole): stained tissue is
coloured and glass is grey-white, so the colour saturation ``(max - min) / max`` of each pixel
separates them, at a threshold chosen by Otsu's method on the saturation histogram, held within
[0.04, 0.15] so an all-tissue or an all-glass slide is not split down the middle. Specks smaller
than ``SPECK_UM2`` µm² (dust, debris), and than ``SPECK_SHARE`` of the slide (a region of interest
or a tissue core smaller than a speck keeps its tissue), are removed and holes that small filled
(GDAL's sieve), then the mask is grown by ``MARGIN`` pixels of the overview so the edges of the
tissue are never cut. :class:`TissueMask` then tells, for any
window of the working grid, which pixels lie on tissue, by nearest neighbour from the overview.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import numpy as np
import rasterio.features
from affine import Affine
from rasterio.windows import Window

from segtile.checks import is_real
from segtile.errors import TissueError
from segtile.sources import open_source
from segtile.sources.base import Source
from segtile.sources.labels import IGNORE, AreaSource, open_area
from segtile.sources.masked import MaskedSource
from segtile.sources.overview import coarse_source, read_whole
from segtile.sources.resample import at_level

OVERVIEW = 4096
THRESHOLD_RANGE = (0.04, 0.15)
SPECK_UM2 = 10_000  # 0.01 mm²: a tenth of a millimetre square
SPECK_SHARE = 0.01  # ... and never more than this share of the slide
MARGIN = 2


@dataclass(frozen=True)
class TissueMask:
    """The tissue of a slide on its overview, and how to reach it from the working grid.

    Attributes:
        tissue: boolean overview, True on tissue.
        overview_to_level0: ``(x, y)`` level-0 pixels per overview pixel.
        grid_to_level0: the working grid's pixel -> level-0 pixel transform (a scale).
        threshold: the saturation threshold used.
    """

    tissue: np.ndarray
    overview_to_level0: tuple[float, float]
    grid_to_level0: Affine
    threshold: float

    @property
    def fraction(self) -> float:
        """The share of the slide covered by tissue."""
        return float(self.tissue.mean())

    def inside(self, window: Window) -> np.ndarray:
        """Tissue pixels of ``window`` of the working grid, by nearest neighbour."""
        scale_x, scale_y = self.grid_to_level0.a, self.grid_to_level0.e
        cols = (int(window.col_off) + np.arange(int(window.width)) + 0.5) * scale_x + self.grid_to_level0.c
        rows = (int(window.row_off) + np.arange(int(window.height)) + 0.5) * scale_y + self.grid_to_level0.f
        height, width = self.tissue.shape
        ix = np.clip((cols / self.overview_to_level0[0]).astype(np.int64), 0, width - 1)
        iy = np.clip((rows / self.overview_to_level0[1]).astype(np.int64), 0, height - 1)
        return self.tissue[np.ix_(iy, ix)]

    def on_grid(self, grid: Source) -> TissueMask:
        """The same tissue for ``grid``, another grid over the slide."""
        return replace(self, grid_to_level0=grid.georef.transform)


@dataclass(frozen=True)
class AreaMask:
    """An area of interest (polygons or a raster mask) on the working grid."""

    area: AreaSource

    def inside(self, window: Window) -> np.ndarray:
        return self.area.read(window) != IGNORE

    def on_grid(self, grid: Source) -> AreaMask:
        """The same area for ``grid``, another grid over the image."""
        return AreaMask(self.area.on_grid(grid))


def with_masks(slide: Source, grid: Source, *, tissue: bool | None = None, threshold: float | None = None,
               area: str | os.PathLike | None = None) -> tuple[Source, list[str]]:
    """``grid`` (the working grid over ``slide``) keeping only the tissue and the area of interest
    asked for, and notes for the user. ``tissue=None`` detects tissue on colour slides (an image
    with µm per pixel and no CRS), and not on other images.

    Raises:
        TissueError: tissue detection asked of an image it cannot work on; a ``threshold``
            outside (0, 1), or given where no tissue is detected.
        LabelError: an area of interest that cannot be read or placed on the image.
    """
    if threshold is not None and not (is_real(threshold) and 0 < threshold < 1):
        raise TissueError(f"the tissue threshold is a colour saturation between 0 and 1 (exclusive), got {threshold!r}")
    notes = []
    is_slide = slide.georef.mpp is not None and slide.georef.crs is None
    if threshold is not None and tissue is False:
        raise TissueError("a tissue threshold applies where tissue is detected, and detection is off "
                          "(--no-tissue-mask; Python: tissue=False)")
    if tissue is None:
        tissue = is_slide and slide.count >= 3
        if threshold is not None and not tissue:
            raise TissueError("a tissue threshold applies where tissue is detected, on colour slides: this image "
                              "is not one")
    if tissue:
        found = detect_tissue(slide, grid, threshold)
        grid = MaskedSource(grid, found)
        notes.append(f"tissue covers {found.fraction:.0%} of the slide (saturation > {found.threshold:.3f}); "
                     "the tiles on glass are skipped (--no-tissue-mask to run them all; Python: tissue=False)")
    if area is not None:
        grid = MaskedSource(grid, AreaMask(open_area(area, grid)))
    return grid, notes


def detect_tissue(slide: Source, grid: Source, threshold: float | None = None) -> TissueMask:
    """The tissue of ``slide`` (a source with its pyramid, µm per pixel known) for the working
    grid ``grid`` over it (see the module docstring; ``threshold`` overrides Otsu's).

    Raises:
        TissueError: the slide has no colour bands or no known pixel size.
    """
    if slide.count < 3:
        raise TissueError("tissue detection needs a colour (RGB) slide: use --no-tissue-mask (Python: tissue=False)")
    if slide.georef.mpp is None or grid.georef.transform is None:
        raise TissueError("tissue detection needs a slide with a known µm per pixel: use --no-tissue-mask "
                          "(Python: tissue=False)")
    overview = overview_source(open_source(slide, bands=(1, 2, 3)))
    saturation = _saturation(read_whole(overview))
    if threshold is None:
        threshold = float(np.clip(otsu_threshold(saturation), *THRESHOLD_RANGE))
    tissue = saturation > threshold
    del saturation
    scale = (slide.width / overview.width, slide.height / overview.height)
    speck = _speck_pixels(slide.georef.mpp, scale, tissue.size)
    if speck > 1:  # a component of one pixel is never smaller than a speck
        tissue = rasterio.features.sieve(tissue.astype(np.uint8), size=speck, connectivity=8).astype(bool)
    return TissueMask(_grown(tissue, MARGIN), scale, grid.georef.transform, threshold)


def overview_source(slide: Source) -> Source:
    """``slide`` on a grid whose longer side is at most :data:`OVERVIEW` pixels: its finest
    pyramid level that small, else its coarsest level resampled to that size (read window by
    window by :func:`~segtile.sources.overview.read_whole`: a slide without such a level, a flat
    OME-TIFF say, is never read whole)."""
    level = next((level for level, shape in enumerate(slide.level_shapes) if max(shape) <= OVERVIEW), None)
    return coarse_source(slide, OVERVIEW) if level is None else at_level(slide, level)


def _saturation(pixels: np.ndarray) -> np.ndarray:
    """The colour saturation ``(max - min) / max`` of each pixel of ``pixels`` (float32, 3 bands),
    0 where the pixel is black; computed in place, in as few overview-sized arrays as it takes."""
    brightest = pixels.max(axis=0)
    saturation = pixels.min(axis=0)
    np.subtract(brightest, saturation, out=saturation)
    np.divide(saturation, np.maximum(brightest, 1), out=saturation)
    saturation[~(brightest > 0)] = 0
    return saturation


def _speck_pixels(mpp: float, scale: tuple[float, float], pixels: int) -> int:
    """How many overview pixels a component of tissue needs not to be a speck: those of
    :data:`SPECK_UM2` µm², but never more than :data:`SPECK_SHARE` of the ``pixels`` of the
    overview, so that a region of interest or a tissue core smaller than a speck keeps its tissue."""
    speck = math.ceil(SPECK_UM2 / (mpp ** 2 * scale[0] * scale[1]))
    return max(1, min(speck, math.floor(pixels * SPECK_SHARE)))


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` in [0, 1]: the cut that maximises the variance between the
    two classes it makes."""
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sums = np.cumsum(counts * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = sums / weight_low
        mean_high = (sums[-1] - sums) / weight_high
        between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[1:][np.nanargmax(np.nan_to_num(between, nan=-1.0))])


def _grown(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` grown by ``pixels`` steps to the four neighbours of each pixel."""
    grown = mask.copy()
    for _ in range(pixels):
        step = grown.copy()
        step[1:] |= grown[:-1]
        step[:-1] |= grown[1:]
        step[:, 1:] |= grown[:, :-1]
        step[:, :-1] |= grown[:, 1:]
        grown = step
    return grown
