"""Outputs sit exactly where the input sits, whatever places it: a transform without CRS (a world
file, a rotated transform), a ``.aux.xml``, ground control points, RPCs (tags or side-cars), a
geostationary view whose disk edge has no longitude, a whole-world geographic raster. Inputs
are the bundled Landsat scene with each kind of georeference; masks are placed back with GDAL's
own warper, polygons are rasterised onto the warped masks."""

import json
import shutil
import subprocess
import warnings

import numpy as np
import pyogrio
import pyproj
import pytest
import rasterio
import rasterio.shutil
import shapely
import torch
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.rpc import RPC
from rasterio.transform import RPCTransformer
from rasterio.warp import reproject, transform_geom
from shapely.geometry import mapping

from segtile import segment
from segtile.cli import main
from segtile.georef import Georef
from segtile.models import ModelCard, save_torchscript
from segtile.sources import RasterSource, open_source
from segtile.sources.labels import LabelError
from segtile.writers import outputs as writer_outputs
from segtile.writers import placement
from tests.conftest import whole_image_logits
from tests.geodata import write_polygons as write_polygon_file

NODATA = 255
WGS84 = CRS.from_epsg(4326)
GEOS = CRS.from_proj4("+proj=geos +h=35786023 +lon_0=-75 +sweep=x +ellps=GRS80 +units=m +no_defs")
ELLIPSOID_AREA = 510065621724088.5  # m², WGS 84 (GeographicLib)

# Real RPCs of a QuickBird scene (Pyongyang, 2006), from GDAL's autotest (autotest/gcore/data/rpc.vrt, MIT).
QUICKBIRD_RPCS = RPC(
    line_off=16201, samp_off=15184, height_off=97, lat_off=39.7792, long_off=125.7510, line_scale=16480,
    samp_scale=15217, height_scale=501, lat_scale=0.0900, long_scale=0.1096,
    line_num_coeff=[5.105608e-04, -2.921055e-02, -1.010407e+00, -1.743729e-02, -6.604239e-05, -7.871396e-05,
                    3.027877e-04, -4.323587e-04, -2.624751e-04, 6.186490e-06, 1.084676e-06, 5.389738e-05,
                    4.145232e-06, 3.911486e-07, 1.772434e-05, 3.302960e-06, 3.006106e-06, 1.662606e-05,
                    6.051677e-06, -2.657667e-08],
    line_den_coeff=[1.0, -9.652128e-05, 2.488346e-04, 3.089019e-04, -2.120170e-06, 4.117913e-07, 1.370009e-06,
                    1.357281e-05, -4.174324e-06, -3.146787e-06, -7.724587e-06, 3.524480e-04, -1.303224e-05,
                    -8.507679e-07, -1.670972e-05, 6.781061e-06, 5.602262e-07, 1.161421e-05, 4.681872e-06,
                    5.593931e-08],
    samp_num_coeff=[-2.429563e-04, 1.028320e+00, -3.360972e-02, 3.519600e-03, -6.568341e-04, 5.951139e-04,
                    -3.875716e-04, 1.260622e-04, -5.273817e-05, -4.418981e-06, -3.520581e-06, -2.502760e-04,
                    -4.167704e-05, -5.973233e-05, -1.438949e-04, 7.603041e-06, 2.358136e-06, -2.275274e-05,
                    1.602657e-06, -1.716541e-07],
    samp_den_coeff=[1.0, 7.765620e-05, 6.568707e-04, -6.270621e-04, 5.163170e-05, 6.979463e-06, 2.476334e-07,
                    1.083558e-04, -4.043734e-05, -5.819288e-05, 1.778201e-07, 5.665202e-05, 6.927205e-06,
                    6.793485e-07, 3.604209e-05, -4.057103e-07, -8.291254e-07, 1.010650e-05, -2.875552e-06,
                    5.142751e-08],
)


@pytest.fixture(scope="module")
def pointwise(tmp_path_factory):
    """A TorchScript 1x1 convolution with a 3-class card, and the module itself."""
    torch.manual_seed(0)
    module = torch.nn.Conv2d(3, 3, 1).eval()
    path = tmp_path_factory.mktemp("model") / "pointwise.pt"
    save_torchscript(path, module, ModelCard(classes=("water", "land", "cloud"), tile_size=256, overlap=16))
    return path, module


@pytest.fixture(scope="module")
def scene(data_dir):
    """The bundled Landsat scene: pixels, profile, CRS and transform."""
    with rasterio.open(data_dir / "bahamas_rgb.tif") as src:
        return src.read(), src.profile, src.crs, src.transform


def run(*args) -> int:
    return main([str(a) for a in args])


def write_image(path, scene, overviews=False, gcps=None, rpcs=None, **georef):
    """The scene's pixels at ``path`` with the georeference given (``crs``, ``transform``),
    GCPs (with their CRS) or RPCs; internal overviews on request."""
    pixels, profile, _, _ = scene
    profile = {key: value for key, value in profile.items() if key not in ("crs", "transform")}
    with rasterio.open(path, "w", **{**profile, **georef}) as image:
        image.write(pixels)
        if gcps is not None:
            image.gcps = gcps
        if rpcs is not None:
            image.rpcs = rpcs
    if overviews:
        with rasterio.open(path, "r+") as image:
            image.build_overviews([2], Resampling.average)
    return path


def expected_labels(module, path):
    """The pointwise model on the whole image, nodata where the image is."""
    with rasterio.open(path) as src:
        pixels, valid = src.read(), src.dataset_mask() > 0
    labels = np.argmax(whole_image_logits(module, pixels.astype(np.float32)), axis=0).astype(np.uint8)
    labels[~valid] = NODATA
    return labels


def read_layer(path):
    """Polygons, class ids and the other fields of a polygon file's first layer, and its CRS."""
    layer = path.stem if path.suffix == ".gpkg" else None
    meta, _, geometry, fields = pyogrio.raw.read(path, layer=layer)
    crs = CRS.from_user_input(meta["crs"]) if meta["crs"] else None
    return shapely.from_wkb(geometry), dict(zip(meta["fields"], fields)), crs


def burnt(polygons, class_ids, shape, transform):
    """Polygons rasterised onto a grid (pixel centres inside), NODATA elsewhere."""
    return rasterize(zip(polygons, class_ids.tolist()), out_shape=shape, transform=transform, fill=NODATA,
                     dtype="uint8")


def warped(path, crs, transform, shape, band=None):
    """``path`` placed by its own georeference (transform, GCPs or RPCs) onto a grid by GDAL's
    warper, nearest neighbour: its band 1 (``None``), or its validity (``"valid"``: 255 valid)."""
    with rasterio.open(path) as src:
        data = src.dataset_mask() if band == "valid" else src.read(1)
        nodata = 0 if band == "valid" else src.nodata
        gcps, gcp_crs = src.gcps
        placing = ({"gcps": gcps, "src_crs": gcp_crs} if gcps else {"rpcs": src.rpcs, "src_crs": WGS84}
                   if src.rpcs else {"src_transform": src.transform, "src_crs": src.crs})
    out = np.full(shape, nodata, dtype=data.dtype)
    reproject(data, out, src_nodata=nodata, dst_nodata=nodata, dst_transform=transform, dst_crs=crs,
              resampling=Resampling.nearest, **placing)
    return out


def overlap(a, b):
    """Intersection over union of two boolean masks."""
    return (a & b).sum() / (a | b).sum()


# --- a transform without CRS, a .aux.xml ---------------------------------------------------

def world_file_alone(tmp_path, scene, data_dir):
    """``gdal_translate -co PROFILE=BASELINE -co TFW=YES``, its .aux.xml (the CRS) removed, with
    internal overviews (a pyramidal TIFF without GeoTIFF tags)."""
    path = tmp_path / "tfw.tif"
    rasterio.shutil.copy(data_dir / "bahamas_rgb.tif", path, driver="GTiff", PROFILE="BASELINE", TFW="YES")
    (tmp_path / "tfw.tif.aux.xml").unlink()
    with rasterio.open(path, "r+") as image:
        image.build_overviews([2], Resampling.average)
    return path


def world_file_and_prj(tmp_path, scene, data_dir):
    """A world file and an ESRI .prj, which GDAL's GeoTIFF driver does not read: no CRS."""
    path = world_file_alone(tmp_path, scene, data_dir)
    (tmp_path / "tfw.prj").write_text(scene[2].to_wkt(version="WKT1_ESRI"))
    return path


def rotated_without_crs(tmp_path, scene, data_dir):
    return write_image(tmp_path / "rotated.tif", scene, transform=scene[3] @ Affine.rotation(20))


def aux_xml(tmp_path, scene, data_dir):
    """A PNG whose CRS and transform are in its .aux.xml (GDAL's PAM)."""
    path = tmp_path / "scene.png"
    rasterio.shutil.copy(data_dir / "bahamas_rgb.tif", path, driver="PNG")
    assert (tmp_path / "scene.png.aux.xml").exists()
    return path


@pytest.mark.parametrize("make", [world_file_alone, world_file_and_prj, rotated_without_crs, aux_xml])
def test_a_transform_with_or_without_crs_is_kept_in_every_output(tmp_path, scene, data_dir, pointwise, make):
    path = make(tmp_path, scene, data_dir)
    checkpoint, module = pointwise
    mask, polygons, store = tmp_path / "m.tif", tmp_path / "p.gpkg", tmp_path / "z.zarr"
    assert run(path, "--model", checkpoint, "-o", mask, "-o", polygons, "-o", store, "--zarr-format", "2",
               "--quiet") == 0
    with rasterio.open(path) as src, rasterio.open(mask) as out:
        assert not src.transform.is_identity
        assert (out.transform, out.crs) == (src.transform, src.crs)
        labels, transform = out.read(1), out.transform
    np.testing.assert_array_equal(labels, expected_labels(module, path))
    shapes, fields, crs = read_layer(polygons)
    assert crs == (scene[2] if make is aux_xml else None)
    np.testing.assert_array_equal(burnt(shapes, fields["class_id"], labels.shape, transform), labels)
    with rasterio.open(f'ZARR:"{store}":/labels') as zarr_labels:  # GDAL's Zarr driver
        rotated = make is rotated_without_crs  # no 1-D coordinates can hold a rotation
        assert zarr_labels.transform.is_identity if rotated else zarr_labels.transform.almost_equals(transform)
        assert zarr_labels.crs == (None if rotated else crs)
        np.testing.assert_array_equal(zarr_labels.read(1), labels)


def test_polygons_of_a_transform_without_crs_have_no_area_on_the_ellipsoid(tmp_path, scene, data_dir, pointwise):
    path = world_file_alone(tmp_path, scene, data_dir)
    result = segment(path, pointwise[1], tile_size=256, overlap=16, device="cpu")
    result.write(tmp_path / "p.fgb")
    assert list(pyogrio.read_info(tmp_path / "p.fgb")["fields"]) == ["class_id", "class_name", "area"]


# --- ground control points ---------------------------------------------------------------------

def true_gcps(scene, count=4):
    """``count`` × ``count`` ground control points at the scene's true longitudes and latitudes."""
    _, _, crs, transform = scene
    cols, rows = np.meshgrid(np.linspace(0, 791, count), np.linspace(0, 718, count))
    lon, lat = rasterio.warp.transform(crs, WGS84, *(transform * (cols.ravel(), rows.ravel())))
    return [GroundControlPoint(row=r, col=c, x=x, y=y, z=0.0, id=str(i), info="")
            for i, (r, c, x, y) in enumerate(zip(rows.ravel(), cols.ravel(), lon, lat))]


@pytest.fixture
def gcp_image(tmp_path, scene):
    return write_image(tmp_path / "gcps.tif", scene, overviews=True, gcps=(true_gcps(scene), WGS84))


# A grid of the scene's area in its own UTM zone, at 300 m: where the image and the outputs are warped to.
UTM_GRID = (CRS.from_epsg(32618), Affine(300, 0, 101985, 0, -300, 2826915), (718, 791))


def test_gcps_are_kept_and_polygons_follow_gdals_gcp_transformer(tmp_path, gcp_image, pointwise):
    checkpoint, module = pointwise
    mask, polygons, geojson = tmp_path / "m.tif", tmp_path / "p.gpkg", tmp_path / "p_wgs84.geojson"
    assert run(gcp_image, "--model", checkpoint, "-o", mask, "-o", polygons, "-o", geojson, "--quiet") == 0
    with rasterio.open(gcp_image) as src, rasterio.open(mask) as out:
        (source_gcps, source_crs), (mask_gcps, mask_crs) = src.gcps, out.gcps
        assert out.transform.is_identity and out.crs is None
        labels = out.read(1)
    assert mask_crs == source_crs == WGS84
    assert [(g.row, g.col, g.x, g.y) for g in mask_gcps] == [(g.row, g.col, g.x, g.y) for g in source_gcps]
    np.testing.assert_array_equal(labels, expected_labels(module, gcp_image))
    crs, transform, shape = UTM_GRID
    placed = warped(mask, crs, transform, shape)
    valid = placed != NODATA
    assert valid.mean() > 0.5
    for path in (polygons, geojson):
        shapes, fields, polygon_crs = read_layer(path)
        assert polygon_crs == WGS84
        in_utm = [shapely.geometry.shape(g) for g in transform_geom(WGS84, crs, [mapping(p) for p in shapes])]
        burnt_labels = burnt(in_utm, fields["class_id"], shape, transform)
        assert (burnt_labels[valid] == placed[valid]).mean() > 0.999
        assert (burnt_labels[~valid] == NODATA).mean() > 0.999


def test_gcps_follow_the_working_grid(tmp_path, gcp_image, pointwise):
    """Processed on the first overview, the mask's GCPs are scaled: it covers the image's
    footprint, not its top-left quarter."""
    mask = tmp_path / "m.tif"
    assert run(gcp_image, "--model", pointwise[0], "-o", mask, "--level", "1", "--quiet") == 0
    with rasterio.open(mask) as out:
        assert out.shape == (359, 396)
    footprint = warped(gcp_image, *UTM_GRID, band="valid") > 0
    assert overlap(footprint, warped(mask, *UTM_GRID) != NODATA) > 0.99


def test_a_gcp_vrt_is_placed_too(tmp_path, gcp_image, pointwise):
    vrt = tmp_path / "gcps.vrt"
    rasterio.shutil.copy(gcp_image, vrt, driver="VRT")
    mask = tmp_path / "m.tif"
    assert run(vrt, "--model", pointwise[0], "-o", mask, "--quiet") == 0
    with rasterio.open(mask) as out:
        assert len(out.gcps[0]) == 16 and out.gcps[1] == WGS84


def test_map_coordinates_cannot_mask_an_image_placed_by_gcps(tmp_path, gcp_image, pointwise):
    area = write_polygon_file(tmp_path / "area.gpkg", [shapely.box(-77, 24, -76, 25)], ["inside"], crs="EPSG:4326")
    with pytest.raises(LabelError, match="placed by ground control points"):
        segment(gcp_image, pointwise[1], mask=area, device="cpu")


# --- RPCs ------------------------------------------------------------------------------------

@pytest.fixture
def rpc_image(tmp_path, scene):
    """The scene's pixels with a QuickBird scene's RPCs in their tag, and an overview."""
    return write_image(tmp_path / "rpcs.tif", scene, overviews=True, rpcs=QUICKBIRD_RPCS)


def rpc_side_car(tmp_path, rpc_image, option):
    """The RPC image as a plain TIFF whose RPCs are in a side-car GDAL writes (``RPB=YES``:
    ``NAME.RPB``, ``RPCTXT=YES``: ``NAME_RPC.TXT``)."""
    path = tmp_path / f"side_{option.lower()}.tif"
    rasterio.shutil.copy(rpc_image, path, driver="GTiff", PROFILE="BASELINE", **{option: "YES"})
    path.with_name(path.name + ".aux.xml").unlink(missing_ok=True)  # the RPCs only in the side-car
    return path


def same_rpcs(a, b):
    """Whether two RPCs have the same offsets, scales and coefficients (to the digits GDAL keeps)."""
    first, second = a.to_dict(), b.to_dict()
    return all(np.allclose(first[key], second[key], rtol=1e-12, atol=0) for key in first if not key.startswith("err"))


# Around the image's footprint, in WGS 84 at about 1 m.
RPC_GRID = (WGS84, Affine(1e-5, 0, 125.6478, 0, -1e-5, 39.8697), (440, 620))


@pytest.mark.parametrize("where", ["tag", "RPB", "RPCTXT"])
def test_rpcs_are_kept_and_polygons_follow_gdals_rpc_transformer(tmp_path, rpc_image, pointwise, where):
    path = rpc_image if where == "tag" else rpc_side_car(tmp_path, rpc_image, where)
    mask, polygons = tmp_path / "m.tif", tmp_path / "p.fgb"
    assert run(path, "--model", pointwise[0], "-o", mask, "-o", polygons, "--quiet") == 0
    with rasterio.open(mask) as out:
        assert same_rpcs(out.rpcs, QUICKBIRD_RPCS)
        assert out.transform.is_identity and out.crs is None and not out.gcps[0]
    placed = warped(mask, *RPC_GRID)
    valid = placed != NODATA
    assert valid.mean() > 0.3
    shapes, fields, crs = read_layer(polygons)
    assert crs == WGS84
    burnt_labels = burnt(shapes, fields["class_id"], RPC_GRID[2], RPC_GRID[1])
    assert (burnt_labels[valid] == placed[valid]).mean() > 0.999


def test_rpcs_follow_the_working_grid(tmp_path, rpc_image, pointwise):
    mask = tmp_path / "m.tif"
    assert run(rpc_image, "--model", pointwise[0], "-o", mask, "--level", "1", "--quiet") == 0
    footprint = warped(rpc_image, *RPC_GRID, band="valid") > 0
    assert overlap(footprint, warped(mask, *RPC_GRID) != NODATA) > 0.99


def test_scaled_rpcs_give_the_same_place_to_the_same_point():
    """RPCs count samples and lines from the centre of the first pixel: scaled with the grid,
    a point of the image keeps its longitude and latitude."""
    scaled = Georef(rpcs=QUICKBIRD_RPCS).scaled(4.0, 2.5).rpcs
    cols, rows = np.array([0.0, 100.0, 791.0]), np.array([0.0, 50.0, 718.0])
    with RPCTransformer(QUICKBIRD_RPCS) as full, RPCTransformer(scaled) as coarse:
        np.testing.assert_allclose(coarse.xy(rows / 2.5, cols / 4.0, offset="ul"), full.xy(rows, cols, offset="ul"),
                                   rtol=0, atol=1e-9)


def test_a_pyramidal_tiff_that_gdal_georeferences_is_no_slide(rpc_image, tmp_path, scene, data_dir):
    assert isinstance(open_source(rpc_image), RasterSource)
    assert open_source(world_file_alone(tmp_path, scene, data_dir)).georef.placement == "transform"


# --- where geographic coordinates end ----------------------------------------------------------

@pytest.fixture
def geostationary(tmp_path, scene):
    """The scene's pixels as a full-disk geostationary view, its corners beyond the Earth's disk."""
    half = 5.6e6
    return write_image(tmp_path / "geos.tif", scene, crs=GEOS, transform=Affine(2 * half / 791, 0, -half, 0,
                                                                              -2 * half / 718, half))


def test_a_geostationary_view_is_clipped_to_the_earth_before_any_work(tmp_path, geostationary, pointwise, capsys):
    checkpoint, module = pointwise
    mask, polygons, geojson = tmp_path / "m.tif", tmp_path / "p.gpkg", tmp_path / "p.geojson"
    assert run(geostationary, "--model", checkpoint, "-o", mask, "-o", polygons, "-o", geojson) == 0
    err = capsys.readouterr().err
    note = next(line for line in err.splitlines() if "no geographic coordinates" in line)
    assert note.startswith("segtile: note: 26.5% of the image")
    assert err.index(note) < err.index("inference")
    whole, whole_fields, _ = read_layer(polygons)
    clipped, clipped_fields, crs = read_layer(geojson)
    assert crs == WGS84 and np.isfinite(shapely.get_coordinates(clipped)).all() and shapely.is_valid(clipped).all()
    assert np.abs(shapely.get_coordinates(clipped)[:, 1]).max() < 81.4  # the disk's edge, seen from 35786 km
    assert clipped_fields["area_m2"].sum() == pytest.approx(whole_fields["area_m2"].sum(), rel=1e-9)
    assert whole_fields["area"].sum() > clipped_fields["area"].sum() > 0.5 * whole_fields["area"].sum()


def test_the_earths_part_of_a_grid_is_found_pixel_exactly(geostationary, monkeypatch):
    """The pixels with geographic coordinates, from a lattice refined at the disk's edge, are
    exactly those whose four corners PROJ gives a longitude and latitude."""
    georef = open_source(geostationary).georef
    found = placement.Placement(georef, (718, 791), geographic=True)
    monkeypatch.setattr(placement, "LATTICE", 23)  # cells of 35 px
    coarse = placement.Placement(georef, (718, 791), geographic=True)
    x, y = np.meshgrid(np.arange(792.0), np.arange(719.0))
    to_lonlat = pyproj.Transformer.from_crs(GEOS.to_wkt(), "+proj=longlat +ellps=GRS80", always_xy=True)
    lon, lat = to_lonlat.transform(*(georef.transform * (x.ravel(), y.ravel())), errcheck=False)
    corners = (np.isfinite(lon) & np.isfinite(lat)).reshape(x.shape)
    pixels = corners[:-1, :-1] & corners[:-1, 1:] & corners[1:, :-1] & corners[1:, 1:]
    boxes = [shapely.box(col, row, col + 1, row + 1) for row, col in np.argwhere(pixels)]
    every_pixel = shapely.coverage_union_all(boxes)
    for region in (found.region, coarse.region):
        assert region.symmetric_difference(every_pixel).area == 0
    assert found.left_out == pytest.approx(1 - pixels.mean())


def test_a_geojson_without_any_geographic_coordinate_is_refused_before_any_work(tmp_path, scene, pointwise, capsys):
    space = write_image(tmp_path / "space.tif", scene, crs=GEOS,
                        transform=Affine(100, 0, 5.7e6, 0, -100, 5.7e6))  # a corner of the view: space only
    assert run(space, "--model", pointwise[0], "-o", tmp_path / "p.geojson") == 2
    err = capsys.readouterr().err
    assert err.startswith("segtile: error: cannot write p.geojson: no pixel of the image has geographic")
    assert err.count("\n") == 1 and list(tmp_path.iterdir()) == [space]


def test_a_failing_writer_keeps_the_finished_work_and_resume_writes_at_once(tmp_path, data_dir, pointwise,
                                                                            monkeypatch, capsys):
    def failing(*args, **kwargs):
        raise RuntimeError("a writer's own failure")

    checkpoint = pointwise[0]
    mask, polygons = tmp_path / "m.tif", tmp_path / "p.gpkg"
    with monkeypatch.context() as patch:
        patch.setattr(writer_outputs, "write_polygons", failing)
        assert run(data_dir / "bahamas_rgb.tif", "--model", checkpoint, "-o", mask, "-o", polygons,
                   "--quiet") == 1
    assert "--resume continues from it (the inference is complete" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == [".m.tif.segtile-work"]
    assert run(data_dir / "bahamas_rgb.tif", "--model", checkpoint, "-o", mask, "--resume", "--progress",
               "json") == 0
    err = capsys.readouterr().err
    summary = json.loads(next(line for line in reversed(err.splitlines()) if line.startswith('{"summary"')))
    assert summary["tiles_run"] == 0 and mask.exists()


# --- areas on the ellipsoid ---------------------------------------------------------------------

def cell_areas(latitudes, width_degrees):
    """Areas in m² of lat/lon cells between consecutive ``latitudes``, ``width_degrees`` wide, by
    GeographicLib's geodesic polygon areas over edges densified to 0.01° (so they follow the
    parallels)."""
    geod = pyproj.Geod(ellps="WGS84")
    areas = []
    for south, north in zip(latitudes[1:], latitudes[:-1]):
        cell = shapely.segmentize(shapely.box(0, south, width_degrees, north), 0.01)
        areas.append(abs(geod.geometry_area_perimeter(cell)[0]))
    return np.array(areas)


def test_a_world_raster_in_degrees_has_its_true_areas_in_m2(tmp_path, scene, pointwise):
    world = write_image(tmp_path / "world.tif", scene, crs=WGS84, nodata=None,
                        transform=Affine(360 / 791, 0, -180, 0, -180 / 718, 90))
    result = segment(world, pointwise[1], tile_size=256, overlap=16, device="cpu")
    result.write(tmp_path / "world.gpkg")
    shapes, fields, _ = read_layer(tmp_path / "world.gpkg")
    assert fields["area"].sum() == pytest.approx(64800, rel=1e-12)  # square degrees
    assert fields["area_m2"].sum() == pytest.approx(ELLIPSOID_AREA, rel=1e-12)
    labels = result.labels.compute()
    row_areas = cell_areas(np.linspace(90, -90, 719), 360 / 791)
    for class_id in range(3):
        expected = ((labels == class_id).sum(axis=1) * row_areas).sum()
        assert fields["area_m2"][fields["class_id"] == class_id].sum() == pytest.approx(expected, rel=1e-6)


def test_areas_in_a_projected_crs_are_on_the_ellipsoid_too(tmp_path, data_dir, pointwise):
    """Each polygon's area_m2 against GeographicLib's area of its outline in longitude and latitude."""
    result = segment(data_dir / "landsat7.tif", pointwise[1], tile_size=256, overlap=16, device="cpu",
                     resolution=300)  # Web Mercator: its own m² are 1.6 times too large at 37° N
    result.write(tmp_path / "p.gpkg")
    shapes, fields, crs = read_layer(tmp_path / "p.gpkg")
    geod = pyproj.Geod(ellps="WGS84")
    big = np.argsort(fields["area"])[-5:]
    for index in big:
        outline = shapely.geometry.shape(transform_geom(crs, WGS84, mapping(shapely.segmentize(shapes[index], 300))))
        assert fields["area_m2"][index] == pytest.approx(abs(geod.geometry_area_perimeter(outline)[0]), rel=1e-4)
    assert 1.5 < fields["area"].sum() / fields["area_m2"].sum() < 1.7


# --- Zarr stores GIS tools read -----------------------------------------------------------------

ZARR_GEOREFS = {
    "north-up": lambda scene: Georef(scene[2], scene[3]),
    "rotated": lambda scene: Georef(scene[2], scene[3] @ Affine.rotation(-15)),
    "no CRS": lambda scene: Georef(None, scene[3]),
    "GCPs": lambda scene: Georef(gcps=tuple(true_gcps(scene)), gcp_crs=WGS84),
    "RPCs": lambda scene: Georef(rpcs=QUICKBIRD_RPCS),
}


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("kind", list(ZARR_GEOREFS))
def test_zarr_stores_are_placed_by_xarray_and_read_back(tmp_path, scene, kind, zarr_format):
    xarray = pytest.importorskip("xarray")
    pytest.importorskip("rioxarray")
    from segtile.writers import read_zarr, write_zarr

    georef = ZARR_GEOREFS[kind](scene)
    labels = (scene[0][0] % 3).astype(np.uint8)
    path = tmp_path / "labels.zarr"
    card = ModelCard(classes=("a", "b", "c"))
    write_zarr(path, labels, georef, card, probabilities=np.full((3, *labels.shape), 1 / 3, np.float32),
               zarr_format=zarr_format)
    stored_labels, _, stored, _ = read_zarr(path)
    np.testing.assert_array_equal(stored_labels.compute(), labels)
    assert (stored.crs, stored.transform, stored.gcp_crs) == (georef.crs, georef.transform, georef.gcp_crs)
    assert [g.asdict() for g in stored.gcps] == [g.asdict() for g in georef.gcps] and stored.rpcs == georef.rpcs
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # xarray warns about a store without consolidated metadata
        dataset = xarray.open_zarr(path)
    array = dataset["labels"]
    assert array.dims == ("y", "x") and dataset["probabilities"].dims == ("class", "y", "x")
    if georef.placement == "transform":
        assert array.rio.crs == georef.crs
        assert array.rio.transform().almost_equals(georef.transform)
    if kind == "north-up":
        assert array.x.values[0] == pytest.approx(georef.transform.c + georef.transform.a / 2)
    if kind == "GCPs":
        assert array.rio.crs == WGS84
        assert [g.asdict() for g in array.rio.get_gcps()] == [g.asdict() for g in georef.gcps]


@pytest.mark.parametrize("rotated", [False, True])
def test_debian_gdal_reads_a_zarr_v2_store_where_it_sits(tmp_path, scene, rotated):
    """GDAL 3.6's Zarr driver (Debian 12, and its QGIS) reads v2: north-up stores with their CRS
    and transform, rotated ones with neither (never a CRS over pixel coordinates)."""
    if shutil.which("gdalinfo") is None:
        pytest.skip("gdalinfo (gdal-bin) is not installed")
    from segtile.writers import write_zarr

    georef = ZARR_GEOREFS["rotated" if rotated else "north-up"](scene)
    write_zarr(tmp_path / "z.zarr", (scene[0][0] % 3).astype(np.uint8), georef, ModelCard(classes=("a", "b", "c")),
               zarr_format=2)
    info = json.loads(subprocess.run(["gdalinfo", "-json", f'ZARR:"{tmp_path / "z.zarr"}":/labels'],
                                     check=True, capture_output=True, text=True).stdout)
    if rotated:
        assert "geoTransform" not in info and not info.get("coordinateSystem", {}).get("wkt")
    else:
        assert info["geoTransform"] == pytest.approx(list(georef.transform.to_gdal()))
        assert CRS.from_wkt(info["coordinateSystem"]["wkt"]) == georef.crs


def test_a_zarr_v3_store_is_placed_by_the_gdal_that_reads_it(tmp_path, scene):
    """rasterio's own GDAL opens v3 stores where its Zarr driver reads zarr-python's codecs
    (3.10 does not: "Unsupported codec: bytes"); where it does, the store sits where it should."""
    from segtile.writers import write_zarr

    georef = ZARR_GEOREFS["north-up"](scene)
    write_zarr(tmp_path / "z.zarr", (scene[0][0] % 3).astype(np.uint8), georef, ModelCard(classes=("a", "b", "c")))
    try:
        labels = rasterio.open(f'ZARR:"{tmp_path / "z.zarr"}":/labels')
    except rasterio.errors.RasterioIOError as error:
        pytest.skip(f"GDAL {rasterio.__gdal_version__} does not read this Zarr v3 store: {error}")
    with labels:
        assert labels.crs == georef.crs and labels.transform.almost_equals(georef.transform)


def test_zarr_format_2_from_the_command_and_its_refusals(tmp_path, data_dir, pointwise, capsys):
    image, checkpoint = data_dir / "bahamas_rgb.tif", pointwise[0]
    assert run(image, "--model", checkpoint, "-o", tmp_path / "z.zarr", "--zarr-format", "2", "--quiet") == 0
    assert (tmp_path / "z.zarr" / ".zgroup").exists() and (tmp_path / "z.zarr" / ".zmetadata").exists()
    assert run(image, "--model", checkpoint, "-o", tmp_path / "z.zarr", "--zarr-format", "2", "--overwrite",
               "--quiet") == 0  # a v2 store is a store segtile may replace
    assert run(image, "--model", checkpoint, "-o", tmp_path / "m.tif", "--zarr-format", "2") == 2
    assert run(image, "--model", checkpoint, "-o", tmp_path / "o.ome.zarr", "--zarr-format", "2") == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors[-2] == ("segtile: error: a Zarr format (2) is asked for, but none of the outputs is a Zarr store "
                          "(.zarr)")
    assert errors[-1] == ("segtile: error: o.ome.zarr is OME-Zarr 0.5, which is Zarr v3 only: leave the Zarr "
                          "format at 3 for it")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.zarr"]
