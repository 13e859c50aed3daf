"""Which installed model runs when none is given: the near-infrared model for images whose bands
are named red, green, blue and nir, the true-colour one for the others, chosen per image (also in
a cohort of both kinds), and said on the run's first line."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

import segtile
from segtile.cli import main
from segtile.models import load_checkpoint
from segtile.models.builtin import (
    DEFAULT_MODEL,
    NEAR_INFRARED_BANDS,
    NEAR_INFRARED_MODEL,
    builtin_models,
    installed_default,
)
from tests.test_batch import crop_of


@pytest.fixture(autouse=True)
def no_model_from_the_environment(monkeypatch):
    monkeypatch.delenv("SEGTILE_MODEL", raising=False)


def crop(image: Path, path: Path, descriptions: tuple[str, ...] | None = None) -> Path:
    """The top-left 96 x 96 px of a real GeoTIFF (:func:`tests.test_batch.crop_of`)."""
    return crop_of(image, Window(0, 0, 96, 96), path, descriptions)


def test_the_near_infrared_models_card_names_the_bands_it_is_chosen_by():
    card = load_checkpoint(builtin_models()[NEAR_INFRARED_MODEL]).card
    assert tuple(card.extra["band_names"]) == NEAR_INFRARED_BANDS and card.bands == (1, 2, 3, 4)
    assert card.classes == load_checkpoint(builtin_models()[DEFAULT_MODEL]).card.classes


@pytest.mark.parametrize("names, chosen", [
    (("red", "green", "blue", "nir"), NEAR_INFRARED_MODEL),
    (("Blue", "Green", "Red", "NIR"), NEAR_INFRARED_MODEL),  # any order and case: the bands are read by name
    (("red", "green", "blue"), DEFAULT_MODEL),
    (("red", "green", "blue", "band 4"), DEFAULT_MODEL),  # a fourth band that may be anything
    (("red", "green", "blue", "nir", "nir"), DEFAULT_MODEL),  # which nir? not a guess
])
def test_the_installed_default_follows_the_names_of_the_images_bands(names, chosen):
    assert installed_default(names).path == builtin_models()[chosen]


def test_an_image_with_four_unnamed_bands_gets_the_true_colour_model_and_the_way_to_the_other():
    origin = installed_default(("red", "green", "blue", "band 4")).origin
    assert f"--model {NEAR_INFRARED_MODEL}" in origin
    assert "--model" not in installed_default(("red", "green", "blue")).origin


def test_segment_without_a_model_reads_a_named_near_infrared_band_and_chosen_bands_override(data_dir, tmp_path):
    image = crop(data_dir / "naip_2010_rgbn_10m.tif", tmp_path / "naip.tif", ("Red", "Green", "Blue", "NIR"))
    result = segtile.segment(image)
    assert result.spec.path == str(builtin_models()[NEAR_INFRARED_MODEL]) and result.labels.shape == (96, 96)
    assert segtile.segment(image, bands=[1, 2, 3]).spec.path == str(builtin_models()[DEFAULT_MODEL])


def test_the_command_says_which_default_it_chose(data_dir, tmp_path, capsys):
    image = crop(data_dir / "naip_2010_rgbn_10m.tif", tmp_path / "naip.tif")
    assert main([str(image), "--out", str(tmp_path / "mask.tif"), "--progress", "json"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("segtile: model:")]
    assert lines == [f"segtile: model: {builtin_models()[NEAR_INFRARED_MODEL]} (the installed default for images "
                     "with red, green, blue and nir bands)"]


def test_a_cohort_runs_each_image_with_the_default_for_its_bands(data_dir, tmp_path, capsys):
    folder = tmp_path / "tiles"
    folder.mkdir()
    crop(data_dir / "naip_2010_rgbn_10m.tif", folder / "naip.tif")
    crop(data_dir / "bahamas_rgb.tif", folder / "bahamas.tif")
    (tmp_path / "out").mkdir()
    assert main([str(folder), "--out", str(tmp_path / "out" / "{stem}.tif"), "--quiet"]) == 0
    for stem, model in (("naip", NEAR_INFRARED_MODEL), ("bahamas", DEFAULT_MODEL)):
        single = tmp_path / f"{stem}_single.tif"
        assert main([str(folder / f"{stem}.tif"), "--model", model, "--out", str(single), "--quiet"]) == 0
        with rasterio.open(tmp_path / "out" / f"{stem}.tif") as cohort, rasterio.open(single) as alone:
            np.testing.assert_array_equal(cohort.read(), alone.read())
    # the other model would have labelled the near-infrared image otherwise: the test can tell them apart
    other = tmp_path / "naip_rgb.tif"
    assert main([str(folder / "naip.tif"), "--model", DEFAULT_MODEL, "--out", str(other), "--quiet"]) == 0
    with rasterio.open(tmp_path / "out" / "naip.tif") as cohort, rasterio.open(other) as rgb:
        assert (cohort.read() != rgb.read()).any()
