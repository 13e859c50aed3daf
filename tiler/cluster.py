"""The one place segtile asks ``dask.distributed`` which client, if any, runs the work."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterator

import dask
from dask.base import get_scheduler
from distributed import Client


def active_client(collection: Any) -> Client | None:
    """The ``dask.distributed`` client that would compute ``collection``, or ``None`` when a
    local scheduler would."""
    client = getattr(get_scheduler(collections=[collection]), "__self__", None)  # a Client's .get
    return client if isinstance(client, Client) else None


def current_client() -> Client | None:
    """The ``dask.distributed`` client new work would run on (the default one), or ``None``
    when work runs in this process."""
    client = getattr(get_scheduler(), "__self__", None)
    return client if isinstance(client, Client) else None


@contextmanager
def joined_threads() -> Iterator[None]:
    """Run the computes inside on a thread pool of this block's own (unless a ``dask.distributed``
    client runs them), and return only when its threads are idle, even on an exception: after
    Ctrl-C no task is left writing into a folder that is being removed."""
    if current_client() is not None:
        yield
        return
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="segtile")
    try:
        with dask.config.set(pool=pool):
            yield
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
