"""``Segmentation.preview``: the model on a coarse grid, painted, shown as PNG and HTML."""

import base64
import re

import imagecodecs
import numpy as np
import pytest
from rasterio.windows import Window

import segtile.sources.overview as overview_module
from segtile import segment
from segtile.errors import SegtileError
from segtile.preview import blend, stretch
from segtile.sources.overview import coarse_source
from segtile.sources.resample import ResampledSource
from segtile.writers.legend import rgb
from tests.test_engine import CountingModel, random_image


def test_preview_runs_the_model_on_far_fewer_pixels_than_the_full_job(pointwise_model):
    model = CountingModel(pointwise_model(bands=3, classes=3))
    result = segment(random_image(3, 1200, 900), model, tile_size=64, overlap=8, device="cpu")
    before = model.pixels_seen
    picture = result.preview(max_size=120)
    preview_pixels = model.pixels_seen - before
    assert picture.array.shape == (120, 90, 3)
    assert picture.labels.shape == (120, 90)
    result.labels.compute()
    full_pixels = model.pixels_seen - before - preview_pixels
    assert full_pixels >= 1200 * 900
    assert preview_pixels * 50 < full_pixels  # 120 x 90 in tiles of 64 with overlap: 9 tiles


def test_the_coarse_grid_is_read_from_the_coarsest_overview_fine_enough(data_dir, pointwise_model):
    # landsat7.tif (2181 x 1917) has overviews at 1/2 and 1/4: a 256 px grid (1/8.5) reads the 1/4 one
    result = segment(data_dir / "landsat7.tif", pointwise_model(bands=3, classes=2), device="cpu")
    coarse = coarse_source(result.source, 256)
    assert isinstance(coarse, ResampledSource)
    assert (coarse.width, coarse.height) == (256, 225)
    assert coarse.read_level == 2


def test_an_image_already_resampled_is_resampled_again_from_the_file(data_dir):
    result = segment(data_dir / "landsat7.tif", resolution=60)  # the default model, on a 60 m grid
    assert isinstance(result.source, ResampledSource)
    coarse = coarse_source(result.source, 100)
    assert coarse.inner is result.source.inner
    assert coarse_source(result.source, 5000) is result.source  # small enough: segmented as it is


def test_the_coarse_grid_is_read_once_in_bounded_windows_that_fit_together(data_dir, monkeypatch):
    source = segment(data_dir / "bahamas_rgb.tif").source  # nodata 0 around the scene
    coarse = coarse_source(source, 500)  # 791 px to 500: the 1/2 overview is too coarse, level 0 is read
    assert coarse.read_level == 0
    monkeypatch.setattr(overview_module, "READ_SIDE", 100)  # windows of 100 / 1.58 = 63 px: 64 of them
    assert overview_module._window_side(coarse) == 63
    pixels = overview_module.read_whole(coarse)
    whole, valid = coarse.read_with_valid(Window(0, 0, coarse.width, coarse.height))
    assert pixels.dtype == np.float32 and pixels.shape == whole.shape
    np.testing.assert_array_equal(pixels, whole)
    assert np.isnan(pixels[:, ~valid]).all() and not np.isnan(pixels[:, valid]).any()


def test_labels_alone_are_painted_in_the_card_colours(pointwise_model):
    result = segment(random_image(3, 90, 60), pointwise_model(bands=3, classes=3), tile_size=32, overlap=8,
                     device="cpu")
    picture = result.preview(max_size=np.int64(30), over_image=False)  # any integer type will do
    assert picture.array.shape == (30, 20, 3)
    assert len(np.unique(picture.labels)) > 1
    for class_id, colour in enumerate(result.card.colors):
        assert (picture.array[picture.labels == class_id] == rgb(colour)).all()


def test_over_the_image_alpha_mixes_the_stretched_image_and_the_colours(data_dir):
    result = segment(data_dir / "bahamas_rgb.tif")  # nodata 0 around the scene
    alone = result.preview(max_size=200, over_image=False).array
    image_only = result.preview(max_size=200, alpha=0.0)
    classes_only = result.preview(max_size=200, alpha=1.0).array
    half = result.preview(max_size=200, alpha=0.5).array
    segmented = image_only.labels != result.nodata
    assert 0 < segmented.mean() < 1
    assert (classes_only[segmented] == alone[segmented]).all()
    assert (classes_only[~segmented] == image_only.array[~segmented]).all()
    expected = np.round((image_only.array.astype(float) + alone) / 2)
    assert np.abs(half[segmented] - expected[segmented]).max() <= 1
    assert (image_only.array[~segmented] == 0).all()  # nodata: black


def test_stretch_maps_the_2nd_and_98th_percentiles_to_black_and_white():
    ramp = np.arange(10000, dtype=np.float32).reshape(1, 100, 100)
    grey = stretch(ramp, None)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 0] == grey[..., 2]).all()  # one band: grey
    assert (grey.reshape(-1, 3)[:200] == 0).all() and (grey.reshape(-1, 3)[-200:] == 255).all()
    assert grey.reshape(-1, 3)[300, 0] == 3 and abs(int(grey[50, 0, 0]) - 127) <= 1
    valid = np.ones((100, 100), dtype=bool)
    valid[:10] = False
    third = ramp[0].copy()
    third[50, :5] = np.nan
    colour = stretch(np.stack([ramp[0], -ramp[0], third]), valid)
    assert (colour[:10] == 0).all() and (colour[50, :5] == 0).all()  # invalid, or not finite in a band
    assert (colour[99, 99] == (255, 0, 255)).all()  # each band stretched on its own


def test_blend_keeps_the_image_where_nothing_is_painted():
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    colours = np.full((2, 2, 3), 200, dtype=np.uint8)
    where = np.array([[True, False], [False, True]])
    mixed = blend(image, colours, where, 0.25)
    assert (mixed[where] == 125).all() and (mixed[~where] == 100).all()


def test_the_preview_shows_as_png_and_html_and_saves(tmp_path, data_dir):
    picture = segment(data_dir / "bahamas_rgb.tif").preview(max_size=64)
    assert (imagecodecs.png_decode(picture._repr_png_()) == picture.array).all()
    page = picture._repr_html_()
    for name, colour in zip(picture.card.classes, picture.card.colors):
        assert name in page and colour in page
    encoded = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert (imagecodecs.png_decode(base64.b64decode(encoded)) == picture.array).all()
    assert "a look, not a result" in page  # 791 px shown in 64: computed at 1/12 scale
    saved = picture.save(tmp_path / "look.png")
    assert (imagecodecs.png_decode(saved.read_bytes()) == picture.array).all()
    assert repr(picture) == "<Preview 64×58 px at 1/12.4 scale>"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_size": 0}, "max_size must be a positive integer, got 0"),
    ({"max_size": 10.5}, "max_size must be a positive integer"),
    ({"alpha": 1.5}, "alpha must be between 0 and 1, got 1.5"),
])
def test_bad_preview_arguments_are_one_line_errors(pointwise_model, kwargs, message):
    result = segment(random_image(3, 40, 40), pointwise_model(bands=3, classes=2), device="cpu")
    with pytest.raises(SegtileError, match=message) as error:
        result.preview(**kwargs)
    assert "\n" not in str(error.value)
