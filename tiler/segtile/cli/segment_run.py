"""What ``segtile segment`` does once its arguments are parsed: check, segment, write, report."""

from __future__ import annotations

import argparse
import math
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, ContextManager, Iterator

from segtile.api import segment
from segtile.engine.cluster import local_cluster, parse_gpus
from segtile.engine.progress import Progress, TileTally
from segtile.errors import ModelError, OutputError, RunError
from segtile.inference.devices import check_device
from segtile.models.builtin import choose_model
from segtile.result import Segmentation
from segtile.sources import open_source
from segtile.store.identity import Work, claim_work_folder, prepare_work, run_identity, work_folder
from segtile.store.staging import write_outputs
from segtile.tiling.grid import check_tiling
from segtile.writers.atomic import recover_leftovers
from segtile.writers.outputs import WriteOptions, placement_notes, plan_outputs, probability_precision

INFERENCE_SHARE = 0.8  # of the progress reported to a program (--progress json): the rest is writing


def run_segment(args: argparse.Namespace) -> None:
    """Segment ``args.input`` and write every ``--out`` from one inference pass.

    Every option is checked, and every output planned, before anything is read or computed.
    The labels (and the probabilities, when an output writes them) are computed once into a
    scratch store beside the outputs; each output is then written from it, so the progress
    shows inference, then each output.
    """
    started = time.perf_counter()
    options = WriteOptions(probabilities=args.probabilities, simplify=args.simplify, min_area=args.min_area,
                           skip_classes=tuple(args.skip_classes), qupath_objects=args.qupath_objects,
                           creation_options=tuple(args.creation_options), zarr_format=args.zarr_format)
    if args.tile_size is not None and args.overlap is not None:
        check_tiling(args.tile_size, args.overlap)
    on_cluster = bool(args.scheduler or args.gpus or args.workers)
    gpus = parse_gpus(args.gpus) if args.gpus else "none"
    check_device(args.device, args.precision, here=not on_cluster)
    model = choose_model(args.model)
    image = open_source(args.input)  # an input it cannot read is the error to give, before the outputs'
    say = (lambda line: None) if args.quiet else (lambda line: print(f"segtile: {line}", file=sys.stderr))
    with ExitStack() as stack:
        stack.callback(image.close)
        protected = [args.input, model.path, *([args.mask] if args.mask else [])]
        for path in args.out:  # what a run that died left in the way, before the outputs are checked
            for note in recover_leftovers(path):
                say(f"note: {note}")
        # a slide's outputs are of a slide's kinds (its .geojson is QuPath's)
        planned = plan_outputs(args.out, options, overwrite=args.overwrite, protected=protected,
                               slide=image.georef.is_slide)
        folder = work_folder(planned[0].path)
        stack.enter_context(claim_work_folder(folder))  # one run at a time for these outputs
        if args.scheduler:
            stack.enter_context(_connect(args.scheduler))
        elif args.gpus or args.workers:
            stack.enter_context(local_cluster(workers=args.workers, gpus=gpus))
        settings = segment_settings(args)
        result = segment(image, model.path, **settings)
        options.check(result.card)  # the classes to skip: known once the model's card is
        # every polygon output can hold the regions where they are (GeoJSON: in longitude and latitude)
        notes = [*result.notes, *placement_notes(planned, result.georef, result.shape)]
        precision = probability_precision([p.kind for p in planned], options)
        writing = (1 - INFERENCE_SHARE) / len(planned)
        progress = Progress("none" if args.quiet else args.progress,
                            [("inference", INFERENCE_SHARE), *((f"writing {p.path.name}", writing) for p in planned)])
        say(f"model: {model.path} ({model.origin})")
        for note in notes:
            say(f"note: {note}")
        identity = run_identity(result, args.input, model.path, precision, settings)
        work = prepare_work(folder, result, identity, precision, args.resume)
        if work.note:
            say(f"note: {work.note}")
        tally = TileTally()
        with _keeping(work, say) as stage:
            names = ("labels", "probabilities") if precision else ("labels",)
            with result.progress(progress=progress, tally=tally, skip=work.done):
                work.store.fill(result.products(*names, skip=work.done), skip=work.done,
                                column_groups=result.column_groups)
            if tally.valid and tally.nonfinite == tally.valid:
                raise ModelError("the model gave NaN or infinite logits for every pixel: no output written")
            stage.writing = True
            written = write_outputs(work.store.layers(result.layers()), args.out, options, overwrite=args.overwrite,
                                    protected=protected, progress=progress, stage=False)
        work.store.remove()
    if tally.nonfinite:
        say(f"warning: the model gave NaN or infinite logits for {tally.nonfinite} of {tally.valid} pixels; "
            "they are nodata in the outputs")
    progress.summary(_summary(result, work.done, tally, written, time.perf_counter() - started),
                     tiles_run=tally.run, tiles_skipped=tally.skipped, outputs=[str(p) for p in written])


def segment_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`segtile.segment` the command's options give."""
    return dict(tile_size=args.tile_size, overlap=args.overlap, blend=args.blend, batch_size=args.batch_size,
                device=args.device, bands=args.bands, resolution=args.resolution, mpp=args.mpp, level=args.level,
                tissue=args.tissue, tissue_threshold=args.tissue_threshold, mask=args.mask,
                precision=args.precision, tta=args.tta, scales=args.scales, chunk_size=args.chunk_size,
                stripe_width=args.stripe_width, memory_limit=args.memory_limit)


@dataclass
class _Stage:
    """How far a run got: ``writing`` once its inference is complete in the work store."""

    writing: bool = False


@contextmanager
def _keeping(work: Work, say) -> Iterator[_Stage]:
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


def _connect(address: str) -> ContextManager:
    """A ``dask.distributed`` client for ``address``; the graph then runs on that cluster."""
    from distributed import Client

    try:
        return Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:  # ValueError: no address at all ("host", no port)
        raise RunError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
