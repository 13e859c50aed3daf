"""OME-Zarr (NGFF 0.5): the label pyramid, its colours and names, its physical scale; read back
with zarr and with ome-zarr-py."""

from collections import Counter

import dask.array as da
import numpy as np
import ome_zarr_models.v05
import pytest
import rasterio
import zarr
from affine import Affine
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from segtile.georef import Georef
from segtile.models.card import ModelCard
from segtile.writers import read_zarr
from segtile.writers.legend import rgb
from segtile.writers.ome_zarr import write_ome_zarr
from segtile.writers.pyramid import mean_2x2, mode_2x2

NODATA = 255
CARD = ModelCard(classes=("glass", "tissue", "tumour"), colors=("#ffffff", "#ff8800", "#0000ff"))


@pytest.fixture
def arrays():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, (75, 53)).astype(np.uint8)
    labels[:20, :30] = 1  # a block that survives downsampling
    labels[50:, :9] = NODATA
    probabilities = rng.random((3, 75, 53)).astype(np.float32)
    probabilities[:, labels == NODATA] = np.nan
    return labels, probabilities


def reference_mode(labels: np.ndarray) -> np.ndarray:
    """Halve ``labels``: the most frequent valid value of each 2x2 block (the first seen on ties)."""
    height, width = -(-labels.shape[0] // 2), -(-labels.shape[1] // 2)
    out = np.full((height, width), NODATA, dtype=labels.dtype)
    for row in range(height):
        for col in range(width):
            block = labels[2 * row:2 * row + 2, 2 * col:2 * col + 2].ravel().tolist()
            counts = Counter(v for v in block if v != NODATA)
            if counts:
                out[row, col] = max(counts, key=lambda v: (counts[v], -block.index(v)))
    return out


def test_mode_and_mean_of_2x2_blocks():
    labels = np.array([[1, 2, 3, NODATA, 5, 5],
                       [2, 1, NODATA, NODATA, 5, 4]], dtype=np.uint8)
    assert mode_2x2(labels, NODATA).tolist() == [[1, 3, 5]]  # tie 1-2: the first; nodata never outvotes
    assert mode_2x2(np.full((2, 2), NODATA, np.uint8), NODATA).tolist() == [[NODATA]]
    values = np.array([[[1.0, 3.0, np.nan, np.nan], [np.nan, 2.0, np.nan, np.nan]]], dtype=np.float32)
    np.testing.assert_array_equal(mean_2x2(values), np.array([[[2.0, np.nan]]], dtype=np.float32))


def test_label_pyramid_layout_colours_and_names(tmp_path, arrays):
    labels, _ = arrays
    path = tmp_path / "out.ome.zarr"
    write_ome_zarr(path, da.from_array(labels, chunks=(16, 24)), Georef(transform=Affine.identity(), mpp=0.25), CARD)
    root = zarr.open_group(str(path), mode="r")
    assert root.metadata.zarr_format == 3 and root.attrs["ome"]["version"] == "0.5"
    assert root["labels"].attrs["ome"] == {"version": "0.5", "labels": ["classes"]}
    label_image = root["labels/classes"]
    ome = label_image.attrs["ome"]
    assert ome["image-label"]["source"] == {"image": "../../"}
    assert {c["label-value"]: c["rgba"] for c in ome["image-label"]["colors"]} == {
        0: [255, 255, 255, 255], 1: [255, 136, 0, 255], 2: [0, 0, 255, 255], NODATA: [0, 0, 0, 0]}
    assert ome["image-label"]["properties"] == [
        *({"label-value": i, "class_name": n} for i, n in enumerate(CARD.classes)),
        {"label-value": NODATA, "class_name": "nodata"}]
    assert root.attrs["segtile"]["card"] == CARD.to_dict() and root.attrs["segtile"]["nodata"] == NODATA

    level, expected = 0, labels
    palette = {i: rgb(c) for i, c in enumerate(CARD.colors)}
    while True:
        stored = label_image[str(level)]
        assert stored.metadata.dimension_names == ("y", "x") and stored.fill_value == NODATA
        np.testing.assert_array_equal(stored[:], expected)
        drawn = root[str(level)]
        assert drawn.metadata.dimension_names == ("c", "y", "x") and drawn.dtype == np.uint8
        colours = np.array([palette.get(v, (0, 0, 0)) for v in expected.ravel()]).T.reshape(3, *expected.shape)
        np.testing.assert_array_equal(drawn[:], colours)
        if expected.shape[0] <= 16 and expected.shape[1] <= 24:  # fits in one chunk: the last level
            break
        level, expected = level + 1, reference_mode(expected)
    assert level == 3 and str(level + 1) not in label_image  # 75x53, 38x27, 19x14, 10x7
    assert [d["path"] for d in ome["multiscales"][0]["datasets"]] == ["0", "1", "2", "3"]


def test_scales_in_micrometres_for_slides_metres_for_projected_rasters(tmp_path, arrays, data_dir):
    labels = da.from_array(arrays[0], chunks=32)
    with rasterio.open(data_dir / "bahamas_rgb.tif") as src:  # UTM, 300 m pixels
        raster = Georef(src.crs, src.transform)
    slide = Georef(transform=Affine.scale(4.0, 4.0), mpp=2.0)  # 0.5 µm slide processed at 2 µm
    cases = {"slide": (slide, "micrometer", [2.0, 2.0], [0.75, 0.75]),
             "raster": (raster, "meter", [-raster.transform.e, raster.transform.a], None),
             "array": (Georef(), None, [1.0, 1.0], None)}
    for name, (georef, unit, scale, translation) in cases.items():
        write_ome_zarr(tmp_path / f"{name}.ome.zarr", labels, georef, CARD)
        image, label_image = [n for n in Reader(parse_url(str(tmp_path / f"{name}.ome.zarr")))() if n.data]
        for node in (image, label_image):
            assert [axis.get("unit") for axis in node.metadata["axes"][-2:]] == [unit, unit]
        first, second = label_image.metadata["coordinateTransformations"][:2]
        assert first[0] == {"type": "scale", "scale": pytest.approx(scale)}
        assert second[0] == {"type": "scale", "scale": pytest.approx([2 * s for s in scale])}
        if translation is None:  # the first pixel's centre is the origin
            assert len(first) == 1 and second[1]["translation"] == pytest.approx([s / 2 for s in scale])
        else:  # centred on the slide's own level-0 pixels: half the difference of pixel sizes
            assert first[1]["translation"] == pytest.approx(translation)
        assert image.metadata["coordinateTransformations"][0][0]["scale"] == pytest.approx([1.0, *scale])


def test_the_metadata_validates_against_the_ome_zarr_05_models(tmp_path, arrays):
    """ome-zarr-models checks every group against the specification (axes, datasets, scales,
    image-label colours and properties with the same label values...)."""
    labels, probabilities = arrays
    path = tmp_path / "out.ome.zarr"
    write_ome_zarr(path, da.from_array(labels, chunks=32), Georef(transform=Affine.scale(2.0, 2.0), mpp=1.0), CARD,
                   probabilities=probabilities)
    root = zarr.open_group(str(path), mode="r")
    image = ome_zarr_models.v05.Image.from_zarr(root)  # validates labels/ and labels/classes too
    assert [d.path for d in image.attributes.ome.multiscales[0].datasets] == ["0", "1", "2"]  # 75, 38, 19 rows
    ome_zarr_models.v05.Image.from_zarr(root["probabilities"])


def test_probabilities_are_a_multiscale_image_of_their_own(tmp_path, arrays):
    labels, probabilities = arrays
    path = tmp_path / "out.ome.zarr"
    write_ome_zarr(path, da.from_array(labels, chunks=32), Georef(), CARD,
                   probabilities=da.from_array(probabilities, chunks=(3, 32, 32)))
    group = zarr.open_group(str(path), mode="r")["probabilities"]
    ome = group.attrs["ome"]
    assert [c["label"] for c in ome["omero"]["channels"]] == list(CARD.classes)
    assert [c["color"] for c in ome["omero"]["channels"]] == ["FFFFFF", "FF8800", "0000FF"]
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == ["c", "y", "x"]
    np.testing.assert_array_equal(group["0"][:], probabilities)
    padded = np.pad(probabilities, ((0, 0), (0, 1), (0, 1)), constant_values=np.nan)  # 75 x 53 -> 38 x 27
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning, match="Mean of empty slice"):
        expected = np.nanmean(padded.reshape(3, 38, 2, 27, 2), axis=(2, 4))
    np.testing.assert_allclose(group["1"][:], expected, rtol=1e-6)
    assert np.isnan(group["1"][:, -1, 0]).all()  # under nodata only


def test_ome_zarr_of_a_raster_from_the_command_line(tmp_path, data_dir):
    import torch

    from segtile.cli import main
    from segtile.models import save_torchscript

    model = tmp_path / "pointwise.pt"
    save_torchscript(model, torch.nn.Conv2d(3, 3, 1).eval(), CARD)
    store, plain = tmp_path / "bahamas.ome.zarr", tmp_path / "bahamas.zarr"
    assert main([str(data_dir / "bahamas_rgb.tif"), "--model", str(model), "-o", str(store), "-o", str(plain),
                 "--quiet"]) == 0
    image, label_image = [n for n in Reader(parse_url(str(store)))() if n.data]
    assert label_image.data[0].shape == (718, 791)
    assert [axis["unit"] for axis in label_image.metadata["axes"]] == ["meter", "meter"]
    assert zarr.open_group(str(store), mode="r").attrs["segtile"]["crs"].startswith("PROJCS")
    labels, _, georef, _ = read_zarr(plain)  # a raster's .zarr stays segtile's plain store
    np.testing.assert_array_equal(labels.compute(), label_image.data[0].compute())
    assert georef.crs is not None and georef.mpp is None
