"""Tile counts from the batch tasks to whoever shows progress, wherever the tasks run.

A batch task calls :func:`report` when it is done. In this process (the threaded or synchronous
scheduler) the count goes straight to the callback registered for the run's topic by
:func:`listen`; on a ``dask.distributed`` worker it is sent as a Dask event, which the scheduler
forwards to the clients subscribed to the topic. Reporting from the task itself, rather than
watching task keys from a scheduler callback, counts every batch whatever the scheduler and its
graph optimisations (a fused task loses its key) do.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple

from distributed import Client, get_worker


class TileCounts(NamedTuple):
    """What one batch task did: tiles read, tiles run through the model (the others held no
    valid pixel), valid pixels sent to the model, and those of them whose logits were not
    finite (they become nodata)."""

    read: int
    run: int
    valid: int = 0
    nonfinite: int = 0


_LISTENERS: dict[str, Callable[[TileCounts], None]] = {}
_LOCK = threading.Lock()


def report(topic: str, counts: TileCounts) -> None:
    """Tell the listener of ``topic`` what a batch did (no listener: nothing)."""
    try:
        worker = get_worker()
    except ValueError:  # not on a distributed worker: a listener in this process, if any
        with _LOCK:
            listener = _LISTENERS.get(topic)
            if listener is not None:
                listener(counts)
        return
    worker.log_event(topic, tuple(counts))


@contextmanager
def listen(topic: str, callback: Callable[[TileCounts], None], client: Client | None = None) -> Iterator[None]:
    """Call ``callback(counts)`` for every :func:`report` under ``topic`` inside the ``with``
    block: from this process's threads, and from the workers of ``client`` when one is given."""
    with _LOCK:
        _LISTENERS[topic] = callback
    if client is not None:
        client.subscribe_topic(topic, lambda event: callback(TileCounts(*event[1])))
    try:
        yield
    finally:
        with _LOCK:
            _LISTENERS.pop(topic, None)
        if client is not None and client.status == "running":  # a lost cluster must not hide an error
            client.unsubscribe_topic(topic)
