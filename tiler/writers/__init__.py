"""Writers: Zarr, Cloud-Optimised GeoTIFF masks, probability rasters and polygons."""
