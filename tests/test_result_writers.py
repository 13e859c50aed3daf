"""The writers of a ``Segmentation`` check what they are asked before running the model."""

import numpy as np
import pytest

from segtile import segment
from segtile.writers import OutputError, WriterInputError
from tests.test_engine import CountingModel, write_geotiff


@pytest.fixture
def result(tmp_path, pointwise_model):
    """A lazy result on a small GeoTIFF, with its counting model at zero tiles."""
    path = tmp_path / "image.tif"
    write_geotiff(path, np.random.default_rng(5).integers(1, 255, size=(3, 48, 64), dtype=np.uint8))
    model = CountingModel(pointwise_model(bands=3, classes=2))
    result = segment(path, model, tile_size=32, overlap=8, device="cpu")
    model.tiles_seen = 0  # forget the class probe
    return result, model


@pytest.mark.parametrize("method, name, message", [
    ("to_vector", "mask.tif", r"to_vector\(\) cannot write mask.tif: its extension names the mask "
                              r"\(Cloud-Optimised GeoTIFF\) format; use to_geotiff\(\), or write\(\)"),
    ("to_geotiff", "regions.gpkg", r"to_geotiff\(\) cannot write regions.gpkg: .* the polygons format; "
                                   r"use to_vector\(\)"),
    ("to_zarr", "mask.tiff", r"the mask \(Cloud-Optimised GeoTIFF\) format; use to_geotiff"),
    ("to_geotiff", "labels.zarr", r"the Zarr store format; use to_zarr"),
])
def test_a_writer_refuses_another_writers_format(tmp_path, result, method, name, message):
    segmentation, model = result
    with pytest.raises(OutputError, match=message):
        getattr(segmentation, method)(tmp_path / name)
    assert model.tiles_seen == 0 and not (tmp_path / name).exists()


def test_write_without_an_output_is_a_clear_error(result):
    segmentation, model = result
    with pytest.raises(OutputError, match="name at least one output to write"):
        segmentation.write()
    assert model.tiles_seen == 0


@pytest.mark.parametrize("options, message", [
    ({"simplify": -1}, r"simplify must be a finite number >= 0 \(in the output's units\), got -1"),
    ({"min_area": "big"}, r"min_area must be a finite number >= 0 .* got 'big'"),
    ({"min_area": float("nan")}, "min_area must be a finite number >= 0"),
    ({"simplify": float("inf")}, "simplify must be a finite number >= 0"),
])
def test_polygon_options_are_checked_before_any_work(tmp_path, result, options, message):
    segmentation, model = result
    with pytest.raises(WriterInputError, match=message):
        segmentation.to_vector(tmp_path / "regions.gpkg", **options)
    assert model.tiles_seen == 0 and not (tmp_path / "regions.gpkg").exists()
