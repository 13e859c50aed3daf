"""``segtile.segment``: the Python entry point (the CLI is a thin layer over it)."""

from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import torch

from segtile.cluster import current_client
from segtile.devices import check_device
from segtile.engine import build_logits
from segtile.errors import SegtileError
from segtile.models import LoadedModel, ModelCard, load_checkpoint, probe_card
from segtile.models.checkpoint import with_network_alignment
from segtile.plan import TilingOptions, fit_to_image
from segtile.predictor import ModelSpec
from segtile.result import Segmentation
from segtile.sources import Source, open_source
from segtile.working_grid import choose_grid


class SegmentError(SegtileError, ValueError):
    """The arguments of :func:`segment` do not fit together."""


def segment(
    source: Any,
    model: Any,
    *,
    tile_size: int | None = None,
    overlap: int | None = None,
    blend: str = "gaussian",
    batch_size: int = 4,
    device: str = "auto",
    bands: Sequence[int] | None = None,
    resolution: float | None = None,
    mpp: float | None = None,
    level: int | None = None,
    precision: str = "fp32",
    chunk_size: int = 1024,
    stripe_width: int = 8192,
) -> Segmentation:
    """Segment ``source`` with ``model``, lazily: nothing runs until a result is written.

    Args:
        source: a path (any GDAL raster, or a whole-slide TIFF), a numpy / dask array
            ``(bands, H, W)`` or ``(H, W)``, an xarray DataArray, or an opened Source.
        model: a segtile checkpoint or TorchScript path, a loaded checkpoint
            (:func:`segtile.models.load_checkpoint`), or any ``torch.nn.Module`` mapping
            ``(N, bands, h, w)`` to ``(N, classes, h, w)``; a bare module gets the pixels as
            float32 with no normalisation.
        tile_size, overlap: the tiling; default to the model card's suggestion.
        blend: ``gaussian``, ``cosine``, ``linear`` or ``constant``.
        batch_size: tiles per model call.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:i``.
        bands: 1-based band indices to read, in the model's order (default: the card's).
        resolution: process a raster at this many metres per pixel (resampled window by window).
        mpp: process a slide at this many µm per pixel.
        level: process this pyramid level (0 is full resolution). With none of the three, an
            image with a known pixel size is processed at the model card's (see
            :mod:`segtile.working_grid`), else at full resolution.
        precision: ``fp32``, ``fp16`` (CUDA) or ``bf16`` autocast.
        chunk_size: side of the output chunks that are stitched and written one at a time.
        stripe_width: width in pixels of the vertical stripes processed one after another
            (rounded down to whole chunks); bounds memory on wide images at the cost of running
            the tiles on each stripe boundary twice. ``0``: the whole width at once.

    Returns:
        a :class:`~segtile.result.Segmentation` with ``.logits``, ``.probabilities``, ``.labels``
        (dask arrays), the georeference, the card, and writers.
    """
    check_device(device, precision, here=current_client() is None)
    spec_kwargs = _model_spec_kwargs(model)
    card: ModelCard | None = spec_kwargs.get("card")
    opened = open_source(source, bands=bands)
    if card is None:
        card = with_network_alignment(probe_card(spec_kwargs["module"], bands=opened.count), spec_kwargs["module"])
    opened = _fit_bands(opened, card, chosen=bands is not None)
    grid, notes = choose_grid(opened, card, resolution=resolution, mpp=mpp, level=level)
    options = TilingOptions(
        tile_size=card.tile_size if tile_size is None else tile_size,
        overlap=card.overlap if overlap is None else overlap,
        blend=blend, batch_size=batch_size, chunk_size=chunk_size, stripe_width=stripe_width,
        alignment=card.alignment, device=device, precision=precision,
    )
    options.validate()
    options = fit_to_image(options, grid.height, grid.width)
    spec = ModelSpec(card=card, path=spec_kwargs.get("path"), module=spec_kwargs.get("module"))
    for note in notes:
        warnings.warn(note, ResolutionWarning, stacklevel=2)
    return Segmentation(build_logits(grid, spec, options), grid.georef, card, options, inputs=grid.files,
                        notes=tuple(notes))


class ResolutionWarning(UserWarning):
    """The image is processed at another pixel size than its own, as its model was trained."""


def _fit_bands(source: Source, card: ModelCard, chosen: bool) -> Source:
    """``source`` with the bands the model takes: those ``chosen`` by the user, else those the
    card names, else the first ``in_channels`` of the image. Raises :class:`SegmentError` naming
    the fix when they cannot be had."""
    wanted, given = card.in_channels, source.count
    if not chosen and card.bands is not None and max(card.bands) <= given:
        return source.select_bands(card.bands)
    if not chosen and card.bands is None and given > wanted:
        return source.select_bands(list(range(1, wanted + 1)))
    if given != wanted or (not chosen and card.bands is not None):
        names = f" (bands {','.join(map(str, card.bands))} of its card)" if card.bands and not chosen else ""
        example = ",".join(["1"] * wanted) if given == 1 else ",".join(str(b) for b in range(1, wanted + 1))
        raise SegmentError(
            f"the model takes {_bands(wanted)}{names} but the image has {_bands(given)}: choose {wanted} with "
            f"--bands (e.g. --bands {example}; Python: bands=[...]) or use a model made for {_bands(given)}"
        )
    return source


def _bands(count: int) -> str:
    return f"{count} band" if count == 1 else f"{count} bands"


def _model_spec_kwargs(model: Any) -> dict[str, Any]:
    """The card, path and module a :class:`ModelSpec` is built from, whatever ``model`` is."""
    if isinstance(model, (str, os.PathLike)):
        loaded = load_checkpoint(model)
        return {"card": loaded.card, "path": os.path.abspath(model)}
    if isinstance(model, LoadedModel):
        return {"card": model.card, "module": model.module}
    if isinstance(model, torch.nn.Module):
        return {"module": model}
    raise SegmentError(
        f"model must be a checkpoint path, a loaded checkpoint or a torch.nn.Module, not {type(model).__name__}"
    )
