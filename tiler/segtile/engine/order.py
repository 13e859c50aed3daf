"""The order of the work on Dask's local scheduler: no batch of tiles runs far ahead of the stitching.

Dask's local scheduler runs any ready task on a free thread. When one thread is slowed down (the
machine's load, a batch of costly tiles), the other threads find every later batch of the stripe
ready and run them, and each result they make waits in memory for the chunk that the slow thread
holds up: a 150-class model holds 157 MB per 512 px tile, so a few seconds' lag cost gigabytes.
And when a computation spans several stripes (``da.to_zarr(result.labels)``, ``da.store``, the
writers), a thread that finds its stripe blocked starts another, holding that stripe's results too.

So each batch task of the graph takes, as its last arguments, data-free markers it waits for:
that of the last chunk, in stitching order, whose batches all come ``lead`` or more before it
(:func:`waits_behind_stitching`), and that of the batch ``lead`` places before it (one per thread:
the batches then run in the stitching's order, not in whatever order the scheduler ranks a
group of batches released by one chunk). The stripes a computation needs are stitched one after
another, the first batches of the next waiting for the stitching of the one before, so the
results alive are those of the stitching frontier and ``lead`` batches more, whoever consumes
the result.

Which stripes and how far down each is needed is only known when a computation asks for its keys:
:class:`OrderedLayer` adds the waits as Dask culls the graph to those keys, so a slice of the
result runs only the stripes and rows it needs, as before (a graph never culled, computed with
``optimize_graph=False``, runs unordered).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from dask.highlevelgraph import MaterializedLayer

Key = tuple
Chunk = tuple[int, int]


@dataclass(frozen=True)
class StripeOrder:
    """One stripe of the graph: its batch task keys, its chunks and their markers in stitching
    order (each chunk's task waits for the marker before it), and the batches each chunk sums
    (indices into ``batch_keys``)."""

    batch_keys: list[Key]
    chain: list[tuple[Chunk, Key]]
    needed: dict[Chunk, list[int]]


def waits_behind_stitching(chain: list[tuple[Chunk, Key]], needed: Mapping[Chunk, list[int]], batches: int,
                           lead: int) -> list[Key | None]:
    """For each of ``batches`` batches (in the order they are run), the marker it waits for: that
    of the last chunk of ``chain`` (chunks and their markers, in stitching order) whose batches
    (``needed``) all come ``lead`` or more before it; ``None`` while there is no such chunk."""
    waits: list[Key | None] = []
    last_needed, k, marker = -1, 0, None  # the latest batch the chain's first k chunks need
    for b in range(batches):
        while k < len(chain):
            through = max(last_needed, *needed.get(chain[k][0], [-1]))  # the latest batch the first k + 1 need
            if through > b - 1 - lead:
                break
            last_needed, marker, k = through, chain[k][1], k + 1
        waits.append(marker)
    return waits


def done(_: object) -> None:
    """A marker that a task is done: carries the order of the work, not its data."""
    return None


class OrderedLayer(MaterializedLayer):
    """The graph of :func:`segtile.engine.graph.build_products` for the local scheduler: culled to
    the keys a computation asks for, its batch tasks wait behind the stitching of the stripes
    asked for, one stripe after another (see the module docstring).

    Args:
        mapping: the graph; the markers a batch task waits for are appended to its arguments.
        stripes: the stripes, left to right.
        product_names: the names of the product arrays, whose keys end with their chunk's ``(row, column)``.
        ran_name: the name of the markers of the batches run, ``(ran_name, *batch_key[1:])``: in
            ``mapping`` already, a task :func:`done` of the batch (Dask knows a key for a
            dependency only if its graph had it before culling).
        lead: how many batches may run ahead of the stitching (one per thread: each may hold one).
    """

    def __init__(self, mapping: Mapping, stripes: list[StripeOrder], product_names: Collection[str], ran_name: str,
                 lead: int):
        super().__init__(mapping)
        self.stripes = stripes
        self.product_names = frozenset(product_names)
        self.ran_name = ran_name
        self.lead = lead

    def cull(self, keys: set, all_hlg_keys: Collection) -> tuple[MaterializedLayer, Mapping]:
        mapping = dict(self.mapping)
        batch_keys, stitched = self.sequence(keys)
        for position, key in enumerate(batch_keys):
            before = [] if position < self.lead else [(self.ran_name, *batch_keys[position - self.lead][1:])]
            mapping[key] = (*mapping[key], *([stitched[position]] if stitched[position] else []), *before)
        return MaterializedLayer(mapping, annotations=self.annotations).cull(keys, all_hlg_keys)

    def sequence(self, keys: Collection) -> tuple[list[Key], list[Key | None]]:
        """The batch tasks that ``keys`` need, in the order they are to run, and the marker of the
        stitched chunk each waits for: the stripes they touch, left to right, each down to the
        last chunk asked for, as one sequence of chunks, each preceded by the batches it is the
        first to need (a chunk row of 1024 px spans four rows of 512 px tiles: run row by row, the
        tiles of all four would wait for its first chunk)."""
        asked = {key[-2:] for key in keys if isinstance(key, tuple) and key[0] in self.product_names}
        batch_keys: list[Key] = []
        chain: list[tuple[Chunk, Key]] = []
        needed: dict[Chunk, list[int]] = {}
        for stripe in self.stripes:
            last = max((k for k, (chunk, _) in enumerate(stripe.chain) if chunk in asked), default=None)
            if last is None:
                continue
            position: dict[int, int] = {}  # batch -> its place in the sequence
            for chunk, marker in stripe.chain[:last + 1]:
                for b in stripe.needed.get(chunk, ()):
                    if b not in position:
                        position[b] = len(batch_keys)
                        batch_keys.append(stripe.batch_keys[b])
                chain.append((chunk, marker))
                needed[chunk] = [position[b] for b in stripe.needed.get(chunk, ())]
        return batch_keys, waits_behind_stitching(chain, needed, len(batch_keys), self.lead)
