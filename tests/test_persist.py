"""``Segmentation.persist``: inference once, then every writer and array reads the work store."""

import gc

import numpy as np
import pyogrio
import pytest
import rasterio
import zarr

from segtile import segment
from segtile.store.persist import PersistError
from tests.test_engine import random_image


def test_persist_and_two_writers_run_inference_once(tmp_path, counted):
    result, model = counted
    expected = result.labels.compute()
    one_pass = model.tiles_seen
    stored = result.persist()
    assert model.tiles_seen == 2 * one_pass
    stored.to_geotiff(tmp_path / "mask.tif")
    stored.to_vector(tmp_path / "regions.gpkg")
    stored.write(tmp_path / "again.tif", tmp_path / "labels.zarr")
    np.testing.assert_array_equal(stored.labels.compute(), expected)
    assert model.tiles_seen == 2 * one_pass  # nothing ran again
    with rasterio.open(tmp_path / "mask.tif") as mask:
        np.testing.assert_array_equal(mask.read(1), expected)
        assert mask.crs == result.crs and mask.transform == result.transform
    assert pyogrio.read_info(tmp_path / "regions.gpkg")["features"] > 0
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "labels.zarr", mode="r")["labels"][:], expected)
    assert stored.tile_count() == 0


def test_persisted_probabilities_are_those_of_the_lazy_result(tmp_path, counted):
    result, model = counted
    expected = result.probabilities.compute()
    stored = result.persist(probabilities=True)
    seen = model.tiles_seen
    np.testing.assert_array_equal(stored.probabilities.compute(), expected)
    stored.to_zarr(tmp_path / "out.zarr", probabilities=True)
    stored.to_geotiff(tmp_path / "mask.tif", probabilities=True)
    assert model.tiles_seen == seen
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "out.zarr", mode="r")["probabilities"][:], expected)


def test_what_a_persisted_result_does_not_keep_is_a_one_line_error(tmp_path, counted):
    result, _ = counted
    stored = result.persist()
    with pytest.raises(PersistError, match=r"persisted without probabilities: persist\(probabilities=True\)"):
        stored.to_geotiff(tmp_path / "mask.tif", probabilities=True)
    with pytest.raises(PersistError, match="keeps labels and probabilities, not logits"):
        _ = stored.logits
    assert not (tmp_path / "mask.tif").exists()


def test_a_temporary_store_is_removed_on_close_or_when_nothing_uses_it(counted):
    result, _ = counted
    with result.persist() as stored:
        folder = stored.stored.folder
        assert (folder / "work.zarr").is_dir()
    assert not folder.exists()
    with pytest.raises(PersistError, match="closed or removed: persist\\(\\) again"):
        stored.to_geotiff(folder.parent / "never.tif")

    stored = result.persist()
    labels = stored.labels  # taken before the store is closed: read after, it must not pass for nodata
    stored.close()
    with pytest.raises(PersistError, match="closed or removed"):
        labels.compute()
    with pytest.raises(PersistError, match="closed or removed"):
        stored.to_geotiff(folder.parent / "never.tif")
    assert not (folder.parent / "never.tif").exists()

    stored = result.persist()
    folder = stored.stored.folder
    labels = stored.labels[10:20]  # an array taken from it keeps the store
    del stored
    gc.collect()
    assert folder.exists()
    assert labels.compute().shape == (10, 96)
    del labels
    gc.collect()
    assert not folder.exists()


def test_a_store_at_a_path_is_kept_and_never_replaced(tmp_path, counted):
    result, _ = counted
    stored = result.persist(tmp_path / "kept")
    expected = stored.labels.compute()
    stored.close()
    del stored
    gc.collect()
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "kept" / "work.zarr", mode="r")["labels"][:], expected)
    with pytest.raises(PersistError, match="kept exists: persist\\(\\) makes a new folder") as error:
        result.persist(tmp_path / "kept")
    assert "\n" not in str(error.value)
    assert (tmp_path / "kept" / "work.zarr").is_dir()  # left as it was


def test_a_lazy_result_closes_to_nothing(pointwise_model):
    result = segment(random_image(3, 20, 20), pointwise_model(bands=3, classes=2), device="cpu")
    result.close()
    assert result.labels.compute().shape == (20, 20)
