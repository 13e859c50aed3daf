"""What the ``segtile`` command does once its arguments are parsed: check, segment, write."""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path

from segtile.api import segment
from segtile.errors import SegtileError
from segtile.writers.atomic import check_output
from segtile.writers.outputs import OUTPUT_KINDS, output_kind, output_paths


class RunError(SegtileError, ValueError):
    """The command line asks for something that cannot be done."""


def check_outputs(paths: list[str], overwrite: bool, probabilities: bool) -> None:
    """Refuse unknown extensions, repeated outputs and outputs in the way, before any work."""
    seen: set[Path] = set()
    for path in paths:
        if output_kind(path) is None:
            known = ", ".join(sorted(OUTPUT_KINDS))
            raise RunError(f"unknown output format for {path}: use one of {known}")
        for written in output_paths(path, probabilities):
            resolved = Path(written).resolve()
            if resolved in seen:
                raise RunError(f"output given twice: {written}")
            seen.add(resolved)
            check_output(written, overwrite)


def run(args: argparse.Namespace) -> None:
    """Segment ``args.input`` and write every ``--out``, from one inference pass."""
    check_outputs(args.out, args.overwrite, args.probabilities)
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
            result.write(
                *args.out, probabilities=args.probabilities, simplify=args.simplify,
                min_area=args.min_area, overwrite=args.overwrite,
            )


def _connect(address: str):
    """A ``dask.distributed`` client for ``address``; the graph then runs on that cluster."""
    from distributed import Client

    try:
        return Client(address, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise RunError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
