"""Mosaics: tiles cut from one real scene, read as one image through GDAL's tile index driver, give
the scene back (pixels, validity, georeference, labels); tiles in another CRS land where the
scene warped there lies; overlaps go to the last input; inputs that cannot form one image are
refused in one line."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform
from rasterio.windows import Window

from segtile import segment
from segtile.sources import SourceError
from segtile.sources.mosaic import open_mosaic
from tests.geodata import write_raster

OTHER_ZONE = "EPSG:32617"  # UTM zone 17N, beside the Bahamas scene's 18N


def cut_tiles(scene: Path, folder: Path, rows: int = 2, columns: int = 2) -> list[Path]:
    """The scene cut into ``rows`` x ``columns`` GeoTIFFs (rasterio windows), row by row."""
    paths = []
    with rasterio.open(scene) as dataset:
        row_edges = np.linspace(0, dataset.height, rows + 1).astype(int)
        column_edges = np.linspace(0, dataset.width, columns + 1).astype(int)
        for r in range(rows):
            for c in range(columns):
                window = Window(column_edges[c], row_edges[r], column_edges[c + 1] - column_edges[c],
                                row_edges[r + 1] - row_edges[r])
                profile = dict(dataset.profile, width=window.width, height=window.height,
                               transform=dataset.window_transform(window), tiled=False)
                profile.pop("blockxsize", None), profile.pop("blockysize", None)
                path = folder / f"tile_{r}_{c}.tif"
                with rasterio.open(path, "w", **profile) as tile:
                    tile.write(dataset.read(window=window))
                paths.append(path)
    return paths


def warp_to(path: Path, crs: str, out: Path) -> Path:
    """``path`` warped into ``crs`` on the grid gdalwarp would choose (nearest neighbour)."""
    with rasterio.open(path) as dataset:
        transform, width, height = calculate_default_transform(dataset.crs, crs, dataset.width, dataset.height,
                                                               *dataset.bounds)
        with WarpedVRT(dataset, crs=crs, transform=transform, width=width, height=height) as warped:
            profile = dict(dataset.profile, crs=crs, transform=transform, width=width, height=height, tiled=False)
            profile.pop("blockxsize", None), profile.pop("blockysize", None)
            with rasterio.open(out, "w", **profile) as target:
                target.write(warped.read())
    return out


def labels_of(source, model) -> np.ndarray:
    return segment(source, model, tile_size=128, overlap=16, device="cpu", resolution="native").labels.compute()


def test_a_mosaic_of_four_tiles_is_the_scene_pixel_for_pixel(data_dir, tmp_path):
    scene = data_dir / "bahamas_rgb.tif"
    tiles = cut_tiles(scene, tmp_path)
    with open_mosaic(tiles) as mosaic, rasterio.open(scene) as whole:
        assert mosaic.shape == (whole.count, whole.height, whole.width)
        assert mosaic.georef.crs == whole.crs and mosaic.georef.transform == whole.transform
        assert mosaic.files == tuple(str(path) for path in tiles)
        assert mosaic.notes == ()
        everything = Window(0, 0, whole.width, whole.height)
        pixels, valid = mosaic.read_with_valid(everything)
        np.testing.assert_array_equal(pixels, whole.read())
        np.testing.assert_array_equal(valid, whole.dataset_mask() > 0)
        seam = Window(whole.width // 2 - 20, whole.height // 2 - 30, 40, 60)  # across all four tiles
        np.testing.assert_array_equal(mosaic.read(seam), whole.read(window=seam))


def test_segmenting_the_mosaic_gives_the_scenes_labels_everywhere(data_dir, tmp_path, pointwise_model):
    scene = data_dir / "bahamas_rgb.tif"
    model = pointwise_model(bands=3, classes=4)
    mosaic_result = segment(open_mosaic(cut_tiles(scene, tmp_path)), model, tile_size=128, overlap=16,
                            device="cpu", resolution="native")
    np.testing.assert_array_equal(mosaic_result.labels.compute(), labels_of(scene, model))
    with rasterio.open(scene) as whole:
        assert mosaic_result.georef.transform == whole.transform and mosaic_result.georef.crs == whole.crs
    out = tmp_path / "mask.tif"
    mosaic_result.to_geotiff(out)
    with rasterio.open(out) as written, rasterio.open(scene) as whole:
        assert written.transform == whole.transform and written.crs == whole.crs


def test_a_tile_in_another_crs_lands_where_the_scene_warped_there_lies(data_dir, tmp_path):
    scene = data_dir / "bahamas_rgb.tif"
    tiles = cut_tiles(scene, tmp_path)
    first = warp_to(tiles[0], OTHER_ZONE, tmp_path / "tile_0_0_utm17.tif")
    with rasterio.open(first) as warped_tile:
        pixel = (warped_tile.transform.a, -warped_tile.transform.e)
    with open_mosaic([first, *tiles[1:]], resolution=pixel) as mosaic:
        assert mosaic.georef.crs == rasterio.crs.CRS.from_user_input(OTHER_ZONE)
        assert len(mosaic.notes) == 1 and "3 of 4 inputs" in mosaic.notes[0]
        transform, (height, width) = mosaic.georef.transform, mosaic.shape[1:]
        pixels, valid = mosaic.read_with_valid(Window(0, 0, width, height))
    with rasterio.open(scene) as whole:
        inside = _away_from_borders(_tile_numbers(whole, transform, width, height), margin=2)
        candidates = _scene_pixels_under(whole, transform, width, height)
        scene_pixels = np.pad(whole.read(), ((0, 0), (1, 1), (1, 1)))  # nodata (0) around the scene
    assert inside.mean() > 0.5  # most of the mosaic is compared
    np.testing.assert_array_equal(valid, (pixels != 0).any(axis=0))  # nodata 0: GDAL's validity is the values'
    # GDAL's warper places pixels to within 1/8 pixel (its approximate transformer): each pixel of
    # the mosaic holds the scene's pixel under its centre, or one within 1/8 pixel of it
    found = np.zeros((height, width), bool)
    for rows, columns in candidates:
        found |= (scene_pixels[:, rows + 1, columns + 1] == pixels).all(axis=0)
    assert found[inside].all()
    assert valid[inside].mean() > 0.5


def _scene_pixels_under(whole, transform, width: int, height: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each pixel of the grid (``transform``, ``width``, ``height`` in :data:`OTHER_ZONE`),
    the rows and columns of the scene's pixels within 1/8 pixel of its centre (clipped to one
    pixel beyond the scene)."""
    rows, columns = np.indices((height, width))
    xs, ys = transform * (columns.ravel() + 0.5, rows.ravel() + 0.5)
    scene_xs, scene_ys = rasterio.warp.transform(OTHER_ZONE, whole.crs, xs, ys)
    scene_columns, scene_rows = ~whole.transform * (np.asarray(scene_xs), np.asarray(scene_ys))
    found = []
    for dy in (-0.125, 0.125):
        for dx in (-0.125, 0.125):
            row = np.clip(np.floor(scene_rows + dy), -1, whole.height).astype(int).reshape(height, width)
            column = np.clip(np.floor(scene_columns + dx), -1, whole.width).astype(int).reshape(height, width)
            found.append((row, column))
    return found


def _tile_numbers(whole, transform, width: int, height: int) -> np.ndarray:
    """Which of the four tiles each pixel of the warped grid comes from (-1: none)."""
    rows, columns = np.indices((whole.height, whole.width))
    numbers = (2 * (rows >= whole.height // 2) + (columns >= whole.width // 2)).astype(np.int16)
    target = np.full((height, width), -1, np.int16)
    rasterio.warp.reproject(numbers, target, src_transform=whole.transform, src_crs=whole.crs, dst_transform=transform,
                            dst_crs=OTHER_ZONE, src_nodata=None, dst_nodata=-1)
    return target


def _away_from_borders(numbers: np.ndarray, margin: int) -> np.ndarray:
    """True where every pixel within ``margin`` comes from the same tile."""
    padded = np.pad(numbers, margin, mode="edge")
    same = numbers >= 0
    height, width = numbers.shape
    for dy in range(-margin, margin + 1):
        for dx in range(-margin, margin + 1):
            same &= padded[margin + dy:margin + dy + height, margin + dx:margin + dx + width] == numbers
    return same


def test_where_inputs_overlap_the_last_wins(tmp_path):
    transform = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)
    first = write_raster(tmp_path / "first.tif", np.full((1, 20, 20), 1, np.uint8), transform=transform)
    second = write_raster(tmp_path / "second.tif", np.full((1, 20, 20), 2, np.uint8),
                          transform=transform * Affine.translation(10, 10))
    for order, on_top in (([first, second], 2), ([second, first], 1)):
        with open_mosaic(order) as mosaic:
            pixels, valid = mosaic.read_with_valid(Window(0, 0, 30, 30))
        assert mosaic.shape == (1, 30, 30)
        assert pixels[0, 15, 15] == on_top  # the overlap
        assert pixels[0, 5, 5] == 1 and pixels[0, 25, 25] == 2
        assert not valid[25, 5] and not valid[5, 25]  # outside every input: invalid (no nodata value)
        assert valid[5, 5] and valid[25, 25]


def test_a_mosaic_pickles_and_reads_the_same(data_dir, tmp_path):
    mosaic = open_mosaic(cut_tiles(data_dir / "bahamas_rgb.tif", tmp_path), bands=[3, 1])
    window = Window(380, 340, 50, 40)
    copy = pickle.loads(pickle.dumps(mosaic))
    np.testing.assert_array_equal(copy.read(window), mosaic.read(window))
    assert mosaic.count == 2
    np.testing.assert_array_equal(mosaic.select_bands([2]).read(window), mosaic.read(window)[1:])


def test_inputs_that_cannot_form_one_image_are_refused_in_one_line(data_dir, tmp_path):
    bands3 = write_raster(tmp_path / "three.tif", np.ones((3, 8, 8), np.uint8))
    bands1 = write_raster(tmp_path / "one.tif", np.ones((1, 8, 8), np.uint8))
    wide = write_raster(tmp_path / "wide.tif", np.ones((3, 8, 8), np.uint16))
    with_nodata = write_raster(tmp_path / "nodata.tif", np.ones((3, 8, 8), np.uint8), nodata=0)
    cases = {
        (bands3, bands1): "one band count, data type and nodata value",
        (bands3, wide): "3 bands of uint16",
        (bands3, with_nodata): "nodata 0",
        (bands3, tmp_path / "missing.tif"): "input not found",
        (): "at least one input",
        (data_dir / "nuclei_img2d.tif",): "no CRS and geotransform",
    }
    for inputs, words in cases.items():
        with pytest.raises(SourceError, match=words) as caught:
            open_mosaic(list(inputs))
        assert "\n" not in str(caught.value)
