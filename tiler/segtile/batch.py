"""Many inputs in one run: a cohort of slides, a folder of tiles, a list of scenes.

:func:`segment_many` segments each input in turn, in one process, with the model loaded once,
and yields what became of each item: ``done``, ``skipped`` (its outputs were all there, from an
earlier run) or ``failed`` (with its one-line reason; the others go on). The ``segtile`` command
is built on it, for one input as for many.

**Inputs** (:func:`expand_inputs`): paths; folders (every file in them whose extension names an
image segtile reads, :data:`IMAGE_SUFFIXES`, hidden files left out); globs segtile expands
itself (``"slides/*.svs"``, ``"**"`` recursing); ``@list.txt``, a file naming one input per line
(blank lines and ``#`` comments skipped; relative paths are relative to the current folder, as
GDAL's ``--optfile`` reads them). Remote inputs (``https://``, ``s3://``, ``/vsicurl/...``) are
passed on untouched.

**Outputs**: with several inputs each output path is a template whose placeholders
(:data:`PLACEHOLDERS`: ``{stem}``, ``{name}``, ``{parent}``, ``{index}``) are filled per input,
checked before any work: every output must hold one, and no two inputs may map to the same file.

**Each item** runs as one ``segtile`` run does (:func:`run_item`): its outputs checked first, its
own work store beside its first output (``--resume`` continues an interrupted item from it), its
outputs appearing together when complete. On a ``dask.distributed`` cluster several items run at
once, each on a worker of its own, with that worker's threads (:func:`_on_workers`).
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from string import Formatter
from typing import Any
from urllib.parse import urlsplit

import dask

from segtile.api import segment
from segtile.engine.cluster import current_client
from segtile.engine.progress import Progress, TileTally
from segtile.errors import BatchError, ModelError, OutputError, SegtileError, one_line
from segtile.models.builtin import choose_model
from segtile.result import Segmentation
from segtile.sources import Source, open_mosaic, open_source
from segtile.sources.files import is_remote
from segtile.store.identity import Work, claim_work_folder, prepare_work, run_identity, work_folder
from segtile.store.staging import write_outputs
from segtile.store.workstore import is_work_store
from segtile.writers.atomic import recover_leftovers
from segtile.writers.geotiff import check_creation_options, probabilities_path_for
from segtile.writers.outputs import WriteOptions, output_kind, placement_notes, plan_outputs, probability_precision

IMAGE_SUFFIXES = frozenset({
    # GDAL rasters (rasterio.drivers.raster_driver_extensions(), less the sidecars and vector formats it lists)
    ".tif", ".tiff", ".vrt", ".jp2", ".j2k", ".img", ".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".nc",
    ".ntf", ".hgt", ".asc", ".bil", ".dem", ".mrf", ".ecw", ".sid", ".rst", ".sdat", ".ers", ".kea",
    # whole-slide images (tifffile, OpenSlide)
    ".svs", ".ndpi", ".scn", ".bif", ".qptiff", ".mrxs", ".vms", ".vmu", ".svslide",
})
"""Extensions of the files a folder input contributes (compared in lower case)."""
PLACEHOLDERS = {
    "stem": "the input's name without its extension (slide.svs -> slide; scene.ome.tif -> scene)",
    "name": "the input's name with its extension",
    "parent": "the name of the folder holding the input",
    "index": "the input's position in the expanded list, from 1 ({index:03d} pads it)",
}
"""The placeholders an output template may hold, and what each becomes."""
DOUBLE_SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.zarr")  # removed whole from a {stem}
GLOB_CHARACTERS = frozenset("*?[")
STATUSES = ("done", "skipped", "failed")
SUMMARY_FIELDS = ("input", "status", "error", "tiles", "seconds", "outputs")


@dataclass(frozen=True)
class Item:
    """One input of a cohort and the outputs it writes (templates filled); or a mosaic of
    ``parts``, the inputs read as one image (``input`` then names them all, ``;``-separated)."""

    input: str
    outputs: tuple[str, ...]
    index: int
    parts: tuple[str, ...] = ()

    @property
    def reads(self) -> tuple[str, ...]:
        """The inputs the item reads: no output may replace them, and its work store is theirs."""
        return self.parts or (self.input,)

    def open(self) -> Source:
        """The item's image: its input, or the mosaic of its parts."""
        return open_mosaic(self.parts) if self.parts else open_source(self.input)


@dataclass(frozen=True)
class ItemResult:
    """What became of one item.

    Attributes:
        input: the input as expanded.
        status: ``done``, ``skipped`` (every output existed already) or ``failed``.
        error: the one-line reason it failed (``None`` otherwise).
        outputs: the output paths (written, or found when skipped).
        tiles: tiles run through the model.
        seconds: wall-clock time spent on the item.
        notes: what the run had to say about the item (the grid chosen, a resumed work store...).
        exception: the exception it failed with (``None`` otherwise), for a caller that re-raises it.
    """

    input: str
    status: str
    error: str | None = None
    outputs: tuple[str, ...] = ()
    tiles: int = 0
    seconds: float = 0.0
    notes: tuple[str, ...] = ()
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    def row(self) -> dict[str, Any]:
        """The item's row in a summary (:data:`SUMMARY_FIELDS`)."""
        return {"input": self.input, "status": self.status, "error": self.error or "", "tiles": self.tiles,
                "seconds": round(self.seconds, 3), "outputs": list(self.outputs)}


# --- inputs -------------------------------------------------------------------------------------


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Every input ``inputs`` name, in order, each once: folders, globs and ``@lists`` expanded
    (see the module docstring), remote inputs untouched.

    Raises:
        BatchError: a list file that cannot be read, a glob or a folder that yields no image.
    """
    expanded: list[str] = []
    for given in inputs:
        expanded += _expand_one(os.fspath(given))
    return list(dict.fromkeys(expanded))


def names_many(inputs: Sequence[str | os.PathLike]) -> bool:
    """Whether ``inputs`` make a cohort whatever they expand to: several, or a folder, a glob or
    a list (a run over one plain input keeps the behaviour of a single run)."""
    if len(inputs) != 1:
        return True
    given = os.fspath(inputs[0])
    return given.startswith("@") or _is_glob(given) or _is_folder_of_images(given)


def _expand_one(given: str) -> list[str]:
    if is_remote(given):
        return [given]
    if given.startswith("@"):
        return [path for line in _list_lines(given[1:]) for path in _expand_one(line)]
    if _is_glob(given):
        matches = sorted(path for path in glob.glob(given, recursive=True) if _is_image_file(Path(path)))
        if not matches:
            raise BatchError(f"no image matches {given} (images: {_suffix_names()})")
        return matches
    if _is_folder_of_images(given):
        found = sorted(str(path) for path in Path(given).iterdir() if _is_image_file(path))
        if not found:
            raise BatchError(f"the folder {given} holds no image segtile reads (by extension: {_suffix_names()})")
        return found
    return [given]


def _list_lines(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchError(f"cannot read the list of inputs @{path}: {getattr(exc, 'strerror', None) or exc}") from None
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _is_glob(given: str) -> bool:
    return not os.path.exists(given) and bool(GLOB_CHARACTERS & set(given))


def _is_folder_of_images(given: str) -> bool:
    """A folder to list, not one GDAL reads as one image (a Zarr store)."""
    path = Path(given)
    return path.is_dir() and not path.name.lower().endswith(".zarr")


def _is_image_file(path: Path) -> bool:
    return (not path.name.startswith(".") and path.is_file()
            and any(path.name.lower().endswith(suffix) for suffix in IMAGE_SUFFIXES))


def _suffix_names() -> str:
    return " ".join(sorted(IMAGE_SUFFIXES))


# --- outputs ------------------------------------------------------------------------------------


def check_templates(outputs: Sequence[str | os.PathLike], many: bool) -> None:
    """Raise :class:`BatchError` when an output names an unknown placeholder, or (``many``)
    holds none: several inputs would all write the same file."""
    for output in outputs:
        fields = _fields(os.fspath(output))
        if many and not fields:
            raise BatchError(f"with several inputs each output needs a placeholder, e.g. {{stem}}_mask.tif, "
                             f"not {output} (placeholders: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})")


def _fields(template: str) -> list[str]:
    try:
        fields = [name for _, name, _, _ in Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise BatchError(f"output {template}: {exc} (write a brace as {{{{ or }}}})") from None
    for name in fields:
        if name not in PLACEHOLDERS:
            raise BatchError(f"output {template}: unknown placeholder {{{name}}} "
                             f"(placeholders: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})")
    return fields


def fill_template(template: str, input: str, index: int) -> str:
    """``template`` with its placeholders filled for ``input``, the ``index``-th (from 1)."""
    path = PurePosixPath(urlsplit(input).path) if is_remote(input) and "://" in input else Path(input)
    name = path.name
    lower = name.lower()
    double = next((s for s in DOUBLE_SUFFIXES if lower.endswith(s)), None)
    stem = name[: -len(double)] if double else path.stem
    parent = Path(os.path.abspath(input)).parent.name if not is_remote(input) else path.parent.name
    try:
        return template.format(stem=stem, name=name, parent=parent, index=index)
    except (ValueError, TypeError) as exc:
        raise BatchError(f"output {template}: {exc}") from None


def plan_items(inputs: Sequence[str | os.PathLike], outputs: Sequence[str | os.PathLike],
               many: bool | None = None, options: WriteOptions = WriteOptions()) -> list[Item]:
    """The items of a run over ``inputs`` (expanded) writing ``outputs`` (templates), checked
    before any work. ``many``: whether the run is a cohort (by default: :func:`names_many`).
    A file the run writes is never one of its inputs (a folder holding the masks of an earlier run).

    Raises:
        BatchError: see :func:`expand_inputs` and :func:`check_templates`; two inputs that would
            write the same output.
        OutputError: an output's extension names no format segtile writes.
        CreationOptionError: a GeoTIFF creation option GDAL refuses.
    """
    many = names_many(inputs) if many is None else many
    templates = [os.fspath(output) for output in outputs]
    check_templates(templates, many)
    _check_alike_for_all(templates, options)
    expanded = expand_inputs(inputs)
    written = {_absolute(fill_template(t, path, i)) for i, path in enumerate(expanded, 1) for t in templates}
    if len(expanded) > 1:
        expanded = [path for path in expanded if _absolute(path) not in written]
    items = [Item(path, tuple(fill_template(t, path, i) for t in templates), i) for i, path in enumerate(expanded, 1)]
    _check_distinct(items)
    return items


def plan_mosaic(inputs: Sequence[str | os.PathLike], outputs: Sequence[str | os.PathLike],
                options: WriteOptions = WriteOptions()) -> Item:
    """The one item of a run reading every input of ``inputs`` (expanded) as one mosaic
    (:func:`segtile.sources.open_mosaic`, the last input on top), writing ``outputs``.

    Raises:
        BatchError: see :func:`expand_inputs`; an output with a placeholder (a mosaic is one image).
    """
    for output in outputs:
        if _fields(os.fspath(output)):
            raise BatchError(f"a mosaic is one image: its outputs take no placeholder, not {os.fspath(output)}")
    paths = [os.fspath(output) for output in outputs]
    _check_alike_for_all(paths, options)
    parts = tuple(expand_inputs(inputs))
    return Item(";".join(parts), tuple(paths), 1, parts)


def _check_alike_for_all(outputs: Sequence[str], options: WriteOptions) -> None:
    """Raise what every item would refuse alike, before the first: an output's unknown extension
    (:class:`OutputError`), a GeoTIFF creation option GDAL refuses (:class:`CreationOptionError`)."""
    for output in outputs:
        output_kind(output, slide=True)
    if options.creation_options:
        check_creation_options(dict(options.creation_options))


def _check_distinct(items: Sequence[Item]) -> None:
    writers: dict[str, str] = {}
    for item in items:
        for output in item.outputs:
            key = _absolute(output)
            if key in writers and writers[key] != item.input:
                raise BatchError(f"{writers[key]} and {item.input} would both write {output}: add a placeholder "
                                 "that tells them apart (e.g. {parent}/{stem} or {index})")
            writers[key] = item.input


def _absolute(path: str) -> str:
    return path if is_remote(path) else os.path.abspath(path)


def finished(item: Item, probabilities: bool = False, say: Callable[[str], None] = lambda line: None) -> bool:
    """Whether every output of ``item`` is in place, complete (outputs appear only when
    complete: what an interrupted commit left is finished or undone first, each note on that
    given to ``say``), and no work store of an interrupted run is left beside them."""
    for output in item.outputs:
        for note in recover_leftovers(output):
            say(f"note: {note}")
    for output in item.outputs:
        needed = [Path(output)]
        if probabilities and output_kind(output).separate_probabilities:
            needed.append(probabilities_path_for(output))
        if not all(os.path.lexists(path) for path in needed):
            return False
    return not is_work_store(work_folder(Path(item.outputs[0])))


# --- one item -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSettings:
    """How every item of a run is segmented and written.

    Attributes:
        model: the model's file (a checkpoint, TorchScript or ONNX file).
        settings: the keyword arguments of :func:`segtile.segment`.
        options: what the outputs hold (probabilities, polygon options...).
        overwrite: replace outputs that exist.
        resume: continue each item from the work store an interrupted run left beside its first output.
        progress: ``"bar"``, ``"json"`` or ``"none"``, for each item's stages.
        leave_bars: keep each item's bars on the screen once complete (a single run's).
        named: begin each line said about an item with its input (several items).
        say: prints a line for the user (a note, the model); by default nothing.
    """

    model: Path
    settings: dict[str, Any]
    options: WriteOptions = WriteOptions()
    overwrite: bool = False
    resume: bool = False
    progress: str = "none"
    leave_bars: bool = True
    named: bool = False
    say: Callable[[str], None] = lambda line: None


INFERENCE_SHARE = 0.8  # of the progress reported to a program (--progress json): the rest is writing


def run_item(item: Item, run: RunSettings) -> ItemResult:
    """Segment ``item`` and write its outputs from one inference pass, as one ``segtile`` run.

    Every output is planned before anything is computed. The labels (and the probabilities,
    when an output writes them) are computed once into the item's work store beside its first
    output; each output is then written from it. Raises what stops it (a user's error, an
    interruption); the work store is kept where ``--resume`` can use it.
    """
    started = time.perf_counter()
    notes: list[str] = []

    def say(line: str) -> None:
        notes.append(line)
        run.say(f"{item.input}: {line}" if run.named else line)

    options = run.options
    image = item.open()  # an input it cannot read is the error to give, before the outputs'
    with ExitStack() as stack:
        stack.callback(image.close)
        protected = [*item.reads, run.model, *([run.settings["mask"]] if run.settings.get("mask") else [])]
        for path in item.outputs:  # what a run that died left in the way, before the outputs are checked
            for note in recover_leftovers(path):
                say(f"note: {note}")
        # a slide's outputs are of a slide's kinds (its .geojson is QuPath's)
        planned = plan_outputs(item.outputs, options, overwrite=run.overwrite, protected=protected,
                               slide=image.georef.is_slide)
        folder = work_folder(planned[0].path)
        stack.enter_context(claim_work_folder(folder))  # one run at a time for these outputs
        result = segment(image, run.model, **run.settings)
        options.check(result.card)  # the classes to skip: known once the model's card is
        # every polygon output can hold the regions where they are (GeoJSON: in longitude and latitude)
        for note in [*result.notes, *placement_notes(planned, result.georef, result.shape)]:
            say(f"note: {note}")
        precision = probability_precision([p.kind for p in planned], options)
        writing = (1 - INFERENCE_SHARE) / len(planned)
        progress = Progress(run.progress, [("inference", INFERENCE_SHARE),
                                           *((f"writing {p.path.name}", writing) for p in planned)],
                            leave=run.leave_bars)
        identity = run_identity(result, item.reads, run.model, precision, run.settings)
        work = prepare_work(folder, result, identity, precision, run.resume)
        if work.note:
            say(f"note: {work.note}")
        tally = TileTally()
        with _keeping(work) as stage:
            names = ("labels", "probabilities") if precision else ("labels",)
            with result.progress(progress=progress, tally=tally, skip=work.done):
                work.store.fill(result.products(*names, skip=work.done), skip=work.done,
                                column_groups=result.column_groups)
            if tally.valid and tally.nonfinite == tally.valid:
                raise ModelError("the model gave NaN or infinite logits for every pixel: no output written")
            stage.writing = True
            written = write_outputs(work.store.layers(result.layers()), item.outputs, options,
                                    overwrite=run.overwrite, protected=protected, progress=progress, stage=False)
        work.store.remove()
    if tally.nonfinite:
        say(f"warning: the model gave NaN or infinite logits for {tally.nonfinite} of {tally.valid} pixels; "
            "they are nodata in the outputs")
    seconds = time.perf_counter() - started
    progress.summary(_summary(result, work.done, tally, written, seconds),
                     tiles_run=tally.run, tiles_skipped=tally.skipped, outputs=[str(p) for p in written])
    return ItemResult(item.input, "done", outputs=tuple(str(p) for p in written), tiles=tally.run, seconds=seconds,
                      notes=tuple(notes))


@dataclass
class _Stage:
    """How far a run got: ``writing`` once its inference is complete in the work store."""

    writing: bool = False


@contextmanager
def _keeping(work: Work) -> Iterator[_Stage]:
    """On an interruption inside, or a failure to write (a full disk), keep the work store if it
    holds finished chunks, and say how to continue from them; keep it on any failure once the
    yielded stage is ``writing`` (a writer's: resuming, with or without that output, writes the
    outputs without running the model again). On any other failure (a model that gives nothing,
    a bug) remove it: resuming would only repeat it."""
    stage = _Stage()
    try:
        yield stage
    except BaseException as error:
        if stage.writing or (isinstance(error, (KeyboardInterrupt, OSError, OutputError)) and work.store.done()):
            complete = " (the inference is complete: it only writes the outputs)" if stage.writing else ""
            error.add_note(f"the finished work is kept in {work.store.folder}: the same command with --resume "
                           f"continues from it{complete}")
        else:
            work.store.remove()
        raise


def _summary(result: Segmentation, resumed: frozenset[tuple[int, int]], tally: TileTally, written: list,
             seconds: float) -> str:
    """The run's last line: tiles run and skipped, what was computed (not the chunks ``resumed``
    from an earlier run's work), time, speed, outputs."""
    names = ", ".join(str(path) for path in written)
    if len(resumed) == math.prod(result.labels.numblocks):
        return (f"nothing left to compute: all {len(resumed)} chunks were done by an earlier run; "
                f"wrote {names} in {seconds:.1f} s")
    rows, columns = result.labels.chunks
    megapixels = (result.shape[0] * result.shape[1] - sum(rows[i] * columns[j] for i, j in resumed)) / 1e6
    of_all = f" of {result.shape[0] * result.shape[1] / 1e6:.1f}" if resumed else ""
    rest = " (the rest resumed)" if resumed else ""
    share = f"{tally.skipped / tally.read:.0%} of them" if tally.read else ""
    skipped = f", {tally.skipped} skipped (no valid pixel: {share})" if tally.skipped else ""
    tiles = "1 tile" if tally.run == 1 else f"{tally.run} tiles"
    return (f"{tiles} run{skipped}; {megapixels:.1f}{of_all} Mpx{rest} in {seconds:.1f} s "
            f"({megapixels / seconds:.2f} Mpx/s); wrote {names}")


# --- many items ---------------------------------------------------------------------------------


def segment_many(
    inputs: Sequence[str | os.PathLike],
    outputs: Sequence[str | os.PathLike],
    model: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    skip_finished: bool = True,
    probabilities: bool = False,
    simplify: float | None = None,
    min_area: float | None = None,
    skip_classes: Sequence[str] = (),
    qupath_objects: str = "annotation",
    creation_options: dict[str, str] | None = None,
    zarr_format: int = 3,
    mosaic: bool = False,
    progress: str = "none",
    say: Callable[[str], None] | None = None,
    **settings: Any,
) -> Iterator[ItemResult]:
    """Segment every input of ``inputs`` and write its ``outputs``; yield one :class:`ItemResult`
    per input as it ends, in input order on the local threads (in the order they end on a
    ``dask.distributed`` cluster, where several run at once).

    >>> for item in segment_many(["slides/"], ["masks/{stem}.tif", "masks/{stem}.geojson"]):
    ...     print(item.input, item.status, item.error or "")

    Args:
        inputs: paths, folders, globs, ``@list`` files, remote URIs (see the module docstring).
        outputs: output paths; with several inputs each holds a placeholder such as ``{stem}``
            (:data:`PLACEHOLDERS`).
        model: a segtile checkpoint, TorchScript or ONNX path, or the name of an installed model
            (``None``: ``$SEGTILE_MODEL``, else the default); loaded once for every item.
        overwrite: replace outputs that exist (and run items whose outputs all exist).
        resume: continue each item from the work store an interrupted run left beside its first output.
        skip_finished: skip items whose outputs all exist (unless ``overwrite``); without it such
            an item fails with the output that exists, as a single run does.
        probabilities, simplify, min_area, skip_classes, qupath_objects, creation_options,
            zarr_format: what the outputs hold, as for :meth:`Segmentation.write`.
        mosaic: read every input as one image (:func:`segtile.sources.open_mosaic`, the last on
            top): one item, whose outputs take no placeholder.
        progress: ``"bar"``, ``"json"`` or ``"none"``: each item's tiles and writing on stderr.
        say: called with each note on an item (the grid chosen, a resumed work store).
        settings: the keyword arguments of :func:`segtile.segment` (``tile_size``, ``device``...).

    Raises:
        BatchError: inputs or outputs that cannot make a run (before any item runs).
        ModelNotFoundError, CheckpointError: no such model.
    """
    options = WriteOptions(probabilities=probabilities, simplify=simplify, min_area=min_area,
                           skip_classes=tuple(skip_classes), qupath_objects=qupath_objects,
                           creation_options=tuple((creation_options or {}).items()), zarr_format=zarr_format)
    items = [plan_mosaic(inputs, outputs, options)] if mosaic else plan_items(inputs, outputs, options=options)
    run = RunSettings(model=choose_model(model).path, settings=settings, options=options, overwrite=overwrite,
                      resume=resume, progress=progress, say=say or (lambda line: None))
    yield from run_items(items, run, skip_finished=skip_finished)


def run_items(items: Sequence[Item], run: RunSettings, skip_finished: bool = True) -> Iterator[ItemResult]:
    """:func:`segment_many` over items already planned: one after another, or on the workers of
    the current ``dask.distributed`` client, several at once."""
    client = current_client()
    workers = list(client.nthreads()) if client is not None else []
    if len(workers) > 1 and len(items) > 1:
        yield from _on_workers(items, run, skip_finished, workers)
        return
    for item in items:
        yield run_or_skip(item, run, skip_finished)


def run_or_skip(item: Item, run: RunSettings, skip_finished: bool = True) -> ItemResult:
    """:func:`run_item`, or a ``skipped`` result when its outputs are all there; a failure is a
    ``failed`` result with its one-line reason (an interruption is raised)."""
    started = time.perf_counter()
    try:
        say = (lambda line: run.say(f"{item.input}: {line}")) if run.named else run.say
        if skip_finished and not run.overwrite and finished(item, run.options.probabilities, say):
            return ItemResult(item.input, "skipped", outputs=item.outputs, seconds=time.perf_counter() - started)
        return run_item(item, run)
    except Exception as exc:  # a damaged item fails alone, whatever failed
        return ItemResult(item.input, "failed", error=_reason(exc), outputs=item.outputs,
                          seconds=time.perf_counter() - started, exception=exc)


def _reason(exc: BaseException) -> str:
    """The one line a failed item is reported with (with its notes: where its work is kept)."""
    notes = "".join(f"; {note}" for note in getattr(exc, "__notes__", ()))
    if isinstance(exc, SegtileError):
        return one_line(exc) + notes
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or one_line(exc)}{notes}"
    return f"{type(exc).__name__}: {one_line(exc)}{notes}"


def _on_workers(items: Sequence[Item], run: RunSettings, skip_finished: bool,
                workers: list[str]) -> Iterator[ItemResult]:
    """Run ``items`` on the ``workers`` of the current client, one item per worker at a time,
    each on its worker's own threads (its memory bounded as a single run's, its model loaded
    once per worker); yield each result as it ends, after saying its notes here."""
    from distributed import as_completed

    client = current_client()
    on_worker = replace(run, progress="none", say=lambda line: None)  # notes come back with the result
    queue = list(reversed(items))
    running = as_completed()
    for worker in workers[:len(items)]:
        running.add(client.submit(_run_on_worker, queue.pop(), on_worker, skip_finished, workers=[worker],
                                  allow_other_workers=False, pure=False))
    for future in running:
        worker, result = future.result()
        for note in result.notes:
            run.say(f"{result.input}: {note}")
        if queue:
            running.add(client.submit(_run_on_worker, queue.pop(), on_worker, skip_finished, workers=[worker],
                                      allow_other_workers=False, pure=False))
        yield result


def _run_on_worker(item: Item, run: RunSettings, skip_finished: bool) -> tuple[str, ItemResult]:
    """:func:`run_or_skip` inside a ``dask.distributed`` task, on the worker's threads (not
    through the cluster again); returns the worker's address with the result."""
    from distributed import get_worker

    worker = get_worker()
    with dask.config.set(scheduler="threads", num_workers=worker.state.nthreads):
        result = run_or_skip(item, run, skip_finished)
    return worker.address, replace(result, exception=None)  # the reason is in its error: exceptions may not pickle


# --- the summary --------------------------------------------------------------------------------


def check_summary_path(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Raise :class:`BatchError` before any work when the summary cannot be written at ``path``:
    not ``.csv`` or ``.json``, a missing folder, or a file that exists (without ``overwrite``)."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".json"):
        raise BatchError(f"--summary writes .csv or .json, not {path.name}")
    if not path.absolute().parent.is_dir():
        raise BatchError(f"--summary: the folder {path.absolute().parent} does not exist")
    if path.exists() and not overwrite:
        raise BatchError(f"--summary: {path} exists (use --overwrite)")


def write_summary(path: str | os.PathLike, results: Sequence[ItemResult]) -> None:
    """One row per item (:data:`SUMMARY_FIELDS`) in a CSV file (outputs joined by ``;``) or a
    JSON list of objects, by ``path``'s extension."""
    path = Path(path)
    rows = [result.row() for result in results]
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
        return
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "outputs": ";".join(row["outputs"])})
