"""Polygons: one polygon per 4-connected region per class, whatever the chunks; CRS, areas, formats."""

import json
import shutil
import sqlite3
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter, deque

import dask.array as da
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from distributed import Client, LocalCluster
from hypothesis import given, settings
from hypothesis import strategies as st
from pyogrio.raw import read as ogr_read
from rasterio.crs import CRS

from segtile.georef import Georef
from segtile.models.card import ModelCard
from segtile.writers import OutputExistsError, VectorFormatError, vector, write_polygons
from segtile.writers.legend import rgb
from segtile.writers.seams import SeamMerger, polygonise_chunk

NODATA = 255
CARD = ModelCard(classes=tuple(f"class {i}" for i in range(8)))


def components(labels, nodata=NODATA):
    """The 4-connected regions of ``labels``, found by breadth-first search: (class, pixel count)."""
    seen = np.zeros(labels.shape, bool)
    height, width = labels.shape
    found = []
    for start in zip(*np.nonzero(labels != nodata)):
        if seen[start]:
            continue
        value, count = labels[start], 0
        seen[start] = True
        queue = deque([start])
        while queue:
            row, col = queue.popleft()
            count += 1
            for r, c in ((row - 1, col), (row + 1, col), (row, col - 1), (row, col + 1)):
                if 0 <= r < height and 0 <= c < width and not seen[r, c] and labels[r, c] == value:
                    seen[r, c] = True
                    queue.append((r, c))
        found.append((int(value), count))
    return found


def scene():
    """64 x 64 labels meant for 16 x 16 chunks (seams at 16, 32, 48)."""
    rng = np.random.default_rng(7)
    labels = np.zeros((64, 64), np.uint8)
    labels[0:4, 40:64] = NODATA
    labels[26:39, 26:39] = 1  # a ring around the corner of four chunks...
    labels[29:36, 29:36] = NODATA  # ...with a hole
    labels[15, 15] = labels[16, 16] = 3  # touching diagonally across a chunk corner: two regions
    labels[10, 15] = labels[11, 16] = 5  # diagonally across a seam: two regions
    labels[44:48, 12:16] = 4  # touching only at the point (16, 48), a corner of four chunks
    labels[48:52, 16:20] = 4
    labels[5, 2:61] = labels[5:59, 60] = labels[58, 5:61] = 6  # a snake through seven chunks
    labels[8:25, 36] = labels[8:25, 44] = labels[24, 36:45] = 7  # a U: arms joined in the next chunk row
    noise = rng.choice([0, 2, 2, NODATA], size=(12, 31))
    labels[52:64, 0:31] = noise
    return labels


@pytest.fixture(scope="module")
def georef(data_dir):
    with rasterio.open(data_dir / "bahamas_rgb.tif") as src:
        return Georef(src.crs, src.transform)


def read_polygons(path):
    meta, _, geometry, fields = ogr_read(path)
    columns = dict(zip(meta["fields"], fields))
    return shapely.from_wkb(geometry), columns


@pytest.fixture(scope="module")
def chunked_gpkg(tmp_path_factory, georef):
    path = tmp_path_factory.mktemp("vector") / "regions.gpkg"
    write_polygons(path, da.from_array(scene(), chunks=16), georef, CARD)
    return path


def test_one_polygon_per_region(chunked_gpkg, georef):
    labels = scene()
    polygons, columns = read_polygons(chunked_gpkg)
    expected = components(labels)
    assert Counter(columns["class_id"].tolist()) == Counter(value for value, _ in expected)
    pixel_area = abs(georef.transform.determinant)
    for class_id in range(CARD.num_classes):
        mine = columns["class_id"] == class_id
        areas = sorted(shapely.area(polygons[mine]))
        assert np.allclose(areas, sorted(n * pixel_area for v, n in expected if v == class_id), rtol=1e-9)
    assert np.allclose(columns["area"], shapely.area(polygons), rtol=1e-9)
    assert [CARD.classes[i] for i in columns["class_id"]] == columns["class_name"].tolist()
    assert all(shapely.get_type_id(polygons) == 3) and shapely.is_valid(polygons).all()


def test_per_class_area_equals_mask_area(chunked_gpkg, georef):
    labels = scene()
    _, columns = read_polygons(chunked_gpkg)
    pixel_area = abs(georef.transform.determinant)
    for class_id in range(CARD.num_classes):
        total = columns["area"][columns["class_id"] == class_id].sum()
        assert total == pytest.approx((labels == class_id).sum() * pixel_area, rel=1e-9)


def test_ring_around_a_chunk_corner_keeps_its_hole(chunked_gpkg, georef):
    polygons, columns = read_polygons(chunked_gpkg)
    (ring,) = polygons[columns["class_id"] == 1]
    assert shapely.get_num_interior_rings(ring) == 1
    hole = shapely.Polygon(ring.interiors[0])
    assert hole.area == pytest.approx(49 * abs(georef.transform.determinant), rel=1e-9)


def test_same_polygons_with_one_chunk(chunked_gpkg, tmp_path, georef):
    single = tmp_path / "single.gpkg"
    write_polygons(single, scene(), georef, CARD)

    def ordered(path):
        polygons, columns = read_polygons(path)
        keys = [(c, round(a, 3), round(p.x, 3), round(p.y, 3)) for c, a, p in
                zip(columns["class_id"], columns["area"], shapely.centroid(polygons))]
        return [polygons[i] for i in sorted(range(len(keys)), key=keys.__getitem__)]

    chunked, whole = ordered(chunked_gpkg), ordered(single)
    assert len(chunked) == len(whole)
    assert all(a.equals(b) for a, b in zip(chunked, whole))


@pytest.mark.parametrize("suffix", [".gpkg", ".fgb", ".shp"])
def test_crs_read_back(tmp_path, georef, suffix):
    path = tmp_path / f"regions{suffix}"
    write_polygons(path, da.from_array(scene(), chunks=24), georef, CARD)
    info = pyogrio.read_info(path)
    assert CRS.from_user_input(info["crs"]) == georef.crs
    assert info["features"] == len(components(scene()))
    assert list(info["fields"]) == ["class_id", "class_name", "area", "area_m2"]


@pytest.mark.parametrize("suffix", [".gpkg", ".fgb", ".shp", ".geojson"])
def test_written_in_batches(tmp_path, georef, suffix, monkeypatch):
    """Regions are appended batch by batch as they complete; the result is the same."""
    monkeypatch.setattr(vector, "BATCH_SIZE", 7)
    path = tmp_path / f"regions{suffix}"
    calls = []
    labels = da.from_array(scene(), chunks=16)
    write_polygons(path, labels, georef, CARD, progress=calls.append)
    assert calls == [1] * labels.npartitions
    polygons, columns = read_polygons(path)
    pixels = np.round(columns["area"] / abs(georef.transform.determinant)).astype(int)
    assert sorted(zip(columns["class_id"].tolist(), pixels.tolist())) == sorted(components(scene()))
    if suffix == ".geojson":
        assert all(shapely.is_ccw(p.exterior) for p in polygons)
        assert -79 < shapely.total_bounds(polygons)[0] < -76


def test_written_from_a_dask_cluster(tmp_path, chunked_gpkg, georef):
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        with Client(cluster):
            write_polygons(tmp_path / "regions.gpkg", da.from_array(scene(), chunks=16), georef, CARD)
    polygons, columns = read_polygons(tmp_path / "regions.gpkg")
    expected, _ = read_polygons(chunked_gpkg)
    assert len(polygons) == len(expected) == len(components(scene()))
    assert shapely.union_all(polygons).equals(shapely.union_all(expected))


def test_shapefile_sidecars_arrive_together(tmp_path, georef):
    write_polygons(tmp_path / "regions.shp", da.from_array(scene(), chunks=32), georef, CARD)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "regions.cpg", "regions.dbf", "regions.prj", "regions.qml", "regions.shp", "regions.shx",
    ]
    with pytest.raises(OutputExistsError):
        write_polygons(tmp_path / "regions.shp", scene(), georef, CARD)
    write_polygons(tmp_path / "regions.shp", scene()[:16], georef, CARD, overwrite=True)
    assert pyogrio.read_info(tmp_path / "regions.shp")["features"] == len(components(scene()[:16]))
    assert len(list(tmp_path.iterdir())) == 6


def stored_style(path):
    """The polygons' default QGIS style, read where QGIS looks for it: the GeoPackage's
    ``layer_styles`` row for the layer, else ``NAME.qml`` beside the file."""
    if path.suffix != ".gpkg":
        return ET.fromstring(path.with_suffix(".qml").read_text(encoding="utf-8"))
    info = pyogrio.read_info(path, layer=path.stem)
    meta, _, _, fields = ogr_read(path, layer="layer_styles")
    row = {name: values[0] for name, values in zip(meta["fields"], fields)}
    assert len(fields[0]) == 1
    where = (row["f_table_schema"], row["f_table_name"], row["f_geometry_column"])
    assert where == ("", path.stem, info["geometry_name"])
    assert row["useAsDefault"]
    return ET.fromstring(row["styleQML"].split("\n", 1)[1])  # after the DOCTYPE line


@pytest.mark.parametrize("suffix", [".gpkg", ".fgb", ".shp", ".geojson"])
def test_polygons_carry_a_style_by_class_in_the_card_colours(tmp_path, georef, suffix):
    path = tmp_path / f"regions{suffix}"
    write_polygons(path, scene(), georef, CARD)
    renderer = stored_style(path).find("renderer-v2")
    assert (renderer.get("type"), renderer.get("attr")) == ("categorizedSymbol", "class_name")
    categories = renderer.findall("categories/category")
    assert [(c.get("value"), c.get("label")) for c in categories] == [(name, name) for name in CARD.classes]
    symbols = {s.get("name"): s for s in renderer.findall("symbols/symbol")}
    for category, colour in zip(categories, CARD.colors):
        options = symbols[category.get("symbol")].findall("layer/Option/Option")
        fill = next(o.get("value") for o in options if o.get("name") == "color")
        assert fill == ",".join(str(v) for v in (*rgb(colour), 255))
    assert pyogrio.read_info(path)["features"] == len(components(scene()))  # the polygons stay the first layer


def test_geopackage_style_is_kept_when_overwritten(tmp_path, georef):
    path = tmp_path / "regions.gpkg"
    write_polygons(path, scene(), georef, CARD)
    write_polygons(path, scene()[:16], georef, CARD, overwrite=True)
    stored_style(path)  # still one default row
    assert sorted(p.name for p in tmp_path.iterdir()) == ["regions.gpkg"]


def test_geojson_is_wgs84_with_source_areas(tmp_path, chunked_gpkg, georef):
    path = tmp_path / "regions.geojson"
    write_polygons(path, da.from_array(scene(), chunks=16), georef, CARD)
    assert CRS.from_user_input(pyogrio.read_info(path)["crs"]) == CRS.from_epsg(4326)
    polygons, columns = read_polygons(path)
    _, source_columns = read_polygons(chunked_gpkg)
    assert sorted(columns["area"]) == pytest.approx(sorted(source_columns["area"]), rel=1e-12)
    lon_min, lat_min, lon_max, lat_max = shapely.total_bounds(polygons)
    # The Bahamas scene (UTM 18N) lies near 24-25° N, 77-78° W.
    assert -79 < lon_min < lon_max < -76 and 23 < lat_min < lat_max < 26
    assert all(shapely.is_ccw(p.exterior) for p in polygons)
    document = json.loads(path.read_text())
    assert "crs" not in document  # RFC 7946 has no crs member


def test_pixel_coordinates_without_georeference(tmp_path):
    labels = scene()
    write_polygons(tmp_path / "slide.fgb", da.from_array(labels, chunks=20), Georef(mpp=0.5), CARD)
    polygons, columns = read_polygons(tmp_path / "slide.fgb")
    assert pyogrio.read_info(tmp_path / "slide.fgb")["crs"] is None
    assert sorted(columns["area"]) == sorted(float(n) for _, n in components(labels))
    assert shapely.total_bounds(polygons).tolist() == [0.0, 0.0, 64.0, 64.0]


def test_min_area_and_simplify(tmp_path, georef):
    labels = scene()
    pixel_area = abs(georef.transform.determinant)
    path = tmp_path / "big.gpkg"
    write_polygons(path, da.from_array(labels, chunks=16), georef, CARD, min_area=3.5 * pixel_area,
                   simplify=georef.transform.a)
    polygons, columns = read_polygons(path)
    assert len(polygons) == sum(n >= 4 for _, n in components(labels))
    assert shapely.is_valid(polygons).all()
    assert columns["area"].min() >= 3.5 * pixel_area
    write_polygons(tmp_path / "all.gpkg", labels, georef, CARD)
    unsimplified, _ = read_polygons(tmp_path / "all.gpkg")
    assert shapely.get_num_coordinates(polygons).sum() < shapely.get_num_coordinates(unsimplified).sum()


def test_all_nodata_gives_an_empty_layer(tmp_path, georef):
    write_polygons(tmp_path / "none.gpkg", np.full((20, 20), NODATA, np.uint8), georef, CARD)
    info = pyogrio.read_info(tmp_path / "none.gpkg")
    assert info["features"] == 0 and list(info["fields"]) == ["class_id", "class_name", "area", "area_m2"]


def test_unknown_format(tmp_path, georef):
    with pytest.raises(VectorFormatError, match="unknown polygon format '.kml'"):
        write_polygons(tmp_path / "regions.kml", scene(), georef, CARD)
    assert list(tmp_path.iterdir()) == []


def test_geopackage_is_version_1_2_which_older_gdal_and_qgis_read_quietly(chunked_gpkg):
    with sqlite3.connect(chunked_gpkg) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (10200,)
        assert db.execute("PRAGMA application_id").fetchone() == (0x47504B47,)  # "GPKG"


def test_seen_by_ogrinfo(chunked_gpkg):
    if shutil.which("ogrinfo") is None:
        pytest.skip("ogrinfo (gdal-bin) is not installed")
    completed = subprocess.run(["ogrinfo", "-ro", "-so", "-al", str(chunked_gpkg)],
                               check=True, capture_output=True, text=True)
    out = completed.stdout
    assert "Warning" not in completed.stderr  # e.g. a GeoPackage version newer than the system's GDAL
    assert "Layer name: regions" in out
    assert f"Feature Count: {len(components(scene()))}" in out
    assert "WGS 84 / UTM zone 18N" in out
    for field in ("class_id: Integer", "class_name: String", "area: Real"):
        assert field in out


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(1, 24), st.integers(1, 24)),
    chunk=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    values=st.sampled_from([(0, 1), (0, 1, NODATA), (0, 1, 2, NODATA)]),
)
def test_seam_merger_matches_connected_components(seed, shape, chunk, values):
    labels = np.random.default_rng(seed).choice(values, size=shape).astype(np.uint8)
    array = da.from_array(labels, chunks=chunk)
    merger = SeamMerger(array.chunks)
    regions = []
    rows = np.cumsum((0,) + array.chunks[0])
    cols = np.cumsum((0,) + array.chunks[1])
    order = [(i, j) for i in range(len(rows) - 1) for j in range(len(cols) - 1)]
    np.random.default_rng(seed).shuffle(order)  # chunks arrive in any order
    for i, j in order:
        block = labels[rows[i]:rows[i + 1], cols[j]:cols[j + 1]]
        regions += merger.add_chunk(rows[i], cols[j], polygonise_chunk(block, rows[i], cols[j], NODATA))
    assert merger.remaining() == 0
    found = sorted((class_id, int(round(polygon.area))) for polygon, class_id in regions)
    assert found == sorted(components(labels))
    assert all(isinstance(polygon, shapely.Polygon) for polygon, _ in regions)


def test_skipped_classes_make_no_polygon_and_leave_the_others_alone(tmp_path, georef):
    labels = scene()
    path = write_polygons(tmp_path / "some.gpkg", da.from_array(labels, chunks=16), georef, CARD,
                          skip_classes=["class 0", "class 6"])
    _, columns = read_polygons(path)
    expected = Counter(value for value, _ in components(labels) if value not in (0, 6))
    assert Counter(columns["class_id"].tolist()) == expected
    with pytest.raises(vector.UnknownClassError, match="unknown class 'class 9' to skip"):
        write_polygons(tmp_path / "none.gpkg", labels, georef, CARD, skip_classes=["class 9"])
