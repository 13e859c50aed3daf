"""Which grid a job runs on: the pyramid level or pixel size asked for, else the model's own.

A model card may say the pixel size its network was trained at (300 m, 0.5 µm). With neither
``resolution`` (rasters, metres per pixel), ``mpp`` (slides, µm per pixel) nor ``level`` chosen,
an image whose own pixel size is known is processed at the card's, and the choice is said in a
note when it differs from the image's by more than 25 %: a model run at ten times its training
scale gives noise, and silently is worse. Otherwise the image's own grid is used, with a note when
the model was trained on the other kind of image (metres: rasters; µm: slides): its pixel size
then says nothing about this image's, and its results may mean little.
"""

from __future__ import annotations

from segtile.errors import SegtileError
from segtile.models.card import ModelCard
from segtile.sources import Source
from segtile.sources.resample import at_level, at_pixel_size, pixel_size_option

MISMATCH = 0.25  # relative difference of pixel sizes worth a note
UNITS = {"m": "m", "um": "µm"}
KINDS_OF_IMAGE = {"m": ("georeferenced rasters", "a georeferenced raster"), "um": ("slides", "a slide")}


class GridChoiceError(SegtileError, ValueError):
    """The grid options contradict each other."""


def choose_grid(source: Source, card: ModelCard, *, resolution: float | None = None, mpp: float | None = None,
                level: int | None = None) -> tuple[Source, list[str]]:
    """``source`` on the grid the model runs on, and notes for the user (see the module docstring).

    Raises:
        GridChoiceError: more than one of ``resolution``, ``mpp`` and ``level``.
        SourceError: a pixel size the image cannot give (no known pixel size, another unit).
    """
    chosen = [name for name, value in (("resolution", resolution), ("mpp", mpp), ("level", level)) if value is not None]
    if len(chosen) > 1:
        raise GridChoiceError(f"choose one of {' and '.join(chosen)}: they all set the grid the model runs on")
    if level is not None:
        return at_level(source, level), []
    if resolution is not None:
        return at_pixel_size(source, resolution, "m"), []
    if mpp is not None:
        return at_pixel_size(source, mpp, "um"), []
    own = source.georef.pixel_size()
    if own is None or card.resolution is None or card.resolution_unit is None:  # no unit: nothing to compare
        return source, []
    if card.resolution_unit != own[1]:
        trained_on, this_image = KINDS_OF_IMAGE[card.resolution_unit][0], KINDS_OF_IMAGE[own[1]][1]
        return source, [f"the model was trained on {trained_on} ({card.resolution:g} {UNITS[card.resolution_unit]} "
                        f"pixels) and this image is {this_image} ({own[0]:g} {UNITS[own[1]]} pixels): it runs on "
                        "the image's own pixels; choose a model trained on images like this one"]
    size, unit = own
    if abs(size - card.resolution) <= MISMATCH * card.resolution:
        return source, []
    note = (f"the image has {size:g} {UNITS[unit]} pixels and the model was trained at {card.resolution:g} "
            f"{UNITS[unit]}: processing at {card.resolution:g} {UNITS[unit]} (choose with {pixel_size_option(unit)})")
    return at_pixel_size(source, card.resolution, unit), [note]
