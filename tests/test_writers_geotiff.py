"""Cloud-Optimised GeoTIFF masks and probabilities, read back with rasterio and with GDAL's tools."""

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET

import dask.array as da
import numpy as np
import pytest
import rasterio
import tifffile
from affine import Affine
from distributed import Client, LocalCluster
from rasterio.crs import CRS

from segtile.georef import Georef
from segtile.models.card import ModelCard
from segtile.writers import OutputExistsError, WriterInputError
from segtile.writers.geotiff import probabilities_path_for, write_mask, write_probabilities
from segtile.writers.legend import rgb

# Class 1's colour lies between those of 0 and 2: GDAL averages a paletted band in colour and takes
# the nearest entry, so average overviews of 0/2 stripes would show class 1 (see the mode test).
CARD = ModelCard(classes=("water", "sand & reef", "forest"), colors=("#102030", "#808080", "#f0f0f0"))


@pytest.fixture(scope="module")
def bahamas_georef(data_dir):
    with rasterio.open(data_dir / "bahamas_rgb.tif") as src:
        return Georef(src.crs, src.transform), src.shape


@pytest.fixture(scope="module")
def rotated_georef(bahamas_georef):
    georef, _ = bahamas_georef
    return Georef(georef.crs, georef.transform @ Affine.rotation(20.0))


def stripes(shape):
    """Classes 0 and 2 in alternating columns, a band of class 1 on top, a nodata corner."""
    labels = np.where(np.arange(shape[1]) % 2 == 0, 0, 2).astype(np.uint8) * np.ones(shape, np.uint8)
    labels[: shape[0] // 3] = 1
    labels[-40:, -50:] = 255
    return labels


def gdalinfo(path):
    if shutil.which("gdalinfo") is None:
        pytest.skip("gdalinfo (gdal-bin) is not installed")
    out = subprocess.run(["gdalinfo", "-json", str(path)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def written_mask(tmp_path_factory, rotated_georef, bahamas_georef):
    _, shape = bahamas_georef
    labels = stripes(shape)
    path = tmp_path_factory.mktemp("mask") / "mask.tif"
    calls = []
    dask_labels = da.from_array(labels, chunks=(200, 300))
    write_mask(path, dask_labels, rotated_georef, CARD, progress=calls.append)
    return path, labels, calls, dask_labels.npartitions


def test_mask_values_grid_and_layout(written_mask, rotated_georef):
    path, labels, _, _ = written_mask
    with rasterio.open(path) as mask:
        assert mask.read(1).tolist() == labels.tolist()
        assert mask.shape == labels.shape and mask.dtypes == ("uint8",)
        assert mask.crs == rotated_georef.crs
        assert mask.transform.almost_equals(rotated_georef.transform, precision=1e-9)
        assert mask.transform.b != 0  # the rotation survived
        assert mask.nodata == 255
        assert mask.block_shapes == [(512, 512)]
        assert mask.compression.name == "deflate"
        assert mask.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert mask.overviews(1) == [2]


def test_mask_overviews_use_mode_not_average(written_mask):
    path, labels, _, _ = written_mask
    with rasterio.open(path, overview_level=0) as overview:
        reduced = overview.read(1)
    assert set(np.unique(reduced).tolist()) <= {0, 1, 2, 255}
    # Averaging would give 1 in the 0/2 stripes below the top third; mode keeps 0 or 2 there.
    below_the_band = reduced[reduced.shape[0] // 2 :, : reduced.shape[1] // 2]
    assert np.isin(below_the_band, (0, 2)).all()


def test_mask_palette_names_and_card(written_mask):
    path, _, _, _ = written_mask
    with rasterio.open(path) as mask:
        colormap = mask.colormap(1)
        for index, colour in enumerate(CARD.colors):
            assert colormap[index] == (*rgb(colour), 255)
        assert colormap[255][3] == 0
        assert json.loads(mask.tags(1)["CLASS_NAMES"]) == list(CARD.classes)
        assert ModelCard.from_dict(json.loads(mask.tags()["SEGTILE_CARD"])) == CARD


def test_mask_qgis_style_sidecar(written_mask):
    path, _, _, _ = written_mask
    style = ET.parse(path.with_suffix(".qml")).getroot()
    renderer = style.find("pipe/rasterrenderer")
    assert renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = renderer.findall("colorPalette/paletteEntry")
    assert [(e.get("value"), e.get("color"), e.get("label")) for e in entries] == [
        (str(i), colour, name) for i, (name, colour) in enumerate(zip(CARD.classes, CARD.colors))
    ]


def test_mask_progress_counts_every_chunk(written_mask):
    _, _, calls, chunks = written_mask
    assert calls == [1] * chunks


def test_mask_seen_by_gdalinfo(written_mask, rotated_georef):
    path, labels, _, _ = written_mask
    info = gdalinfo(path)
    assert info["metadata"]["IMAGE_STRUCTURE"]["LAYOUT"] == "COG"
    assert info["metadata"]["IMAGE_STRUCTURE"]["COMPRESSION"] == "DEFLATE"
    assert info["size"] == [labels.shape[1], labels.shape[0]]
    assert CRS.from_wkt(info["coordinateSystem"]["wkt"]) == rotated_georef.crs
    assert np.allclose(info["geoTransform"], rotated_georef.transform.to_gdal())
    band = info["bands"][0]
    assert band["noDataValue"] == 255
    assert band["colorInterpretation"] == "Palette"
    assert band["colorTable"]["entries"][1] == [*rgb(CARD.colors[1]), 255]
    assert band["categories"] == list(CARD.classes)
    (overview,) = band["overviews"]
    assert np.abs(np.array(overview["size"]) * 2 - [labels.shape[1], labels.shape[0]]).max() <= 2


def test_mask_computed_chunk_by_chunk(tmp_path):
    """The writer pulls each chunk once and never the whole array."""
    seen = []

    def record(block):
        seen.append(block.shape)
        return block

    labels = da.from_array(stripes((300, 260)), chunks=(128, 100)).map_blocks(record, meta=np.empty((0, 0), np.uint8))
    write_mask(tmp_path / "m.tif", labels, Georef(), CARD)
    assert len(seen) == labels.npartitions
    assert max(h * w for h, w in seen) == 128 * 100


def test_mask_written_from_a_dask_cluster(tmp_path, rotated_georef):
    """With a distributed Client the chunks are computed on the cluster and fetched one by one."""
    labels = stripes((300, 260))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        with Client(cluster):
            write_mask(tmp_path / "m.tif", da.from_array(labels, chunks=(128, 100)), rotated_georef, CARD)
    with rasterio.open(tmp_path / "m.tif") as mask:
        assert mask.read(1).tolist() == labels.tolist()
        assert mask.transform.almost_equals(rotated_georef.transform, precision=1e-9)


def test_mask_without_georeference_and_with_mpp(tmp_path):
    labels = stripes((100, 120))
    write_mask(tmp_path / "slide.tif", labels, Georef(mpp=0.25), CARD)
    with rasterio.open(tmp_path / "slide.tif") as mask:
        assert mask.crs is None
        assert mask.transform == Affine.identity()
        assert mask.tags()["SEGTILE_MPP"] == "0.25"
        assert mask.read(1).tolist() == labels.tolist()


def test_slide_mask_carries_its_pixel_size_as_tiff_resolution(tmp_path):
    """µm per pixel along x and y (a grid 4.008 x 4 level-0 pixels of 0.5 µm) in pixels per cm."""
    write_mask(tmp_path / "slide.tif", stripes((100, 120)), Georef(transform=Affine.scale(4.008, 4.0), mpp=2.004), CARD)
    with tifffile.TiffFile(tmp_path / "slide.tif") as tif:
        page = tif.pages[0]
        assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
        assert [1e4 / r for r in page.get_resolution()] == [pytest.approx(2.004), pytest.approx(2.0)]
        assert not any(code in page.tags for code in (33550, 33922, 34264, 34735))  # no geotransform, no CRS


def test_uint16_mask_for_many_classes(tmp_path):
    card = ModelCard(classes=tuple(f"c{i}" for i in range(300)))
    labels = (np.arange(80 * 90).reshape(80, 90) % 300).astype(np.uint16)
    labels[0, :7] = 65535
    write_mask(tmp_path / "many.tif", da.from_array(labels, chunks=32), Georef(), card, nodata=65535)
    with rasterio.open(tmp_path / "many.tif") as mask:
        assert mask.dtypes == ("uint16",) and mask.nodata == 65535
        assert mask.read(1).tolist() == labels.tolist()
        assert mask.colormap(1)[299] == (*rgb(card.colors[299]), 255)


def test_existing_mask_is_kept_unless_overwrite(tmp_path):
    path = tmp_path / "mask.tif"
    path.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError):
        write_mask(path, stripes((20, 20)), Georef(), CARD)
    assert path.read_bytes() == b"keep me"
    write_mask(path, stripes((20, 20)), Georef(), CARD, overwrite=True)
    with rasterio.open(path) as mask:
        assert mask.shape == (20, 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.qml", "mask.tif", "mask.tif.aux.xml"]


@pytest.mark.parametrize("labels, message", [
    (np.zeros((2, 3, 3), np.uint8), "2-D"),
    (np.zeros((3, 3), np.float32), "uint8 or uint16"),
    (np.zeros((3, 3), np.uint8), "do not all fit below nodata 2"),
])
def test_bad_labels(tmp_path, labels, message):
    nodata = 2 if "below" in message else 255
    with pytest.raises(WriterInputError, match=message):
        write_mask(tmp_path / "bad.tif", labels, Georef(), CARD, nodata=nodata)
    assert list(tmp_path.iterdir()) == []


def test_probabilities_path_for():
    assert probabilities_path_for("out/mask.tif").as_posix() == "out/mask.probabilities.tif"
    assert probabilities_path_for("a.b.tiff").name == "a.b.probabilities.tiff"


@pytest.fixture(scope="module")
def probabilities():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 600, 700)).astype(np.float32)
    p = np.exp(logits) / np.exp(logits).sum(axis=0)
    p[:, :30, :40] = np.nan
    return p


def test_probabilities_uint8(tmp_path, probabilities, bahamas_georef):
    georef, _ = bahamas_georef
    path = tmp_path / "mask.probabilities.tif"
    write_probabilities(path, da.from_array(probabilities, chunks=(1, 256, 256)), georef, CARD)
    valid = ~np.isnan(probabilities[0])
    with rasterio.open(path) as out:
        assert out.count == 3 and out.dtypes == ("uint8",) * 3
        assert out.descriptions == CARD.classes
        assert out.transform == georef.transform and out.crs == georef.crs
        assert out.scales == (1 / 255,) * 3
        stored = out.read()
        mask = out.dataset_mask()
    assert np.abs(stored[:, valid] / 255 - probabilities[:, valid]).max() <= 0.5 / 255 + 1e-7
    assert (mask == np.where(valid, 255, 0)).all()
    info = gdalinfo(path)
    assert info["metadata"]["IMAGE_STRUCTURE"]["LAYOUT"] == "COG"
    assert [band["description"] for band in info["bands"]] == list(CARD.classes)
    assert info["bands"][0]["overviews"]


def test_probabilities_float32(tmp_path, probabilities):
    path = tmp_path / "p.tif"
    write_probabilities(path, probabilities, Georef(), CARD, dtype="float32")
    with rasterio.open(path) as out:
        assert out.dtypes == ("float32",) * 3 and np.isnan(out.nodata)
        assert np.array_equal(out.read(), probabilities, equal_nan=True)


def test_probabilities_must_match_the_card(tmp_path, probabilities):
    with pytest.raises(WriterInputError, match="2 classes, the model card 3"):
        write_probabilities(tmp_path / "p.tif", probabilities[:2], Georef(), CARD)
    with pytest.raises(WriterInputError, match="dtype"):
        write_probabilities(tmp_path / "p.tif", probabilities, Georef(), CARD, dtype="int8")


def test_creation_options_replace_segtiles_own(tmp_path, bahamas_georef):
    georef, shape = bahamas_georef
    labels = stripes(shape)
    options = {"COMPRESS": "ZSTD", "BLOCKSIZE": "256"}
    write_mask(tmp_path / "m.tif", labels, georef, CARD, creation_options=options)
    probabilities = np.stack([(labels == c).astype(np.float32) for c in range(3)])
    write_probabilities(tmp_path / "p.tif", probabilities, georef, CARD, creation_options=options)
    for name in ("m.tif", "p.tif"):
        with rasterio.open(tmp_path / name) as written:
            assert written.compression.name == "zstd" and written.block_shapes[0] == (256, 256)
            assert written.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    with rasterio.open(tmp_path / "m.tif") as written:
        np.testing.assert_array_equal(written.read(1), labels)


@pytest.mark.parametrize("options, message", [
    ({"NO_SUCH_OPTION": "1"}, "does not support creation option NO_SUCH_OPTION"),
    ({"COMPRESS": "NO_SUCH_CODEC"}, "unexpected value for COMPRESS"),
    ({"BLOCKSIZE": "abc"}, "BLOCKSIZE=abc: expected a positive integer"),  # GDAL itself would abort
    ({"BLOCKSIZE": "100"}, "multiple of 16"),
])
def test_creation_options_gdal_refuses_are_named_before_any_writing(options, message):
    from segtile.writers.geotiff import CreationOptionError, check_creation_options

    with pytest.raises(CreationOptionError, match=message):
        check_creation_options(options)
    check_creation_options({"COMPRESS": "ZSTD", "LEVEL": "9", "OVERVIEW_RESAMPLING": "NEAREST"})
