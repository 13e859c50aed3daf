"""Servers on 127.0.0.1 for the remote-input tests: a small HTTP server that answers byte ranges
(Python's ``http.server`` does not) and counts the bytes it serves, and an S3-compatible one
(moto's server mode). Nothing here reaches beyond this machine."""

from __future__ import annotations

import functools
import multiprocessing
import re
import sys
import threading
from contextlib import contextmanager
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeRequestHandler(SimpleHTTPRequestHandler):
    """``SimpleHTTPRequestHandler`` that answers a single ``Range: bytes=a-b`` with 206 and only
    those bytes, unless the server says ``ranges=False`` (then whole files, as a plain server);
    every body byte sent is added to the server's ``bytes_served``."""

    def send_head(self):
        path = Path(self.translate_path(self.path))
        wanted = _RANGE.match(self.headers.get("Range", ""))
        if not self.server.ranges or wanted is None or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        first, last = wanted.groups()
        start = size - int(last) if not first else int(first)
        end = size - 1 if not first or not last else min(int(last), size - 1)
        if start >= size:
            self.send_error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            return None
        with path.open("rb") as file:
            file.seek(start)
            body = file.read(end - start + 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", self.date_time_string(int(path.stat().st_mtime)))
        self.end_headers()
        return _Body(body)

    def copyfile(self, source, outputfile):
        sent = source.read()
        outputfile.write(sent)
        self.server.count(len(sent))

    def log_message(self, *args) -> None:  # quiet: the tests' output is theirs
        pass


class _Body:
    """A range's bytes, as ``send_head`` returns a file for ``copyfile``."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def read(self) -> bytes:
        return self._body

    def close(self) -> None:
        pass


class CountingServer(ThreadingHTTPServer):
    """An HTTP server of one folder on 127.0.0.1, adding the bytes it serves to ``counter`` (a
    ``multiprocessing.Value`` the test reads)."""

    def __init__(self, folder: str, ranges: bool, counter, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), functools.partial(RangeRequestHandler, directory=folder))
        self.ranges = ranges
        self._counter = counter

    def count(self, size: int) -> None:
        with self._counter.get_lock():
            self._counter.value += size

    def handle_error(self, request, client_address) -> None:
        """Quiet when a client hangs up mid-answer (segtile does, once a plain server's status
        says it sends whole files); any other failure is printed, as by default."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class Served:
    """A server running in a process of its own, seen from the test: its address and what it counted."""

    def __init__(self, address: str, counter=None) -> None:
        self.address = address
        self._counter = counter

    @property
    def bytes_served(self) -> int:
        return self._counter.value

    def url(self, name: str) -> str:
        return f"http://{self.address}/{name}"


# The servers run in a process of their own: GDAL holds Python's GIL while it waits for an
# answer (rasterio.open), so a server in a thread of the test's process would never answer.
_CONTEXT = multiprocessing.get_context("spawn")
_START_TIMEOUT = 60  # seconds for a server process to start (moto's imports take a few)


def _serve_folder(folder: str, ranges: bool, counter, ready) -> None:
    server = CountingServer(folder, ranges, counter)
    ready.send(f"127.0.0.1:{server.server_address[1]}")
    server.serve_forever()


def _serve_s3(ready) -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    ready.send(f"{host}:{port}")
    threading.Event().wait()  # until the test ends the process


@contextmanager
def _server_process(target, *args) -> Iterator[str]:
    """Run ``target(*args, ready)`` in a process of its own while the block runs; yields the
    ``host:port`` it sends through ``ready``."""
    receiving, ready = _CONTEXT.Pipe(duplex=False)
    process = _CONTEXT.Process(target=target, args=(*args, ready), daemon=True)
    process.start()
    try:
        if not receiving.poll(_START_TIMEOUT):
            raise RuntimeError(f"the test server {target.__name__} did not start")
        yield receiving.recv()
    finally:
        process.terminate()
        process.join()


@contextmanager
def http_server(folder: Path, ranges: bool = True) -> Iterator[Served]:
    """Serve ``folder`` over HTTP on 127.0.0.1 while the block runs (byte ranges unless
    ``ranges=False``), counting the bytes of the bodies it sends."""
    counter = _CONTEXT.Value("q", 0)
    with _server_process(_serve_folder, str(folder), ranges, counter) as address:
        yield Served(address, counter)


@contextmanager
def s3_server() -> Iterator[str]:
    """An S3-compatible server (moto's server mode) on a free port of 127.0.0.1 while the block
    runs; yields its ``host:port``, the endpoint GDAL's ``AWS_S3_ENDPOINT`` names."""
    with _server_process(_serve_s3) as address:
        yield address
