"""What a model for colour imagery is given from a GIS analyst's everyday files: the colours of a
paletted raster (looked up by GDAL), the bands its card names whatever their order in the file,
and a note when the file's bit depth is not the one the model was trained on. Files of other
projects from tests/data/corpus."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.windows import Window

from segtile import segment
from segtile.api import ResolutionWarning, SegmentError
from segtile.cli import main
from segtile.models import LoadedModel, ModelCard, save_torchscript
from segtile.sources import SourceError, open_source
from segtile.sources.palette import PaletteSource, in_colour
from tests.conftest import whole_image_logits

CORPUS = Path(__file__).resolve().parent / "data" / "corpus"
PALETTED = CORPUS / "test_color_table.tif"  # georust/gdal's: 166x123, one band with a colour table, a CRS

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def colours_of(dataset: rasterio.io.DatasetReader, indexes: np.ndarray) -> np.ndarray:
    """``indexes`` looked up in the dataset's colour table, as rasterio gives it: ``(3, h, w)``."""
    table = dataset.colormap(1)
    lookup = np.array([table.get(i, (0, 0, 0, 0))[:3] for i in range(256)], dtype=np.uint8)
    return lookup[indexes].transpose(2, 0, 1)


def test_a_paletted_raster_reads_as_the_colours_of_its_table():
    source = in_colour(open_source(PALETTED))
    with rasterio.open(PALETTED) as dataset:
        expected = colours_of(dataset, dataset.read(1))
        assert source.georef.crs == dataset.crs and source.georef.transform == dataset.transform
    assert isinstance(source, PaletteSource)
    assert (source.shape, source.dtype, source.band_names) == ((3, 123, 166), np.uint8, ("red", "green", "blue"))
    window = Window(7, 11, 120, 90)
    np.testing.assert_array_equal(source.read(window), expected[:, 11:101, 7:127])
    np.testing.assert_array_equal(source.select_bands([3, 1]).read(window), expected[[2, 0], 11:101, 7:127])
    assert source.files == (str(PALETTED),) and source.read_valid(window) is None


def test_images_of_values_have_no_colours_to_read():
    assert in_colour(open_source(CORPUS / "byte.tif")) is None  # grey values
    assert in_colour(open_source(CORPUS / "green.tif")) is None  # three bands
    with pytest.raises(SourceError, match="has no colour table"):
        PaletteSource(CORPUS / "byte.tif")


def test_colours_of_every_level_and_validity_from_the_indexes(tmp_path):
    path = tmp_path / "paletted.tif"
    shutil.copy(PALETTED, path)
    with rasterio.open(path, "r+") as dataset:
        common = int(np.bincount(dataset.read(1).ravel()).argmax())
        dataset.nodata = common  # the most common index is nodata: its colour is no colour of a valid pixel
        dataset.build_overviews([2], Resampling.nearest)
    source = in_colour(open_source(path))
    assert source.level_shapes == ((123, 166), (62, 83))
    with rasterio.open(path) as dataset, rasterio.open(path, overview_level=0) as overview:
        level0, level1 = dataset.read(1), overview.read(1)
        np.testing.assert_array_equal(source.read(Window(0, 0, 83, 62), level=1), colours_of(overview, level1))
        np.testing.assert_array_equal(source.read_valid(Window(0, 0, 166, 123)), level0 != common)
        np.testing.assert_array_equal(source.read_valid(Window(0, 0, 83, 62), level=1), level1 != common)


@pytest.fixture
def rgb_checkpoint(tmp_path):
    torch.manual_seed(3)
    model = torch.nn.Conv2d(3, 3, 1).eval()
    path = save_torchscript(tmp_path / "rgb.pt", model, ModelCard(classes=("a", "b", "c"), tile_size=64, overlap=8))
    return path, model


def test_the_command_gives_a_colour_model_the_colours_of_a_paletted_raster(tmp_path, rgb_checkpoint, capsys):
    checkpoint, model = rgb_checkpoint
    mask = tmp_path / "mask.tif"
    assert main([str(PALETTED), "--model", str(checkpoint), "--out", str(mask), "--quiet"]) == 0
    with rasterio.open(PALETTED) as dataset, rasterio.open(mask) as out:
        colours, indexes = colours_of(dataset, dataset.read(1)), dataset.read(1)
        labels = out.read(1)
        assert (out.crs, out.transform) == (dataset.crs, dataset.transform)
    np.testing.assert_array_equal(labels, whole_image_logits(model, colours.astype(np.float32)).argmax(axis=0))
    assert capsys.readouterr().err == ""  # --quiet: the note is in result.notes (and without --quiet, printed)
    assert main([str(PALETTED), "--model", str(checkpoint), "--out", str(mask), "--bands", "1,1,1",
                 "--overwrite"]) == 0  # the user's choice: the indexes
    assert "colour-table" not in capsys.readouterr().err
    with rasterio.open(mask) as out:
        by_index = whole_image_logits(model, np.repeat(indexes[None], 3, axis=0).astype(np.float32)).argmax(axis=0)
        np.testing.assert_array_equal(out.read(1), by_index)


def test_the_paletted_note():
    model = LoadedModel(torch.nn.Conv2d(3, 2, 1), ModelCard(classes=("x", "y"), tile_size=64, overlap=8))
    with pytest.warns(ResolutionWarning, match=r"the image is paletted \(one band of colour-table indexes\): the "
                      r"model reads the colours GDAL looks up \(red, green, blue\); --bands 1,1,1"):
        segment(PALETTED, model, device="cpu")
    one_band = LoadedModel(torch.nn.Conv2d(1, 2, 1), ModelCard(classes=("x", "y"), in_channels=1, tile_size=64,
                                                               overlap=8))
    assert segment(PALETTED, one_band, device="cpu").notes == ()  # a model of one band reads the indexes


def test_bands_are_read_by_the_names_the_card_gives_them():
    """rasterio's RGBA.uint16.tif stores blue, green, red, alpha: a model trained on red, green,
    blue (its card's band_names, as `segtile train` records them) gets them in that order."""
    path = CORPUS / "RGBA.uint16.tif"
    network = torch.nn.Conv2d(3, 2, 1).eval()
    named = ModelCard(classes=("x", "y"), bands=(1, 2, 3), scale=65535.0, tile_size=64, overlap=8,
                      extra={"band_names": ["red", "green", "blue"]})
    result = segment(path, LoadedModel(network, named), device="cpu")
    assert result.notes == ("reading bands 3,2,1 (red, green, blue): the bands the model card names, in its order; "
                            "choose others with --bands (Python: bands=[...])",)
    with rasterio.open(path) as dataset:
        pixels, valid = dataset.read([3, 2, 1], window=Window(0, 0, 64, 64)), dataset.dataset_mask()[:64, :64] > 0
    labels = result.labels[:64, :64].compute()
    expected = whole_image_logits(network, pixels.astype(np.float32) / 65535.0).argmax(axis=0)
    np.testing.assert_array_equal(labels[valid], expected[valid])
    numbered = ModelCard(classes=("x", "y"), scale=65535.0, tile_size=64, overlap=8,
                         extra={"band_names": ["band 1", "band 2", "band 3"]})
    assert segment(path, LoadedModel(network, numbered), device="cpu").notes == ()  # numbers name no band
    assert segment(path, LoadedModel(network, named), bands=[1, 2, 3], device="cpu").notes == ()  # the user's


@pytest.mark.parametrize("name, scale, noted", [
    ("mosaic_value_1.tif", 255.0, True),    # uint16 imagery, a model for 8-bit images
    ("mosaic_value_1.tif", 65535.0, False),
    ("green.tif", 255.0, False),            # uint8, a model for 8-bit images
    ("green.tif", 65535.0, True),
    ("cog_gradient.tif", 255.0, False),     # float32: its range is the file's own business
])
def test_a_note_when_the_bit_depth_is_not_the_models(name, scale, noted):
    path = CORPUS / name
    bands = open_source(path).count
    card = ModelCard(classes=("x", "y"), in_channels=bands, scale=scale, tile_size=64, overlap=8)
    notes = segment(path, LoadedModel(torch.nn.Conv2d(bands, 2, 1), card), device="cpu").notes
    assert any("the model was trained on" in note for note in notes) == noted
    if noted:
        trained, given = ("uint8", "uint16") if scale == 255.0 else ("uint16", "uint8")
        assert f"the model was trained on {trained} images (its card divides values by {scale:g}) but the image is " \
               f"{given}" in notes[0]


def test_the_band_count_error_suggests_bands_the_image_has():
    """rio-tiler's cog_scale.tif has 2 bands: a model of 3 is told of --bands 1,2,2, not of a band 3."""
    model = LoadedModel(torch.nn.Conv2d(3, 2, 1), ModelCard(classes=("x", "y"), tile_size=64, overlap=8))
    with pytest.raises(SegmentError, match=r"the model takes 3 bands but the image has 2 bands: choose 3 with --bands "
                                           r"\(e.g. --bands 1,2,2; "):
        segment(CORPUS / "cog_scale.tif", model, device="cpu")
