"""A progress bar over the tiles of a run: tiles done / total, tiles/s, ETA, on stderr.

On the local scheduler a Dask callback counts the tiles of each finished batch task; on a
``dask.distributed`` cluster each batch task sends its tile count to the client as an event
(:func:`tiler.cluster.tell_client`), under a topic named after the run's batch tasks.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import dask.array as da
from dask.callbacks import Callback
from tqdm import tqdm

from tiler.cluster import active_client
from tiler.engine import batch_name


class _TileCounter(Callback):
    """Advances a bar by a batch's tile count each time a batch task of the local scheduler ends."""

    def __init__(self, bar: tqdm, name: str) -> None:
        super().__init__()
        self._bar = bar
        self._name = name

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        if isinstance(key, tuple) and key[0] == self._name:
            self._bar.update(result.tiles_read)


@contextmanager
def tile_progress(logits: da.Array, total_tiles: int, enabled: bool = True) -> Iterator[None]:
    """Show a bar of the tiles of ``logits`` (a :func:`tiler.segment` result's) computed inside
    the ``with`` block, locally or on the active ``dask.distributed`` client."""
    if not enabled:
        yield
        return
    name = batch_name(logits)
    with tqdm(total=total_tiles, unit="tile", desc="segtile", dynamic_ncols=True) as bar:
        client = active_client(logits)
        if client is None:
            with _TileCounter(bar, name):
                yield
            return
        client.subscribe_topic(name, lambda event: bar.update(event[1]))
        try:
            yield
        finally:
            client.unsubscribe_topic(name)
