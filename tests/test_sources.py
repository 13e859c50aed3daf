"""Sources: windowed reads, bands, masks, levels and georeference, checked against rasterio and
tifffile reading the same files directly; thread safety, pickling and one-line errors."""

from __future__ import annotations

import functools
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import rasterio
import tifffile
import torch
from affine import Affine
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from segtile.georef import Georef
from segtile.sources import MemorySource, RasterSource, SlideSource, Source, SourceError, open_source
from segtile.sources.handles import PerThreadHandles

# files written here for mask and error tests need no georeference
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

WINDOWS = [Window(0, 0, 64, 48), Window(400, 300, 256, 200), Window(1, 2, 3, 1)]


def last_window(shape: tuple[int, int], size: int = 100) -> Window:
    """The bottom-right corner of an image of ``shape`` (rows, cols): partial edge tiles."""
    height, width = shape
    return Window(width - size, height - size, size, size)


def rasterio_read(path: Path, window: Window, indexes=None, overview_level: int | None = None) -> np.ndarray:
    options = {} if overview_level is None else {"overview_level": overview_level}
    with rasterio.open(path, **options) as dataset:
        return dataset.read(indexes, window=window)


def rasterio_valid(path: Path, window: Window, overview_level: int | None = None) -> np.ndarray:
    options = {} if overview_level is None else {"overview_level": overview_level}
    with rasterio.open(path, **options) as dataset:
        return dataset.dataset_mask(window=window) > 0


def slice_of(image: np.ndarray, window: Window) -> np.ndarray:
    """``image`` (rows, cols, ...) cut to ``window``."""
    return image[window.row_off : window.row_off + window.height, window.col_off : window.col_off + window.width]


def some_windows(shape: tuple[int, int], count: int = 24, size: int = 97, seed: int = 0) -> list[Window]:
    rng = np.random.default_rng(seed)
    height, width = shape
    return [
        Window(int(rng.integers(0, width - size)), int(rng.integers(0, height - size)), size, size)
        for _ in range(count)
    ]


# --- RasterSource on the real sample files ---------------------------------------------------


def test_cog_reads_match_rasterio(data_dir):
    path = data_dir / "landsat7.tif"
    source = open_source(path)
    assert isinstance(source, RasterSource)
    assert source.shape == (3, 1917, 2181) and source.dtype == np.uint8
    assert source.band_names == ("red", "green", "blue")
    with rasterio.open(path) as dataset:
        assert source.georef == Georef(crs=dataset.crs, transform=dataset.transform)
    assert source.georef.is_georeferenced
    for window in WINDOWS + [last_window(source.level_shapes[0])]:
        pixels = source.read(window)
        assert pixels.dtype == np.uint8
        np.testing.assert_array_equal(pixels, rasterio_read(path, window))


def test_cog_nodata_mask_matches_gdal_dataset_mask(data_dir):
    path = data_dir / "landsat7.tif"
    source = open_source(path)
    assert source.has_mask
    whole = Window(0, 0, source.width, source.height)
    valid = source.read_valid(whole)
    assert valid.dtype == bool and valid.shape == (source.height, source.width)
    assert 0.5 < valid.mean() < 1.0  # the scene has a nodata (0) collar
    np.testing.assert_array_equal(valid, rasterio_valid(path, whole))
    # nodata is "every band 0": one dark band alone does not make a pixel invalid
    pixels = source.read(whole)
    np.testing.assert_array_equal(valid, (pixels != 0).any(axis=0))


def test_cog_levels_are_the_overviews(data_dir):
    path = data_dir / "landsat7.tif"
    source = open_source(path)
    assert source.level_shapes == ((1917, 2181), (959, 1091), (480, 546))
    for level, shape in enumerate(source.level_shapes[1:], start=1):
        window = Window(100, 50, 300, 200)
        np.testing.assert_array_equal(source.read(window, level), rasterio_read(path, window, overview_level=level - 1))
        np.testing.assert_array_equal(source.read_valid(window, level), rasterio_valid(path, window, level - 1))
        edge = last_window(shape, 64)
        np.testing.assert_array_equal(source.read(edge, level), rasterio_read(path, edge, overview_level=level - 1))
    with pytest.raises(SourceError, match="level 3 does not exist: the image has 3 levels"):
        source.read(Window(0, 0, 8, 8), 3)


def test_stripped_tiff_with_nodata_255(data_dir):
    path = data_dir / "rmnp-rgb.tif"
    source = open_source(path)
    assert source.shape == (3, 373, 485) and source.level_shapes == ((373, 485),)
    whole = Window(0, 0, 485, 373)
    np.testing.assert_array_equal(source.read(whole), rasterio_read(path, whole))
    for window in (whole, Window(30, 17, 111, 90), last_window((373, 485), 50)):
        np.testing.assert_array_equal(source.read(window), rasterio_read(path, window))
        np.testing.assert_array_equal(source.read_valid(window), rasterio_valid(path, window))
    valid = source.read_valid(whole)
    assert 0.5 < valid.mean() < 1.0
    np.testing.assert_array_equal(valid, (source.read(whole) != 255).any(axis=0))


def test_band_selection_is_one_based_and_ordered(data_dir):
    path = data_dir / "landsat_crop.tif"
    source = open_source(path, bands=[4, 3, 2])
    assert source.shape == (3, 741, 744)
    assert source.band_names == ("B4", "B3", "B2")
    assert not source.has_mask
    for window in WINDOWS + [last_window(source.level_shapes[0])]:
        np.testing.assert_array_equal(source.read(window), rasterio_read(path, window, [4, 3, 2]))
        assert source.read_valid(window) is None
    window = Window(10, 10, 40, 30)
    np.testing.assert_array_equal(source.read(window, 2), rasterio_read(path, window, [4, 3, 2], overview_level=1))
    assert len(source.level_shapes) == 4


def test_bands_out_of_range(data_dir):
    with pytest.raises(SourceError, match=r"^band 9 is out of range: the image has 7 bands$"):
        open_source(data_dir / "landsat_crop.tif", bands=[1, 9])
    with pytest.raises(SourceError, match="band 0 is out of range"):
        open_source(data_dir / "landsat_crop.tif", bands=[0])
    with pytest.raises(SourceError, match="no bands selected"):
        open_source(data_dir / "landsat_crop.tif", bands=[])
    with pytest.raises(SourceError, match="whole numbers"):
        open_source(data_dir / "landsat_crop.tif", bands=[1.5])


def test_bahamas_rgb(data_dir):
    path = data_dir / "bahamas_rgb.tif"
    source = open_source(path)
    assert source.shape == (3, 718, 791)
    assert source.level_shapes == ((718, 791), (359, 396))
    assert source.georef.crs == rasterio.crs.CRS.from_epsg(32618)
    for window in (Window(0, 0, 791, 718), last_window((718, 791), 33)):
        np.testing.assert_array_equal(source.read(window), rasterio_read(path, window))
        np.testing.assert_array_equal(source.read_valid(window), rasterio_valid(path, window))


def test_plain_tiff_without_georeference(data_dir):
    path = data_dir / "nuclei_img2d.tif"
    source = open_source(path)
    assert isinstance(source, RasterSource)
    assert source.shape == (1, 512, 512) and source.dtype == np.uint16
    assert source.georef == Georef()
    assert not source.has_mask
    image = tifffile.imread(path)
    for window in (Window(0, 0, 512, 512), Window(100, 200, 37, 59)):
        np.testing.assert_array_equal(source.read(window)[0], slice_of(image, window))


def test_rotated_geotiff_keeps_the_full_affine(tmp_path):
    path = tmp_path / "rotated.tif"
    transform = Affine.translation(500_000, 4_000_000) @ Affine.rotation(30) @ Affine.scale(10, -10)
    data = np.arange(2 * 48 * 64, dtype=np.int16).reshape(2, 48, 64)
    profile = dict(driver="GTiff", width=64, height=48, count=2, dtype="int16", crs="EPSG:32633", transform=transform)
    with rasterio.open(path, "w", tiled=True, blockxsize=16, blockysize=16, **profile) as dst:
        dst.write(data)
    source = open_source(path)
    assert source.georef.transform.almost_equals(transform, precision=1e-9)
    assert source.georef.transform.b != 0 and source.georef.transform.d != 0
    assert source.georef.crs == rasterio.crs.CRS.from_epsg(32633)
    assert source.dtype == np.int16
    np.testing.assert_array_equal(source.read(Window(5, 7, 40, 30)), data[:, 7:37, 5:45])


def test_alpha_band_is_a_mask_not_a_band(tmp_path):
    path = tmp_path / "rgba.tif"
    rng = np.random.default_rng(1)
    rgb = rng.integers(1, 255, (3, 40, 50), dtype=np.uint8)
    alpha = np.where(rng.random((40, 50)) < 0.3, 0, 255).astype(np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=50, height=40, count=4, dtype="uint8") as dst:
        dst.write(np.concatenate([rgb, alpha[None]]))
        dst.colorinterp = (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha)
    source = open_source(path)
    assert source.shape == (3, 40, 50) and source.band_names == ("red", "green", "blue")
    assert source.has_mask
    window = Window(3, 4, 30, 20)
    np.testing.assert_array_equal(source.read(window), rgb[:, 4:24, 3:33])
    np.testing.assert_array_equal(source.read_valid(window), alpha[4:24, 3:33] > 0)
    with pytest.raises(SourceError, match="band 4 is out of range: the image has 3 bands"):
        open_source(path, bands=[4])


def test_internal_mask(tmp_path):
    path = tmp_path / "masked.tif"
    data = np.full((2, 32, 32), 7, dtype=np.float32)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:20, 4:30] = 255
    with rasterio.open(path, "w", driver="GTiff", width=32, height=32, count=2, dtype="float32") as dst:
        dst.write(data)
        dst.write_mask(mask)
    source = open_source(path)
    assert source.has_mask and source.dtype == np.float32
    np.testing.assert_array_equal(source.read_valid(Window(0, 0, 32, 32)), mask > 0)


def test_windows_must_lie_inside_the_image(data_dir):
    source = open_source(data_dir / "rmnp-rgb.tif")
    for window in (Window(480, 0, 10, 10), Window(-1, 0, 5, 5), Window(0, 0, 0, 5), Window(0.5, 0, 4, 4)):
        with pytest.raises(SourceError):
            source.read(window)


# --- SlideSource -------------------------------------------------------------------------------


def test_svs_reads_match_tifffile(data_dir):
    path = data_dir / "cmu_small_region.svs"
    source = open_source(path)
    assert isinstance(source, SlideSource)
    assert source.shape == (3, 2967, 2220) and source.dtype == np.uint8
    assert source.band_names == ("red", "green", "blue")
    assert source.georef == Georef(transform=Affine.identity(), mpp=0.499)
    assert source.level_shapes == ((2967, 2220),)
    assert not source.has_mask and source.read_valid(Window(0, 0, 10, 10)) is None
    image = tifffile.imread(path)  # (rows, cols, samples)
    for window in WINDOWS + [last_window((2967, 2220)), Window(239, 239, 2, 2)]:
        pixels = source.read(window)
        assert pixels.shape == (3, window.height, window.width)
        np.testing.assert_array_equal(pixels, slice_of(image, window).transpose(2, 0, 1))
    np.testing.assert_array_equal(open_source(path, bands=[3, 1]).read(WINDOWS[1]), source.read(WINDOWS[1])[[2, 0]])


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """A tiled, zlib-compressed RGB pyramid (SubIFDs), 0.5 µm/px in centimetre resolution tags."""
    path = tmp_path_factory.mktemp("slides") / "pyramid.tif"
    rng = np.random.default_rng(2)
    levels = [rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)]
    levels += [levels[0][::2, ::2].copy(), levels[0][::4, ::4].copy()]
    with tifffile.TiffWriter(path) as tif:
        options = dict(tile=(64, 64), photometric="rgb", compression="zlib")
        tif.write(levels[0], subifds=2, resolution=(2e4, 2e4), resolutionunit="CENTIMETER", **options)
        for level in levels[1:]:
            tif.write(level, subfiletype=1, **options)
    return path, levels


def test_pyramidal_tiff_levels(pyramid):
    path, levels = pyramid
    source = SlideSource(path)
    assert source.level_shapes == ((300, 400), (150, 200), (75, 100))
    assert source.georef.mpp == pytest.approx(0.5)
    for level, image in enumerate(levels):
        for window in (Window(0, 0, 10, 10), last_window(image.shape[:2], 70), Window(30, 20, 40, 50)):
            np.testing.assert_array_equal(source.read(window, level), slice_of(image, window).transpose(2, 0, 1))


def test_ome_tiff_rgb_pyramid_with_pixel_size(tmp_path):
    path = tmp_path / "image.ome.tif"
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)
    metadata = {"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25, "PhysicalSizeXUnit": "µm"}
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(image, tile=(64, 64), subifds=1, photometric="rgb", metadata=metadata)
        tif.write(image[::2, ::2], tile=(64, 64), subfiletype=1, photometric="rgb")
    source = open_source(path)
    assert isinstance(source, SlideSource)
    assert source.georef == Georef(transform=Affine.identity(), mpp=0.25)
    assert source.level_shapes == ((200, 300), (100, 150))
    window = Window(10, 20, 100, 70)
    np.testing.assert_array_equal(source.read(window), slice_of(image, window).transpose(2, 0, 1))
    np.testing.assert_array_equal(source.read(window, 1), slice_of(image[::2, ::2], window).transpose(2, 0, 1))


def test_ome_tiff_channels_are_bands(tmp_path):
    path = tmp_path / "channels.ome.tif"
    channels = np.random.default_rng(4).integers(0, 4000, (4, 90, 120), dtype=np.uint16)
    metadata = {"axes": "CYX", "PhysicalSizeX": 650.0, "PhysicalSizeXUnit": "nm"}
    tifffile.imwrite(path, channels, ome=True, tile=(32, 32), metadata=metadata)
    source = open_source(path, bands=[3, 1])
    assert source.shape == (2, 90, 120) and source.dtype == np.uint16
    assert source.georef.mpp == pytest.approx(0.65)
    window = Window(5, 6, 70, 50)
    np.testing.assert_array_equal(source.read(window), channels[[2, 0], 6:56, 5:75])


def test_slide_without_length_unit_has_no_pixel_size(tmp_path):
    path = tmp_path / "inch.ome.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), resolution=(72, 72), resolutionunit="INCH")
    source = SlideSource(path)
    assert source.georef.mpp is None and source.georef.pixel_size() is None and source.shape == (1, 16, 16)


@pytest.mark.parametrize("dpi, per_centimetre", [(72, 72 / 2.54), (72, 28.35), (96, 37.8), (300, 118.11)])
def test_screen_and_print_resolutions_in_centimetres_are_no_pixel_size(tmp_path, dpi, per_centimetre):
    image = np.random.default_rng(5).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    flat = tmp_path / "photo.tif"  # what GIMP or ImageMagick write for a 72 dpi picture in metric units
    tifffile.imwrite(flat, image, photometric="rgb", resolution=(per_centimetre, per_centimetre),
                     resolutionunit="CENTIMETER")
    source = open_source(flat)  # no slide: an image without a pixel size, read as one
    assert isinstance(source, RasterSource) and source.georef.pixel_size() is None and not source.notes
    pyramid = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(pyramid) as tif:
        tif.write(image, subifds=1, tile=(16, 16), photometric="rgb", resolution=(per_centimetre, per_centimetre),
                  resolutionunit="CENTIMETER")
        tif.write(image[::2, ::2], subfiletype=1, tile=(16, 16), photometric="rgb")
    slide = open_source(pyramid)  # a slide for its pyramid, whose tags are set aside with a note
    assert isinstance(slide, SlideSource) and slide.georef.mpp is None
    assert slide.notes == (f"{pyramid}: its resolution tags say {per_centimetre:g} pixels per centimeter, that is "
                           f"{dpi} dpi, a screen or print resolution and no pixel size: its pixel size is taken as "
                           "unknown",)
    from segtile import segment

    with pytest.warns(UserWarning, match="a screen or print resolution"):
        result = segment(pyramid, torch.nn.Conv2d(3, 2, 1), device="cpu")
    assert slide.notes[0] in result.notes and result.georef.mpp is None


def test_a_microscopes_resolution_in_centimetres_is_its_pixel_size(tmp_path):
    path = tmp_path / "microscope.tif"
    tifffile.imwrite(path, np.zeros((16, 16, 3), np.uint8), photometric="rgb", resolution=(44150, 44150),
                     resolutionunit="CENTIMETER")  # as a Hamamatsu scanner writes its 0.2265 µm
    source = open_source(path)
    assert isinstance(source, SlideSource) and source.georef.mpp == pytest.approx(0.2265, rel=1e-4)
    assert not source.notes


def test_slide_with_z_stack_is_refused(tmp_path):
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, np.zeros((3, 16, 16), np.uint8), ome=True, metadata={"axes": "ZYX"})
    with pytest.raises(SourceError, match="axes ZYX"):
        open_source(path)


# --- MemorySource ------------------------------------------------------------------------------


def test_numpy_arrays():
    image = np.arange(3 * 20 * 30, dtype=np.int32).reshape(3, 20, 30)
    source = open_source(image, bands=[3, 1])
    assert isinstance(source, MemorySource)
    assert source.shape == (2, 20, 30) and source.dtype == np.int32 and source.georef == Georef()
    window = Window(4, 5, 10, 6)
    np.testing.assert_array_equal(source.read(window), image[[2, 0], 5:11, 4:14])
    assert source.read_valid(window) is None
    flat = open_source(image[1])
    assert flat.shape == (1, 20, 30)
    np.testing.assert_array_equal(flat.read(window)[0], image[1, 5:11, 4:14])
    with pytest.raises(SourceError, match="level 1 does not exist"):
        source.read(window, 1)


def test_nodata_mask_is_every_band_equal_to_nodata():
    image = np.ones((2, 4, 5), dtype=np.float32)
    image[:, 0, 0] = -1  # every band nodata: invalid
    image[0, 1, 1] = -1  # one band nodata: still valid
    source = MemorySource(image, nodata=-1)
    expected = np.ones((4, 5), bool)
    expected[0, 0] = False
    np.testing.assert_array_equal(source.read_valid(Window(0, 0, 5, 4)), expected)
    image[:, 2, 3] = np.nan
    nan_valid = MemorySource(image, nodata=float("nan")).read_valid(Window(0, 0, 5, 4))
    assert not nan_valid[2, 3] and nan_valid.sum() == 19


def test_dask_reads_compute_only_the_window():
    good = da.from_array(np.arange(100, dtype=np.uint8).reshape(1, 10, 10), chunks=(1, 10, 10))

    def explode() -> np.ndarray:
        raise RuntimeError("this chunk must not be computed")

    bad = da.from_delayed(dask.delayed(explode)(), shape=(1, 10, 10), dtype=np.uint8)
    source = open_source(da.concatenate([good, bad], axis=2))
    assert source.shape == (1, 10, 20)
    np.testing.assert_array_equal(source.read(Window(2, 3, 8, 4)), good[:, 3:7, 2:10].compute())
    with pytest.raises(RuntimeError, match="must not be computed"):
        source.read(Window(8, 0, 4, 4))


def test_wrong_arrays_are_refused():
    with pytest.raises(SourceError, match="not 4-D"):
        open_source(np.zeros((1, 2, 3, 4)))
    with pytest.raises(SourceError, match="not 1-D"):
        open_source(np.zeros(5))
    with pytest.raises(SourceError, match="cannot read a list"):
        open_source([[1, 2], [3, 4]])
    with pytest.raises(SourceError, match=r"shape \(40, 50, 3\) looks like \(height, width, bands\).*moveaxis"):
        open_source(np.zeros((40, 50, 3), dtype=np.uint8))  # as PIL or imageio give an RGB image
    with pytest.raises(SourceError, match="integers, floats or booleans, not complex128"):
        open_source(np.zeros((3, 10, 10), dtype=complex))
    assert open_source(np.zeros((3, 40, 4), dtype=np.uint8)).shape == (3, 40, 4)  # bands first: kept
    assert open_source(np.zeros((8, 1000, 2), dtype=np.uint8)).shape == (8, 1000, 2)  # a narrow multiband strip
    assert open_source(np.zeros((40, 50), dtype=bool)).shape == (1, 40, 50)


def test_a_dask_array_of_unknown_chunk_sizes_is_refused_with_the_fix():
    image = da.from_array(np.ones((3, 40, 40), np.float32), chunks=(3, 20, 40))
    rows = da.from_array(np.arange(40) % 2 == 0, chunks=20)
    sliced = image[:, rows, :]  # rows kept by a mask dask has not computed: (3, nan, 40)
    with pytest.raises(SourceError, match=r"unknown chunk sizes \(shape \(3, nan, 40\)\).*"
                                          r"call array.compute_chunk_sizes\(\) first"):
        open_source(sliced)
    assert open_source(sliced.compute_chunk_sizes()).shape == (3, 20, 40)


def test_xarray_dims_are_reordered():
    xr = pytest.importorskip("xarray")
    image = np.random.default_rng(5).integers(0, 9, (12, 10, 3), dtype=np.uint8)
    array = xr.DataArray(image, dims=("y", "x", "band"), coords={"band": ["r", "g", "b"]})
    source = open_source(array, bands=[2])
    assert source.shape == (1, 12, 10) and source.band_names == ("g",)
    np.testing.assert_array_equal(source.read(Window(1, 2, 5, 6))[0], image[2:8, 1:6, 1])
    strip = xr.DataArray(np.zeros((6, 100, 4), np.uint8), dims=("band", "y", "x"))  # its dims say so: not RGBA
    assert open_source(strip).shape == (6, 100, 4)
    lazy = open_source(xr.DataArray(da.from_array(image[..., 0], chunks=4), dims=("y", "x")))
    np.testing.assert_array_equal(lazy.read(Window(3, 0, 4, 5))[0], image[0:5, 3:7, 0])


def test_xarray_keeps_rioxarray_georeference():
    xr = pytest.importorskip("xarray")
    pytest.importorskip("rioxarray")
    coords = {"band": [1, 2], "y": 1000.0 - 30.0 * (np.arange(6) + 0.5), "x": 200.0 + 30.0 * (np.arange(8) + 0.5)}
    array = xr.DataArray(np.zeros((2, 6, 8), np.uint16), dims=("band", "y", "x"), coords=coords)
    array = array.rio.write_crs("EPSG:32633").rio.write_nodata(0)
    source = open_source(array)
    assert source.georef.crs == rasterio.crs.CRS.from_epsg(32633)
    assert source.georef.transform.almost_equals(Affine(30, 0, 200, 0, -30, 1000))
    assert source.has_mask and not source.read_valid(Window(0, 0, 8, 6)).any()


def test_an_unmasked_rioxarray_data_array_has_the_files_nodata(data_dir):
    """As docs/api.md says: opened with ``mask_and_scale=False``, a pixel is nodata where every
    band is, as read by path; xarray's default masking makes it so where any band is."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("rioxarray")
    path, whole = data_dir / "bahamas_rgb.tif", Window(0, 0, 791, 718)
    by_path = open_source(path).read_with_valid(whole)
    unmasked = open_source(xr.open_dataarray(path, engine="rasterio", mask_and_scale=False))
    np.testing.assert_array_equal(unmasked.read(whole), by_path[0])
    np.testing.assert_array_equal(unmasked.read_valid(whole), by_path[1])
    masked = open_source(xr.open_dataarray(path, engine="rasterio")).read(whole)
    some_bands_nodata = (by_path[0] == 0).any(axis=0) & by_path[1]
    assert some_bands_nodata.any() and np.isnan(masked[:, some_bands_nodata]).any(axis=0).all()


# --- open_source on Sources, threads, pickling ---------------------------------------------------


def test_an_opened_source_is_returned_or_rebanded(data_dir):
    opened = open_source(data_dir / "landsat_crop.tif", bands=[4, 3, 2])
    assert open_source(opened) is opened
    assert open_source(opened, bands=[1, 2, 3]) is opened
    rebanded = open_source(opened, bands=[3])
    assert rebanded.band_names == ("B2",)
    window = Window(7, 9, 20, 10)
    np.testing.assert_array_equal(rebanded.read(window), rasterio_read(data_dir / "landsat_crop.tif", window, [2]))
    image = np.arange(24).reshape(3, 2, 4)
    memory = open_source(image, bands=[3, 2])
    np.testing.assert_array_equal(open_source(memory, bands=[2, 2]).read(Window(0, 0, 4, 2)), image[[1, 1]])
    with pytest.raises(SourceError, match="band 3 is out of range: the image has 2 bands"):
        open_source(memory, bands=[3])


@pytest.fixture(params=["cog", "stripped", "svs", "dask"])
def any_source(request, data_dir) -> Source:
    if request.param == "dask":
        image = np.random.default_rng(6).integers(0, 255, (3, 700, 900), dtype=np.uint8)
        source = MemorySource(da.from_array(image, chunks=(3, 128, 128)), nodata=0)
    else:
        name = {"cog": "landsat7.tif", "stripped": "rmnp-rgb.tif", "svs": "cmu_small_region.svs"}[request.param]
        source = open_source(data_dir / name)
    yield source
    source.close()


def read_all(source: Source, jobs: list[tuple[Window, int]]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    return [(source.read(window, level), source.read_valid(window, level)) for window, level in jobs]


def test_concurrent_reads_equal_serial_reads(any_source):
    jobs = [
        (window, level)
        for level, shape in enumerate(any_source.level_shapes[:2])
        for window in some_windows(shape, count=24, size=min(97, *shape) - 1, seed=level)
    ]
    serial = read_all(any_source, jobs)
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda job: read_all(any_source, [job])[0], jobs * 2))
    for (pixels, valid), (other_pixels, other_valid) in zip(serial * 2, concurrent):
        np.testing.assert_array_equal(pixels, other_pixels)
        np.testing.assert_array_equal(valid, other_valid)


def open_for_reading(path: Path, key: object):
    return open(path, "rb")


def test_each_thread_reads_through_its_own_handle(tmp_path):
    path = tmp_path / "bytes.bin"
    path.write_bytes(b"0123456789")
    handles = PerThreadHandles(functools.partial(open_for_reading, path))
    mine = handles.get()
    assert handles.get() is mine and handles.get("level 1") is not mine
    with ThreadPoolExecutor(max_workers=4) as pool:
        theirs = list(pool.map(lambda _: handles.get(), range(4)))
    assert all(handle is not mine for handle in theirs)
    copy = pickle.loads(pickle.dumps(handles))
    assert copy.get() is not mine and copy.get().read() == b"0123456789"
    copy.close()
    handles.close()
    assert mine.closed and all(handle.closed for handle in theirs)
    assert not handles.get().closed


def test_pickle_round_trip_after_reads_in_threads(any_source):
    window = Window(10, 20, 64, 32)
    expected = any_source.read(window)
    reader = threading.Thread(target=any_source.read, args=(window,))
    reader.start()
    reader.join()
    copy = pickle.loads(pickle.dumps(any_source))
    assert (copy.shape, copy.dtype, copy.band_names, copy.level_shapes) == (
        any_source.shape, any_source.dtype, any_source.band_names, any_source.level_shapes,
    )
    assert copy.georef == any_source.georef
    np.testing.assert_array_equal(copy.read(window), expected)
    np.testing.assert_array_equal(copy.read_valid(window), any_source.read_valid(window))
    any_source.close()
    any_source.close()  # twice is fine, and a closed source reopens on the next read
    np.testing.assert_array_equal(any_source.read(window), expected)


# --- Errors: one line, SourceError ----------------------------------------------------------------


def half_of(source: Path, tmp_path: Path) -> Path:
    cut = tmp_path / f"half_{source.name}"
    data = source.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return cut


BAD_FILES = {  # id: (file name, bytes written or None for no file, expected message)
    "missing": ("missing.tif", None, "^input not found: .*missing.tif$"),
    "text": ("notes.txt", b"hello\n", "^cannot open .*notes.txt: .*not recognized"),
    "empty": ("empty.tif", b"", "^input is empty: "),
    "random-bytes": ("noise.tif", np.random.default_rng(7).bytes(4096), "^cannot open .*noise.tif: "),
    "empty-slide": ("empty.svs", b"", "^input is empty: "),
}


@pytest.mark.parametrize("name, content, message", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_files_raise_one_line_source_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SourceError, match=message) as error:
        open_source(path)
    assert "\n" not in str(error.value)
    assert error.value.__cause__ is None


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(SourceError, match="^input is a directory GDAL cannot read as a raster: "):
        open_source(tmp_path)
    (tmp_path / "x.svs").mkdir()
    with pytest.raises(SourceError, match="^input is a directory, not a slide file: "):
        open_source(tmp_path / "x.svs")


@pytest.mark.parametrize("name", ["bahamas_rgb.tif", "rmnp-rgb.tif", "cmu_small_region.svs"])
def test_truncated_files_fail_at_open(data_dir, tmp_path, name):
    with pytest.raises(SourceError, match="truncated") as error:
        open_source(half_of(data_dir / name, tmp_path))
    assert "\n" not in str(error.value)


def corrupt_one_tile(path: Path, tile: int) -> None:
    """Overwrite tile ``tile`` of the first page with garbage, leaving the file's size as is."""
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[tile], tif.pages[0].databytecounts[tile]
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(b"\xff" * count)


def test_damaged_tile_fails_on_read_in_one_line(tmp_path):
    path = tmp_path / "damaged.tif"
    data = np.random.default_rng(8).integers(0, 255, (1, 64, 64), dtype=np.uint8)
    with rasterio.open(
        path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8",
        tiled=True, blockxsize=32, blockysize=32, compress="deflate",
    ) as dst:
        dst.write(data)
    corrupt_one_tile(path, tile=3)  # the bottom-right tile
    source = open_source(path)
    np.testing.assert_array_equal(source.read(Window(0, 0, 32, 32)), data[:, :32, :32])
    with pytest.raises(SourceError, match="cannot read .*damaged.tif") as error:
        source.read(Window(32, 32, 32, 32))
    assert "\n" not in str(error.value)


def test_damaged_slide_tile_fails_on_read(tmp_path, pyramid):
    path = tmp_path / "damaged.tif"
    path.write_bytes(pyramid[0].read_bytes())
    corrupt_one_tile(path, tile=0)
    source = SlideSource(path)
    np.testing.assert_array_equal(source.read(Window(64, 64, 10, 10)), pyramid[1][0][64:74, 64:74].transpose(2, 0, 1))
    with pytest.raises(SourceError, match="cannot read .*damaged.tif"):
        source.read(Window(0, 0, 10, 10))


@pytest.mark.parametrize("name", ["landsat7.tif", "rmnp-rgb.tif", "bahamas_rgb.tif"])
def test_validity_from_nodata_values_equals_gdals_masks(data_dir, name):
    source = open_source(data_dir / name)
    for window in (Window(0, 0, 300, 200), last_window(source.level_shapes[0], 97)):
        pixels, valid = source.read_with_valid(window)
        np.testing.assert_array_equal(pixels, source.read(window))
        np.testing.assert_array_equal(valid, source.read_valid(window))  # GDAL's own masks
