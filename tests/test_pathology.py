"""From a slide to QuPath objects, OME-Zarr labels and a scaled GeoTIFF mask, through the CLI.

The slides are the real Aperio one and, written from its pixels in the test, a pyramidal tiled
TIFF (µm per pixel in its resolution tags) and an OME-TIFF (µm in its OME-XML): the three must
give the same outputs. The model is a 1x1 convolution that calls bright pixels background,
bluish ones stain and the rest tissue.
"""

import json
import uuid

import numpy as np
import pyogrio
import pytest
import rasterio.features
import shapely
import tifffile
import torch
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from segtile.cli import main
from segtile.models import ModelCard, save_torchscript
from segtile.sources import SlideSource, open_source
from segtile.writers.legend import rgb

MPP = 0.499  # the Aperio slide's µm per pixel
CLASSES = ("background", "tissue", "stain")
COLOURS = ("#f0f0f0", "#d62728", "#1f77b4")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    conv = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight[:] = torch.tensor([[10 / 3] * 3, [0.0] * 3, [-10.0, 0.0, 10.0]])[:, :, None, None]
        conv.bias[:] = torch.tensor([-8.5, 0.0, 0.5])
    card = ModelCard(classes=CLASSES, colors=COLOURS, scale=255, tile_size=256, overlap=32)
    path = tmp_path_factory.mktemp("model") / "pointwise.pt"
    save_torchscript(path, conv.eval(), card)
    return path


@pytest.fixture(scope="module")
def slide_pixels(data_dir):
    return tifffile.imread(data_dir / "cmu_small_region.svs")


@pytest.fixture(scope="module", params=["svs", "pyramid", "ome"])
def slide(request, data_dir, slide_pixels, tmp_path_factory):
    """The real slide, or a pyramidal TIFF / OME-TIFF (levels 1, 1/2, 1/4) written from its pixels."""
    if request.param == "svs":
        return data_dir / "cmu_small_region.svs"
    folder = tmp_path_factory.mktemp(request.param)
    levels = [slide_pixels, slide_pixels[::2, ::2], slide_pixels[::4, ::4]]
    options = {"tile": (256, 256), "photometric": "rgb", "compression": "zlib"}
    if request.param == "pyramid":
        path, pixels_per_cm = folder / "slide.tif", 1e4 / MPP
        with tifffile.TiffWriter(path) as tif:
            tif.write(levels[0], subifds=2, resolution=(pixels_per_cm, pixels_per_cm), resolutionunit="CENTIMETER",
                      **options)
            for level in levels[1:]:
                tif.write(level, subfiletype=1, **options)
    else:
        path = folder / "slide.ome.tif"
        with tifffile.TiffWriter(path, ome=True) as tif:
            tif.write(levels[0], subifds=2, metadata={"axes": "YXS", "PhysicalSizeX": MPP, "PhysicalSizeY": MPP},
                      **options)
            for level in levels[1:]:
                tif.write(level, subfiletype=1, **options)
    return path


def run(*args) -> int:
    return main([str(a) for a in args])


def features_of(path):
    collection = json.loads(path.read_text(encoding="utf-8"))
    assert collection["type"] == "FeatureCollection" and "crs" not in collection
    return collection["features"]


def microns_of(mask_path) -> tuple[float, float]:
    """µm per pixel (x, y) from a GeoTIFF mask's TIFF resolution tags."""
    with tifffile.TiffFile(mask_path) as tif:
        page = tif.pages[0]
        assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
        x, y = page.get_resolution()  # pixels per cm
    return 1e4 / x, 1e4 / y


@pytest.mark.parametrize("slide, mpp", [("svs", None), ("svs", 2.0), ("pyramid", 2.0), ("ome", 2.0)],
                         indirect=["slide"])
def test_qupath_objects_are_in_level0_pixels_with_areas_in_square_microns(tmp_path, slide, model, mpp):
    # slide.tif and slide.geojson side by side: a slide's GeoJSON writes no slide.qml to clash with the mask's
    geojson, mask_path = tmp_path / "slide.geojson", tmp_path / "slide.tif"
    grid = ["--mpp", mpp] if mpp else []
    assert run(slide, "--model", model, "-o", geojson, "-o", mask_path, *grid, "--chunk-size", "384", "--quiet",
               "--no-tissue-mask") == 0  # the whole slide: objects reach its four edges
    mask = tifffile.imread(mask_path)
    height, width = mask.shape
    mx, my = microns_of(mask_path)
    if mpp is None:
        assert (height, width) == (2967, 2220) and (mx, my) == (pytest.approx(MPP), pytest.approx(MPP))
    else:  # the grid keeps the slide's extent: its pixel size is the slide's scaled by the ratio of sizes
        assert (height, width) == (740, 554)
        assert (mx, my) == (pytest.approx(MPP * 2220 / 554), pytest.approx(MPP * 2967 / 740))

    features = features_of(geojson)
    polygons = shapely.get_parts(shapely.from_geojson(geojson.read_text(encoding="utf-8")))
    names = np.array([f["properties"]["classification"]["name"] for f in features])
    areas = np.array([f["properties"]["measurements"]["Area µm^2"] for f in features])
    assert len(polygons) == len(features)
    assert shapely.total_bounds(polygons).tolist() == pytest.approx([0, 0, 2220, 2967])  # level 0, at any grid
    for class_id, name in enumerate(CLASSES):
        of_class = names == name
        expected = (mask == class_id).sum() * mx * my
        assert areas[of_class].sum() == pytest.approx(expected, rel=1e-6)
        assert shapely.area(polygons[of_class]).sum() * MPP * MPP == pytest.approx(expected, rel=1e-6)
        # one object per 4-connected region of the class in the mask, joined across chunk seams
        regions = [shapely.geometry.shape(g) for g, _ in rasterio.features.shapes(mask, mask=mask == class_id)]
        assert of_class.sum() == len(regions)
        if mpp is not None:  # on the mask's grid the objects are the mask's regions (cheap at this size)
            on_grid = shapely.transform(polygons[of_class], lambda xy: xy * (width / 2220, height / 2967))
            difference = shapely.symmetric_difference(shapely.union_all(on_grid), shapely.union_all(regions))
            assert difference.area < 1e-9 * mask.size


def test_qupath_feature_structure_and_object_type(tmp_path, data_dir, model):
    svs = data_dir / "cmu_small_region.svs"
    annotations, detections = tmp_path / "a.geojson", tmp_path / "d.geojson"
    assert run(svs, "--model", model, "-o", annotations, "--mpp", "4", "--quiet") == 0
    assert run(svs, "--model", model, "-o", detections, "--mpp", "4", "--qupath-objects", "detection", "--quiet") == 0
    features = features_of(annotations)
    assert features and len(features) == len(features_of(detections))
    ids = [uuid.UUID(f["id"]) for f in features]
    assert len(set(ids)) == len(ids)
    colours = {name: list(rgb(colour)) for name, colour in zip(CLASSES, COLOURS)}
    for feature in features:
        assert set(feature) == {"type", "id", "geometry", "properties"} and feature["type"] == "Feature"
        assert feature["geometry"]["type"] == "Polygon"
        properties = feature["properties"]
        assert properties["objectType"] == "annotation"
        assert properties["classification"] == {"name": properties["classification"]["name"],
                                                 "color": colours[properties["classification"]["name"]]}
        assert list(properties["measurements"]) == ["Area µm^2"] and properties["measurements"]["Area µm^2"] > 0
    assert {f["properties"]["objectType"] for f in features_of(detections)} == {"detection"}


def test_skip_classes_leave_out_their_objects_and_polygons(tmp_path, data_dir, model):
    svs = data_dir / "cmu_small_region.svs"
    every, skipping = tmp_path / "every.geojson", tmp_path / "skipping.geojson"
    polygons = tmp_path / "skipping.gpkg"
    assert run(svs, "--model", model, "-o", every, "--mpp", "2", "--quiet") == 0
    assert run(svs, "--model", model, "-o", skipping, "-o", polygons, "--mpp", "2", "--skip-classes",
               "background, stain", "--quiet") == 0
    kept = [f for f in features_of(every) if f["properties"]["classification"]["name"] == "tissue"]
    features = features_of(skipping)
    assert {f["properties"]["classification"]["name"] for f in features} == {"tissue"}
    assert sorted(f["properties"]["measurements"]["Area µm^2"] for f in features) == pytest.approx(
        sorted(f["properties"]["measurements"]["Area µm^2"] for f in kept))
    _, _, _, fields = pyogrio.raw.read(polygons, layer="skipping")
    assert set(fields[1].tolist()) == {"tissue"}


def test_an_unknown_class_to_skip_is_one_line_before_any_work(tmp_path, data_dir, model, capsys):
    out = tmp_path / "slide.geojson"
    assert run(data_dir / "cmu_small_region.svs", "--model", model, "-o", out, "--skip-classes", "glass",
               "--quiet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["segtile: error: unknown class 'glass' to skip: the model's classes are background, tissue, stain"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["slide.ome.zarr", "slide.zarr"])
def test_a_slides_zarr_is_ome_zarr_that_ome_zarr_py_reads(tmp_path, data_dir, model, name):
    store, mask = tmp_path / name, tmp_path / "mask.tif"
    assert run(data_dir / "cmu_small_region.svs", "--model", model, "-o", store, "-o", mask, "--mpp", "1",
               "--chunk-size", "256", "--probabilities", "--quiet") == 0
    image, labels = [node for node in Reader(parse_url(str(store)))() if node.data]
    mx, my = microns_of(mask)
    assert labels.metadata["name"] == "classes"
    assert labels.metadata["color"][2] == pytest.approx([v / 255 for v in (*rgb(COLOURS[2]), 255)])
    assert {value: p["class_name"] for value, p in labels.metadata["properties"].items()} == {
        **dict(enumerate(CLASSES)), 255: "nodata"}
    assert [axis["unit"] for axis in labels.metadata["axes"]] == ["micrometer", "micrometer"]
    levels = labels.metadata["coordinateTransformations"]
    pixels = tifffile.imread(mask)
    height, width = pixels.shape  # 1481 x 1108: halved until one chunk of 256 holds it, 4 levels
    assert len(labels.data) == len(image.data) == len(levels) == 4
    for k, (array, transformations) in enumerate(zip(labels.data, levels)):
        assert transformations[0]["scale"] == pytest.approx([my * 2 ** k, mx * 2 ** k])
        assert array.shape == (-(-height // 2 ** k), -(-width // 2 ** k))
    np.testing.assert_array_equal(labels.data[0].compute(), pixels)


def test_slide_mask_reopens_as_a_slide_with_its_pixel_size(tmp_path, data_dir, model):
    mask = tmp_path / "mask.tif"
    assert run(data_dir / "cmu_small_region.svs", "--model", model, "-o", mask, "--mpp", "2", "--quiet") == 0
    with tifffile.TiffFile(mask) as tif:
        assert not any(code in tif.pages[0].tags for code in (33550, 33922, 34264, 34735))  # no GeoTIFF tags
    reopened = open_source(mask)
    assert isinstance(reopened, SlideSource)
    assert reopened.georef.mpp == pytest.approx(microns_of(mask)[0]) == pytest.approx(MPP * 2220 / 554)


def test_a_rasters_geojson_stays_rfc7946_and_skips_classes_too(tmp_path, data_dir, model):
    geojson = tmp_path / "scene.geojson"
    assert run(data_dir / "bahamas_rgb.tif", "--model", model, "-o", geojson, "--skip-classes", "tissue",
               "--quiet") == 0
    collection = json.loads(geojson.read_text())
    names = {f["properties"]["class_name"] for f in collection["features"]}
    assert names and "tissue" not in names
    west, south, east, north = shapely.total_bounds(shapely.get_parts(shapely.from_geojson(geojson.read_text())))
    assert -80 < west < east < -70 and 20 < south < north < 30  # WGS 84 longitude / latitude
