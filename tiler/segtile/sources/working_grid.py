"""Which grid a job runs on: the pyramid level or pixel size asked for, else the model's own.

A model card may say the pixel size its network was trained at (300 m, 0.5 µm), or the range of
pixel sizes it serves (``resolution_range``: a network trained on images of several pixel sizes,
or with scale augmentation). The grid is then:

* ``level``, a pixel size (``resolution`` in metres for rasters, ``mpp`` in µm for slides), or
  ``"native"`` (the image's own grid), when the user gives one;
* otherwise (or with ``"model"``), when both the image's and the card's pixel sizes are known:
  the image's own grid when its pixel size lies in the card's range (a single ``resolution`` is a
  range of one size), give or take :data:`MISMATCH`; else the nearest end of the range, said in a
  note. A model run at ten times its training scale gives noise, and silently is worse.

A grid the user did not choose is never more than :data:`MAX_FACTOR` times finer or coarser than
the image's (per axis): the job stops before any work, with one line giving the size it would
have and the ways out. Any up-sampling beyond :data:`NOTED_UPSAMPLING` is said in a note, even
when the user chose it: the model then sees no detail the image does not have, on many times the
pixels.

Otherwise the image's own grid is used, with a note when the model was trained on the other kind
of image (metres: rasters; µm: slides), or on a pixel size far from this image's approximate one
(a raster in degrees, which is never resampled to metres), or when the image's transform has no
CRS (a world file alone: its units, and so its pixels' size, are unknown).
"""

from __future__ import annotations

import math
from numbers import Real

import pyproj

from segtile.errors import GridChoiceError
from segtile.georef import Georef
from segtile.models.card import ModelCard
from segtile.sources import Source
from segtile.sources.resample import at_level, at_pixel_size, pixel_size_option

NATIVE, MODEL = "native", "model"
"""The grids named rather than sized: the image's own, and the one the model card chooses."""
MISMATCH = 0.25  # relative difference of pixel sizes the model takes as its own
MAX_FACTOR = 8.0
"""How much finer or coarser (per axis) than the image a grid may be when the user did not choose
it. 8x coarser keeps a 64th of the image's pixels (a 10000 px image gives a 1250 px mask, still a
map of it; the default 300 m model on a 30 m Landsat scene would keep 1/100); 8x finer makes 64
times the pixels and the work (a 1 Gpx image would become 64 Gpx, hours on a CPU). Beyond that the
result is not what anyone asking for "the model's resolution" expects: a 2 x 2 mask of an aerial
photo, or a 1.3 Gpx grid up-sampled 67 times from a 20 km geostationary image."""
NOTED_UPSAMPLING = 2.0  # up-sampling beyond this factor is always said
UNITS = {"m": "m", "um": "µm"}
KINDS_OF_IMAGE = {"m": ("georeferenced rasters", "a georeferenced raster"), "um": ("slides", "a slide")}


def choose_grid(source: Source, card: ModelCard, *, resolution: float | str | None = None,
                mpp: float | str | None = None, level: int | None = None) -> tuple[Source, list[str]]:
    """``source`` on the grid the model runs on, and notes for the user (see the module docstring).
    ``resolution`` and ``mpp`` take a pixel size, :data:`NATIVE` or :data:`MODEL`.

    Raises:
        GridChoiceError: more than one of ``resolution``, ``mpp`` and ``level``; a value that is
            neither a positive number nor a grid's name; a grid the user did not choose more than
            :data:`MAX_FACTOR` away from the image's; ``"model"`` with a card that gives no
            pixel size.
        SourceError: a pixel size the image cannot give (no known pixel size, another unit).
    """
    chosen = [name for name, value in (("resolution", resolution), ("mpp", mpp), ("level", level)) if value is not None]
    if len(chosen) > 1:
        raise GridChoiceError(f"choose one of {' and '.join(chosen)}: they all set the grid the model runs on")
    if level is not None:
        return at_level(source, level), []
    unit, size = ("um", mpp) if mpp is not None else ("m", resolution)
    _check_grid_value(size, unit)
    if size == NATIVE:
        return source, []
    if size is None or size == MODEL:
        return _model_grid(source, card, chosen=size == MODEL)
    grid = at_pixel_size(source, size, unit)
    return grid, _upsampling_notes(source, grid)


def _check_grid_value(size: object, unit: str) -> None:
    """Raise :class:`GridChoiceError` unless ``size`` is ``None``, a grid's name or a positive number."""
    if size is None or size in (NATIVE, MODEL):
        return
    if not (isinstance(size, Real) and not isinstance(size, bool) and 0 < size < math.inf):
        what = "µm per pixel" if unit == "um" else "metres per pixel"
        raise GridChoiceError(f"{pixel_size_option(unit)} takes a positive number of {what}, {NATIVE!r} (the "
                              f"image's own pixels) or {MODEL!r} (the model card's), not {size!r}")


def served_range(card: ModelCard) -> tuple[float, float] | None:
    """The pixel sizes the card's model serves as they are (its unit: ``card.resolution_unit``):
    its ``resolution_range``, else its ``resolution`` alone; ``None`` when it says neither, or no unit."""
    if card.resolution_unit is None:
        return None
    if card.resolution_range is not None:
        return card.resolution_range
    return None if card.resolution is None else (card.resolution, card.resolution)


def _model_grid(source: Source, card: ModelCard, chosen: bool) -> tuple[Source, list[str]]:
    """The grid the card chooses (see the module docstring); ``chosen``: the user asked for it
    (``"model"``), so no :data:`MAX_FACTOR` refusal."""
    served = served_range(card)
    own = source.georef.pixel_size()
    if served is None or own is None or own[1] != card.resolution_unit:
        if chosen:
            raise GridChoiceError(_no_model_grid(card, served, own))
        return source, ([] if served is None else _own_grid_notes(source, card, served, own))
    unit = card.resolution_unit
    size = own[0]
    target = _nearest_served(size, served)
    if target is None:
        return source, []
    grid = at_pixel_size(source, target, unit)
    factor = target / size
    if not chosen and max(factor, 1 / factor) > MAX_FACTOR:
        raise GridChoiceError(_too_far(source, grid, size, target, served, unit))
    flag, keyword = _option(unit)
    note = (f"the image has {size:g} {UNITS[unit]} pixels and the model was trained at {_describe(served, unit)}: "
            f"processing at {target:g} {UNITS[unit]}, {_shape(grid)} ({flag} {NATIVE} keeps the image's own "
            f"pixels; Python: {keyword}={NATIVE!r})")
    return grid, [note, *_upsampling_notes(source, grid)]


def _nearest_served(size: float, served: tuple[float, float]) -> float | None:
    """``None`` when ``size`` lies in ``served`` (give or take :data:`MISMATCH`), else the end of
    ``served`` nearest to it."""
    smallest, largest = served
    if smallest * (1 - MISMATCH) <= size <= largest * (1 + MISMATCH):
        return None
    return smallest if size < smallest else largest


def _no_model_grid(card: ModelCard, served: tuple[float, float] | None, own: tuple[float, str] | None) -> str:
    """Why ``"model"`` names no grid for this image: a card without a pixel size, or an image
    whose pixel size is unknown or in the other unit."""
    flag, _ = _option(card.resolution_unit or "m")
    if served is None:
        return f"{flag} {MODEL}: the model card gives no pixel size to process at; give one, or {NATIVE}"
    this_image = ("has no known pixel size (a slide's µm per pixel, or a projected CRS)" if own is None
                  else f"has {own[0]:g} {UNITS[own[1]]} pixels")
    return (f"{flag} {MODEL}: the model was trained at {_describe(served, card.resolution_unit)} and this image "
            f"{this_image}: segtile cannot resample it to the model's grid; give {NATIVE}")


def _too_far(source: Source, grid: Source, size: float, target: float, served: tuple[float, float],
             unit: str) -> str:
    """The one-line refusal of a grid more than :data:`MAX_FACTOR` away from the image's."""
    factor = target / size
    how = f"{factor:.3g}x coarser" if factor > 1 else f"{1 / factor:.3g}x finer"
    flag, keyword = _option(unit)
    return (f"the image has {size:g} {UNITS[unit]} pixels and the model was trained at {_describe(served, unit)}: "
            f"on the model's grid it would be {_shape(grid)} ({how} than the image's {_shape(source)}); choose "
            f"{flag} {NATIVE} to process the image's own pixels, or {flag} {target:g} for the model's grid "
            f"anyway (Python: {keyword}={NATIVE!r} or {keyword}={target:g}), or a model trained on such images")


def _own_grid_notes(source: Source, card: ModelCard, served: tuple[float, float],
                    own: tuple[float, str] | None) -> list[str]:
    """Why the image runs on its own grid although the card names pixel sizes, when that is worth
    saying: a model of the other kind of image, or of another scale than a raster in degrees."""
    unit = card.resolution_unit
    if own is not None:  # the other unit: a slide model on a raster, or the reverse
        trained_on, this_image = KINDS_OF_IMAGE[unit][0], KINDS_OF_IMAGE[own[1]][1]
        return [f"the model was trained on {trained_on} ({_describe(served, unit)} pixels) and this image is "
                f"{this_image} ({own[0]:g} {UNITS[own[1]]} pixels): it runs on the image's own pixels; choose a "
                "model trained on images like this one"]
    georef = source.georef
    if unit == "m" and georef.crs is None and georef.transform is not None and not georef.transform.is_identity:
        flag, keyword = _option(unit)
        return [f"the image has no coordinate reference system, so its pixels' size is unknown (its transform: "
                f"{abs(georef.transform.a):g} x {abs(georef.transform.e):g} units of no known kind), and the model "
                f"was trained at {_describe(served, unit)}: it runs on the image's own pixels; if they are far from "
                "that size the labels are meaningless: give the image its CRS (e.g. gdal_edit.py -a_srs EPSG:...) so "
                f"that segtile can resample it, or choose {flag} {NATIVE} to say they are right "
                f"(Python: {keyword}={NATIVE!r})"]
    metres = degree_pixel_metres(georef, source.height, source.width)
    if unit != "m" or metres is None or _nearest_served(math.sqrt(metres[0] * metres[1]), served) is None:
        return []
    return [f"the image's pixels are in degrees, about {metres[0]:.3g} x {metres[1]:.3g} m at its centre, and the "
            f"model was trained at {_describe(served, unit)}: it runs on the image's own pixels (segtile resamples "
            "only projected rasters: reproject it, e.g. with gdalwarp -t_srs and -tr, to match the model)"]


def degree_pixel_metres(georef: Georef, height: int, width: int) -> tuple[float, float] | None:
    """The geodesic width and height in metres of the pixel at the centre of a raster in a
    geographic CRS; ``None`` for any other raster, or a CRS without an ellipsoid."""
    if georef.crs is None or georef.transform is None or not georef.crs.is_geographic:
        return None
    geod = pyproj.CRS.from_wkt(georef.crs.to_wkt()).get_geod()
    if geod is None:
        return None
    centre = georef.transform * (width / 2, height / 2)
    across = georef.transform * (width / 2 + 1, height / 2)
    down = georef.transform * (width / 2, height / 2 + 1)
    return tuple(geod.inv(*centre, *corner)[2] for corner in (across, down))


def _upsampling_notes(source: Source, grid: Source) -> list[str]:
    """A note when ``grid`` is finer than ``source`` by more than :data:`NOTED_UPSAMPLING` along an axis."""
    factor = max(grid.width / source.width, grid.height / source.height)
    if factor <= NOTED_UPSAMPLING:
        return []
    return [f"the grid is up-sampled {factor:.3g}x from the image's ({_shape(grid)} from {_shape(source)}): "
            f"the model sees no detail the image does not have, on {factor * factor:.3g} times the pixels"]


def _option(unit: str) -> tuple[str, str]:
    """The command-line flag and the Python argument that set a grid in ``unit``."""
    return ("--mpp", "mpp") if unit == "um" else ("--resolution", "resolution")


def _describe(served: tuple[float, float], unit: str) -> str:
    """``"300 m"``, or ``"20-40 m"`` for a range."""
    smallest, largest = served
    sizes = f"{smallest:g}" if smallest == largest else f"{smallest:g}-{largest:g}"
    return f"{sizes} {UNITS[unit]}"


def _shape(source: Source) -> str:
    return f"{source.width} x {source.height} px"
