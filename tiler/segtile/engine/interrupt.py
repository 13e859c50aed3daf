"""The flag of a run told to stop, for the tasks to see.

The ``segtile`` command turns Ctrl-C and SIGTERM into ``KeyboardInterrupt`` in the main thread
(:mod:`segtile.cli`). That exception may land where Python swallows exceptions (a finaliser, a
callback called from C). So the command also sets :data:`STOP`, and every task started from then
on raises ``KeyboardInterrupt`` itself, which Dask hands back to the main thread as it does any
task's error: the run always stops at the next task. Only threading is imported here, so the
command's start stays light.
"""

from __future__ import annotations

import threading

STOP = threading.Event()
"""Set while the run in this process is being stopped."""


class Interrupted(KeyboardInterrupt):
    """A run stopped after it had written some of its output: ``kept`` says what, and how to go
    on, for the command to print instead of "no output was written"."""

    def __init__(self, kept: str) -> None:
        super().__init__(kept)
        self.kept = kept


def stop_if_asked() -> None:
    """Raise ``KeyboardInterrupt`` when this process's run was told to stop."""
    if STOP.is_set():
        raise KeyboardInterrupt
