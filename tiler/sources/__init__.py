"""Sources: open a path or an array as a lazy, windowed, georeferenced image."""

from tiler.sources.base import Source, SourceError
from tiler.sources.memory import MemorySource
from tiler.sources.open import open_source
from tiler.sources.raster import RasterSource
from tiler.sources.slide import SlideSource

__all__ = ["MemorySource", "RasterSource", "SlideSource", "Source", "SourceError", "open_source"]
