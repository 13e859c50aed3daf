"""The domain check: an input far from the images a model was trained on gets one note naming what
differs and what to do; inputs like them stay silent; cards that record nothing are not checked."""

import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio

from segtile.api import segment
from segtile.errors import ResolutionWarning
from segtile.inference.domain import DOMAIN_KEY, domain_note, sample_pixels
from segtile.models import load_checkpoint
from segtile.models.builtin import builtin_models
from segtile.sources import open_source
from segtile.sources.labels import open_labels
from segtile.training.datacard import card_from_data
from segtile.training.sampling import TrainingData

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"


def trained_card(data_dir, pairs, bands=None, zoom=1.0, classes=("water", "land"), sensor=None):
    """The card ``segtile train`` writes for these (image, labels) pairs of examples/data."""
    images = [open_source(data_dir / image, bands=bands) for image, _ in pairs]
    labels = [open_labels(data_dir / truth, like=image, classes=classes) for image, (_, truth) in zip(images, pairs)]
    data = TrainingData(images, labels, tile_size=128, val_fraction=0.1, seed=0)
    first = images[0]
    return card_from_data(data, classes, None, tuple(bands or range(1, first.count + 1)), first.band_names, zoom,
                          sensor)


@pytest.fixture(scope="module")
def landsat_card():
    """A card of Landsat 7 at 30 m alone (the training scene of the Great Salt Lake)."""
    return trained_card(DATA, [("gsl_landsat7_rgbn.tif", "gsl_landsat7_water.tif")], bands=[1, 2, 3])


def note_for(data_dir, name, card, bands=(1, 2, 3)):
    with open_source(data_dir / name, bands=list(bands)) as source:
        return domain_note(source, card)


def test_train_records_what_the_network_saw(landsat_card):
    record = landsat_card.extra[DOMAIN_KEY]
    assert record["dtype"] == "uint8" and len(record["bands"]) == 3
    for band in record["bands"]:
        assert 0 <= band["p1"] < band["mean"] < band["p99"] <= 255 and band["std"] > 0
    assert landsat_card.resolution_range == (30.0, 30.0)


@pytest.mark.parametrize("name", ["gsl_north_landsat7_rgbn.tif", "gsl_landsat7_rgbn.tif"])
def test_an_image_like_the_training_images_is_silent(data_dir, landsat_card, name):
    assert note_for(data_dir, name, landsat_card) is None


def test_finer_pixels_than_trained_are_named_with_the_way_out(data_dir, landsat_card):
    # NAIP at 10 m, run on its own pixels, given a model trained at 30 m only
    note = note_for(data_dir, "naip_2010_rgbn_10m.tif", landsat_card)
    assert "10 m pixels where it was trained at 30 m" in note and "--resolution 30" in note


def test_sixteen_bit_reflectance_given_to_an_eight_bit_model(data_dir, tmp_path, landsat_card):
    with rasterio.open(data_dir / "gsl_north_landsat7_rgbn.tif") as src:
        profile = {**src.profile, "dtype": "uint16", "count": 3, "photometric": "minisblack"}
        pixels = src.read([1, 2, 3]).astype(np.uint16) * 40  # digital numbers as 16-bit reflectance
    with rasterio.open(tmp_path / "reflectance.tif", "w", **profile) as dst:
        dst.write(pixels)
    note = note_for(tmp_path, "reflectance.tif", landsat_card)
    assert "uint16 pixels where it was trained on uint8" in note and "gdal_translate -ot Byte -scale" in note
    assert "band 1" in note and "averages" in note


def test_the_bundled_fluorescence_model_given_an_h_and_e_slide(data_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        segment(data_dir / "cmu_small_region.svs", "nuclei_psp18", device="cpu")
    notes = [str(w.message) for w in caught if w.category is ResolutionWarning]
    far = [note for note in notes if "far from the images the model was trained on" in note]
    assert len(far) == 1, notes
    assert "(fluorescence microscopy" in far[0] and "uint8 pixels where it was trained on uint16" in far[0]
    assert "band 1 (red) averages" in far[0]
    with warnings.catch_warnings(record=True) as caught:  # the image it was trained on: silent
        warnings.simplefilter("always")
        segment(data_dir / "nuclei_img2d.tif", "nuclei_psp18", device="cpu")
    assert not [w for w in caught if "far from" in str(w.message)]


def test_the_bundled_nuclei_card_records_its_own_training_image(data_dir):
    """The record added to the nuclei model's card is what `segtile train` writes for its training pair."""
    nuclei = load_checkpoint(builtin_models()["nuclei_psp18"]).card
    card = trained_card(data_dir, [("nuclei_img2d.tif", "nuclei_labels_train.tif")], classes=nuclei.classes,
                        sensor="fluorescence microscopy")
    assert nuclei.extra[DOMAIN_KEY] == card.extra[DOMAIN_KEY]


def test_a_card_without_a_record_is_not_checked(data_dir):
    card = load_checkpoint(builtin_models()["nuclei_psp18"]).card
    card = replace(card, extra={key: value for key, value in card.extra.items() if key != DOMAIN_KEY})
    with open_source(data_dir / "cmu_small_region.svs", bands=[1]) as slide:
        assert domain_note(slide, card) is None


def test_the_input_is_described_from_a_sample_in_well_under_a_second(data_dir):
    with open_source(data_dir / "landsat7.tif") as source:  # 2181 x 1917: described from its 1/4 overview
        start = time.perf_counter()
        values = sample_pixels(source)
        assert time.perf_counter() - start < 0.5
    assert values.shape[0] == 3 and 1000 < values.shape[1] <= 512 * 512
