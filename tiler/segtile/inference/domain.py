"""The domain check: is this image like the images the model was trained on?

A network given imagery unlike its training images (a 0.6 m aerial photo given to a 30 m model,
an H&E slide given to a fluorescence model, 16-bit reflectance given to a model of 8-bit images)
answers with confidence all the same, and the answer is nonsense. ``segtile train`` records in
the card what the network saw (``card.extra["domain"]``, written by
:func:`segtile.training.datacard.card_from_data` with :func:`pixel_statistics`):

* ``dtype``: the training images' pixel type;
* ``bands``: per band the card reads, the mean, standard deviation and 1st / 99th percentiles of
  the raw values of valid training pixels;
* ``sensor``: where the training command was told it (free text), else absent.

The card's ``resolution_range`` says the pixel sizes it was trained at. Before any work,
:func:`domain_note` compares an input with that record, from its coarsest pyramid level read
whole when that is small (:data:`WHOLE_LEVEL_PIXELS`), else from :data:`SAMPLE_WINDOWS` small
windows spread over it (milliseconds, whatever the file's size), and gives one line naming what
differs and what to do when the input is far outside it; ``None`` when it is like the training
images, or when the card has no record (older checkpoints, bare modules: no check).

"Far" is deliberately far, so in-domain inputs stay silent:

* a band's mean more than :data:`FAR_STDS` standard deviations of the training values from the
  training mean, and outside the training 1st-99th percentile range;
* another integer pixel type (another bit depth);
* pixels more than :data:`FAR_SCALE` times finer or coarser than the pixel sizes it was trained at,
  on the grid the job runs on.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from rasterio.windows import Window

from segtile.models.card import ModelCard
from segtile.sources import Source
from segtile.sources.working_grid import UNITS, degree_pixel_metres, served_range

DOMAIN_KEY = "domain"
"""The card's ``extra`` entry holding what the model was trained on."""
WHOLE_LEVEL_PIXELS = 512 * 512  # a coarsest level this small is read whole
SAMPLE_WINDOWS = 4  # else this many windows a side, evenly spread ...
SAMPLE_SIDE = 64  # ... of this many pixels a side
FAR_STDS = 3.0
FAR_SCALE = 2.0
PERCENTILES = (1, 99)


def pixel_statistics(values: np.ndarray) -> list[dict[str, float]]:
    """Per band of ``values`` ``(bands, n)`` (raw, valid pixels only): mean, std, 1st and 99th
    percentile, rounded to 4 significant digits."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[1] == 0:
        return [{"mean": 0.0, "std": 0.0, "p1": 0.0, "p99": 0.0} for _ in range(values.shape[0])]
    low, high = np.percentile(values, PERCENTILES, axis=1)
    return [{"mean": _rounded(m), "std": _rounded(s), "p1": _rounded(lo), "p99": _rounded(hi)}
            for m, s, lo, hi in zip(values.mean(axis=1), values.std(axis=1), low, high)]


def domain_record(values: np.ndarray, dtype: np.dtype, sensor: str | None = None) -> dict[str, Any]:
    """The card's record (``extra["domain"]``) of training pixels ``values`` ``(bands, n)`` of type ``dtype``."""
    record: dict[str, Any] = {"dtype": str(np.dtype(dtype)), "bands": pixel_statistics(values)}
    if sensor:
        record["sensor"] = sensor
    return record


def domain_note(source: Source, card: ModelCard) -> str | None:
    """One line naming how ``source`` (the bands and grid the model will be given) is far from
    the images the model was trained on, and what to do; ``None`` when it is not, or when the
    card records nothing of its training images."""
    record = card.extra.get(DOMAIN_KEY)
    if not isinstance(record, dict) or not isinstance(record.get("bands"), list):
        return None
    differences = [*_type_difference(source, record), *_pixel_size_difference(source, card),
                   *_value_differences(source, record)]
    if not differences:
        return None
    sensor = f" ({record['sensor']})" if record.get("sensor") else ""
    return (f"this image is far from the images the model was trained on{sensor}: {'; '.join(differences)}; "
            "its labels may be confidently wrong: bring the image to the model's as said, or use a model "
            "trained on images like it")


def sample_pixels(source: Source) -> np.ndarray:
    """Raw values ``(bands, n)`` of valid pixels of ``source``: its coarsest level, whole when
    small, else :data:`SAMPLE_WINDOWS` x :data:`SAMPLE_WINDOWS` windows spread over it."""
    level = len(source.level_shapes) - 1
    height, width = source.level_shapes[level]
    if height * width <= WHOLE_LEVEL_PIXELS:
        windows = [Window(0, 0, width, height)]
    else:
        rows = np.linspace(0, max(0, height - SAMPLE_SIDE), SAMPLE_WINDOWS).astype(int)
        columns = np.linspace(0, max(0, width - SAMPLE_SIDE), SAMPLE_WINDOWS).astype(int)
        windows = [Window(int(c), int(r), min(SAMPLE_SIDE, width), min(SAMPLE_SIDE, height))
                   for r in rows for c in columns]
    values = []
    for window in windows:
        pixels, valid = source.read_with_valid(window, level)
        pixels = pixels.reshape(pixels.shape[0], -1).astype(np.float64)
        keep = np.isfinite(pixels).all(axis=0)
        if valid is not None:
            keep &= valid.reshape(-1)
        values.append(pixels[:, keep])
    return np.concatenate(values, axis=1)


def _type_difference(source: Source, record: dict[str, Any]) -> list[str]:
    """Another integer type (bit depth) than the training images'."""
    trained = np.dtype(record.get("dtype", source.dtype))
    given = np.dtype(source.dtype)
    if given == trained or given.kind not in "ui" or trained.kind not in "ui":
        return []
    fix = "Byte" if trained == np.uint8 else "UInt16" if trained == np.uint16 else str(trained)
    return [f"{given} pixels where it was trained on {trained} (rescale them, e.g. gdal_translate -ot {fix} -scale)"]


def _pixel_size_difference(source: Source, card: ModelCard) -> list[str]:
    """Pixels more than :data:`FAR_SCALE` times finer or coarser than those the model was trained at."""
    served = served_range(card)
    size = _pixel_size(source, card.resolution_unit)
    if served is None or size is None:
        return []
    smallest, largest = served
    if smallest / FAR_SCALE <= size <= largest * FAR_SCALE:
        return []
    unit = UNITS[card.resolution_unit]
    trained = f"{smallest:g}" if smallest == largest else f"{smallest:g}-{largest:g}"
    flag = "--mpp" if card.resolution_unit == "um" else "--resolution"
    target = smallest if size < smallest else largest
    return [f"{size:.3g} {unit} pixels where it was trained at {trained} {unit} ({flag} {target:g} processes "
            "it at the model's)"]


def _pixel_size(source: Source, unit: str | None) -> float | None:
    """The pixel size of ``source`` in ``unit`` (a raster in degrees: the geometric mean of its
    centre pixel's sides in metres), or ``None``."""
    own = source.georef.pixel_size()
    if own is not None:
        return own[0] if own[1] == unit else None
    if unit != "m":
        return None
    metres = degree_pixel_metres(source.georef, source.height, source.width)
    return None if metres is None else math.sqrt(metres[0] * metres[1])


def _value_differences(source: Source, record: dict[str, Any]) -> list[str]:
    """Bands whose mean is far from the training images' (see the module's docstring)."""
    trained_bands = record["bands"]
    values = sample_pixels(source)
    if values.shape[1] == 0 or values.shape[0] != len(trained_bands):
        return []
    differences = []
    for band, (given, trained) in enumerate(zip(values.mean(axis=1), trained_bands), start=1):
        low, high = trained["p1"], trained["p99"]
        if abs(given - trained["mean"]) > FAR_STDS * max(trained["std"], 1e-12) and not low <= given <= high:
            name = source.band_names[band - 1] if band <= len(source.band_names) else ""
            differences.append(f"band {band}{f' ({name})' if name else ''} averages {given:.4g} where the training "
                               f"images averaged {trained['mean']:.4g} ± {trained['std']:.4g} "
                               f"(1-99 %: {low:.4g}-{high:.4g})")
    return differences


def _rounded(value: float) -> float:
    return float(f"{float(value):.4g}")
