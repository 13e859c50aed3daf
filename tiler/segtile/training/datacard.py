"""The model card of a network trained here, filled from its training data.

* **scale**: the largest value of the pixels' integer type (255 for uint8, 65535 for uint16),
  1 for floats and signed integers. The choice hardly matters to the network, since the mean and
  standard deviation are taken after scaling, but it is fixed by the data type alone, so two
  images of one sensor always get the same scale whatever a sample held.
* **mean, std**: per band, over the valid pixels of up to :data:`STATISTICS_WINDOWS` training
  windows (never the whole image, never validation windows), after scaling. A constant band
  gets std 1.
* **what the network saw** (``extra["domain"]``, for the domain check of
  :mod:`segtile.inference.domain`): the pixel type, and per band the mean, standard deviation and
  1st / 99th percentiles of the raw values of the same windows' valid pixels (at most
  :data:`DOMAIN_SAMPLE` pixels of each window), and the sensor when the training was told it.
* **resolution**: the first image's pixel size: µm/px for slides (``um``), metres per pixel in a
  projected CRS (``m``; feet and other linear units converted), the square root of the pixel
  area when pixels are not square. In a geographic CRS the pixel size is in degrees, which the
  card cannot state as a resolution: it stays unset (the tiler will not resample) and
  ``extra["pixel_size"]`` records the size in degrees.
* **resolution range**: the smallest and largest pixel size among the training images in the
  first image's unit (the range the model was trained for, as the tiler reads it: images inside
  it run on their own grid). Without scale augmentation a model trained on images of one pixel
  size serves that size alone, ``[r, r]``; the tiler gives it 25 % either way. With scale
  augmentation up to a zoom ``Z`` the largest size is multiplied by ``Z`` (the network saw the
  coarsest image's pixels averaged ``Z`` to one, as a coarser sensor gives them); the smallest is
  kept (the windows it saw enlarged hold no detail a truly finer image would).
* **tile size and overlap**: the training tile, rounded up to ``8k + 1`` pixels, and an overlap
  of ``8m + 1`` pixels near an eighth of it, so that tiles starting on multiples of 8 line up
  (PSPNet's ``alignment`` of 8; with a finer output stride ``s``, ``sk + 1`` and multiples of ``s``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from segtile.georef import Georef
from segtile.inference.domain import DOMAIN_KEY, domain_record
from segtile.models.card import ModelCard
from segtile.training.sampling import TrainingData

STATISTICS_WINDOWS = 64
DOMAIN_SAMPLE = 4096  # valid pixels of each statistics window kept for the percentiles
PSPNET_ALIGNMENT = 8


def value_scale(dtype: np.dtype) -> float:
    """What pixel values are divided by first: the unsigned integer type's maximum, else 1."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if dtype.kind == "u" else 1.0


def band_statistics(data: TrainingData, scale: float) -> tuple[list[float], list[float], np.ndarray]:
    """Per-band mean and standard deviation of the valid pixels of training windows, scaled; and
    a sample of those pixels' raw values ``(bands, n)`` (:data:`DOMAIN_SAMPLE` of each window at most)."""
    total = np.zeros(data.bands)
    squares = np.zeros(data.bands)
    count = 0
    kept = []
    rng = np.random.default_rng([data.seed, 0xD0])
    for image, window in data.statistics_windows(STATISTICS_WINDOWS):
        sample = data.read(image, window)
        raw = sample.pixels[:, sample.valid].astype(np.float64)
        if raw.shape[1] > DOMAIN_SAMPLE:
            kept.append(raw[:, rng.choice(raw.shape[1], DOMAIN_SAMPLE, replace=False)])
        else:
            kept.append(raw)
        values = raw / scale
        total += values.sum(axis=1)
        squares += (values * values).sum(axis=1)
        count += values.shape[1]
    sample_values = np.concatenate(kept, axis=1) if kept else np.zeros((data.bands, 0))
    if count == 0:
        return [0.0] * data.bands, [1.0] * data.bands, sample_values
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    std[std == 0] = 1.0
    return [_significant(m) for m in mean], [_significant(s) for s in std], sample_values


def native_resolution(georef: Georef) -> tuple[float | None, str | None, dict[str, Any]]:
    """``(resolution, unit, extra)`` of an image's grid (see the module's docstring)."""
    if georef.mpp is not None:
        return _significant(georef.mpp), "um", {}
    if georef.transform is None:
        return None, None, {}
    size = math.sqrt(abs(georef.transform.determinant))
    if georef.crs is None:
        return None, None, {"pixel_size": _significant(size), "pixel_size_unit": "unknown (no CRS)"}
    if georef.crs.is_geographic:
        return None, None, {"pixel_size": _significant(size), "pixel_size_unit": "degree"}
    _, metres_per_unit = georef.crs.linear_units_factor
    return _significant(size * metres_per_unit), "m", {}


def trained_range(data: TrainingData, unit: str | None, zoom: float = 1.0) -> tuple[float, float] | None:
    """The smallest and ``zoom`` times the largest pixel size, in ``unit``, of the training images
    that have one in that unit (see the module's docstring); ``None`` without a unit."""
    if unit is None:
        return None
    sizes = [size for size, size_unit, _ in (native_resolution(image.georef) for image in data.images)
             if size_unit == unit]
    return min(sizes), _significant(max(sizes) * zoom)


def suggested_tiling(tile_size: int, alignment: int = PSPNET_ALIGNMENT) -> tuple[int, int]:
    """``(tile, overlap)`` for inference: ``k * alignment + 1`` pixels, overlap ``m * alignment + 1``
    near an eighth of the tile."""
    tile = tile_size + (alignment - (tile_size - 1) % alignment) % alignment
    overlap = alignment * max(1, round(tile / (8 * alignment))) + 1
    return tile, overlap


def card_from_data(data: TrainingData, classes: Sequence[str], colors: Sequence[str] | None,
                   bands: Sequence[int], band_names: Sequence[str], zoom: float = 1.0,
                   sensor: str | None = None, alignment: int = PSPNET_ALIGNMENT) -> ModelCard:
    """The card of a PSPNet trained on ``data`` with scale augmentation up to ``zoom``, of images
    from ``sensor`` when known, whose features sit every ``alignment`` pixels (its output
    stride; see the module's docstring)."""
    first = data.images[0]
    scale = value_scale(first.dtype)
    mean, std, sample = band_statistics(data, scale)
    resolution, unit, grid_extra = native_resolution(first.georef)
    tile, overlap = suggested_tiling(data.tile_size, alignment)
    return ModelCard(
        classes=tuple(classes), colors=tuple(colors or ()), in_channels=len(bands), bands=tuple(bands),
        mean=mean, std=std, scale=scale, resolution=resolution, resolution_unit=unit,
        resolution_range=trained_range(data, unit, zoom),
        tile_size=tile, overlap=overlap, alignment=alignment,
        extra={"band_names": list(band_names), **grid_extra, DOMAIN_KEY: domain_record(sample, first.dtype, sensor)},
    )


def _significant(value: float, digits: int = 6) -> float:
    """``value`` rounded to ``digits`` significant digits (readable cards, no float noise)."""
    return float(f"{float(value):.{digits}g}")
