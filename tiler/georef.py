"""Where a raster sits in the world: CRS and affine transform (rasters) or µm per pixel (slides)."""

from __future__ import annotations

from dataclasses import dataclass

from affine import Affine
from rasterio.crs import CRS


@dataclass(frozen=True)
class Georef:
    """The georeference carried from a source to every output.

    Attributes:
        crs: coordinate reference system, or ``None`` (plain arrays, slides).
        transform: pixel -> world affine transform (rotation allowed), or ``None``.
        mpp: microns per pixel for microscopy slides, or ``None``.
    """

    crs: CRS | None = None
    transform: Affine | None = None
    mpp: float | None = None

    @property
    def is_georeferenced(self) -> bool:
        return self.crs is not None and self.transform is not None

    def scaled(self, factor: float) -> Georef:
        """The georeference of the same area sampled ``factor`` times coarser (factor > 1)."""
        transform = self.transform @ Affine.scale(factor) if self.transform is not None else None
        mpp = self.mpp * factor if self.mpp is not None else None
        return Georef(self.crs, transform, mpp)
