"""``segtile.segment``: the Python entry point (the CLI is a thin layer over it)."""

from __future__ import annotations

import functools
import os
import re
import warnings
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
import torch
from dask.base import tokenize

from segtile.engine.cluster import current_client, task_threads
from segtile.errors import ResolutionWarning, SegmentError
from segtile.inference.devices import check_device
from segtile.inference.domain import DOMAIN_KEY, domain_note
from segtile.inference.predictor import ModelSpec
from segtile.models import LoadedModel, ModelCard, load_checkpoint, probe_card
from segtile.models.builtin import ChosenModel, chosen_before_the_image, installed_default
from segtile.models.card import bands_by_name
from segtile.models.checkpoint import with_network_alignment
from segtile.result import Segmentation
from segtile.sources import Source, open_source
from segtile.sources.palette import COLOURS, in_colour
from segtile.sources.tissue import with_masks
from segtile.sources.working_grid import choose_grid
from segtile.tiling.augmentation import FROM_CARD, Augmentation, check_augmentation
from segtile.tiling.budget import (
    DEFAULT_LIMIT,
    check_plan_size,
    fewest_tasks,
    parse_size,
    plan_memory,
    small_chunks_note,
)
from segtile.tiling.grid import check_stride
from segtile.tiling.plan import TilingOptions, fit_to_image

_NUMBERED_BAND = re.compile(r"^band \d+$")  # a band name that only numbers it (segtile's default)
# a card's value scale -> the integer type whose maximum it is: the images the model was trained on
_TRAINED_TYPES = {float(np.iinfo(t).max): np.dtype(t) for t in (np.uint8, np.uint16)}


def segment(
    source: Any,
    model: Any = None,
    *,
    tile_size: int | None = None,
    overlap: int | None = None,
    blend: str = "gaussian",
    batch_size: int | None = None,
    device: str = "auto",
    bands: Sequence[int] | None = None,
    resolution: float | str | None = None,
    mpp: float | str | None = None,
    level: int | None = None,
    tissue: bool | None = None,
    tissue_threshold: float | None = None,
    mask: str | os.PathLike | None = None,
    precision: str = "fp32",
    tta: str | None = FROM_CARD,
    scales: Sequence[float] = (1.0,),
    chunk_size: int | None = None,
    stripe_width: int | None = None,
    memory_limit: int | str | None = None,
    stitch_on_device: bool | None = None,
) -> Segmentation:
    """Segment ``source`` with ``model``, lazily: nothing runs until a result is written.

    Args:
        source: a path (any GDAL raster, or a whole-slide TIFF), a numpy / dask array
            ``(bands, H, W)`` or ``(H, W)``, an xarray DataArray, or an opened Source.
        model: a segtile checkpoint, TorchScript, ONNX or ``.pt2`` path, the name of an installed model
            (``"nuclei_psp18"``, see :mod:`segtile.models.builtin`), a loaded checkpoint
            (:func:`segtile.models.load_checkpoint`), or any ``torch.nn.Module`` mapping
            ``(N, bands, h, w)`` to ``(N, classes, h, w)``; a bare module gets the pixels as
            float32 with no normalisation. ``None``: ``$SEGTILE_MODEL`` when set, else the
            installed default for the image's bands (:func:`segtile.models.builtin.installed_default`).
        tile_size, overlap: the tiling; default to the model card's suggestion.
        blend: ``gaussian``, ``cosine``, ``linear`` or ``constant``.
        batch_size: tiles per model call (default: 4, fewer when a batch of a many-class model
            would not fit in ``memory_limit``).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:i``.
        bands: 1-based band indices to read, in the model's order (default: the card's).
        resolution: process a raster at this many metres per pixel (resampled window by window);
            ``"native"``: on the image's own grid; ``"model"``: on the model card's, however far
            it is from the image's.
        mpp: process a slide at this many µm per pixel (or ``"native"``, ``"model"``).
        level: process this pyramid level (0 is full resolution). With none of the three, an
            image with a known pixel size is processed at the model card's pixel size or range,
            unless that grid would be more than 8 times finer or coarser than the image's: then
            :class:`~segtile.sources.working_grid.GridChoiceError` says so before any work (see
            :mod:`segtile.sources.working_grid`). Up-sampling beyond 2 times is always said in a note.
        tissue: process only the tissue of a slide (found on a low-resolution level, see
            :mod:`segtile.sources.tissue`); by default on for colour slides, off for other images.
        tissue_threshold: the colour saturation above which a pixel is tissue (default: Otsu's).
        mask: process only the area of interest in this file: polygons (GeoPackage, GeoJSON,
            QuPath GeoJSON...) or a raster mask (its non-zero pixels), in the image's CRS or
            reprojected from theirs (slides: level-0 pixel coordinates). Pixels outside are
            nodata in every output.
        precision: ``fp32``, ``fp16`` (CUDA) or ``bf16`` autocast.
        tta: test-time augmentation, ``"flip"`` or ``"d4"`` (see :mod:`segtile.inference.tta`), ``None``
            for none; by default the one the model card suggests, if any.
        scales: run each tile at these scales too (the paper's multi-scale test:
            ``(0.5, 0.75, 1, 1.25, 1.5, 1.75)``), averaging probabilities.
        chunk_size: side of the output chunks that are stitched and written one at a time.
        stripe_width: width in pixels of the vertical stripes processed one after another
            (rounded down to whole chunks); bounds memory on wide images at the cost of running
            the tiles on each stripe boundary twice. ``0``: the whole width at once.
        memory_limit: bytes (or ``"1.5G"``) the engine may hold; the sizes left ``None`` above
            are chosen from it, the class count and the tiling, and a job that cannot be kept
            within it is refused before any work (see :mod:`segtile.tiling.budget`).
        stitch_on_device: keep the tiles' weighted logits on the model's device and stitch the
            chunks there, so that only the products come back to the host (one byte per pixel
            for labels). ``None``: when the model runs on a CUDA device of this process (never
            for a graph built for a ``dask.distributed`` cluster, whose results cross
            processes); ``False`` stitches in host memory, as on the CPU, when the device's
            memory is short.

    Returns:
        a :class:`~segtile.result.Segmentation` with ``.logits``, ``.probabilities``, ``.labels``
        (dask arrays), the georeference, the card, and writers.
    """
    check_device(device, precision, here=current_client() is None)
    image = open_source(source)  # every band: tissue is found in a slide's colours, whatever the model reads
    opened = open_source(image, bands=bands)
    spec_kwargs = _model_spec_kwargs(model, opened)
    card: ModelCard | None = spec_kwargs.get("card")
    if card is None:
        card = with_network_alignment(probe_card(spec_kwargs["module"], bands=opened.count), spec_kwargs["module"])
    _check_chosen_bands(bands, image.count, card)
    opened, band_notes = _fit_bands(opened, card, chosen=bands is not None)
    grid, notes = choose_grid(opened, card, resolution=resolution, mpp=mpp, level=level)
    domain_notes = _domain_notes(opened, grid, card)
    augmentation, augmentation_notes = _augmentation(card, tta, scales)
    options = TilingOptions(
        tile_size=card.tile_size if tile_size is None else tile_size,
        overlap=card.overlap if overlap is None else overlap,
        blend=blend, batch_size=_given(batch_size, 1), chunk_size=_given(chunk_size, 1),
        stripe_width=_given(stripe_width, 0),
        alignment=card.alignment, tile_extra=card.tile_extra, device=device, precision=precision,
        augmentation=augmentation, stitch_on_device=stitch_on_device,
    )
    options.validate()
    check_stride(options.tile_size, options.overlap)  # as asked: fitting them to a small image may shrink the stride
    options = fit_to_image(options, grid.height, grid.width)
    limit = DEFAULT_LIMIT if memory_limit is None else memory_limit
    limit = parse_size(limit) if isinstance(limit, str) else limit
    check_plan_size(grid.height, grid.width, fewest_tasks(options, batch_size=batch_size, chunk_size=chunk_size,
                                                          stripe_width=stripe_width), limit)  # counted, not built
    threads = task_threads()
    sizes = plan_memory(classes=card.num_classes, tile_size=options.tile_size, overlap=options.overlap,
                        threads=threads, limit=limit, bytes_per_value=2 if precision == "fp16" else 4,
                        batch_size=batch_size, chunk_size=chunk_size, stripe_width=stripe_width,
                        shape=(grid.height, grid.width), alignment=options.alignment, bands=grid.count)
    options = replace(options, batch_size=sizes.batch_size, chunk_size=sizes.chunk_size,
                      stripe_width=sizes.stripe_width)
    grid, mask_notes = with_masks(image, grid, tissue=tissue, threshold=tissue_threshold, area=mask)
    spec = ModelSpec(card=card, path=spec_kwargs.get("path"), module=spec_kwargs.get("module"),
                     **({"token": spec_kwargs["token"]} if "token" in spec_kwargs else {}))
    notes = list(image.notes) + band_notes + notes + domain_notes + mask_notes + augmentation_notes
    plan_note = None if chunk_size is not None else small_chunks_note(sizes, classes=card.num_classes,
                                                                       threads=threads, limit=limit)
    notes += [plan_note] if plan_note else []
    for note in notes:
        warnings.warn(note, ResolutionWarning, stacklevel=2)
    return Segmentation(grid, spec, grid.georef, card, options, inputs=grid.files, notes=tuple(notes))


def _given(value: int | None, placeholder: int) -> int:
    """``value``, or a valid ``placeholder`` for the size the memory plan chooses later."""
    return placeholder if value is None else value


def _augmentation(card: ModelCard, tta: str | None, scales: Sequence[float]) -> tuple[Augmentation, list[str]]:
    """The test-time augmentation asked for, or the card's suggestion (with a note saying so)."""
    notes = []
    if tta == FROM_CARD:
        tta = card.tta
        if tta is not None:
            notes.append(f"the model card suggests test-time augmentation {tta!r}: each tile runs "
                         f"{Augmentation(tta).copies} times (--tta none to skip it; Python: tta='none')")
    tta = None if tta == "none" else tta
    scales = tuple(float(s) for s in scales)
    check_augmentation(tta, scales)
    return Augmentation(tta, scales, card.alignment), notes


def _fit_bands(source: Source, card: ModelCard, chosen: bool) -> tuple[Source, list[str]]:
    """``source`` with the bands the model takes: those ``chosen`` by the user, else those the
    card names (by name when the image's bands have the names of the card's training bands,
    else by number), else the first ``in_channels`` of the image; and a note when segtile chose
    otherwise than the image's own order. A paletted image given to a model of three bands is
    read in the colours of its table. Raises :class:`SegmentError` naming the fix when the bands
    cannot be had."""
    notes: list[str] = []
    if not chosen:
        source, notes = _in_colour_for(source, card)
        by_name = _bands_named_by_card(source, card)
        if by_name is not None and by_name != list(card.bands or range(1, card.in_channels + 1)):
            names = ", ".join(source.band_names[b - 1] for b in by_name)
            return source.select_bands(by_name), notes + [
                f"reading bands {','.join(map(str, by_name))} ({names}): the bands the model card names, in its "
                "order; choose others with --bands (Python: bands=[...])"]
    fitted, count_notes = _fitted_bands(source, card, chosen)
    return fitted, notes + count_notes


def _in_colour_for(source: Source, card: ModelCard) -> tuple[Source, list[str]]:
    """A paletted image in the colours of its table when the model takes three bands (a model
    for colour imagery), with a note; any other image as it is."""
    coloured = in_colour(source) if source.count == 1 and card.in_channels == len(COLOURS) else None
    if coloured is None:
        return source, []
    return coloured, ["the image is paletted (one band of colour-table indexes): the model reads the colours GDAL "
                      "looks up (red, green, blue); --bands 1,1,1 (Python: bands=[1, 1, 1]) would feed it the indexes"]


def _bands_named_by_card(source: Source, card: ModelCard) -> list[int] | None:
    """The 1-based image bands that bear the names of the card's bands (``band_names``, those
    of the images it was trained on: colours, descriptions such as ``B4``, compared without case),
    in the card's order; ``None`` unless each name is found on exactly one band and none is a mere
    number."""
    names = card.extra.get("band_names")
    if not names or len(names) != card.in_channels or any(_NUMBERED_BAND.match(str(n)) for n in names):
        return None
    return bands_by_name(source.band_names, names)


def _domain_notes(opened: Source, grid: Source, card: ModelCard) -> list[str]:
    """The domain check's note on the grid the model is given (:mod:`segtile.inference.domain`),
    when the card records its training images; else a note on the pixel type alone."""
    if DOMAIN_KEY not in card.extra:
        return _value_notes(opened, card)
    note = domain_note(grid, card)
    return [] if note is None else [note]


def _value_notes(source: Source, card: ModelCard) -> list[str]:
    """A note when the image's integer type is not the one the model was trained on (its card
    divides by that type's maximum): 16-bit imagery given to a model for 8-bit images, say."""
    trained = _TRAINED_TYPES.get(card.scale)
    if trained is None or source.dtype.kind not in "ui" or source.dtype == trained:
        return []
    limits = np.iinfo(trained)
    return [f"the model was trained on {trained} images (its card divides values by {card.scale:g}) but the image "
            f"is {source.dtype}: values outside {limits.min}-{limits.max} are unlike any it saw; rescale the image "
            f"(e.g. gdal_translate -ot {'Byte' if trained == np.uint8 else 'UInt16'} -scale) or use a model trained "
            f"on {source.dtype} images"]


def _fitted_bands(source: Source, card: ModelCard, chosen: bool) -> tuple[Source, list[str]]:
    """:func:`_fit_bands` by band numbers."""
    wanted, given = card.in_channels, source.count
    if not chosen and given > wanted and (card.bands is None or max(card.bands) <= given):
        bands = list(card.bands or range(1, wanted + 1))
        whose = "the model card's choice" if card.bands else f"the first {wanted}"
        names = ", ".join(source.band_names[b - 1] for b in bands)
        return source.select_bands(bands), [
            f"the image has {given} bands and the model takes {wanted}: reading bands {','.join(map(str, bands))} "
            f"({names}; {whose}); choose others with --bands (Python: bands=[...])"]
    if not chosen and card.bands is not None and max(card.bands) <= given:
        return source.select_bands(card.bands), []
    if given != wanted or (not chosen and card.bands is not None):
        names = f" (bands {','.join(map(str, card.bands))} of its card)" if card.bands and not chosen else ""
        example = ",".join(str(min(b, given)) for b in range(1, wanted + 1))  # bands the image has
        raise SegmentError(
            f"the model takes {_bands(wanted)}{names} but the image has {_bands(given)}: choose {wanted} with "
            f"--bands (e.g. --bands {example}; Python: bands=[...]) or use a model made for {_bands(given)}"
        )
    return source, []


def _check_chosen_bands(bands: Sequence[int] | None, image_bands: int, card: ModelCard) -> None:
    """Raise :class:`SegmentError` when ``bands`` (chosen by the user, ``None``: none chosen) are
    not as many as the model takes, naming the image's bands and those chosen."""
    wanted = card.in_channels
    if bands is None or len(bands) == wanted:
        return
    example = [min(band, image_bands) for band in range(1, wanted + 1)]  # bands the image has
    raise SegmentError(
        f"the model takes {_bands(wanted)} but --bands {','.join(str(b) for b in bands)} chooses {len(bands)} of "
        f"the image's {_bands(image_bands)}: choose {wanted} (e.g. --bands {','.join(map(str, example))}; "
        f"Python: bands={example})"
    )


def _bands(count: int) -> str:
    return f"{count} band" if count == 1 else f"{count} bands"


@functools.lru_cache(maxsize=4)
def _checkpoint_card(path: str, size: int, modified: int, inode: int) -> tuple[ModelCard, str]:
    """The card of the checkpoint at ``path`` as it is now (its size, modification time and
    inode), and the token its model specs share: a loop over images (``segment_many``) loads the
    checkpoint once, and the workers' cached predictors serve every image."""
    return load_checkpoint(path).card, tokenize(path, size, modified, inode)


def model_for(source: Source, model: str | os.PathLike | None, bands: Sequence[int] | None = None) -> ChosenModel:
    """The file of ``model`` (a path or an installed model's name) and how it was chosen; for
    ``None``, ``$SEGTILE_MODEL`` or the installed default for the bands of ``source`` that are
    read (``bands``, else all): :func:`segtile.models.builtin.installed_default`."""
    chosen = chosen_before_the_image(model)
    return chosen or installed_default(open_source(source, bands=bands).band_names)


def _model_spec_kwargs(model: Any, source: Source) -> dict[str, Any]:
    """The card, path and module a :class:`ModelSpec` is built from, whatever ``model`` is (the
    installed default for the bands of ``source`` when ``None``)."""
    if model is None or isinstance(model, (str, os.PathLike)):
        path = os.path.abspath(model_for(source, model).path)
        state = os.stat(path)
        card, token = _checkpoint_card(path, state.st_size, state.st_mtime_ns, state.st_ino)
        return {"card": card, "path": path, "token": token}
    if isinstance(model, LoadedModel):
        return {"card": model.card, "module": model.module}
    if isinstance(model, torch.nn.Module):
        return {"module": model}
    raise SegmentError(
        f"model must be a checkpoint path, a loaded checkpoint or a torch.nn.Module, not {type(model).__name__}"
    )
