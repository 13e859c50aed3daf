"""Writers: Zarr, OME-Zarr, Cloud-Optimised GeoTIFF masks, probability rasters, polygons and
QuPath objects.

Every writer takes dask arrays and computes them chunk by chunk (never the whole array), and
writes under a temporary name that becomes the output only when complete (see ``atomic``).
"""

from segtile.errors import (
    ClippedWarning,
    OutputError,
    OutputExistsError,
    PlacementError,
    UnknownClassError,
    VectorFormatError,
    WriterInputError,
    ZarrStoreError,
)
from segtile.writers.atomic import OutputSet, atomic_output, check_output
from segtile.writers.geotiff import probabilities_path_for, write_mask, write_probabilities
from segtile.writers.ome_zarr import write_ome_zarr
from segtile.writers.qupath import write_qupath_geojson
from segtile.writers.vector import vector_driver, write_polygons
from segtile.writers.zarr_store import read_zarr, write_zarr

__all__ = [
    "OutputError", "OutputExistsError", "OutputSet", "atomic_output", "check_output",
    "WriterInputError", "VectorFormatError", "UnknownClassError", "ZarrStoreError", "PlacementError", "ClippedWarning",
    "write_mask", "write_probabilities", "probabilities_path_for",
    "write_polygons", "vector_driver", "write_qupath_geojson",
    "write_zarr", "read_zarr", "write_ome_zarr",
]
