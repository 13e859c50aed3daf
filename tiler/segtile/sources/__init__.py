"""Sources: open a path or an array as a lazy, windowed, georeferenced image, and the images on
the working grid: the grid a job runs on (``working_grid``), a slide's tissue and areas of
interest as masks (``tissue``), and labels as rasters or polygons on an image's grid
(``labels``)."""

from segtile.errors import SourceError
from segtile.lazy import lazy_exports
from segtile.sources.base import Source
from segtile.sources.memory import MemorySource
from segtile.sources.mosaic import MosaicSource, open_mosaic
from segtile.sources.open import open_source
from segtile.sources.openslide import OpenSlideSource
from segtile.sources.raster import RasterSource
from segtile.sources.slide import SlideSource

# the images on the working grid, imported on first use (labels bring OGR and shapely)
__getattr__, _ON_THE_WORKING_GRID = lazy_exports(__name__, {
    "segtile.sources.working_grid": ("choose_grid",),
    "segtile.sources.tissue": ("detect_tissue", "with_masks"),
    "segtile.sources.labels": ("LabelSource", "open_labels", "open_area"),
})

__all__ = ["MemorySource", "MosaicSource", "OpenSlideSource", "RasterSource", "SlideSource", "Source", "SourceError",
           "open_mosaic", "open_source",
           *_ON_THE_WORKING_GRID]
