"""A progress bar over the tiles of a run: tiles done / total, tiles/s, ETA, on stderr.

Each batch task reports its tile count when it is done (:mod:`segtile.events`), under a topic
named after the run's batch tasks, on the local scheduler and on a ``dask.distributed`` cluster
alike.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import dask.array as da
from tqdm import tqdm

from segtile.cluster import active_client
from segtile.engine import batch_name
from segtile.events import listen


@contextmanager
def tile_progress(logits: da.Array, total_tiles: int, enabled: bool = True) -> Iterator[None]:
    """Show a bar of the tiles of ``logits`` (a :func:`segtile.segment` result's) computed inside
    the ``with`` block, locally or on the active ``dask.distributed`` client."""
    if not enabled:
        yield
        return
    with tqdm(total=total_tiles, unit="tile", desc="segtile", dynamic_ncols=True) as bar:
        with listen(batch_name(logits), lambda counts: bar.update(counts.read), active_client(logits)):
            yield
