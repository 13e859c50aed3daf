"""``repr(result)``: one short line saying what a segmentation is."""

import dask.array as da
from affine import Affine
from rasterio.crs import CRS

from segtile import segment
from segtile.georef import Georef
from segtile.sources import MemorySource
from tests.test_engine import random_image

CUSTOM_WKT = ('PROJCS["My grid",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
              'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],'
              'PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",12.3],PARAMETER["scale_factor",1],'
              'PARAMETER["false_easting",0],PARAMETER["false_northing",0],UNIT["metre",1]]')


def test_a_raster_says_its_size_classes_crs_pixel_size_and_tiling(data_dir):
    result = segment(data_dir / "bahamas_rgb.tif")
    assert repr(result) == ("<Segmentation 791×718 px, 2 classes (water, land), EPSG:32618 at 300 m, "
                            "tiles 129/17, lazy>")
    with result.persist() as stored:
        assert repr(stored).endswith(f", tiles 129/17, persisted in {stored.stored.folder}>")


def test_a_slide_says_its_microns_per_pixel(data_dir):
    result = segment(data_dir / "cmu_small_region.svs", "nuclei_psp18", bands=[1], tile_size=257, overlap=33)
    assert repr(result) == ("<Segmentation 2220×2967 px, 2 classes (background, nucleus), 0.499 µm/px, "
                            "tiles 257/33, lazy>")


def test_an_array_without_place_and_many_classes(pointwise_model):
    result = segment(da.from_array(random_image(3, 30, 40)), pointwise_model(bands=3, classes=8), tile_size=17,
                     overlap=4, device="cpu")
    assert repr(result) == ("<Segmentation 40×30 px, 8 classes (class_0, class_1, class_2, class_3, class_4, "
                            "class_5, …), tiles 17/4, lazy>")


def test_a_crs_without_epsg_code_is_named_from_its_wkt(pointwise_model):
    georef = Georef(CRS.from_wkt(CUSTOM_WKT), Affine(2.5, 0, 1000, 0, -2.5, 5000))
    source = MemorySource(random_image(3, 10, 10), georef=georef)
    result = segment(source, pointwise_model(bands=3, classes=1), tile_size=9, overlap=0, device="cpu")
    assert repr(result) == "<Segmentation 10×10 px, 1 class (class_0), My grid at 2.5 m, tiles 9/0, lazy>"
