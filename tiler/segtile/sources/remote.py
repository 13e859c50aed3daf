"""Images read from servers by byte ranges: ``http(s)://`` URLs and ``s3://``, ``gs://``, ``az://`` URIs.

Rasters go through GDAL's virtual file systems (rasterio maps ``https://…`` to ``/vsicurl/https://…``,
``s3://b/k`` to ``/vsis3/b/k``, ``gs://`` to ``/vsigs/``, ``az://`` to ``/vsiaz/``), which fetch
only the byte ranges a window needs: a Cloud-Optimised GeoTIFF's header, then its tiles.
Whole-slide TIFFs go through fsspec, whose file objects tifffile reads as it reads a local file:
tile by tile, each read a range request of at least :data:`BLOCK_SIZE` bytes.

Configuration is GDAL's and the cloud SDKs' own, from the environment: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` (or ``AWS_NO_SIGN_REQUEST=YES``) for S3, and for an
S3-compatible server of your own (MinIO, Ceph, moto) GDAL's ``AWS_S3_ENDPOINT=host:port``,
``AWS_HTTPS=NO`` (plain http) and ``AWS_VIRTUAL_HOSTING=FALSE`` (bucket in the path): segtile
gives the same endpoint to s3fs for slides unless ``AWS_ENDPOINT_URL`` says otherwise.

A web server must answer range requests (``Range: bytes=…`` with ``206 Partial Content``):
one that sends the whole file instead is refused before any work (:func:`check_range_requests`).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import IO, Any
from urllib.parse import urlparse

from segtile.errors import SourceError, root_cause_line

BLOCK_SIZE = 2**16  # bytes fetched at least per read of a slide (GDAL fetches 16 KiB): its tiles and tables are small
SCHEMES = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/"}
"""The URL schemes segtile reads, and GDAL's virtual file system for each."""
_FSSPEC_PACKAGES = {"http": "aiohttp", "https": "aiohttp", "s3": "s3fs", "gs": "gcsfs", "az": "adlfs"}
_CHECK_TIMEOUT = 30  # seconds to wait for a server's first answer


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL of a scheme segtile reads remotely (:data:`SCHEMES`)."""
    return urlparse(path).scheme.lower() in SCHEMES and "://" in path


def url_suffix(url: str) -> str:
    """The file name's suffix in ``url``'s path (no query string), lower case: ``.svs``, ``.ome.tif``."""
    name = os.path.basename(urlparse(url).path).lower()
    return name[name.find("."):] if "." in name else ""


def vsi_path(url: str) -> str:
    """``url`` as a GDAL path: ``/vsicurl/https://…``, ``/vsis3/bucket/key``, ``/vsigs/…``, ``/vsiaz/…``."""
    parts = urlparse(url)
    prefix = SCHEMES[parts.scheme.lower()]
    return prefix + url if prefix == "/vsicurl/" else prefix + url.split("://", 1)[1]


def url_of_vsi_path(path: str) -> str | None:
    """The URL a GDAL path of :func:`vsi_path`'s kinds names, or ``None`` for any other path."""
    if path.startswith("/vsicurl/"):
        return path[len("/vsicurl/"):]
    for scheme, prefix in SCHEMES.items():
        if prefix != "/vsicurl/" and path.startswith(prefix):
            return f"{scheme}://{path[len(prefix):]}"
    return None


def check_range_requests(url: str) -> None:
    """Raise :class:`SourceError` when the web server of ``url`` cannot be reached, has no such
    file, or answers a range request with the whole file (segtile would fetch all of it for each
    thread). Object stores (s3, gs, az) always answer ranges: nothing is asked of them here."""
    if urlparse(url).scheme.lower() not in ("http", "https"):
        return
    request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(request, timeout=_CHECK_TIMEOUT) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        raise SourceError(f"cannot read {url}: the server answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SourceError(f"cannot reach {url}: {root_cause_line(exc)}") from None
    if status != 206:
        raise SourceError(f"{url}: the server does not answer range requests (it sent the whole file, status {status}, "
                          "to 'Range: bytes=0-0'); segtile reads images by parts: serve it from a server that "
                          "answers 'Range' with 206 Partial Content (nginx, Apache, any object store), or download it")


class RemoteFile:
    """A remote file as tifffile opens it: :meth:`open` gives a seekable fsspec file that fetches
    what is read by range requests of at least :data:`BLOCK_SIZE` bytes (tifffile closes it)."""

    def __init__(self, url: str) -> None:
        self.path = url

    def open(self) -> IO[bytes]:
        filesystem, path = _filesystem(self.path)
        try:
            return filesystem.open(path, "rb", block_size=BLOCK_SIZE, cache_type="readahead")
        except Exception as exc:  # FileNotFoundError, PermissionError, the SDKs' own kinds
            raise SourceError(f"cannot open {self.path}: {root_cause_line(exc)}") from None


def remote_info(url: str) -> dict[str, Any]:
    """What the server says of the file at ``url``: its size, and its ``etag`` and
    ``last_modified`` where the server gives them (fsspec's ``info``)."""
    filesystem, path = _filesystem(url)
    info = filesystem.info(path)
    found = {"size": info.get("size")}
    for key, names in {"etag": ("ETag", "etag"), "last_modified": ("Last-Modified", "LastModified", "last_modified",
                                                                  "updated", "mtime")}.items():
        value = next((info[name] for name in names if info.get(name)), None)
        if value is not None:
            found[key] = str(value)
    return found


def _filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path in it; S3 reaches the endpoint GDAL is given."""
    import fsspec

    scheme = urlparse(url).scheme.lower()
    options: dict[str, Any] = {}
    if scheme == "s3" and "AWS_ENDPOINT_URL" not in os.environ and os.environ.get("AWS_S3_ENDPOINT"):
        secure = os.environ.get("AWS_HTTPS", "YES").upper() not in ("NO", "FALSE", "OFF", "0")
        options["endpoint_url"] = f"{'https' if secure else 'http'}://{os.environ['AWS_S3_ENDPOINT']}"
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError:
        raise SourceError(f"reading slides from {scheme}:// needs fsspec's {_FSSPEC_PACKAGES[scheme]}: "
                          f"pip install {_FSSPEC_PACKAGES[scheme]}") from None
