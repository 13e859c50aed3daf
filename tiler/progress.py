"""A progress bar over the tiles of a run: tiles done / total, tiles/s, ETA, on stderr."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from dask.callbacks import Callback
from tqdm import tqdm

from tiler.engine import BATCH_PREFIX


class _TileCounter(Callback):
    """Advances a bar by a batch's tile count each time a batch task of the local scheduler ends."""

    def __init__(self, bar: tqdm) -> None:
        super().__init__()
        self._bar = bar

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        if isinstance(key, tuple) and str(key[0]).startswith(BATCH_PREFIX):
            self._bar.update(result.tiles_read)


@contextmanager
def tile_progress(total_tiles: int, enabled: bool = True) -> Iterator[None]:
    """Show a tile progress bar for the Dask computations run inside the ``with`` block.

    Counts batches as the local (threaded) scheduler finishes them; on a distributed cluster use
    the dashboard instead.
    """
    if not enabled:
        yield
        return
    with tqdm(total=total_tiles, unit="tile", desc="segtile", dynamic_ncols=True) as bar:
        with _TileCounter(bar):
            yield
