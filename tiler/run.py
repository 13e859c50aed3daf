"""What ``segtile segment`` does once its arguments are parsed: check, segment, write, report."""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from typing import ContextManager, Iterator

from segtile.api import segment
from segtile.devices import check_device
from segtile.errors import SegtileError
from segtile.grid import check_tiling
from segtile.models.builtin import choose_model
from segtile.predictor import ModelError
from segtile.progress import Progress, TileTally
from segtile.result import Segmentation
from segtile.writers.outputs import WriteOptions, plan_outputs

INFERENCE_SHARE = 0.8  # of the progress reported to a program (--progress json): the rest is writing


class RunError(SegtileError, ValueError):
    """The command line asks for something that cannot be done."""


def run_segment(args: argparse.Namespace) -> None:
    """Segment ``args.input`` and write every ``--out`` from one inference pass.

    Every option is checked, and every output planned, before anything is read or computed.
    The labels (and the probabilities, when an output writes them) are computed once into a
    scratch store beside the outputs; each output is then written from it, so the progress
    shows inference, then each output.
    """
    started = time.perf_counter()
    options = WriteOptions(probabilities=args.probabilities, simplify=args.simplify, min_area=args.min_area,
                           skip_classes=tuple(args.skip_classes), qupath_objects=args.qupath_objects)
    if args.tile_size is not None and args.overlap is not None:
        check_tiling(args.tile_size, args.overlap)
    check_device(args.device, args.precision, here=args.scheduler is None)
    model = choose_model(args.model)
    with ExitStack() as stack:
        if args.scheduler:
            stack.enter_context(_connect(args.scheduler))
        result = segment(
            args.input, model.path,
            tile_size=args.tile_size, overlap=args.overlap, blend=args.blend,
            batch_size=args.batch_size, device=args.device, bands=args.bands, resolution=args.resolution,
            mpp=args.mpp, level=args.level, precision=args.precision, chunk_size=args.chunk_size,
            stripe_width=args.stripe_width,
        )
        # Planned once the result is known, still before any tile is run: a slide's outputs
        # are of other kinds than a raster's.
        planned = plan_outputs(args.out, options, overwrite=args.overwrite, protected=[args.input, model.path],
                               slide=result.georef.is_slide)
        mode = "none" if args.quiet else args.progress
        writing = (1 - INFERENCE_SHARE) / len(planned)
        progress = Progress(mode, [("inference", INFERENCE_SHARE),
                                   *((f"writing {p.path.name}", writing) for p in planned)])
        if not args.quiet:
            print(f"segtile: model: {model.path} ({model.origin})", file=sys.stderr)
            for note in result.notes:
                print(f"segtile: note: {note}", file=sys.stderr)
        tally = TileTally()
        written = result.write(*args.out, **asdict(options), overwrite=args.overwrite, progress=progress,
                               computing=lambda: _inference(result, progress, tally), stage=True)
    if tally.nonfinite and not args.quiet:
        print(f"segtile: warning: the model gave NaN or infinite logits for {tally.nonfinite} of "
              f"{tally.valid} pixels; they are nodata in the outputs", file=sys.stderr)
    progress.summary(_summary(result, tally, written, time.perf_counter() - started),
                     tiles_run=tally.run, tiles_skipped=tally.skipped, outputs=[str(p) for p in written])


@contextmanager
def _inference(result: Segmentation, progress: Progress, tally: TileTally) -> Iterator[None]:
    """Count the tiles the pass that computes ``result`` runs; refuse to write outputs when the
    model gave no finite value for any pixel."""
    with result.progress(progress=progress, tally=tally):
        yield
    if tally.valid and tally.nonfinite == tally.valid:
        raise ModelError("the model gave NaN or infinite logits for every pixel: no output written")


def _summary(result: Segmentation, tally: TileTally, written: list, seconds: float) -> str:
    """The run's last line: tiles run and skipped, time, speed, outputs."""
    megapixels = result.shape[0] * result.shape[1] / 1e6
    skipped = f", {tally.skipped} skipped (no valid pixel)" if tally.skipped else ""
    names = ", ".join(str(path) for path in written)
    tiles = "1 tile" if tally.run == 1 else f"{tally.run} tiles"
    return (f"{tiles} run{skipped}; {megapixels:.1f} Mpx in {seconds:.1f} s "
            f"({megapixels / seconds:.2f} Mpx/s); wrote {names}")


def _connect(address: str) -> ContextManager:
    """A ``dask.distributed`` client for ``address``; the graph then runs on that cluster."""
    from distributed import Client

    try:
        return Client(address, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise RunError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
