"""Small real files for the label, training and evaluation tests: GeoTIFFs and polygon layers."""

import numpy as np
import pyogrio.raw
import rasterio
import shapely
from affine import Affine

UTM = "EPSG:32618"
IMAGE_TRANSFORM = Affine(30.0, 0.0, 400000.0, 0.0, -30.0, 2700000.0)


def write_raster(path, array, crs=UTM, transform=IMAGE_TRANSFORM, nodata=None):
    """A GeoTIFF of ``array`` ``(H, W)`` or ``(bands, H, W)``; ``crs=None``: no georeference."""
    array = np.asarray(array)
    bands = array[None] if array.ndim == 2 else array
    profile = {"driver": "GTiff", "height": bands.shape[1], "width": bands.shape[2], "count": bands.shape[0],
               "dtype": bands.dtype.name, "nodata": nodata}
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)
    return path


def pixel_box(transform, row0, row1, col0, col1):
    """The polygon covering pixel rows [row0, row1) and columns [col0, col1) in world coordinates."""
    corners = [(col0, row0), (col1, row0), (col1, row1), (col0, row1)]
    return shapely.Polygon([transform * corner for corner in corners])


def write_polygons(path, geometries, names, crs=UTM, field="class_name", driver=None):
    """A polygon layer (format from the suffix) with one text field holding ``names``."""
    wkb = shapely.to_wkb(np.asarray(geometries, dtype=object))
    pyogrio.raw.write(path, wkb, [np.asarray(names, dtype=object)], [field], geometry_type="Polygon",
                      crs=crs, driver=driver)
    return path
