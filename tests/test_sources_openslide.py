"""Slides through OpenSlide (segtile[openslide], in the test extra): the real Aperio slide read both
ways, a generic pyramidal TIFF, a Hamamatsu VMS (no TIFF: chosen automatically), and a DICOM
slide given by its folder.

Tolerance: the pixels must be equal up to 1 per channel where JPEG is decoded, because two
JPEG decoders may round the inverse DCT differently (libjpeg-turbo's SIMD and plain C paths, or
another libjpeg build behind OpenSlide than behind imagecodecs / Pillow); where the data are
lossless (deflate) they must be equal exactly. Here, with libjpeg-turbo on both sides, the JPEG
pixels come out exactly equal too.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image
from rasterio.windows import Window

from segtile import segment
from segtile.cli import main
from segtile.sources import OpenSlideSource, SlideSource, SourceError, open_source
from tests.conftest import whole_image_logits

WINDOWS = [Window(0, 0, 256, 256), Window(1000, 1500, 300, 200), Window(1920, 2667, 300, 300)]


def assert_close(a: np.ndarray, b: np.ndarray, tolerance: int) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= tolerance


def test_the_aperio_slide_read_by_openslide_and_by_tifffile(data_dir):
    path = data_dir / "cmu_small_region.svs"
    with OpenSlideSource(path) as openslide, SlideSource(path) as tifffile_:
        assert openslide.shape == tifffile_.shape == (3, 2967, 2220)
        assert openslide.level_shapes == tifffile_.level_shapes
        assert openslide.georef == tifffile_.georef  # 0.499 µm, identity to level 0
        assert openslide.band_names == ("red", "green", "blue")
        for window in WINDOWS:
            pixels, valid = openslide.read_with_valid(window)
            assert_close(pixels, tifffile_.read(window), tolerance=1)
            assert valid.shape == pixels.shape[1:] and valid.all()
        assert openslide.select_bands([3, 1]).read(WINDOWS[1]).tolist() == openslide.read(WINDOWS[1])[[2, 0]].tolist()


def test_a_generic_pyramidal_tiff_level_by_level(tmp_path, data_dir):
    pixels = tifffile.imread(data_dir / "cmu_small_region.svs")[:2964]  # halves exactly: downsamples 2 and 4
    path = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(path) as tif:  # levels as successive tiled pages, lossless
        for k in range(3):
            tif.write(pixels[::2 ** k, ::2 ** k], tile=(256, 256), photometric="rgb", compression="zlib",
                      subfiletype=1 if k else 0)
    with OpenSlideSource(path) as source:
        assert source.level_shapes == ((2964, 2220), (1482, 1110), (741, 555))
        assert source.georef.mpp is None
        for level in range(3):
            expected = pixels[::2 ** level, ::2 ** level]
            window = Window(37, 53, 300, 200)
            np.testing.assert_array_equal(source.read(window, level), expected[53:253, 37:337].transpose(2, 0, 1))


@pytest.fixture
def vms(tmp_path, data_dir):
    """A Hamamatsu VMS written from the real slide: one JPEG (4:4:4, a restart marker per row of
    blocks, as OpenSlide requires), its map, and the key file, 499 nm per pixel."""
    pixels = tifffile.imread(data_dir / "cmu_small_region.svs")[:2960, :2208]  # whole 8x8 blocks
    for name, image in (("image.jpg", pixels), ("map.jpg", pixels[::4, ::4])):
        Image.fromarray(image).save(tmp_path / name, quality=95, subsampling=0, restart_marker_rows=1)
    path = tmp_path / "slide.vms"
    path.write_text("[Virtual Microscope Specimen]\nNoJpegColumns=1\nNoJpegRows=1\nImageFile=image.jpg\n"
                    f"MapFile=map.jpg\nPhysicalWidth={2208 * 499}\nPhysicalHeight={2960 * 499}\n")
    return path, np.asarray(Image.open(tmp_path / "image.jpg"))


def test_a_format_only_openslide_reads_is_opened_with_it(vms):
    path, decoded = vms
    source = open_source(path)
    assert isinstance(source, OpenSlideSource)
    assert source.shape == (3, 2960, 2208) and source.georef.mpp == pytest.approx(0.499)
    for window in WINDOWS[:2]:
        rows, cols = window.toslices()
        assert_close(source.read(window), np.ascontiguousarray(decoded[rows, cols].transpose(2, 0, 1)), tolerance=1)


def test_segment_a_vms_slide(tmp_path, vms, capsys):
    import torch

    from segtile.models import ModelCard, save_torchscript

    model = tmp_path / "pointwise.pt"
    save_torchscript(model, torch.nn.Conv2d(3, 2, 1).eval(), ModelCard(classes=("a", "b"), scale=255, tile_size=128,
                                                                       overlap=16))
    mask, cells = tmp_path / "mask.tif", tmp_path / "cells.geojson"
    assert main([str(vms[0]), "--model", str(model), "-o", str(mask), "-o", str(cells), "--mpp", "2",
                 "--qupath-objects", "detection", "--quiet"]) == 0
    assert tifffile.imread(mask).shape == (round(2960 * 0.499 / 2), round(2208 * 0.499 / 2))
    features = json.loads(cells.read_text())["features"]  # QuPath's GeoJSON: the .vms is a slide
    assert features and {f["properties"]["objectType"] for f in features} == {"detection"}


def test_an_openslide_format_without_openslide_is_one_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "slide.mrxs"
    path.write_text("not read")
    monkeypatch.setitem(sys.modules, "openslide", None)  # as if segtile[openslide] were not installed
    with pytest.raises(SourceError, match=r"slide.mrxs needs OpenSlide: pip install 'segtile\[openslide\]'"):
        open_source(path)


@pytest.fixture
def dicom_folder(tmp_path):
    """openslide-python's own DICOM whole-slide image (tests/fixtures/boxes_0.dcm, boxes_1.dcm:
    a 16 x 16 px slide at 0.499 µm/px and its thumbnail), in a folder as a scanner exports it."""
    corpus = Path(__file__).resolve().parent / "data" / "corpus"
    folder = tmp_path / "boxes"
    folder.mkdir()
    for name in ("boxes_0.dcm", "boxes_1.dcm"):
        shutil.copy(corpus / name, folder / name)
    return folder


def test_a_folder_of_dicom_files_is_one_slide_with_its_pixel_size(dicom_folder):
    with open_source(dicom_folder) as slide, open_source(dicom_folder / "boxes_1.dcm") as by_a_file:
        assert isinstance(slide, OpenSlideSource)
        assert slide.files == (str(dicom_folder),)  # the folder: outputs never land in it
        assert slide.georef.mpp == 0.499 and slide.shape == (3, 16, 16)
        window = Window(0, 0, 16, 16)
        region = np.asarray(openslide.OpenSlide(str(dicom_folder / "boxes_0.dcm")).read_region((0, 0), 0, (16, 16)))
        np.testing.assert_array_equal(slide.read(window), np.moveaxis(region[..., :3], -1, 0))
        np.testing.assert_array_equal(by_a_file.read(window), slide.read(window))  # any file opens the series


def test_segment_a_dicom_slide_by_its_folder(tmp_path, dicom_folder, pointwise_model):
    model = pointwise_model(bands=3, classes=3)
    result = segment(dicom_folder, model, tile_size=16, overlap=0, device="cpu", mpp="native", tissue=False)
    assert result.georef.mpp == 0.499
    with open_source(dicom_folder) as slide:
        pixels, valid = slide.read_with_valid(Window(0, 0, 16, 16))
    expected = whole_image_logits(model, pixels).argmax(axis=0)
    np.testing.assert_array_equal(result.labels.compute()[valid], expected[valid])


def test_a_folder_of_dcm_files_that_are_no_slide_is_one_clear_error(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "ct_0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    with pytest.raises(SourceError, match="holds 1 .dcm file but no DICOM whole-slide image OpenSlide reads"):
        open_source(folder)
