"""The writers of a ``Segmentation`` check what they are asked before running the model."""

import numpy as np
import pytest

from segtile.writers import OutputError, WriterInputError


@pytest.mark.parametrize("method, name, message", [
    ("to_vector", "mask.tif", r"to_vector\(\) cannot write mask.tif: its extension names the mask "
                              r"\(Cloud-Optimised GeoTIFF\) format; use to_geotiff\(\), or write\(\)"),
    ("to_geotiff", "regions.gpkg", r"to_geotiff\(\) cannot write regions.gpkg: .* the polygons format; "
                                   r"use to_vector\(\)"),
    ("to_zarr", "mask.tiff", r"the mask \(Cloud-Optimised GeoTIFF\) format; use to_geotiff"),
    ("to_geotiff", "labels.zarr", r"the Zarr store format; use to_zarr"),
])
def test_a_writer_refuses_another_writers_format(tmp_path, counted, method, name, message):
    segmentation, model = counted
    with pytest.raises(OutputError, match=message):
        getattr(segmentation, method)(tmp_path / name)
    assert model.tiles_seen == 0 and not (tmp_path / name).exists()


def test_write_without_an_output_is_a_clear_error(counted):
    segmentation, model = counted
    with pytest.raises(OutputError, match="name at least one output to write"):
        segmentation.write()
    assert model.tiles_seen == 0


def test_numpy_numbers_are_taken_as_polygon_options(tmp_path, counted):
    segmentation, _ = counted
    segmentation.to_vector(tmp_path / "regions.gpkg", simplify=np.float32(0.5), min_area=np.int64(4))
    assert (tmp_path / "regions.gpkg").exists()


@pytest.mark.parametrize("options, message", [
    ({"simplify": -1}, r"simplify must be a finite number >= 0 \(in the output's units\), got -1"),
    ({"min_area": "big"}, r"min_area must be a finite number >= 0 .* got 'big'"),
    ({"min_area": float("nan")}, "min_area must be a finite number >= 0"),
    ({"simplify": float("inf")}, "simplify must be a finite number >= 0"),
    ({"simplify": True}, "simplify must be a finite number >= 0"),
])
def test_polygon_options_are_checked_before_any_work(tmp_path, counted, options, message):
    segmentation, model = counted
    with pytest.raises(WriterInputError, match=message):
        segmentation.to_vector(tmp_path / "regions.gpkg", **options)
    assert model.tiles_seen == 0 and not (tmp_path / "regions.gpkg").exists()
