"""Zarr v3 stores: labels, probabilities, georeference and card, written chunk by chunk."""

import dask.array as da
import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine

from segtile.georef import Georef
from segtile.models.card import ModelCard
from segtile.writers import OutputExistsError, WriterInputError, ZarrStoreError, read_zarr, write_zarr

CARD = ModelCard(classes=("background", "tissue", "tumour"), extra={"trained_on": "test"})


@pytest.fixture(scope="module")
def georef(data_dir):
    with rasterio.open(data_dir / "bahamas_rgb.tif") as src:
        return Georef(src.crs, src.transform @ Affine.rotation(-15.0))


@pytest.fixture
def arrays():
    rng = np.random.default_rng(3)
    probabilities = rng.dirichlet(np.ones(3), size=(90, 110)).transpose(2, 0, 1).astype(np.float32)
    labels = probabilities.argmax(axis=0).astype(np.uint8)
    labels[:10, :20] = 255
    probabilities[:, :10, :20] = np.nan
    return labels, probabilities


def test_round_trip(tmp_path, arrays, georef):
    labels, probabilities = arrays
    path = tmp_path / "out.zarr"
    write_zarr(path, da.from_array(labels, chunks=(32, 48)), georef, CARD,
               probabilities=da.from_array(probabilities, chunks=(3, 32, 48)))
    stored_labels, stored_probabilities, stored_georef, card = read_zarr(path)
    assert stored_labels.chunks == da.from_array(labels, chunks=(32, 48)).chunks
    assert stored_labels.compute().tolist() == labels.tolist()
    assert np.array_equal(stored_probabilities.compute(), probabilities, equal_nan=True)
    assert stored_georef.crs == georef.crs
    assert stored_georef.transform == georef.transform
    assert card == CARD and card.extra == {"trained_on": "test"}


def test_layout_and_attributes(tmp_path, arrays, georef):
    labels, probabilities = arrays
    path = tmp_path / "out.zarr"
    write_zarr(path, da.from_array(labels, chunks=40), georef, CARD, probabilities=probabilities)
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == 3
    assert group["labels"].dtype == np.uint8 and group["labels"].chunks == (40, 40)
    assert group["labels"].fill_value == 255
    assert group["labels"].metadata.dimension_names == ("y", "x")
    assert group["probabilities"].metadata.dimension_names == ("class", "y", "x")
    attrs = group.attrs
    assert rasterio.crs.CRS.from_wkt(attrs["crs"]) == georef.crs
    assert Affine(*attrs["transform"]) == georef.transform
    assert attrs["classes"] == list(CARD.classes)
    assert attrs["colors"] == list(CARD.colors)
    assert attrs["nodata"] == 255 and attrs["mpp"] is None
    assert ModelCard.from_dict(attrs["card"]) == CARD


def test_without_georeference_and_probabilities(tmp_path, arrays):
    labels, _ = arrays
    write_zarr(tmp_path / "slide.zarr", labels, Georef(mpp=0.5), CARD)
    stored_labels, stored_probabilities, georef, _ = read_zarr(tmp_path / "slide.zarr")
    assert stored_probabilities is None
    assert georef == Georef(None, None, 0.5)
    assert stored_labels.compute().tolist() == labels.tolist()


def test_irregular_chunks_are_made_regular(tmp_path, arrays):
    labels, _ = arrays
    irregular = da.from_array(labels, chunks=((20, 50, 20), (110,)))
    write_zarr(tmp_path / "x.zarr", irregular, Georef(), CARD)
    stored, _, _, _ = read_zarr(tmp_path / "x.zarr")
    assert stored.chunks == ((50, 40), (110,))
    assert stored.compute().tolist() == labels.tolist()


def test_labels_and_probabilities_share_one_pass(tmp_path, arrays):
    """Both arrays derive from the same logits: each logits chunk is computed once."""
    _, probabilities = arrays
    computed = []

    def logits_block(block):
        computed.append(block.shape)
        return np.log(block)

    logits = da.from_array(probabilities, chunks=(3, 45, 55)).map_blocks(
        logits_block, meta=np.empty((0, 0, 0), np.float32))
    labels = da.argmax(da.nan_to_num(logits), axis=0).astype(np.uint8)
    write_zarr(tmp_path / "one.zarr", labels, Georef(), CARD, probabilities=da.exp(logits))
    assert len(computed) == logits.npartitions == 4


def test_existing_store_kept_unless_overwrite(tmp_path, arrays):
    labels, _ = arrays
    path = tmp_path / "out.zarr"
    write_zarr(path, labels, Georef(), CARD)
    with pytest.raises(OutputExistsError):
        write_zarr(path, labels[:5], Georef(), CARD)
    assert read_zarr(path)[0].shape == labels.shape
    write_zarr(path, labels[:5], Georef(), CARD, overwrite=True)
    assert read_zarr(path)[0].shape == (5, labels.shape[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


def test_bad_inputs(tmp_path, arrays):
    labels, probabilities = arrays
    with pytest.raises(WriterInputError, match="probabilities are"):
        write_zarr(tmp_path / "a.zarr", labels, Georef(), CARD, probabilities=probabilities[:, :50])
    with pytest.raises(ZarrStoreError, match="not a Zarr group"):
        read_zarr(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(ZarrStoreError, match="not a segtile Zarr store"):
        read_zarr(tmp_path / "other.zarr")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_chunks_of_nothing_but_nodata_are_left_out_and_read_as_nodata(tmp_path, arrays, zarr_format):
    labels, probabilities = arrays
    labels, probabilities = labels.copy(), probabilities.copy()
    labels[:32, :48] = 255  # the first chunk: all nodata
    probabilities[:, :32, :48] = np.nan
    labels[60, 100] = 255  # one nodata pixel in a chunk of labels: the chunk is written
    path = tmp_path / "out.zarr"
    write_zarr(path, da.from_array(labels, chunks=(32, 48)), Georef(), CARD,
               probabilities=da.from_array(probabilities, chunks=(3, 32, 48)), zarr_format=zarr_format)
    group = zarr.open_group(str(path), mode="r")
    assert group["labels"].nchunks_initialized == 3 * 3 - 1
    assert group["probabilities"].nchunks_initialized == 3 * 3 - 1
    stored_labels, stored_probabilities, _, _ = read_zarr(path)
    assert stored_labels.compute().tolist() == labels.tolist()
    assert np.array_equal(stored_probabilities.compute(), probabilities, equal_nan=True)
