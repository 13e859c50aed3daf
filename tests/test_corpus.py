"""segtile over other projects' own test rasters (tests/data/corpus; provenance in its README).

Every file is segmented by the command, in process, with a pointwise model (a 1x1 convolution
taking all the file's image bands) whose card names no resolution, so the native grid is kept.
Each run must either

* exit 0, with a mask on the input's georeference (CRS, transform, GCPs and their CRS, RPCs),
  nodata wherever the input is invalid (nodata value, alpha band, internal or external mask,
  NaN), labels equal to the model's argmax over the whole image read independently here with
  rasterio (or tifffile / OpenSlide for slides), and polygons that rasterise back onto the mask;
* or exit 2 with one line on stderr and nothing written (the files in ``REFUSED``, and why).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyogrio
import pyproj
import pytest
import rasterio
import rasterio.features
import shapely
import tifffile
import torch
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning

from segtile.cli import main
from segtile.models import ModelCard, save_torchscript
from tests.conftest import whole_image_logits

CORPUS = Path(__file__).resolve().parent / "data" / "corpus"
NODATA = 255
CLASSES = ("a", "b", "c")

# Files read through another one (overviews, masks, world files, RPCs, a second DICOM frame) and
# the README: not inputs of their own.
COMPANION_SUFFIXES = (".ovr", ".msk", ".jgw", ".rpb", ".md")
COMPANIONS = {"boxes_1.dcm"}

# segtile reads these as slides (tifffile; OpenSlide for DICOM): the expected pixels are read so too.
SLIDES = {"small.svs", "boxes.tiff", "boxes_0.dcm", "hopper_g4.tif", "hopper_lzma.tif",
          "multi-channel.ome.tif", "test_image.ome.tiff", "output_ome.ome.tiff"}

REFUSED = {  # file: why no mask can be made of it
    "cint16.tif": "complex samples, which no model takes",
    "corrupt.tif": "truncated: its tiles run past the end of the file",
    "no_band.h5": "an HDF5 file with no raster band",
    "unopenable.tiff": "a TIFF compression no decoder knows",
    "unreadable.svs": "a damaged JPEG tile",
    "unsupported-srs.tif": "a CRS that PROJ cannot represent",
}

def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir()
                  if not p.name.endswith(COMPANION_SUFFIXES) and p.name not in COMPANIONS)


def cases() -> list:
    return [pytest.param(path, id=path.name) for path in corpus_files()]


@pytest.fixture(scope="session")
def pointwise_checkpoints(tmp_path_factory):
    """``checkpoint(bands)``: a TorchScript 1x1 convolution taking ``bands`` bands to 3 classes,
    with a card that names no resolution (the native grid), and the network itself."""
    folder = tmp_path_factory.mktemp("models")
    made: dict[int, tuple[Path, torch.nn.Module]] = {}

    def checkpoint(bands: int) -> tuple[Path, torch.nn.Module]:
        if bands not in made:
            torch.manual_seed(bands)
            model = torch.nn.Conv2d(bands, len(CLASSES), 1).eval()
            card = ModelCard(classes=CLASSES, in_channels=bands, tile_size=128, overlap=16)
            made[bands] = save_torchscript(folder / f"pointwise{bands}.pt", model, card), model
        return made[bands]

    return checkpoint


def test_every_file_is_a_case_or_a_companion():
    """The README's table and the case lists name files that exist."""
    names = {p.name for p in CORPUS.iterdir()}
    assert (set(REFUSED) | SLIDES | COMPANIONS) <= names
    readme = (CORPUS / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in names - {"README.md"})


@pytest.mark.parametrize("path", cases())
def test_segtile_on_the_corpus(path, tmp_path, capsys, pointwise_checkpoints):
    image, valid, georef = read_expected(path)
    checkpoint, model = pointwise_checkpoints(image.shape[0])
    mask_path, polygons_path = tmp_path / "mask.tif", tmp_path / "regions.gpkg"
    status = main([str(path), "--model", str(checkpoint), "--out", str(mask_path), "--out", str(polygons_path),
                   "--quiet", "--device", "cpu"])
    lines = capsys.readouterr().err.splitlines()
    if path.name in REFUSED:
        assert status == 2, lines
        assert len(lines) == 1 and lines[0].startswith("segtile: error: "), lines
        assert list(tmp_path.iterdir()) == []
        return
    assert status == 0, lines
    assert all(line.startswith("segtile: note: ") for line in lines), lines
    labels, mask_georef = read_mask(mask_path)
    assert_same_georef(mask_georef, georef)
    assert labels.shape == image.shape[1:]
    logits = whole_image_logits(model, np.where(valid, image, 0).astype(np.float32))
    valid &= np.isfinite(logits).all(axis=0)
    expected = np.where(valid, logits.argmax(axis=0), NODATA)
    if path.name in SLIDES:  # tissue detection may leave glass unsegmented too
        expected = np.where(labels == NODATA, NODATA, expected)
    np.testing.assert_array_equal(labels, expected)
    check_polygons(polygons_path, labels, georef)


def read_expected(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """The image bands ``(bands, H, W)``, their validity ``(H, W)`` and the georeference the
    mask must carry, read here without segtile."""
    if path.suffix == ".dcm":
        return read_openslide(path)
    if path.name in SLIDES:
        return read_tifffile(path)
    return read_rasterio(path)


def read_rasterio(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            dataset = rasterio.open(path)
        except rasterio.errors.RasterioError:  # a file GDAL cannot open: one of the refused
            assert path.name in REFUSED
            return np.zeros((1, 1, 1)), np.ones((1, 1), bool), {}
    with dataset:
        if path.name in REFUSED:
            return np.zeros((1, 1, 1)), np.ones((1, 1), bool), {}
        bands = [i for i, c in enumerate(dataset.colorinterp, start=1) if c != ColorInterp.alpha] or [1]
        image = dataset.read(bands)
        valid = dataset.dataset_mask() > 0
        if image.dtype.kind == "f":
            valid &= np.isfinite(image).all(axis=0)
        return image, valid, georef_of(dataset)


def read_tifffile(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """A slide's first image, its samples or channels as bands; an alpha sample is the validity."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        pixels, axes = series.asarray(), series.get_axes(squeeze=True)
        extra = series.keyframe.extrasamples
    image = pixels.transpose(2, 0, 1) if axes.endswith("S") else pixels.reshape(-1, *pixels.shape[-2:])
    alpha = [image.shape[0] - len(extra) + i for i, kind in enumerate(extra)
             if kind in (tifffile.EXTRASAMPLE.ASSOCALPHA, tifffile.EXTRASAMPLE.UNASSALPHA)] if "S" in axes else []
    if alpha:
        return np.delete(image, alpha[0], axis=0), image[alpha[0]] > 0, SLIDE_GEOREF
    return image, np.ones(image.shape[1:], bool), SLIDE_GEOREF


def read_openslide(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    openslide = pytest.importorskip("openslide")
    with openslide.OpenSlide(path) as slide:
        rgba = np.asarray(slide.read_region((0, 0), 0, slide.dimensions))
    return rgba[..., :3].transpose(2, 0, 1), rgba[..., 3] > 0, SLIDE_GEOREF


# A slide's mask has no CRS, no geotransform, no GCPs and no RPCs (its pixel size is in its tags).
SLIDE_GEOREF = {"crs": None, "transform": rasterio.Affine.identity(), "gcps": [], "gcp_crs": None, "rpcs": None}


def georef_of(dataset) -> dict:
    """Everything that places a raster in the world, comparable between two datasets. A CRS
    beside GCPs without a geotransform places nothing (a GeoTIFF cannot even hold both)."""
    gcps, gcp_crs = dataset.gcps
    return {
        "crs": None if gcps and dataset.transform.is_identity else dataset.crs or None,
        "transform": dataset.transform,
        "gcps": [(g.row, g.col, g.x, g.y, g.z) for g in gcps],
        "gcp_crs": (gcp_crs or None) if gcps else None,  # JPEG 2000 reports its CRS as one, GCPs or not
        "rpcs": dataset.rpcs.to_dict() if dataset.rpcs else None,
    }


def assert_same_georef(written: dict, expected: dict) -> None:
    """The mask's georeference is the input's. RPCs as GDAL keeps them in text (15 significant
    digits, as gdal_translate does), and a compound CRS by its horizontal part: GDAL 3.10's GeoTIFF
    writer renames an unknown vertical datum (which places nothing on the map)."""
    written, expected = dict(written), dict(expected)
    rpcs, expected_rpcs = written.pop("rpcs"), expected.pop("rpcs")
    assert (rpcs is None) == (expected_rpcs is None)
    if rpcs is not None:
        assert rpcs.keys() == expected_rpcs.keys()
        for key, value in rpcs.items():
            np.testing.assert_allclose(value, expected_rpcs[key], rtol=1e-13, err_msg=key)
    for key in ("crs", "gcp_crs"):
        written[key], expected[key] = _horizontal(written[key]), _horizontal(expected[key])
    assert written == expected


def _horizontal(crs: CRS | None) -> CRS | None:
    """The horizontal part of a compound CRS; any other CRS as it is."""
    if crs is None:
        return None
    parsed = pyproj.CRS.from_user_input(crs.to_wkt())
    return CRS.from_wkt(parsed.sub_crs_list[0].to_wkt()) if parsed.is_compound else crs


def read_mask(path: Path) -> tuple[np.ndarray, dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as mask:
            assert mask.count == 1 and mask.nodata == NODATA
            return mask.read(1), georef_of(mask)


def check_polygons(path: Path, labels: np.ndarray, georef: dict) -> None:
    """Polygons of every class that the mask holds; where the mask has an affine transform, they
    rasterise back onto it exactly (pixel centres: their edges follow the pixels')."""
    info = pyogrio.read_info(path, layer=path.stem)
    _, _, geometry, fields = pyogrio.raw.read(path, layer=path.stem)
    polygons, class_ids = shapely.from_wkb(geometry), fields[0]
    assert set(np.unique(class_ids)) == set(np.unique(labels[labels != NODATA]))
    if georef["gcps"] or (georef["rpcs"] and georef["transform"].is_identity):
        expected_crs = georef["gcp_crs"] if georef["gcps"] else CRS.from_epsg(4326)
        assert info["crs"] and CRS.from_user_input(info["crs"]) == expected_crs
        return
    assert (CRS.from_user_input(info["crs"]) if info["crs"] else None) == georef["crs"]
    burnt = rasterio.features.rasterize(zip(polygons, class_ids.tolist()), out_shape=labels.shape,
                                        transform=georef["transform"], fill=NODATA, dtype=np.uint8)
    np.testing.assert_array_equal(burnt, labels)
