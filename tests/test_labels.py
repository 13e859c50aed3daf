"""Labels on an image's grid: rasters (same grid, or reprojected) and polygons (GeoPackage,
GeoJSON, QuPath GeoJSON), read window by window."""

import json

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
import shapely.geometry
from affine import Affine
from rasterio.windows import Window

from segtile.sources import open_source
from segtile.sources.labels import IGNORE, LabelError, PolygonLabels, RasterLabels, open_labels
from tests.geodata import IMAGE_TRANSFORM, UTM, pixel_box, write_polygons, write_raster

CLASSES = ("water", "land", "cloud")


@pytest.fixture
def image(tmp_path):
    """A georeferenced 3-band 60 x 80 image (UTM, 30 m pixels)."""
    pixels = np.random.default_rng(0).integers(0, 255, (3, 60, 80), dtype=np.uint8)
    return open_source(write_raster(tmp_path / "image.tif", pixels))


@pytest.fixture
def plain_image(tmp_path):
    """A 1-band 50 x 40 image without georeference (as a microscopy TIFF)."""
    pixels = np.random.default_rng(1).integers(0, 4000, (50, 40), dtype=np.uint16)
    return open_source(write_raster(tmp_path / "plain.tif", pixels, crs=None))


def whole(source):
    return Window(0, 0, source.width, source.height)


def test_a_raster_on_the_image_grid_reads_window_by_window_with_nodata_and_255_ignored(tmp_path, image):
    values = np.random.default_rng(2).integers(0, 3, (60, 80)).astype(np.uint8)
    values[5, 7] = 9  # the nodata value
    values[6, 7] = 255
    labels = open_labels(write_raster(tmp_path / "labels.tif", values, nodata=9), like=image, classes=CLASSES)
    assert isinstance(labels, RasterLabels) and labels.shape == (60, 80)
    window = Window(3, 4, 20, 10)
    read = labels.read(window)
    assert read.dtype == np.uint8 and read.shape == (10, 20)
    expected = values[4:14, 3:23].copy()
    expected[expected == 9] = IGNORE
    np.testing.assert_array_equal(read, expected)
    assert read[1, 4] == IGNORE and read[2, 4] == IGNORE


def test_a_rasters_coverage_marks_the_cells_holding_a_labelled_pixel(tmp_path, image):
    values = np.full((60, 80), IGNORE, np.uint8)
    values[5, 70] = 1      # cell (0, 2) of 32 x 32 cells
    values[59, 0:3] = 0    # cell (1, 0), cut short by the image's edge
    labels = open_labels(write_raster(tmp_path / "labels.tif", values), like=image, classes=CLASSES)
    assert labels.coverage(32).tolist() == [[False, False, True], [True, False, False]]


def test_a_plain_raster_of_the_image_size_is_on_its_pixel_grid(tmp_path, plain_image):
    values = (np.arange(50 * 40).reshape(50, 40) % 2).astype(np.uint16)
    labels = open_labels(write_raster(tmp_path / "mask.tif", values, crs=None), like=plain_image,
                         classes=("bg", "fg"))
    np.testing.assert_array_equal(labels.read(whole(plain_image)), values)


def test_label_values_that_are_not_class_indices_are_reported_with_their_place(tmp_path, image):
    values = np.zeros((60, 80), np.uint8)
    values[12, 34] = 3
    labels = open_labels(write_raster(tmp_path / "labels.tif", values), like=image, classes=CLASSES)
    labels.read(Window(0, 0, 30, 30))  # the bad value is not in this window
    with pytest.raises(LabelError, match=r"value 3 \(row 12, column 34\) is not a class index 0-2"):
        labels.read(whole(image))


def test_a_raster_on_another_grid_and_crs_is_reprojected_with_nearest_neighbour(tmp_path, image):
    """Labels in WGS84 at about 4 image pixels per cell, each cell its own class in a pattern
    a shift of one cell would break: each image pixel gets the class of the cell under its centre."""
    lon0, lat0 = rasterio.warp.transform(UTM, "EPSG:4326", [400000.0 - 300], [2700000.0 + 300])
    cell = 0.0011  # degrees, about 115 m: 3.8 image pixels
    transform = Affine(cell, 0, lon0[0], 0, -cell, lat0[0])
    rows, cols = np.mgrid[0:30, 0:35]
    values = ((rows + 2 * cols) % 3).astype(np.uint8)
    labels = open_labels(write_raster(tmp_path / "wgs84.tif", values, crs="EPSG:4326", transform=transform),
                         like=image, classes=CLASSES)
    read = labels.read(whole(image))
    centre_rows, centre_cols = np.mgrid[0:60, 0:80] + 0.5
    xs, ys = IMAGE_TRANSFORM * (centre_cols.ravel(), centre_rows.ravel())
    lons, lats = rasterio.warp.transform(UTM, "EPSG:4326", xs, ys)
    label_cols, label_rows = ~transform * (np.array(lons), np.array(lats))
    expected = values[label_rows.astype(int), label_cols.astype(int)].reshape(60, 80)
    assert np.mean(read == expected) > 0.995  # GDAL's approximate transformer: 1/8 px of error
    window = Window(41, 17, 23, 19)
    np.testing.assert_array_equal(labels.read(window), read[17:36, 41:64])


def test_pixels_outside_a_reprojected_raster_are_unlabelled(tmp_path, image):
    half = Affine(60.0, 0.0, 400000.0, 0.0, -60.0, 2700000.0)  # covers the image's top-left quarter
    labels = open_labels(write_raster(tmp_path / "small.tif", np.ones((15, 20), np.uint8), transform=half),
                         like=image, classes=CLASSES)
    read = labels.read(whole(image))
    assert (read[:30, :40] == 1).all() and (read[30:] == IGNORE).all() and (read[:, 40:] == IGNORE).all()


def test_labels_that_cannot_be_placed_on_the_image_are_refused(tmp_path, image, plain_image):
    plain = write_raster(tmp_path / "plain_labels.tif", np.zeros((10, 10), np.uint8), crs=None)
    with pytest.raises(LabelError, match="without georeference cannot be placed"):
        open_labels(plain, like=image, classes=CLASSES)
    georeferenced = write_raster(tmp_path / "geo.tif", np.zeros((50, 40), np.uint8))
    with pytest.raises(LabelError, match="the image is not"):
        open_labels(georeferenced, like=plain_image, classes=CLASSES)
    (tmp_path / "notes.txt").write_text("not labels")
    with pytest.raises(LabelError, match="not a raster or polygon file"):
        open_labels(tmp_path / "notes.txt", like=image, classes=CLASSES)
    with pytest.raises(LabelError, match="not found"):
        open_labels(tmp_path / "missing.tif", like=image, classes=CLASSES)


def test_polygons_in_the_image_crs_are_rasterised_per_window(tmp_path, image):
    boxes = [pixel_box(IMAGE_TRANSFORM, 10, 20, 5, 15), pixel_box(IMAGE_TRANSFORM, 15, 40, 10, 30)]
    path = write_polygons(tmp_path / "labels.gpkg", boxes, ["land", "cloud"])
    labels = open_labels(path, like=image, classes=CLASSES)
    assert isinstance(labels, PolygonLabels) and labels.class_field == "class_name"
    expected = np.full((60, 80), IGNORE, np.uint8)
    expected[10:20, 5:15] = 1
    expected[15:40, 10:30] = 2  # the later feature wins where they overlap
    np.testing.assert_array_equal(labels.read(whole(image)), expected)
    for window in (Window(0, 0, 12, 12), Window(8, 13, 30, 30), Window(50, 45, 30, 15)):
        rows, cols = window.toslices()
        np.testing.assert_array_equal(labels.read(window), expected[rows, cols])
    coverage = labels.coverage(16)
    assert coverage.shape == (4, 5)
    assert coverage.tolist() == [[True, True, False, False, False]] * 3 + [[False] * 5]  # rows 10-39, cols 5-29


def test_polygons_in_another_crs_are_reprojected_onto_the_image(tmp_path, image):
    box = pixel_box(IMAGE_TRANSFORM, 22, 31, 40, 57)
    lons, lats = rasterio.warp.transform(UTM, "EPSG:4326", *np.asarray(box.exterior.coords).T)
    path = write_polygons(tmp_path / "wgs84.gpkg", [shapely.Polygon(zip(lons, lats))], ["water"], crs="EPSG:4326")
    read = open_labels(path, like=image, classes=CLASSES).read(whole(image))
    expected = np.full((60, 80), IGNORE, np.uint8)
    expected[22:31, 40:57] = 0
    np.testing.assert_array_equal(read, expected)


def test_a_geojson_without_crs_in_projected_coordinates_is_one_clear_error(tmp_path, image):
    """GeoJSON without a "crs" member is WGS 84 (RFC 7946): UTM metres there are no longitudes."""
    box = pixel_box(IMAGE_TRANSFORM, 22, 31, 40, 57)
    feature = {"type": "Feature", "geometry": shapely.geometry.mapping(box), "properties": {"class_name": "water"}}
    path = tmp_path / "drawn.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    with pytest.raises(LabelError, match=r"drawn.geojson: coordinates x .* are no longitudes and latitudes of its "
                                         r"CRS \(EPSG:4326; a GeoJSON without a \"crs\" member is WGS 84\)"):
        open_labels(path, like=image, classes=CLASSES)
    feature["geometry"] = {"type": "Polygon", "coordinates": []}  # no coordinate at all: nothing to check
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    assert (open_labels(path, like=image, classes=CLASSES).read(whole(image)) == IGNORE).all()


def test_qupath_geojson_in_pixel_coordinates_labels_a_plain_image(tmp_path, plain_image):
    def feature(coords, name=None):
        properties = {"objectType": "annotation"}
        if name is not None:
            properties["classification"] = {"name": name, "color": [255, 0, 0]}
        return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [coords]}, "properties": properties}

    features = [feature([[2, 3], [12, 3], [12, 9], [2, 9], [2, 3]], "Tumor"),
                feature([[20, 30], [35, 30], [35, 48], [20, 48], [20, 30]], "Stroma"),
                feature([[0, 0], [40, 0], [40, 50], [0, 0]])]  # an unclassified outline: labels nothing
    path = tmp_path / "annotations.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    labels = open_labels(path, like=plain_image, classes=("Stroma", "Tumor"))
    assert labels.class_field == "classification" and labels.unclassified == 1
    expected = np.full((50, 40), IGNORE, np.uint8)
    expected[3:9, 2:12] = 1
    expected[30:48, 20:35] = 0
    np.testing.assert_array_equal(labels.read(whole(plain_image)), expected)


def test_unknown_class_names_and_missing_fields_are_named(tmp_path, image):
    boxes = [pixel_box(IMAGE_TRANSFORM, 0, 5, 0, 5)] * 3
    path = write_polygons(tmp_path / "labels.gpkg", boxes, ["land", "forest", "road"])
    with pytest.raises(LabelError, match="'forest', 'road' in field 'class_name' are not among the classes"):
        open_labels(path, like=image, classes=CLASSES)
    other = write_polygons(tmp_path / "kind.gpkg", boxes, ["land"] * 3, field="kind")
    with pytest.raises(LabelError, match="no class field among class_name, classification, class, label"):
        open_labels(other, like=image, classes=CLASSES)
    with pytest.raises(LabelError, match="no field 'type'"):
        open_labels(other, like=image, classes=CLASSES, class_field="type")
    assert open_labels(other, like=image, classes=CLASSES, class_field="kind").read(Window(0, 0, 5, 5)).tolist() \
        == [[1] * 5] * 5


def test_polygon_labels_must_be_polygons(tmp_path, image):
    path = tmp_path / "points.gpkg"
    pyogrio.raw.write(path, shapely.to_wkb(np.array([shapely.Point(400100, 2699900)])), [np.array(["land"], object)],
                  ["class_name"], geometry_type="Point", crs=UTM)
    with pytest.raises(LabelError, match="must be polygons, found point"):
        open_labels(path, like=image, classes=CLASSES)
