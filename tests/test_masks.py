"""Tissue-only processing of slides, and areas of interest for any image: tiles outside are never
run, and their pixels are nodata in every output."""

import json

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import tifffile
import torch
from rasterio.windows import Window

from segtile import segment
from segtile.cli import main
from segtile.models import LoadedModel, ModelCard, save_torchscript
from segtile.sources import open_source
from segtile.sources.labels import LabelError
from segtile.sources.masked import MaskedSource
from segtile.sources.overview import coarse_source
from segtile.sources.slide import SlideSource
from segtile.sources.tissue import TissueError, detect_tissue, otsu_threshold


class Counting(torch.nn.Module):
    """A 1x1 convolution that counts the tiles it is given."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 2, 1)
        self.tiles = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tiles += x.shape[0]
        return self.conv(x)


def model(tile: int = 256) -> LoadedModel:
    return LoadedModel(Counting(), ModelCard(classes=("a", "b"), tile_size=tile, overlap=32))


def test_otsu_splits_two_populations():
    values = np.concatenate([np.full(900, 0.02), np.full(100, 0.4)])
    assert 0.02 < otsu_threshold(values) < 0.4


def test_a_slide_is_processed_where_its_tissue_is(data_dir):
    path = data_dir / "cmu_small_region.svs"
    tissue_only, everything = model(), model()
    masked = segment(path, tissue_only, device="cpu")
    whole = segment(path, everything, device="cpu", tissue=False)
    assert any("tissue covers" in note for note in masked.notes)
    labels, all_labels = masked.labels.compute(), whole.labels.compute()
    assert tissue_only.module.tiles < 0.75 * everything.module.tiles  # tiles on glass never run
    found = detect_tissue(open_source(path), open_source(path))
    assert 0.2 < found.fraction < 0.6  # the real slide: a strip of skin on glass
    outside = ~found.tissue  # the overview is the slide itself here (it has one level)
    assert (labels[outside] == 255).all()
    assert (all_labels != 255).all()
    np.testing.assert_array_equal(labels[~outside], all_labels[~outside])


def test_tissue_on_rasters_or_grey_images_is_refused_clearly(data_dir):
    with pytest.raises(TissueError, match="known µm per pixel"):
        segment(data_dir / "rmnp-rgb.tif", model(), device="cpu", tissue=True)
    assert segment(data_dir / "rmnp-rgb.tif", model(), device="cpu").notes == ()  # not a slide: no tissue


@pytest.mark.parametrize("threshold", [0, 1, 2.0, -0.1, float("nan"), "0.1", True])
def test_a_tissue_threshold_that_is_no_saturation_in_0_1_is_refused(data_dir, threshold):
    with pytest.raises(TissueError, match="saturation between 0 and 1"):
        segment(data_dir / "cmu_small_region.svs", model(), device="cpu", tissue_threshold=threshold)


def test_tissue_is_found_in_the_colours_of_a_slide_whose_model_reads_one_band(data_dir):
    one_band = LoadedModel(torch.nn.Conv2d(1, 2, 1), ModelCard(classes=("a", "b"), in_channels=1, tile_size=128,
                                                               overlap=16))
    for bands in (None, [2]):  # the card's first band, or one chosen
        result = segment(data_dir / "cmu_small_region.svs", one_band, device="cpu", bands=bands)
        assert any(note.startswith("tissue covers") for note in result.notes)


def test_a_numpy_tissue_threshold_is_taken(data_dir):
    result = segment(data_dir / "cmu_small_region.svs", model(), device="cpu", tissue_threshold=np.float32(0.1))
    assert "saturation > 0.100" in result.notes[-1]


def test_a_tissue_threshold_where_no_tissue_is_detected_is_refused(data_dir):
    with pytest.raises(TissueError, match="applies where tissue is detected, on colour slides: this image is not"):
        segment(data_dir / "rmnp-rgb.tif", model(), device="cpu", tissue_threshold=0.1)
    with pytest.raises(TissueError, match=r"detection is off \(--no-tissue-mask; Python: tissue=False\)"):
        segment(data_dir / "cmu_small_region.svs", model(), device="cpu", tissue=False, tissue_threshold=0.1)


@pytest.fixture
def field(tmp_path, data_dir):
    """A polygon over part of landsat7.tif, in the image's CRS, and the same in WGS 84."""
    with rasterio.open(data_dir / "landsat7.tif") as src:
        left, top = src.transform * (300, 200)
        right, bottom = src.transform * (900, 700)
        crs = src.crs
    polygon = shapely.box(left, bottom, right, top)
    path = tmp_path / "field.gpkg"
    pyogrio.raw.write(str(path), shapely.to_wkb(np.array([polygon])), [np.array(["a"], dtype=object)], ["name"],
                      driver="GPKG", geometry_type="Polygon", crs=crs.to_wkt())
    return path


def test_an_area_of_interest_limits_a_raster(tmp_path, data_dir, field):
    counted = model()
    result = segment(data_dir / "landsat7.tif", counted, device="cpu", mask=field, resolution=30.0)
    labels = result.labels.compute()
    inside = np.zeros(labels.shape, bool)
    inside[200:700, 300:900] = True
    with rasterio.open(data_dir / "landsat7.tif") as src:
        valid = src.dataset_mask() > 0
    assert (labels[~inside] == 255).all()
    assert (labels[inside & valid] != 255).all()
    everything = model()
    segment(data_dir / "landsat7.tif", everything, device="cpu", resolution=30.0).labels.compute()
    assert counted.module.tiles < everything.module.tiles / 3


def test_an_area_of_interest_as_a_raster_mask_in_another_grid(tmp_path, data_dir):
    with rasterio.open(data_dir / "landsat7.tif") as src:
        profile = {"driver": "GTiff", "width": src.width // 2, "height": src.height // 2, "count": 1,
                   "dtype": "uint8", "crs": src.crs, "transform": src.transform * rasterio.Affine.scale(2)}
    mask = np.zeros((profile["height"], profile["width"]), np.uint8)
    mask[100:350, 150:450] = 1  # rows 200-700, columns 300-900 of the image
    with rasterio.open(tmp_path / "area.tif", "w", **profile) as out:
        out.write(mask, 1)
    labels = segment(data_dir / "landsat7.tif", model(), device="cpu", mask=tmp_path / "area.tif",
                     resolution=30.0).labels.compute()
    assert (labels[:190] == 255).all() and (labels[:, :290] == 255).all()
    assert (labels[250:650, 350:850] != 255).mean() > 0.95


@pytest.mark.parametrize("kind", ["polygons", "raster"])
def test_a_preview_of_a_masked_image_reads_its_overviews_and_masks_the_coarse_grid(tmp_path, data_dir, field, kind):
    if kind == "raster":  # the same area as a raster on the image's grid
        with rasterio.open(data_dir / "landsat7.tif") as src:
            profile = {"driver": "GTiff", "width": src.width, "height": src.height, "count": 1, "dtype": "uint8",
                       "crs": src.crs, "transform": src.transform}
        area = np.zeros((profile["height"], profile["width"]), np.uint8)
        area[200:700, 300:900] = 1
        field = tmp_path / "area.tif"
        with rasterio.open(field, "w", **profile) as out:
            out.write(area, 1)
    result = segment(data_dir / "landsat7.tif", model(), device="cpu", mask=field)
    coarse = coarse_source(result.source, 256)  # 1/8.5: landsat7.tif's 1/4 overview is read, not the image
    assert isinstance(coarse, MaskedSource) and coarse.inner.read_level == 2
    labels = result.preview(max_size=256).labels  # the area: rows 23-82, columns 35-105 of 225 x 256
    assert (labels[:21] == 255).all() and (labels[:, :33] == 255).all() and (labels[85:] == 255).all()
    assert (labels[26:80, 38:103] != 255).mean() > 0.95


def write_region(path, slide, row: int, column: int, side: int):
    """A ``side`` x ``side`` region of interest cut from ``slide`` as an Aperio slide of one level."""
    pixels = open_source(slide).read(Window(column, row, side, side))
    tifffile.imwrite(path, np.moveaxis(pixels, 0, -1), tile=(16, 16), photometric="rgb", metadata=None,
                     description=f"Aperio Image Library v12.0.0\r\n{side}x{side}|MPP = 0.4990")
    return path


@pytest.mark.parametrize("row, column, side", [(192, 1248, 192), (200, 1300, 16)])
def test_regions_smaller_than_a_speck_keep_their_tissue(tmp_path, data_dir, row, column, side):
    slide = data_dir / "cmu_small_region.svs"
    region = write_region(tmp_path / "region.svs", slide, row, column, side)
    found = detect_tissue(open_source(region), open_source(region))
    on_the_slide = detect_tissue(open_source(slide), open_source(slide)).tissue[row:row + side, column:column + side]
    assert found.tissue.any() and (found.tissue == on_the_slide).mean() > 0.9
    labels = segment(region, model(), device="cpu").labels.compute()
    np.testing.assert_array_equal(labels != 255, found.tissue)  # the overview is the region itself


def test_a_slide_without_a_small_level_is_read_in_windows_onto_a_small_overview(data_dir, monkeypatch):
    import segtile.sources.overview as overview
    import segtile.sources.tissue as tissue

    slide = data_dir / "cmu_small_region.svs"  # one level, 2220 x 2967
    full = detect_tissue(open_source(slide), open_source(slide))
    monkeypatch.setattr(tissue, "OVERVIEW", 512)
    monkeypatch.setattr(overview, "READ_SIDE", 700)
    windows = []
    read = SlideSource.read

    def recorded(self, window, level=0):
        windows.append((int(window.height), int(window.width)))
        return read(self, window, level)

    monkeypatch.setattr(SlideSource, "read", recorded)
    found = detect_tissue(open_source(slide), open_source(slide))
    assert found.tissue.shape == (512, 383) and found.overview_to_level0 == (2220 / 383, 2967 / 512)
    assert max(max(shape) for shape in windows) <= 700 + 4  # and a pixel or two each side for the bilinear kernel
    nearest = full.tissue[np.ix_(((np.arange(512) + 0.5) * 2967 / 512).astype(int),
                                 ((np.arange(383) + 0.5) * 2220 / 383).astype(int))]
    assert (found.tissue == nearest).mean() > 0.9


def test_a_missing_area_is_one_line(tmp_path, data_dir):
    with pytest.raises(LabelError, match="area of interest not found"):
        segment(data_dir / "rmnp-rgb.tif", model(), device="cpu", mask=tmp_path / "nope.gpkg")


def test_the_command_skips_glass_and_says_how_much(tmp_path, data_dir, capsys):
    path = tmp_path / "pointwise.pt"
    torch.manual_seed(0)
    save_torchscript(path, torch.nn.Conv2d(3, 2, 1), ModelCard(classes=("a", "b"), tile_size=256, overlap=32))
    assert main([str(data_dir / "cmu_small_region.svs"), "--model", str(path), "-o", str(tmp_path / "m.tif"),
                 "--progress", "json"]) == 0
    err = capsys.readouterr().err
    summary = json.loads(err.strip().splitlines()[-1])
    assert summary["tiles_skipped"] > 0
    assert "segtile: note: tissue covers" in err
    with rasterio.open(tmp_path / "m.tif") as mask:
        assert (mask.read(1, window=Window(0, 0, 50, 50)) == 255).all()  # a corner of bare glass
