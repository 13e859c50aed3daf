"""Remote inputs read by byte ranges, from servers on 127.0.0.1 only: a web server that answers
ranges (and one that does not), and an S3-compatible one (moto's server mode). Outputs equal the
local file's; a small window or a coarse level fetches a small part of the file."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from segtile import segment
from segtile.sources import RasterSource, SlideSource, SourceError, open_source
from segtile.sources.remote import BLOCK_SIZE
from segtile.store.identity import fingerprint
from tests.servers import http_server, s3_server

BUCKET = "scenes"


@pytest.fixture
def served(tmp_path, data_dir):
    """A folder holding copies of the sample COG, scene and slide, served over HTTP with ranges."""
    for name in ("landsat7.tif", "bahamas_rgb.tif", "cmu_small_region.svs"):
        shutil.copy(data_dir / name, tmp_path / name)
    with http_server(tmp_path) as server:
        yield server, tmp_path


@pytest.fixture
def s3(monkeypatch, tmp_path, data_dir):
    """A bucket on a local S3-compatible server holding the sample scene and slide, with the
    settings GDAL (and s3fs, through segtile) need to reach it."""
    import boto3

    with s3_server() as endpoint:
        settings = {"AWS_S3_ENDPOINT": endpoint, "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
                    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                    "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
        client = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        for name in ("bahamas_rgb.tif", "cmu_small_region.svs"):
            client.upload_file(str(data_dir / name), BUCKET, name)
        yield client


def labels_of(image, model) -> np.ndarray:
    return segment(image, model, tile_size=128, overlap=16, device="cpu", resolution="native").labels.compute()


def test_a_window_of_a_cog_over_http_fetches_a_small_part_of_it(served):
    server, folder = served
    size = (folder / "landsat7.tif").stat().st_size
    source = open_source(server.url("landsat7.tif"))
    assert isinstance(source, RasterSource) and source.files == ()
    window = Window(1000, 800, 200, 150)
    opened = server.bytes_served
    np.testing.assert_array_equal(source.read(window), open_source(folder / "landsat7.tif").read(window))
    assert opened < size / 20  # the header and tile tables
    assert server.bytes_served < size / 5  # and the few tiles under the window
    coarsest = len(source.level_shapes) - 1
    before = server.bytes_served
    height, width = source.level_shapes[coarsest]
    source.read(Window(0, 0, width, height), level=coarsest)  # a coarse preview's read: the last overview
    assert server.bytes_served - before < size / 10
    source.close()


def test_segmenting_an_http_url_gives_the_local_files_labels(served, pointwise_model):
    server, folder = served
    model = pointwise_model(bands=3, classes=4)
    np.testing.assert_array_equal(labels_of(server.url("bahamas_rgb.tif"), model),
                                  labels_of(folder / "bahamas_rgb.tif", model))


def test_a_slide_over_http_is_read_tile_by_tile_through_fsspec(served):
    server, folder = served
    size = (folder / "cmu_small_region.svs").stat().st_size
    remote = open_source(server.url("cmu_small_region.svs"))
    local = open_source(folder / "cmu_small_region.svs")
    assert isinstance(remote, SlideSource) and remote.files == ()
    assert remote.georef == local.georef and remote.level_shapes == local.level_shapes
    for window in (Window(300, 200, 64, 48), Window(1500, 2000, 64, 48)):
        before = server.bytes_served
        np.testing.assert_array_equal(remote.read(window), local.read(window))
    # the first read opened the thread's own TiffFile (its tables, spread over this small file);
    # the second fetched the one tile under it, in a block or two of fsspec's cache
    assert server.bytes_served < size / 2
    assert server.bytes_served - before <= 2 * BLOCK_SIZE
    remote.close(), local.close()


def test_a_server_that_ignores_ranges_is_refused_in_one_line_before_work(tmp_path, data_dir):
    shutil.copy(data_dir / "bahamas_rgb.tif", tmp_path / "bahamas_rgb.tif")
    with http_server(tmp_path, ranges=False) as server:
        for name in ("bahamas_rgb.tif", "missing.svs"):
            with pytest.raises(SourceError) as caught:
                open_source(server.url(name))
            assert "\n" not in str(caught.value)
        assert "does not answer range requests" in _message(server.url("bahamas_rgb.tif"))
        assert "206 Partial Content" in _message(server.url("bahamas_rgb.tif"))
        assert "404" in _message(server.url("missing.svs"))


def _message(url: str) -> str:
    with pytest.raises(SourceError) as caught:
        open_source(url)
    return str(caught.value)


def test_an_s3_uri_gives_the_local_files_labels(s3, data_dir, pointwise_model):
    model = pointwise_model(bands=3, classes=4)
    remote = open_source(f"s3://{BUCKET}/bahamas_rgb.tif")
    assert isinstance(remote, RasterSource)
    with rasterio.open(data_dir / "bahamas_rgb.tif") as local:
        assert remote.georef.crs == local.crs and remote.georef.transform == local.transform
    np.testing.assert_array_equal(labels_of(remote, model), labels_of(data_dir / "bahamas_rgb.tif", model))


def test_a_slide_in_s3_reads_as_the_local_one(s3, data_dir):
    remote = open_source(f"s3://{BUCKET}/cmu_small_region.svs")
    local = open_source(data_dir / "cmu_small_region.svs")
    assert isinstance(remote, SlideSource) and remote.georef.mpp == local.georef.mpp
    window = Window(100, 150, 80, 60)
    np.testing.assert_array_equal(remote.read(window, level=0), local.read(window, level=0))
    with pytest.raises(SourceError, match="cannot open s3://"):
        open_source(f"s3://{BUCKET}/missing.svs")


def test_a_remote_input_is_identified_by_what_its_server_says_and_else_by_its_bytes(served):
    server, folder = served
    url = server.url("bahamas_rgb.tif")
    path = folder / "bahamas_rgb.tif"
    before = fingerprint(url)
    assert before["size"] == path.stat().st_size and before["last_modified"]
    assert "etag" not in before and before["sampled_sha256"]  # http.server gives no ETag: bytes sampled
    assert fingerprint(f"/vsicurl/{url}") == {**before, "path": f"/vsicurl/{url}"}
    assert fingerprint(url) == before  # nothing changed, nothing seen
    times = path.stat()
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF  # one byte of the image data, in a sampled block
    path.write_bytes(bytes(content))
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))  # same size, same Last-Modified
    after = fingerprint(url)
    assert (after["size"], after["last_modified"]) == (before["size"], before["last_modified"])
    assert after["sampled_sha256"] != before["sampled_sha256"]


def test_an_object_in_s3_is_identified_by_its_etag(s3, data_dir):
    uri = f"s3://{BUCKET}/bahamas_rgb.tif"
    before = fingerprint(uri)
    assert before["etag"] and before["size"] == (data_dir / "bahamas_rgb.tif").stat().st_size
    assert "sampled_sha256" not in before  # the ETag says it: no bytes fetched
    assert fingerprint(f"/vsis3/{BUCKET}/bahamas_rgb.tif")["etag"] == before["etag"]
    s3.upload_file(str(data_dir / "landsat7.tif"), BUCKET, "bahamas_rgb.tif")  # replaced
    assert fingerprint(uri)["etag"] != before["etag"]
