"""QuPath GeoJSON: one object per region per class, joined across seams, in level-0 pixels with
areas in µm²; classes left out on request."""

import json
import uuid
from collections import Counter

import dask.array as da
import numpy as np
import pytest
import shapely
from affine import Affine

from segtile.georef import Georef
from segtile.writers import WriterInputError
from segtile.writers.qupath import write_qupath_geojson
from segtile.writers.vector import UnknownClassError
from tests.test_writers_vector import CARD, NODATA, components, scene

# A slide of 0.25 µm pixels processed at 0.5 µm: each pixel of the labels is 2 x 2 level-0 pixels.
SLIDE = Georef(transform=Affine.scale(2.0, 2.0), mpp=0.5)


def read(path):
    collection = json.loads(path.read_text(encoding="utf-8"))
    features = collection["features"]
    polygons = shapely.get_parts(shapely.from_geojson(path.read_text(encoding="utf-8")))
    return collection, features, polygons


def test_one_object_per_region_in_level0_pixels_with_square_microns(tmp_path):
    labels = scene()
    path = write_qupath_geojson(tmp_path / "slide.geojson", da.from_array(labels, chunks=16), SLIDE, CARD)
    collection, features, polygons = read(path)
    assert set(collection) == {"type", "features"}  # no CRS claimed
    names = [f["properties"]["classification"]["name"] for f in features]
    expected = components(labels)
    assert Counter(names) == Counter(CARD.classes[value] for value, _ in expected)
    for class_id, name in enumerate(CARD.classes):
        mine = np.array(names) == name
        pixels = sorted(n for v, n in expected if v == class_id)
        areas = sorted(f["properties"]["measurements"]["Area µm^2"] for f, m in zip(features, mine) if m)
        assert areas == pytest.approx([n * 0.25 for n in pixels])  # a 0.5 µm pixel is 0.25 µm²
        assert sorted(shapely.area(polygons[mine])) == pytest.approx([n * 4 for n in pixels])  # level-0 px²
    assert shapely.total_bounds(polygons).tolist() == [0, 0, 128, 128]
    assert all(f["properties"]["objectType"] == "annotation" for f in features)
    assert len({uuid.UUID(f["id"]) for f in features}) == len(features)


def test_without_a_pixel_size_areas_are_in_level0_pixels_and_detections_on_request(tmp_path):
    labels = np.zeros((20, 30), np.uint8)
    labels[5:10, 5:25] = 2
    path = write_qupath_geojson(tmp_path / "slide.geojson", labels, Georef(transform=Affine.scale(3.0, 3.0)), CARD,
                                objects="detection")
    _, features, _ = read(path)
    measurements = sorted((f["properties"]["measurements"] for f in features), key=lambda m: m["Area px^2"])
    assert measurements == [{"Area px^2": 100 * 9.0}, {"Area px^2": 500 * 9.0}]
    assert {f["properties"]["objectType"] for f in features} == {"detection"}


def test_skipped_classes_and_nodata_make_no_object(tmp_path):
    labels = scene()
    path = write_qupath_geojson(tmp_path / "slide.geojson", da.from_array(labels, chunks=16), SLIDE, CARD,
                                skip_classes=["class 0", "class 2"])
    _, features, _ = read(path)
    names = Counter(f["properties"]["classification"]["name"] for f in features)
    assert names == Counter(CARD.classes[v] for v, _ in components(labels) if v not in (0, 2))
    empty = write_qupath_geojson(tmp_path / "empty.geojson", np.full((8, 8), NODATA, np.uint8), SLIDE, CARD)
    assert json.loads(empty.read_text()) == {"type": "FeatureCollection", "features": []}


def test_bad_options_are_refused_before_writing(tmp_path):
    labels = np.zeros((8, 8), np.uint8)
    with pytest.raises(UnknownClassError, match="unknown class 'glass' to skip: the model's classes are class 0, "):
        write_qupath_geojson(tmp_path / "a.geojson", labels, SLIDE, CARD, skip_classes=["glass"])
    with pytest.raises(WriterInputError, match="QuPath objects must be one of annotation, detection, not 'cell'"):
        write_qupath_geojson(tmp_path / "a.geojson", labels, SLIDE, CARD, objects="cell")
    assert list(tmp_path.iterdir()) == []
