"""segtile's engine: segment images too large for memory, tile by tile.

>>> from segtile import segment
>>> result = segment("aerial.tif", "model.pt")      # lazy: nothing has run yet
>>> result.to_geotiff("mask.tif")                   # runs, chunk by chunk

The public names are imported on first use, so ``import segtile.grid`` stays light (no torch).
"""

from importlib import import_module
from typing import Any

_PUBLIC = {
    "segment": "segtile.api",
    "Segmentation": "segtile.result",
    "open_source": "segtile.sources",
    "SegtileError": "segtile.errors",
    "SegmentError": "segtile.errors",
    "ResolutionWarning": "segtile.errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'segtile' has no attribute {name!r}")
