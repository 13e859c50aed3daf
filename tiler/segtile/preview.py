"""A quick look at a segmentation: the model run on a coarse version of the whole image.

Segmenting a gigapixel image takes hours; looking at what a model makes of it should take
seconds. :func:`preview` resamples the image so that its longer side is about ``max_size``
pixels (:func:`~segtile.sources.overview.coarse_source`: read from the coarsest pyramid level
that is still fine enough, so the full resolution is not even read when the file has overviews,
its tissue or area of interest masked on that grid too), reads that small grid once, runs the
same model and tiling on it, and paints the labels in the model card's colours, over the image
or alone. The :class:`Preview` shows itself in Jupyter
(``_repr_png_``, and ``_repr_html_`` with a legend) and saves as a PNG.

The model then sees the image at another scale than the one it was trained at, so a preview is
a look, not a result: for a model whose card gives a resolution (30 m, 0.5 µm/px), objects a few
pixels wide at that resolution vanish or change class.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, replace
from numbers import Integral
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import imagecodecs
import numpy as np

from segtile.errors import PreviewError
from segtile.models.card import ModelCard
from segtile.sources import MemorySource
from segtile.sources.overview import coarse_source, read_whole
from segtile.tiling.plan import fit_to_image
from segtile.writers.legend import rgb_palette

if TYPE_CHECKING:
    from segtile.result import Segmentation

STRETCH = (2, 98)  # percentiles of each band mapped to black and white (QGIS's default cut)


@dataclass(frozen=True, eq=False)
class Preview:
    """A small picture of a segmentation.

    Attributes:
        array: the picture, RGB ``(h, w, 3)`` uint8.
        labels: the class index of each pixel of the picture ``(h, w)``; ``nodata`` where nothing
            was segmented.
        card: the model card (class names and colours, for the legend).
        scale: how many pixels of the segmentation's grid one pixel of the picture spans (1: the
            segmentation itself was small enough).
    """

    array: np.ndarray
    labels: np.ndarray
    card: ModelCard
    scale: float

    def png(self) -> bytes:
        """The picture as PNG bytes."""
        return imagecodecs.png_encode(self.array)

    def save(self, path: str | PathLike) -> Path:
        """Write the picture to ``path`` as a PNG; return the path."""
        path = Path(path)
        path.write_bytes(self.png())
        return path

    def _repr_png_(self) -> bytes:
        return self.png()

    def _repr_html_(self) -> str:
        """The picture with a legend of the classes and the scale it was computed at."""
        image = base64.b64encode(self.png()).decode("ascii")
        swatch = ("display:inline-block;width:0.9em;height:0.9em;margin:0 0.3em 0 0.8em;"
                  "vertical-align:middle;border:1px solid #888;background:{}")
        entries = "".join(f'<span style="{swatch.format(html.escape(colour))}"></span>{html.escape(name)}'
                          for name, colour in zip(self.card.classes, self.card.colors))
        scale = "" if self.scale == 1 else f" &middot; computed at 1/{self.scale:.3g} scale: a look, not a result"
        return (f'<div><img src="data:image/png;base64,{image}" style="max-width:100%"/>'
                f'<div style="font-size:90%">{entries}{scale}</div></div>')

    def __repr__(self) -> str:
        height, width = self.labels.shape
        return f"<Preview {width}×{height} px at 1/{self.scale:.3g} scale>"


def preview(result: Segmentation, max_size: int = 1024, over_image: bool = True, alpha: float = 0.5) -> Preview:
    """Run ``result``'s model on ``result``'s image resampled to about ``max_size`` pixels on
    its longer side, and paint the labels (see the module docstring).

    Args:
        result: the segmentation to look at (it is not computed).
        max_size: the longer side of the picture, in pixels; an image already that small is
            segmented as it is.
        over_image: paint the classes over the image (its first three bands as RGB, or its
            first band as grey, each stretched between its 2nd and 98th percentiles); else alone,
            black where nothing was segmented.
        alpha: the opacity of the classes over the image, from 0 (the image alone) to 1.

    Raises:
        PreviewError: ``max_size`` is not a positive integer, or ``alpha`` is not in [0, 1].
    """
    if isinstance(max_size, bool) or not isinstance(max_size, Integral) or max_size < 1:
        raise PreviewError(f"max_size must be a positive integer, got {max_size!r}")
    if not 0 <= alpha <= 1:
        raise PreviewError(f"alpha must be between 0 and 1, got {alpha!r}")
    coarse = coarse_source(result.source, max_size)
    pixels = read_whole(coarse)
    small = replace(result, source=MemorySource(pixels, georef=coarse.georef), georef=coarse.georef,
                    options=fit_to_image(result.options, coarse.height, coarse.width), stored=None)
    labels = small.labels.compute()
    colours = rgb_palette(result.card, result.nodata + 1)[labels]  # black where nothing was segmented
    if over_image:
        colours = blend(stretch(pixels, None), colours, labels != result.nodata, alpha)
    return Preview(colours, labels, result.card, result.source.width / coarse.width)


def stretch(pixels: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Pixels ``(bands, h, w)`` as RGB ``(h, w, 3)`` uint8 for the eye: the first three bands
    (or the first, as grey, when there are fewer), each mapped linearly from its
    :data:`STRETCH` percentiles over the valid, finite pixels to 0–255; invalid pixels black."""
    bands = pixels[:3] if len(pixels) >= 3 else pixels[:1].repeat(3, axis=0)
    bands = bands.astype(np.float32)
    shown = np.isfinite(bands).all(axis=0)
    if valid is not None:
        shown &= valid
    picture = np.zeros((*bands.shape[1:], 3), dtype=np.uint8)
    if not shown.any():
        return picture
    for index, band in enumerate(bands):
        low, high = np.percentile(band[shown], STRETCH)
        scaled = (band - low) / max(high - low, np.finfo(np.float32).tiny)
        picture[..., index] = np.where(shown, np.round(np.clip(scaled, 0, 1) * 255), 0)
    return picture


def blend(image: np.ndarray, colours: np.ndarray, where: np.ndarray, alpha: float) -> np.ndarray:
    """``colours`` over ``image`` (both RGB ``(h, w, 3)`` uint8) at opacity ``alpha`` where
    ``where`` is true; the image alone elsewhere."""
    mixed = np.round((1 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)).astype(np.uint8)
    return np.where(where[..., None], mixed, image)
