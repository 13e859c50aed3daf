"""segtile's engine: segment images too large for memory, tile by tile.

>>> from segtile import segment
>>> result = segment("aerial.tif", "model.pt")      # lazy: nothing has run yet
>>> result.to_geotiff("mask.tif")                   # runs, chunk by chunk

The public names are imported on first use, so ``import segtile.tiling.grid`` stays light (no
torch). The package's rooms, in the order work flows through them: ``sources`` (open anything as
a Source), ``tiling`` (tiles, blends, the plan), ``inference`` (the network on a batch),
``engine`` (the Dask graph), ``store`` (the work store), ``writers`` (outputs); ``training`` and
``cli`` on top, ``models`` (networks, cards, checkpoints) beside them all.
"""

from segtile.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "segtile.api": ("segment",),
    "segtile.batch.run": ("segment_many", "ItemResult"),
    "segtile.result": ("Segmentation",),
    "segtile.sources": ("open_source", "open_mosaic"),
    "segtile.errors": ("SegtileError", "SegmentError", "ResolutionWarning"),
})
