"""Progress of a run on stderr: bars for people, JSON lines for programs, or nothing.

A run goes through stages (inference over the tiles, then writing each output). A
:class:`Progress` is told the stages and their share of the work up front, then each stage
reports as it advances. ``mode="bar"`` shows one tqdm bar per stage; ``mode="json"`` prints one
JSON object per line, for a program driving segtile (the QGIS plugin)::

    {"stage": "inference", "done": 12, "total": 40, "progress": 0.24}
    {"summary": "...", "tiles_run": 40, ...}

``progress`` is the fraction of the whole run done, stages weighted by their share; lines are
printed at most every 0.2 s per stage, and always at a stage's start and end. ``mode="none"``
prints nothing.

The tiles come from the batch tasks themselves (:mod:`segtile.engine.events`), under a topic named after
the run's batch tasks, on the local scheduler and on a ``dask.distributed`` cluster alike.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

from tqdm import tqdm

from segtile.engine.cluster import current_client
from segtile.engine.events import TileCounts, listen
from segtile.engine.graph import BATCH_PREFIX

MODES = ("bar", "json", "none")
_JSON_INTERVAL = 0.2  # seconds between two JSON lines of one stage


@dataclass
class TileTally:
    """What the batch tasks of a run reported: tiles read, tiles run, valid pixels sent to the
    model and how many of them got logits that were not finite (pixels in overlaps count once
    per tile)."""

    read: int = 0
    run: int = 0
    valid: int = 0
    nonfinite: int = 0

    def add(self, counts: TileCounts) -> None:
        self.read += counts.read
        self.run += counts.run
        self.valid += counts.valid
        self.nonfinite += counts.nonfinite

    @property
    def skipped(self) -> int:
        """Tiles read but not run: they held no valid pixel."""
        return self.read - self.run


class Progress:
    """Shows the stages of a run (see the module docstring).

    Args:
        mode: ``"bar"``, ``"json"`` or ``"none"``.
        stages: ``(name, share)`` of every stage, in order; the shares need not sum to 1.
        stream: where to print (stderr).
        leave: keep each stage's bar on the screen once it is complete (a run over many inputs
            clears them, under its bar over the inputs).
    """

    def __init__(self, mode: str = "bar", stages: Sequence[tuple[str, float]] = (), stream: IO[str] | None = None,
                 leave: bool = True):
        if mode not in MODES:
            raise ValueError(f"unknown progress mode {mode!r}: choose one of {', '.join(MODES)}")
        self.mode = mode
        self.leave = leave
        self._stream = stream or sys.stderr
        total = sum(share for _, share in stages) or 1.0
        self._shares = {name: share / total for name, share in stages}
        self._done_before: dict[str, float] = {}
        offset = 0.0
        for name, _ in stages:
            self._done_before[name] = offset
            offset += self._shares[name]
        self._lock = threading.Lock()

    @contextmanager
    def stage(self, name: str, total: int, unit: str = "chunk") -> Iterator[Callable[[int], None]]:
        """A stage of ``total`` units; yields ``advance(n)``, callable from any thread."""
        if self.mode == "bar":
            with tqdm(total=total, unit=unit, desc=f"segtile: {name}", dynamic_ncols=True, file=self._stream,
                      leave=self.leave) as bar:
                yield bar.update
            return
        if self.mode == "none":
            yield lambda n: None
            return
        state = {"done": 0, "printed": 0.0}

        def advance(n: int) -> None:
            with self._lock:
                state["done"] += n
                now = time.monotonic()
                if now - state["printed"] >= _JSON_INTERVAL:
                    state["printed"] = now
                    self._print_stage(name, state["done"], total)

        self._print_stage(name, 0, total)
        yield advance
        self._print_stage(name, state["done"], total)

    def _print_stage(self, name: str, done: int, total: int) -> None:
        share = self._shares.get(name, 0.0)
        fraction = self._done_before.get(name, 0.0) + share * (min(done, total) / total if total else 1.0)
        self._emit({"stage": name, "done": done, "total": total, "progress": round(fraction, 4)})

    def summary(self, text: str, **figures: object) -> None:
        """The run's last line: ``text`` for people, ``figures`` too in JSON."""
        if self.mode == "bar":
            tqdm.write(f"segtile: {text}", file=self._stream)  # above any bar still drawn
        elif self.mode == "json":
            self._emit({"summary": text, **figures})

    def _emit(self, record: dict) -> None:
        print(json.dumps(record), file=self._stream, flush=True)


@contextmanager
def tile_progress(token: str, total_tiles: int, progress: Progress | None = None,
                  tally: TileTally | None = None, name: str = "inference") -> Iterator[TileTally]:
    """Count the tiles of the job ``token`` (a :func:`segtile.segment` result's) computed inside
    the ``with`` block, locally or on the current ``dask.distributed`` client, as a ``progress``
    stage (a bar by default). Yields the tally of what the batch tasks reported (``tally``,
    when given, is the one filled)."""
    progress = progress or Progress("bar", [(name, 1.0)])
    tally = TileTally() if tally is None else tally
    with progress.stage(name, total_tiles, unit="tile") as advance:
        def on_batch(counts: TileCounts) -> None:
            tally.add(counts)
            advance(counts.read)

        with listen(BATCH_PREFIX + token, on_batch, current_client()):
            yield tally
