"""The committed label rasters of the demo models are what examples/make_demo_labels.py's rules give
on the committed images (so the demo README's account of the labels is the account of these files)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import rasterio

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("make_demo_labels", REPO / "examples" / "make_demo_labels.py")
make_demo_labels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_demo_labels)
DATA = make_demo_labels.DATA


def read(name: str) -> np.ndarray:
    with rasterio.open(DATA / name) as src:
        return src.read()


@pytest.mark.parametrize("image, labels", sorted(make_demo_labels.WATER_SCENES.items()))
def test_the_water_labels_of_a_scene_are_its_near_infrared_rule(image, labels):
    expected = make_demo_labels.nir_rule(read(image))
    np.testing.assert_array_equal(read(labels)[0], expected)
    assert {0, 1} <= set(np.unique(expected))  # water and land both present


def test_the_bahamas_water_labels_are_its_colour_rule_without_clouds():
    pixels = read("bahamas_rgb.tif")
    expected = make_demo_labels.water_land(make_demo_labels.bahamas_rule(pixels))
    np.testing.assert_array_equal(read("bahamas_water.tif")[0], expected)
    assert not (expected == make_demo_labels.CLOUD).any()


def test_the_near_infrared_rule_leaves_what_it_is_unsure_of_unlabelled():
    # red, green, blue, nir of: open water, dark water, vegetation, bare field (NDWI 0.1), nodata
    pixels = np.array([[40, 10, 60, 90, 0], [60, 12, 80, 110, 0], [70, 15, 50, 80, 0], [20, 30, 150, 90, 0]],
                      dtype=np.uint8).reshape(4, 1, 5)
    assert make_demo_labels.nir_rule(pixels)[0].tolist() == [0, 0, 1, 255, 255]
