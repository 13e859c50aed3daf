"""Where a raster sits in the world: CRS and affine transform (rasters) or µm per pixel (slides)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from affine import Affine
from rasterio.crs import CRS


@dataclass(frozen=True)
class Georef:
    """The georeference carried from a source to every output.

    Attributes:
        crs: coordinate reference system, or ``None`` (plain arrays, slides).
        transform: pixel -> world affine transform (rotation allowed) of a raster in ``crs``;
            for a slide (no ``crs``), pixel -> level-0 pixel coordinates (the identity at full
            resolution), the coordinates its annotations are given in; ``None`` for plain arrays.
        mpp: microns per pixel for microscopy slides, or ``None``.
    """

    crs: CRS | None = None
    transform: Affine | None = None
    mpp: float | None = None

    @property
    def is_georeferenced(self) -> bool:
        return self.crs is not None and self.transform is not None

    @property
    def is_slide(self) -> bool:
        """Whether this is a microscopy slide's grid: a pixel size in µm and no CRS. Outputs then
        take the forms pathology tools read (OME-Zarr, QuPath GeoJSON, TIFF resolution tags)."""
        return self.crs is None and self.mpp is not None

    def microns_per_pixel(self) -> tuple[float, float] | None:
        """A slide pixel's size in µm along x and y, or ``None`` without a pixel size.

        ``mpp`` is the size along the columns; along the rows it is the level-0 pixel size
        (square) times the grid's row scale, which may differ from the column scale by the
        rounding of the grid's size."""
        if self.mpp is None:
            return None
        if self.transform is None:
            return self.mpp, self.mpp
        a, b, _, d, e, _ = self.transform[:6]
        return self.mpp, self.mpp / math.hypot(a, d) * math.hypot(b, e)

    def scaled(self, x: float, y: float) -> Georef:
        """The georeference of the same area sampled ``x`` times coarser along columns and ``y``
        times along rows (> 1: coarser). The µm per pixel follow the columns."""
        transform = self.transform @ Affine.scale(x, y) if self.transform is not None else None
        mpp = self.mpp * x if self.mpp is not None else None
        return Georef(self.crs, transform, mpp)

    def pixel_size(self) -> tuple[float, str] | None:
        """The size of a pixel along the columns and its unit: ``(µm, "um")`` for slides,
        ``(metres, "m")`` for rasters in a projected CRS; ``None`` when unknown (plain arrays,
        geographic CRS in degrees)."""
        if self.mpp is not None:
            return self.mpp, "um"
        if self.transform is None or self.crs is None or not self.crs.is_projected:
            return None
        _, metres_per_unit = self.crs.linear_units_factor
        return math.hypot(self.transform.a, self.transform.d) * metres_per_unit, "m"
