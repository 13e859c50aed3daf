"""The grid the model runs on: a pyramid level, a pixel size in metres or µm, or the model's own."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

from segtile import segment
from segtile.models import LoadedModel, ModelCard
from segtile.sources import SourceError, open_source
from segtile.sources.resample import ResampledSource, at_level, at_pixel_size
from segtile.sources.working_grid import GridChoiceError, choose_grid

CORPUS = Path(__file__).resolve().parent / "data" / "corpus"  # other projects' test files


def whole_image_average(path, shape):
    """The whole image resampled by GDAL at once: what every window of the grid must equal."""
    with rasterio.open(path) as src:
        pixels = src.read().astype(np.float32)
        pixels[:, src.dataset_mask() == 0] = np.nan
        out = np.full((src.count, *shape), np.nan, dtype=np.float32)
        crs = CRS.from_epsg(3857)
        scale = Affine.scale(src.width / shape[1], src.height / shape[0])
        reproject(pixels, out, src_transform=Affine.identity(), src_crs=crs, src_nodata=np.nan,
                  dst_transform=scale, dst_crs=crs, dst_nodata=np.nan, resampling=Resampling.average)
    return out


def test_a_raster_at_a_resolution_keeps_its_extent_and_scales_per_axis(data_dir):
    path = data_dir / "landsat7.tif"  # 2181 x 1917 px of 30 m
    source = at_pixel_size(open_source(path), 70.0, "m")
    assert source.shape[1:] == (round(1917 * 30 / 70), round(2181 * 30 / 70))
    with rasterio.open(path) as src:
        expected = src.transform * Affine.scale(2181 / source.width, 1917 / source.height)
        assert source.georef.transform.almost_equals(expected, precision=1e-12)
        assert source.georef.crs == src.crs
        assert source.georef.transform * (source.width, source.height) == pytest.approx(
            src.transform * (src.width, src.height))


def test_windows_of_the_grid_equal_the_whole_image_resampled(data_dir):
    path = data_dir / "rmnp-rgb.tif"  # stripped, nodata 255
    source = ResampledSource(open_source(path), (150, 190))
    whole = whole_image_average(path, (150, 190))
    for window in (Window(0, 0, 190, 150), Window(37, 11, 60, 45), Window(150, 120, 40, 30)):
        pixels, valid = source.read_with_valid(window)
        rows, cols = window.toslices()
        np.testing.assert_allclose(pixels, whole[:, rows, cols], rtol=1e-5, equal_nan=True)
        expected_valid = ~np.isnan(whole[:, rows, cols]).all(axis=0)
        np.testing.assert_array_equal(valid if valid is not None else np.ones_like(expected_valid), expected_valid)


def test_a_level_is_read_as_it_is_and_georeferenced_per_axis(data_dir):
    path = data_dir / "landsat7.tif"
    opened = open_source(path)
    source = at_level(opened, 1)  # 1091 x 959: not exactly half of 2181 x 1917
    assert source.shape[1:] == (959, 1091) and source.dtype == np.uint8
    window = Window(100, 50, 64, 48)
    np.testing.assert_array_equal(source.read(window), opened.read(window, 1))
    transform = source.georef.transform
    assert (transform.a, transform.e) == (pytest.approx(30 * 2181 / 1091), pytest.approx(-30 * 1917 / 959))
    with pytest.raises(SourceError, match="level 3 does not exist: the image has 3 levels"):
        at_level(opened, 3)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory, data_dir):
    """The real slide written as a pyramidal TIFF (levels 1, 1/2, 1/4) with its µm per pixel."""
    with tifffile.TiffFile(data_dir / "cmu_small_region.svs") as tif:
        image = tif.series[0].asarray()
    path = tmp_path_factory.mktemp("slides") / "pyramid.tif"
    resolution = (1e4 / 0.499, 1e4 / 0.499)  # pixels per cm
    with tifffile.TiffWriter(path) as out:
        out.write(image, tile=(256, 256), subifds=2, resolution=resolution, resolutionunit="CENTIMETER",
                  photometric="rgb", compression="zlib")
        for factor in (2, 4):
            out.write(image[::factor, ::factor], tile=(256, 256), subfiletype=1, photometric="rgb",
                      resolution=(resolution[0] / factor, resolution[1] / factor), resolutionunit="CENTIMETER",
                      compression="zlib")
    return path


@pytest.mark.parametrize("mpp, level", [(0.499, 0), (0.8, 0), (1.0, 1), (1.5, 1), (2.0, 2), (4.0, 2)])
def test_a_slide_is_read_from_the_coarsest_level_still_fine_enough(pyramid, mpp, level):
    opened = open_source(pyramid)
    assert opened.georef.mpp == pytest.approx(0.499)
    source = at_pixel_size(opened, mpp, "um")
    assert source.shape[1:] == (round(opened.height * 0.499 / mpp), round(opened.width * 0.499 / mpp))
    assert source.georef.mpp == pytest.approx(0.499 * opened.width / source.width)
    assert getattr(source, "read_level", 0) == level
    pixels = source.read(Window(0, 0, min(64, source.width), min(64, source.height)))
    assert np.isfinite(pixels).all() and pixels.max() > 0


def test_pixel_sizes_the_image_cannot_give_are_refused(data_dir):
    raster = open_source(data_dir / "landsat7.tif")
    with pytest.raises(SourceError, match=r"rasters take --resolution \(Python: resolution=\), in metres per pixel"):
        at_pixel_size(raster, 2.0, "um")
    with pytest.raises(SourceError, match=r"slides take --mpp \(Python: mpp=\), in µm per pixel"):
        at_pixel_size(open_source(data_dir / "cmu_small_region.svs"), 30.0, "m")
    with pytest.raises(SourceError, match="needs an image whose pixel size is known"):
        at_pixel_size(open_source(np.zeros((3, 10, 10))), 30.0, "m")
    with pytest.raises(SourceError, match="needs an image whose pixel size is known"):
        at_pixel_size(open_source(data_dir / "rmnp-rgb.tif"), 30.0, "m")  # degrees: no metres


def card(resolution=None, unit=None, served=None):
    return ModelCard(classes=("a", "b"), resolution=resolution, resolution_unit=unit, resolution_range=served)


def test_the_model_card_chooses_the_grid_and_says_so(data_dir):
    source = open_source(data_dir / "landsat7.tif")  # 2181 x 1917 px of 30 m
    chosen, notes = choose_grid(source, card(100.0, "m"))
    assert chosen.shape[1:] == (round(1917 * 0.3), round(2181 * 0.3))
    assert notes == ["the image has 30 m pixels and the model was trained at 100 m: processing at 100 m, "
                     "654 x 575 px (--resolution native keeps the image's own pixels; Python: resolution='native')"]
    assert choose_grid(source, card(33.0, "m")) == (source, [])  # within 25 %: the image's own grid
    assert choose_grid(source, card()) == (source, [])
    assert choose_grid(source, card(300.0, "m"), resolution=30.0) == (source, [])
    slide = open_source(data_dir / "cmu_small_region.svs")
    assert choose_grid(slide, card(300.0, "m")) == (slide, [
        "the model was trained on georeferenced rasters (300 m pixels) and this image is a slide (0.499 µm pixels): "
        "it runs on the image's own pixels; choose a model trained on images like this one"])
    assert choose_grid(slide, card(300.0)) == (slide, [])  # a card without a unit says nothing to compare
    assert choose_grid(source, card(0.5, "um"))[1][0].startswith(
        "the model was trained on slides (0.5 µm pixels) and this image is a georeferenced raster (30 m pixels)")
    with pytest.raises(GridChoiceError, match="choose one of resolution and level"):
        choose_grid(source, card(), resolution=30.0, level=1)


@pytest.mark.parametrize("model, size, how", [(300.0, "218 x 192 px", "10x coarser"),
                                              (3.0, "21810 x 19170 px", "10x finer")])
def test_a_grid_far_from_the_image_s_is_refused_unless_chosen(data_dir, model, size, how):
    """Before, the model's grid was taken whatever it made of the image: the default 300 m model
    gave a 2 x 2 mask of an aerial photo, a 67x up-sampled grid of a geostationary image."""
    source = open_source(data_dir / "landsat7.tif")
    with pytest.raises(GridChoiceError, match=(
            rf"^the image has 30 m pixels and the model was trained at {model:g} m: on the model's grid it would be "
            rf"{size} \({how} than the image's 2181 x 1917 px\); choose --resolution native to process the "
            rf"image's own pixels, or --resolution {model:g} for the model's grid anyway \(Python: "
            rf"resolution='native' or resolution={model:g}\), or a model trained on such images$")):
        choose_grid(source, card(model, "m"))
    assert choose_grid(source, card(model, "m"), resolution="native") == (source, [])
    chosen, notes = choose_grid(source, card(model, "m"), resolution="model")
    assert f"{chosen.width} x {chosen.height} px" == size
    assert chosen.georef.pixel_size()[0] == pytest.approx(model, rel=1e-3)


def test_up_sampling_beyond_twice_is_said_even_when_chosen(data_dir, pyramid):
    """Before, a slide up-sampled 5x (--mpp 0.1 on a 0.5 µm slide) came with no note at all."""
    slide = open_source(pyramid)
    chosen, notes = choose_grid(slide, card(), mpp=0.1)
    assert chosen.width == round(slide.width * 0.499 / 0.1)
    assert notes == [f"the grid is up-sampled 4.99x from the image's ({chosen.width} x {chosen.height} px from "
                     f"{slide.width} x {slide.height} px): the model sees no detail the image does not have, on "
                     "24.9 times the pixels"]
    assert choose_grid(slide, card(), mpp=0.3)[1] == []  # 1.7x: not worth a note
    raster = open_source(data_dir / "landsat7.tif")
    _, notes = choose_grid(raster, card(9.0, "m"))  # the card's choice, 3.3x finer
    assert len(notes) == 2 and notes[1].startswith("the grid is up-sampled 3.33x")


def test_native_keeps_any_image_on_its_own_grid(data_dir, pyramid):
    slide = open_source(pyramid)
    assert choose_grid(slide, card(0.1, "um"), mpp="native") == (slide, [])
    assert choose_grid(slide, card(0.1, "um"), resolution="native") == (slide, [])
    plain = open_source(np.zeros((3, 10, 10)))
    assert choose_grid(plain, card(300.0, "m"), resolution="native") == (plain, [])


@pytest.mark.parametrize("served, shape, noted", [
    ((20.0, 40.0), (1917, 2181), False),  # 30 m inside: its own grid
    ((26.0, 120.0), (1917, 2181), False),
    ((60.0, 120.0), (958, 1090), True),  # the nearest end: 60 m
    ((5.0, 12.0), (1917 * 30 // 12, 2181 * 30 // 12), True),  # 12 m: 2.5x finer
])
def test_a_card_s_range_of_resolutions_keeps_the_image_s_grid_inside_it(data_dir, served, shape, noted):
    source = open_source(data_dir / "landsat7.tif")
    chosen, notes = choose_grid(source, card(None, "m", served))
    assert chosen.shape[1:] == pytest.approx(shape, abs=1)
    assert bool(notes) == noted
    if noted:
        assert notes[0].startswith(f"the image has 30 m pixels and the model was trained at {served[0]:g}-"
                                   f"{served[1]:g} m: processing at")
    with pytest.raises(GridChoiceError, match=r"the model was trained at 0.5-2 m: on the model's grid it would be "
                       r"32715 x 28755 px \(15x finer"):
        choose_grid(source, card(1.0, "m", (0.5, 2.0)))


def test_a_raster_in_degrees_runs_on_its_own_pixels_with_a_note_when_far_from_the_model(data_dir):
    source = open_source(data_dir / "rmnp-rgb.tif")  # 0.0015 degrees, at 40.3 N
    chosen, notes = choose_grid(source, card(300.0, "m"))
    assert chosen is source
    assert notes == ["the image's pixels are in degrees, about 127 x 167 m at its centre, and the model was "
                     "trained at 300 m: it runs on the image's own pixels (segtile resamples only projected "
                     "rasters: reproject it, e.g. with gdalwarp -t_srs and -tr, to match the model)"]
    assert choose_grid(source, card(150.0, "m")) == (source, [])


def test_a_raster_placed_without_a_crs_runs_on_its_own_pixels_with_a_note(data_dir):
    source = open_source(CORPUS / "a39se10.jpg")  # a JPEG placed by its .jgw world file: no CRS, 3.28 units
    chosen, notes = choose_grid(source, card(None, "m", (10.0, 600.0)))
    assert chosen is source and len(notes) == 1
    assert notes[0].startswith("the image has no coordinate reference system, so its pixels' size is unknown (its "
                               "transform: 3.28078 x 3.28078 units of no known kind)")
    assert choose_grid(source, card(None, "m", (10.0, 600.0)), resolution="native") == (source, [])
    assert choose_grid(open_source(data_dir / "landsat7.tif"), card(None, "m", (10.0, 600.0)))[1] == []


def test_grid_values_are_checked(data_dir):
    source = open_source(data_dir / "landsat7.tif")
    for value in ("nat", -1.0, float("nan"), True):
        with pytest.raises(GridChoiceError, match=r"--resolution \(Python: resolution=\) takes a positive number "
                           "of metres per pixel, 'native' .* or 'model'"):
            choose_grid(source, card(), resolution=value)
    with pytest.raises(GridChoiceError, match=r"^--resolution model: the model card gives no pixel size"):
        choose_grid(source, card(), resolution="model")
    with pytest.raises(GridChoiceError, match=r"^--mpp model: the model was trained at 0.5 µm and this image has "
                       "30 m pixels: segtile cannot resample it to the model's grid; give native$"):
        choose_grid(source, card(0.5, "um"), mpp="model")


def test_outputs_land_on_the_grid_of_the_resolution_asked_for(tmp_path, data_dir):
    model = LoadedModel(torch.nn.Conv2d(3, 2, 1), ModelCard(classes=("a", "b"), tile_size=64, overlap=8))
    result = segment(data_dir / "landsat7.tif", model, resolution=60.0, device="cpu")
    result.to_geotiff(tmp_path / "mask.tif")
    with rasterio.open(tmp_path / "mask.tif") as mask, rasterio.open(data_dir / "landsat7.tif") as src:
        assert mask.shape == (round(1917 / 2), round(2181 / 2))
        assert mask.bounds == pytest.approx(src.bounds)
