"""The few places segtile meets ``dask.distributed``: which client runs a collection, and
messages from a task on a worker back to that client (the progress bar's tile counts)."""

from __future__ import annotations

from typing import Any

from dask.base import get_scheduler
from distributed import Client, get_worker


def active_client(collection: Any) -> Client | None:
    """The ``dask.distributed`` client that would compute ``collection``, or ``None`` when a
    local scheduler would."""
    client = getattr(get_scheduler(collections=[collection]), "__self__", None)  # a Client's .get
    return client if isinstance(client, Client) else None


def tell_client(topic: str, message: int | str) -> None:
    """From a task running on a cluster worker, send ``message`` to the clients subscribed to
    ``topic`` (``Client.subscribe_topic``); outside a worker, do nothing."""
    try:
        worker = get_worker()
    except ValueError:  # not on a distributed worker: the local scheduler's callbacks see the task
        return
    worker.log_event(topic, message)
