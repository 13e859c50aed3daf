"""The one place segtile asks ``dask.distributed`` which client, if any, runs a collection."""

from __future__ import annotations

from typing import Any

from dask.base import get_scheduler
from distributed import Client


def active_client(collection: Any) -> Client | None:
    """The ``dask.distributed`` client that would compute ``collection``, or ``None`` when a
    local scheduler would."""
    client = getattr(get_scheduler(collections=[collection]), "__self__", None)  # a Client's .get
    return client if isinstance(client, Client) else None
