"""A Zarr store (v3, or v2 for older readers) of the labels (and probabilities) with everything
needed to read them back, and the coordinates GIS tools (GDAL, xarray / rioxarray) place them by.

Layout of the group at ``PATH.zarr``:

- ``labels``: ``(H, W)`` uint8 / uint16, fill value ``nodata``, dimensions ``(y, x)``;
- ``probabilities`` (optional): ``(classes, H, W)`` float32, NaN where unknown, dimensions
  ``(class, y, x)``;
- ``x``, ``y``: the map coordinates of the pixels' centres along each axis, for a north-up
  transform (no rotation: otherwise no 1-D coordinates can say where a pixel is);
- ``spatial_ref``: a CF grid mapping (an empty array whose attributes describe the CRS, as
  rioxarray writes it): the CF attributes of the CRS (``grid_mapping_name``…, ``crs_wkt``, and
  ``spatial_ref``, GDAL's name for the WKT), ``GeoTransform`` (GDAL's six numbers
  ``c a b f d e``, rotation included), and the GCPs as rioxarray writes them (``gcps``: a
  GeoJSON FeatureCollection); ``labels`` and ``probabilities`` name it in their ``grid_mapping``
  and ``coordinates`` attributes, and carry GDAL's own ``_CRS`` (``{"wkt": ...}``) when GDAL can
  place them (a north-up transform with a CRS);
- group attributes (segtile's, what :func:`read_zarr` reads): ``crs`` (WKT, or null),
  ``transform`` (the six affine coefficients ``[a, b, c, d, e, f]`` of ``x = a·col + b·row + c``,
  ``y = d·col + e·row + f``, as in rasterio's ``Affine``; GDAL's order is ``[c, a, b, f, d, e]``;
  or null), ``gcps`` (the ground control points, a GeoJSON FeatureCollection of points whose
  properties hold ``row``, ``col``, ``id``, ``info``; or null), ``gcp_crs`` (WKT, or null),
  ``rpcs`` (the RPCs, rasterio's ``RPC.to_dict()``: GDAL's RPC metadata in lower case; or null),
  ``mpp`` (µm per pixel, or null), ``classes``, ``colors``, ``nodata`` and ``card`` (the whole
  model card).

Zarr v2 stores name their dimensions in xarray's ``_ARRAY_DIMENSIONS`` attribute (v3 in the
arrays' ``dimension_names``). Both carry consolidated metadata (v2: ``.zmetadata``; v3: in the
root ``zarr.json``, as zarr-python writes it), which xarray opens without a warning.

Arrays are chunked as the dask arrays handed in (made regular when they are not) and written
chunk by chunk in one ``da.store`` call, so labels and probabilities computed from the same logits
share one pass. A chunk of nothing but nodata is left out, as Zarr does (it reads as the fill
value), but checked in the Dask threads rather than in Zarr's one event-loop thread
(:class:`~segtile.writers.blocks.SparseChunks`).
"""

from __future__ import annotations

import json
import warnings
from os import PathLike
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pyproj
import zarr
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.rpc import RPC

from segtile.errors import WriterInputError, ZarrStoreError
from segtile.georef import Georef
from segtile.models.card import ModelCard
from segtile.writers.atomic import destination
from segtile.writers.blocks import WRITE_EVERY_CHUNK, as_labels, as_probabilities, store_in_zarr

ZARR_FORMATS = (2, 3)
GRID_MAPPING = "spatial_ref"


def check_zarr_format(zarr_format: int) -> None:
    """Raise :class:`WriterInputError` unless segtile writes Zarr stores of ``zarr_format``."""
    if isinstance(zarr_format, bool) or zarr_format not in ZARR_FORMATS:
        raise WriterInputError(f"the Zarr format must be 2 or 3, not {zarr_format!r}")


def write_zarr(path: str | PathLike, labels: Any, georef: Georef, card: ModelCard, *,
               probabilities: Any = None, nodata: int = 255, overwrite: bool = False,
               atomic: bool = True, zarr_format: int = 3) -> Path:
    """Write labels (and probabilities) with their georeference and card to a Zarr group;
    return ``path``. See the module docstring for the layout. ``zarr_format=2`` writes Zarr v2,
    which GDAL before 3.8 (and the QGIS built on it) reads; v3 otherwise."""
    check_zarr_format(zarr_format)
    labels = regular_chunks(as_labels(labels, card, nodata))
    sources, targets = [labels], []
    with destination(path, overwrite, atomic, directory=True) as target:
        group = zarr.open_group(str(target), mode="w", zarr_format=zarr_format,
                                attributes=segtile_attributes(georef, card, nodata))
        placed = _grid_mapping(group, georef, labels.shape)
        targets.append(_create(group, "labels", labels.shape, labels.chunksize, labels.dtype, nodata, ("y", "x"),
                               placed))
        if probabilities is not None:
            probabilities = regular_chunks(as_probabilities(probabilities, card, labels.shape).astype(np.float32))
            sources.append(probabilities)
            targets.append(_create(group, "probabilities", probabilities.shape, probabilities.chunksize,
                                   np.dtype(np.float32), np.nan, ("class", "y", "x"), placed))
        store_in_zarr(sources, targets)
        with warnings.catch_warnings():  # zarr warns that v3 has no consolidated metadata in its specification yet
            warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
            zarr.consolidate_metadata(str(target))
    return Path(path)


def _create(group: zarr.Group, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype,
            fill_value: float, dimensions: tuple[str, ...], attributes: dict[str, Any]) -> zarr.Array:
    """An array of ``group`` whose dimensions are named as its Zarr format does."""
    if group.metadata.zarr_format == 2:
        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,
                                  attributes={**attributes, "_ARRAY_DIMENSIONS": list(dimensions)},
                                  config=WRITE_EVERY_CHUNK)
    return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,
                              dimension_names=dimensions, attributes=attributes, config=WRITE_EVERY_CHUNK)


def _grid_mapping(group: zarr.Group, georef: Georef, shape: tuple[int, int]) -> dict[str, Any]:
    """Write ``spatial_ref`` and, for a north-up transform, the ``x`` and ``y`` coordinates (see
    the module docstring); return the attributes the data arrays take to point at them (none for
    plain arrays and slides)."""
    placement = georef.placement
    if placement in (None, "rpcs") or georef.is_slide:  # RPCs: no grid mapping (CF, GDAL) holds them
        return {}
    mapping: dict[str, Any] = {}
    crs = georef.map_crs
    if crs is not None:
        wkt = crs.to_wkt()
        mapping.update(pyproj.CRS.from_wkt(wkt).to_cf(), crs_wkt=wkt, spatial_ref=wkt)
    attributes = {"grid_mapping": GRID_MAPPING, "coordinates": GRID_MAPPING}
    if placement == "transform":
        mapping["GeoTransform"] = " ".join(repr(float(v)) for v in georef.transform.to_gdal())
        if _north_up(georef.transform):
            _coordinates(group, georef.transform, shape, crs)
            if crs is not None:
                attributes["_CRS"] = {"wkt": crs.to_wkt()}
    if placement == "gcps":
        mapping["gcps"] = json.dumps(_gcps_geojson(georef.gcps))
    _create(group, GRID_MAPPING, (), (), np.dtype(np.int32), 0, (), mapping)[...] = 0
    return attributes


def _north_up(transform: Affine) -> bool:
    return transform.b == 0 and transform.d == 0


def _coordinates(group: zarr.Group, transform: Affine, shape: tuple[int, int], crs: CRS | None) -> None:
    """The 1-D ``x`` and ``y`` arrays: map coordinates of the pixels' centres (CF, xarray)."""
    height, width = shape
    x_attributes, y_attributes = _axis_attributes(crs)
    for name, size, values, attributes in (
        ("x", width, transform.c + transform.a * (np.arange(width) + 0.5), x_attributes),
        ("y", height, transform.f + transform.e * (np.arange(height) + 0.5), y_attributes),
    ):
        _create(group, name, (size,), (size,), np.dtype(np.float64), np.nan, (name,), attributes)[...] = values


def _axis_attributes(crs: CRS | None) -> tuple[dict[str, str], dict[str, str]]:
    """CF attributes of the ``x`` and ``y`` coordinates in ``crs``."""
    if crs is not None and crs.is_geographic:
        return ({"standard_name": "longitude", "units": "degrees_east", "axis": "X"},
                {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"})
    units = {"units": crs.linear_units} if crs is not None and crs.is_projected else {}
    return ({"standard_name": "projection_x_coordinate", "axis": "X", **units},
            {"standard_name": "projection_y_coordinate", "axis": "Y", **units})


def read_zarr(path: str | PathLike) -> tuple[da.Array, da.Array | None, Georef, ModelCard]:
    """Open a store written by :func:`write_zarr` (v2 or v3): lazy ``(labels, probabilities or
    None, georef, card)``, chunked as stored. The ``nodata`` value is the group's ``nodata``
    attribute (and the labels' fill value)."""
    group = _open(path)
    attributes = group.attrs
    labels = da.from_zarr(group["labels"])
    probabilities = da.from_zarr(group["probabilities"]) if "probabilities" in group else None
    return labels, probabilities, _read_georef(attributes), ModelCard.from_dict(attributes["card"])


def _read_georef(attributes: Any) -> Georef:
    """The georeference in the group ``attributes`` of :func:`segtile_attributes`."""
    crs = CRS.from_wkt(attributes["crs"]) if attributes.get("crs") else None
    transform = Affine(*attributes["transform"]) if attributes.get("transform") else None
    gcps = tuple(_gcp(feature) for feature in (attributes.get("gcps") or {}).get("features", ()))
    gcp_crs = CRS.from_wkt(attributes["gcp_crs"]) if attributes.get("gcp_crs") else None
    rpcs = RPC(**attributes["rpcs"]) if attributes.get("rpcs") else None
    return Georef(crs, transform, attributes.get("mpp"), gcps=gcps, gcp_crs=gcp_crs, rpcs=rpcs)


def _open(path: str | PathLike) -> zarr.Group:
    try:
        group = zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise ZarrStoreError(f"not a Zarr group: {path}") from None
    if "labels" not in group or "card" not in group.attrs:
        raise ZarrStoreError(f"not a segtile Zarr store (no labels or no model card): {path}")
    return group


def segtile_attributes(georef: Georef, card: ModelCard, nodata: int) -> dict[str, Any]:
    """The group attributes segtile reads back (see the module docstring)."""
    transform = georef.transform
    return {
        "crs": georef.crs.to_wkt() if georef.crs is not None else None,
        "transform": list(transform)[:6] if transform is not None else None,
        "gcps": _gcps_geojson(georef.gcps) if georef.gcps else None,
        "gcp_crs": georef.gcp_crs.to_wkt() if georef.gcp_crs is not None else None,
        "rpcs": georef.rpcs.to_dict() if georef.rpcs is not None else None,
        "mpp": georef.mpp,
        "classes": list(card.classes),
        "colors": list(card.colors),
        "nodata": nodata,
        "card": card.to_dict(),
    }


def _gcps_geojson(gcps: tuple[GroundControlPoint, ...]) -> dict[str, Any]:
    """The GCPs as rioxarray stores them: a FeatureCollection of points (x, y, z) whose
    properties hold their pixel (``col``), line (``row``), ``id`` and ``info``."""
    return {"type": "FeatureCollection", "features": [gcp.__geo_interface__ for gcp in gcps]}


def _gcp(feature: dict[str, Any]) -> GroundControlPoint:
    x, y, *z = feature["geometry"]["coordinates"]
    properties = feature["properties"]
    return GroundControlPoint(row=properties["row"], col=properties["col"], x=x, y=y, z=z[0] if z else None,
                              id=properties["id"], info=properties["info"])


def regular_chunks(array: da.Array) -> da.Array:
    """``array`` with chunks Zarr can hold: equal along each axis but for a smaller last one."""
    for sizes in array.chunks:
        if len(set(sizes[:-1])) > 1 or sizes[-1] > sizes[0]:
            return array.rechunk(array.chunksize)
    return array
