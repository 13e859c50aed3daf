"""What ``segtile segment`` does once its arguments are parsed: check, segment each input, report.

The work of each input is :mod:`segtile.batch`'s (the Python API's ``segment_many``); this module
checks the options, starts the cluster asked for, and reports: for one input as a single run
(its errors raised, exit status 2), for several a line per item, a progress bar over the items,
the ``--summary`` file, and exit status 2 when any item failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, ContextManager

from segtile.batch import (
    ItemResult,
    RunSettings,
    check_summary_path,
    names_many,
    plan_items,
    plan_mosaic,
    run_items,
    run_or_skip,
    write_summary,
)
from segtile.engine.cluster import local_cluster, parse_gpus
from segtile.errors import BatchError, RunError
from segtile.inference.devices import check_device
from segtile.models.builtin import DEFAULTS, chosen_before_the_image
from segtile.tiling.grid import check_tiling
from segtile.writers.outputs import WriteOptions


def run_segment(args: argparse.Namespace) -> None:
    """Segment every input of ``args.input`` and write its ``--out`` from one inference pass.

    Every option is checked, and the inputs expanded and their outputs named, before anything
    is read or computed; each item's outputs are planned before its own work."""
    options = WriteOptions(probabilities=args.probabilities, simplify=args.simplify, min_area=args.min_area,
                           skip_classes=tuple(args.skip_classes), qupath_objects=args.qupath_objects,
                           creation_options=tuple(args.creation_options), zarr_format=args.zarr_format)
    if args.tile_size is not None and args.overlap is not None:
        check_tiling(args.tile_size, args.overlap)
    on_cluster = bool(args.scheduler or args.gpus or args.workers)
    gpus = parse_gpus(args.gpus) if args.gpus else "none"
    check_device(args.device, args.precision, here=not on_cluster)
    many = names_many(args.input) and not args.mosaic  # a mosaic is one image: a single run
    if args.mosaic:
        items = [plan_mosaic(args.input, args.out, options)]
    else:
        items = plan_items(args.input, args.out, many, options)
    if args.summary:
        check_summary_path(args.summary, args.overwrite)
    model = chosen_before_the_image(args.model)  # None: chosen by each image's bands
    say = _printer(quiet=args.quiet, many=many)
    run = RunSettings(model=model, settings=segment_settings(args), options=options, overwrite=args.overwrite,
                      resume=args.resume, progress="none" if args.quiet else args.progress, leave_bars=not many,
                      named=many, say_model=not many, say=say)
    with ExitStack() as stack:
        if args.scheduler:
            stack.enter_context(_connect(args.scheduler))
        elif args.gpus or args.workers:
            stack.enter_context(local_cluster(workers=args.workers, gpus=gpus))
        if many:
            say(f"model: {model.path} ({model.origin})" if model else f"model: {DEFAULTS}")
        # one input: a single run, whose error is the command's
        results = _run_cohort(items, run, args) if many else [run_or_skip(items[0], run, skip_finished=False)]
    if args.summary:
        order = [item.input for item in items]
        write_summary(args.summary, sorted(results, key=lambda result: order.index(result.input)))
    if not many and results[0].exception is not None:
        raise results[0].exception
    if many:
        _report(results, args.summary, say)


def segment_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`segtile.segment` the command's options give."""
    return dict(tile_size=args.tile_size, overlap=args.overlap, blend=args.blend, batch_size=args.batch_size,
                device=args.device, bands=args.bands, resolution=args.resolution, mpp=args.mpp, level=args.level,
                tissue=args.tissue, tissue_threshold=args.tissue_threshold, mask=args.mask,
                precision=args.precision, tta=args.tta, scales=args.scales, chunk_size=args.chunk_size,
                stripe_width=args.stripe_width, memory_limit=args.memory_limit)


def _printer(quiet: bool, many: bool) -> Callable[[str], None]:
    """How a line for the user is printed: on stderr (around the items' bar when ``many``), or
    not at all when ``quiet``."""
    if quiet:
        return lambda line: None
    if many:
        from tqdm import tqdm

        return lambda line: tqdm.write(f"segtile: {line}", file=sys.stderr)
    return lambda line: print(f"segtile: {line}", file=sys.stderr)


def _run_cohort(items: Sequence, run: RunSettings, args: argparse.Namespace) -> list[ItemResult]:
    """Run every item, a line for each as it ends (a failure's even with ``--quiet``)."""
    results = []
    with _items_progress(len(items), "none" if args.quiet else args.progress) as item_done:
        for result in run_items(items, run):
            results.append(result)
            item_done(result)
            if result.status == "failed" and args.quiet:
                print(f"segtile: failed: {result.input}: {result.error}", file=sys.stderr)
    return results


@contextmanager
def _items_progress(count: int, mode: str) -> Iterator[Callable[[ItemResult], None]]:
    """A progress bar over ``count`` items (``mode`` ``bar``), one JSON object per item
    (``json``), or nothing; yields the function told each item's result."""
    if mode == "none":
        yield lambda result: None
        return
    if mode == "json":
        ended = [0]

        def record(result: ItemResult) -> None:
            ended[0] += 1
            print(json.dumps({"item": ended[0], "items": count, **result.row()}), file=sys.stderr, flush=True)

        yield record
        return
    from tqdm import tqdm

    with tqdm(total=count, unit="input", desc="segtile: inputs", dynamic_ncols=True, file=sys.stderr,
              position=0) as bar:
        def advance(result: ItemResult) -> None:
            if result.status != "done":  # a done item has said so in its own last line
                reason = f": {result.error}" if result.error else ": its outputs exist"
                bar.write(f"segtile: {result.status}: {result.input}{reason}", file=sys.stderr)
            bar.update(1)

        yield advance


def _report(results: Sequence[ItemResult], summary: str | None, say: Callable[[str], None]) -> None:
    """The cohort's last line; raise :class:`BatchError` (exit status 2) when any item failed."""
    counts = {status: sum(r.status == status for r in results) for status in ("done", "skipped", "failed")}
    where = f"; summary in {summary}" if summary else ""
    line = f"{len(results)} inputs: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"
    if counts["failed"]:
        first = next(r for r in results if r.status == "failed")
        raise BatchError(f"{line} (the first: {first.input}: {first.error}){where}")
    say(line + where)


def _connect(address: str) -> ContextManager:
    """A ``dask.distributed`` client for ``address``; the graph then runs on that cluster."""
    from distributed import Client

    try:
        return Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:  # ValueError: no address at all ("host", no port)
        raise RunError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
