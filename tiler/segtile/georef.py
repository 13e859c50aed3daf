"""Where a raster sits in the world: CRS and affine transform, ground control points or RPCs
(rasters), or µm per pixel (slides)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.rpc import RPC

WGS84 = CRS.from_epsg(4326)
"""The CRS of the longitudes and latitudes RPCs give (GDAL's RPC transformer)."""


@dataclass(frozen=True)
class Georef:
    """The georeference carried from a source to every output.

    Attributes:
        crs: coordinate reference system of ``transform``, or ``None`` (plain arrays, slides, a
            raster with a transform and no CRS, images georeferenced by GCPs or RPCs only).
        transform: pixel -> world affine transform (rotation allowed) of a raster in ``crs``;
            for a slide (no ``crs``), pixel -> level-0 pixel coordinates (the identity at full
            resolution), the coordinates its annotations are given in; ``None`` for plain arrays
            and images without a geotransform.
        mpp: microns per pixel for microscopy slides, or ``None``.
        gcps: ground control points (pixel and line from the top-left corner of the image, as
            in GDAL) of an image without a geotransform; empty otherwise.
        gcp_crs: the CRS of the GCPs' coordinates.
        rpcs: rational polynomial coefficients (a raw satellite product's), or ``None``; they
            map WGS 84 longitude, latitude and height to pixels.
    """

    crs: CRS | None = None
    transform: Affine | None = None
    mpp: float | None = None
    gcps: tuple[GroundControlPoint, ...] = ()
    gcp_crs: CRS | None = None
    rpcs: RPC | None = None

    @property
    def is_georeferenced(self) -> bool:
        return self.crs is not None and self.transform is not None

    @property
    def is_slide(self) -> bool:
        """Whether this is a microscopy slide's grid: a pixel size in µm and no CRS. Outputs then
        take the forms pathology tools read (OME-Zarr, QuPath GeoJSON, TIFF resolution tags)."""
        return self.crs is None and self.mpp is not None

    @property
    def placement(self) -> str | None:
        """How pixel coordinates become map coordinates, in the order GDAL (gdalwarp) prefers
        them: ``"transform"`` (the affine transform), ``"gcps"`` (GDAL's GCP transformer: the
        polynomial fitted to the ground control points), ``"rpcs"`` (GDAL's RPC transformer), or
        ``None`` (coordinates stay pixels)."""
        if self.transform is not None:
            return "transform"
        if self.gcps:
            return "gcps"
        return "rpcs" if self.rpcs is not None else None

    @property
    def map_crs(self) -> CRS | None:
        """The CRS of the map coordinates pixels become (see :attr:`placement`): ``crs`` with a
        transform, the GCPs' CRS, WGS 84 for RPCs; ``None`` when there is none (pixels, slides,
        a transform without CRS)."""
        placement = self.placement
        if placement == "transform":
            return self.crs
        if placement == "gcps":
            return self.gcp_crs
        return WGS84 if placement == "rpcs" else None

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
        times along rows (> 1: coarser): the transform scaled, the GCPs' pixels and lines divided,
        the RPCs' sample and line offsets and scales adjusted. The µm per pixel follow the columns."""
        transform = self.transform @ Affine.scale(x, y) if self.transform is not None else None
        mpp = self.mpp * x if self.mpp is not None else None
        gcps = tuple(_scaled_gcp(gcp, x, y) for gcp in self.gcps)
        rpcs = _scaled_rpcs(self.rpcs, x, y) if self.rpcs is not None else None
        return replace(self, transform=transform, mpp=mpp, gcps=gcps, rpcs=rpcs)

    def pixel_size(self) -> tuple[float, str] | None:
        """The size of a pixel along the columns and its unit: ``(µm, "um")`` for slides,
        ``(metres, "m")`` for rasters in a projected CRS; ``None`` when unknown (plain arrays,
        geographic CRS in degrees, images placed by GCPs or RPCs, whose pixels have no one size)."""
        if self.mpp is not None:
            return self.mpp, "um"
        if self.transform is None or self.crs is None or not self.crs.is_projected:
            return None
        _, metres_per_unit = self.crs.linear_units_factor
        return math.hypot(self.transform.a, self.transform.d) * metres_per_unit, "m"


def _scaled_gcp(gcp: GroundControlPoint, x: float, y: float) -> GroundControlPoint:
    """``gcp`` on a grid ``x`` times coarser along columns and ``y`` along rows: GDAL counts
    pixels and lines from the image's top-left corner, so they scale as they are."""
    return GroundControlPoint(row=gcp.row / y, col=gcp.col / x, x=gcp.x, y=gcp.y, z=gcp.z, id=gcp.id, info=gcp.info)


def _scaled_rpcs(rpcs: RPC, x: float, y: float) -> RPC:
    """``rpcs`` on a grid ``x`` times coarser along columns (samples) and ``y`` along rows
    (lines). RPCs count from the centre of the first pixel, half a pixel from GDAL's corner
    origin: a sample ``s`` is at ``s + 0.5`` from the corner, ``(s + 0.5) / x`` on the new grid,
    so the offset becomes ``(offset + 0.5) / x - 0.5`` and the scale ``scale / x``."""
    fields = rpcs.to_dict()
    fields.update(samp_off=(rpcs.samp_off + 0.5) / x - 0.5, samp_scale=rpcs.samp_scale / x,
                  line_off=(rpcs.line_off + 0.5) / y - 0.5, line_scale=rpcs.line_scale / y)
    return RPC(**fields)
