"""What ``segtile segment`` does once its arguments are parsed: check, segment, write."""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from typing import ContextManager

from segtile.api import segment
from segtile.devices import check_device
from segtile.errors import SegtileError
from segtile.grid import check_tiling
from segtile.writers.outputs import WriteOptions, plan_outputs


class RunError(SegtileError, ValueError):
    """The command line asks for something that cannot be done."""


def run_segment(args: argparse.Namespace) -> None:
    """Segment ``args.input`` and write every ``--out`` from one inference pass.

    Every option is checked, and every output planned, before anything is read or computed.
    """
    options = WriteOptions(probabilities=args.probabilities, simplify=args.simplify, min_area=args.min_area)
    if args.tile_size is not None and args.overlap is not None:
        check_tiling(args.tile_size, args.overlap)
    check_device(args.device, args.precision, here=args.scheduler is None)
    plan_outputs(args.out, options, overwrite=args.overwrite, protected=[args.input, args.model])
    with ExitStack() as stack:
        if args.scheduler:
            stack.enter_context(_connect(args.scheduler))
        result = segment(
            args.input, args.model,
            tile_size=args.tile_size, overlap=args.overlap, blend=args.blend,
            batch_size=args.batch_size, device=args.device, bands=args.bands,
            level=args.level, precision=args.precision, chunk_size=args.chunk_size,
            stripe_width=args.stripe_width,
        )
        with result.progress(enabled=not args.quiet):
            result.write(*args.out, probabilities=args.probabilities, simplify=args.simplify,
                         min_area=args.min_area, overwrite=args.overwrite)


def _connect(address: str) -> ContextManager:
    """A ``dask.distributed`` client for ``address``; the graph then runs on that cluster."""
    from distributed import Client

    try:
        return Client(address, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise RunError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
