"""Sources: open a path or an array as a lazy, windowed, georeferenced image."""

from segtile.errors import SourceError
from segtile.sources.base import Source
from segtile.sources.memory import MemorySource
from segtile.sources.open import open_source
from segtile.sources.openslide import OpenSlideSource
from segtile.sources.raster import RasterSource
from segtile.sources.slide import SlideSource

__all__ = ["MemorySource", "OpenSlideSource", "RasterSource", "SlideSource", "Source", "SourceError", "open_source"]
