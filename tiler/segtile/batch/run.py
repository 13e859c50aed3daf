"""Running the items of a run over many inputs: each as one ``segtile`` run (its outputs planned
first, its own work store, its outputs committed together), one after another, or on the workers
of a ``dask.distributed`` cluster; a failed item fails alone."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import dask
from distributed import Client, KilledWorker, as_completed

from segtile.api import model_for, segment
from segtile.batch.items import Item, finished, plan_items, plan_mosaic
from segtile.engine.cluster import current_client
from segtile.engine.progress import Progress, TileTally
from segtile.errors import ModelError, OutputError, SegtileError, one_line
from segtile.models.builtin import ChosenModel, chosen_before_the_image
from segtile.result import Segmentation
from segtile.store.identity import Work, claim_work_folder, prepare_work, run_identity, work_folder
from segtile.store.staging import write_outputs
from segtile.writers.atomic import recover_leftovers
from segtile.writers.outputs import WriteOptions, placement_notes, plan_outputs, probability_precision


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
        """The item's row in a summary (:data:`segtile.batch.summary.SUMMARY_FIELDS`)."""
        return {"input": self.input, "status": self.status, "error": self.error or "", "tiles": self.tiles,
                "seconds": round(self.seconds, 3), "outputs": list(self.outputs)}


@dataclass(frozen=True)
class RunSettings:
    """How every item of a run is segmented and written.

    Attributes:
        model: the model's file (a checkpoint, TorchScript or ONNX file) and how it was chosen;
            ``None``: the installed default for each image's bands
            (:func:`segtile.models.builtin.installed_default`).
        settings: the keyword arguments of :func:`segtile.segment`.
        options: what the outputs hold (probabilities, polygon options...).
        overwrite: replace outputs that exist.
        resume: continue each item from the work store an interrupted run left beside its first output.
        progress: ``"bar"``, ``"json"`` or ``"none"``, for each item's stages.
        leave_bars: keep each item's bars on the screen once complete (a single run's).
        named: begin each line said about an item with its input (several items).
        say_model: say the model's file and how it was chosen once the item's work is planned
            (a single run's first line).
        say: prints a line for the user (a note, the model); by default nothing.
    """

    model: ChosenModel | None
    settings: dict[str, Any]
    options: WriteOptions = WriteOptions()
    overwrite: bool = False
    resume: bool = False
    progress: str = "none"
    leave_bars: bool = True
    named: bool = False
    say_model: bool = False
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
        model = run.model or model_for(image, None, run.settings.get("bands"))
        protected = [*item.reads, model.path, *([run.settings["mask"]] if run.settings.get("mask") else [])]
        for path in item.outputs:  # what a run that died left in the way, before the outputs are checked
            for note in recover_leftovers(path):
                say(f"note: {note}")
        # a slide's outputs are of a slide's kinds (its .geojson is QuPath's)
        planned = plan_outputs(item.outputs, options, overwrite=run.overwrite, protected=protected,
                               slide=image.georef.is_slide)
        folder = work_folder(planned[0].path)
        stack.enter_context(claim_work_folder(folder))  # one run at a time for these outputs
        result = segment(image, model.path, **run.settings)
        options.check(result.card)  # the classes to skip: known once the model's card is
        # every polygon output can hold the regions where they are (GeoJSON: in longitude and latitude)
        found = [*result.notes, *placement_notes(planned, result.georef, result.shape)]
        if run.say_model:
            run.say(f"model: {model.path} ({model.origin})")
        for note in found:
            say(f"note: {note}")
        precision = probability_precision([p.kind for p in planned], options)
        writing = (1 - INFERENCE_SHARE) / len(planned)
        progress = Progress(run.progress, [("inference", INFERENCE_SHARE),
                                           *((f"writing {p.path.name}", writing) for p in planned)],
                            leave=run.leave_bars)
        identity = run_identity(result, item.reads, model.path, precision, run.settings)
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
    run = RunSettings(model=chosen_before_the_image(model), settings=settings,
                      options=options, overwrite=overwrite, resume=resume, progress=progress,
                      say=say or (lambda line: None))
    yield from run_items(items, run, skip_finished=skip_finished)


def run_items(items: Sequence[Item], run: RunSettings, skip_finished: bool = True) -> Iterator[ItemResult]:
    """:func:`segment_many` over items already planned: one after another, or on the workers of
    the current ``dask.distributed`` client, several at once."""
    client = current_client()
    if client is not None and len(client.nthreads()) > 1 and len(items) > 1:
        yield from _on_workers(client, items, run, skip_finished)
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
    if isinstance(exc, KilledWorker):
        return ("the cluster's worker died while running it (out of memory, or a crash in native code; "
                f"the workers' logs say which): {one_line(exc)}")
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or one_line(exc)}{notes}"
    return f"{type(exc).__name__}: {one_line(exc)}{notes}"


def _on_workers(client: Client, items: Sequence[Item], run: RunSettings, skip_finished: bool) -> Iterator[ItemResult]:
    """Run ``items`` on the workers of ``client``, one item per worker at a time,
    each on its worker's own threads (its memory bounded as a single run's, its model loaded
    once per worker); yield each result as it ends, after saying its notes here. An item whose
    worker died under it (the cluster's ``KilledWorker``: out of memory, a crash in a decoder)
    fails alone, and the next item goes to whichever worker the cluster has then."""
    on_worker = replace(run, progress="none", say=lambda line: None)  # notes come back with the result
    queue = list(reversed(items))
    running = as_completed()
    started: dict[Any, tuple[Item, float]] = {}

    def next_item_on(worker: str | None) -> None:
        item = queue.pop()
        where = {} if worker is None else {"workers": [worker], "allow_other_workers": False}
        future = client.submit(_run_on_worker, item, on_worker, skip_finished, pure=False, **where)
        started[future.key] = item, time.perf_counter()
        running.add(future)

    for worker in list(client.nthreads())[:len(items)]:
        next_item_on(worker)
    for future in running:
        item, since = started.pop(future.key)
        try:
            worker, result = future.result()
        except Exception as exc:  # the worker was lost with the item: it fails alone, its worker may be gone
            worker, result = None, ItemResult(item.input, "failed", error=_reason(exc), outputs=item.outputs,
                                              seconds=time.perf_counter() - since)
        for note in result.notes:
            run.say(f"{result.input}: {note}")
        if queue:
            next_item_on(worker)
        yield result


def _run_on_worker(item: Item, run: RunSettings, skip_finished: bool) -> tuple[str, ItemResult]:
    """:func:`run_or_skip` inside a ``dask.distributed`` task, on the worker's threads (not
    through the cluster again); returns the worker's address with the result."""
    from distributed import get_worker

    worker = get_worker()
    with dask.config.set(scheduler="threads", num_workers=worker.state.nthreads):
        result = run_or_skip(item, run, skip_finished)
    return worker.address, replace(result, exception=None)  # the reason is in its error: exceptions may not pickle
