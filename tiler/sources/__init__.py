"""Sources: open a path or an array as a lazy, windowed, georeferenced image."""

from tiler.sources.base import Source, SourceError

__all__ = ["Source", "SourceError"]
