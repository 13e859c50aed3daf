"""The segtile command on real GeoTIFFs: outputs on the input's grid, and every bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import torch

from segtile.cli import main
from segtile.models import ModelCard, save_torchscript
from segtile.tiling.grid import tile_grid
from segtile.tiling.plan import TilingOptions, tile_runs
from tests.conftest import whole_image_logits


@pytest.fixture
def pointwise_checkpoint(tmp_path):
    """A TorchScript 1x1 convolution with a 3-class card: labels = whole-image argmax."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 1).eval()
    card = ModelCard(classes=("water", "land", "cloud"), in_channels=3, tile_size=128, overlap=16)
    path = tmp_path / "pointwise.pt"
    save_torchscript(path, model, card)
    return path, model


def run(*args) -> int:
    return main([str(a) for a in args])


@pytest.mark.parametrize("name, bands", [("rmnp-rgb.tif", None), ("landsat_crop.tif", "4,3,2")])
def test_mask_and_polygons_sit_on_the_input_grid(tmp_path, data_dir, pointwise_checkpoint, name, bands):
    checkpoint, model = pointwise_checkpoint
    mask, polygons = tmp_path / "mask.tif", tmp_path / "regions.gpkg"
    extra = ["--bands", bands] if bands else []
    assert run(data_dir / name, "--model", checkpoint, "--out", mask, "--out", polygons,
               "--chunk-size", "200", "--stripe-width", "400", "--quiet", *extra) == 0
    band_list = [int(b) for b in bands.split(",")] if bands else [1, 2, 3]
    with rasterio.open(data_dir / name) as src, rasterio.open(mask) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        labels = out.read(1)
        valid = src.dataset_mask() > 0
        expected = np.argmax(whole_image_logits(model, src.read(band_list).astype(np.float32)), axis=0)
        pixel_area = abs(src.transform.determinant)
    np.testing.assert_array_equal(labels[valid], expected[valid])
    assert (labels[~valid] == 255).all()
    info = pyogrio.read_info(polygons)
    assert rasterio.crs.CRS.from_user_input(info["crs"]) == rasterio.crs.CRS.from_user_input(src.crs)
    _, _, geometry, fields = pyogrio.raw.read(polygons)
    class_ids = fields[0]
    areas = shapely.area(shapely.from_wkb(geometry))
    for class_id in range(3):
        assert areas[class_ids == class_id].sum() == pytest.approx((labels == class_id).sum() * pixel_area, rel=1e-9)


def test_progress_bar_counts_every_tile_run_and_quiet_silences_it(tmp_path, data_dir, pointwise_checkpoint, capsys):
    checkpoint, _ = pointwise_checkpoint
    image = data_dir / "rmnp-rgb.tif"
    assert run(image, "--model", checkpoint, "--out", tmp_path / "a.zarr", "--chunk-size", "100",
               "--stripe-width", "200") == 0
    with rasterio.open(image) as src:
        options = TilingOptions(tile_size=128, overlap=16, chunk_size=100, stripe_width=200)
        total = tile_runs(src.height, src.width, options)
    assert total > len(tile_grid(src.height, src.width, 128, 16))    # stripe boundaries run twice
    assert f"{total}/{total}" in capsys.readouterr().err
    assert run(image, "--model", checkpoint, "--out", tmp_path / "b.zarr", "--quiet") == 0
    assert capsys.readouterr().err == ""


def test_progress_bar_counts_the_tiles_run_on_a_cluster(tmp_path, data_dir, pointwise_checkpoint, capsys):
    distributed = pytest.importorskip("distributed")
    checkpoint, _ = pointwise_checkpoint
    image = data_dir / "rmnp-rgb.tif"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        assert run(image, "--model", checkpoint, "--out", tmp_path / "a.tif", "--device", "cpu",
                   "--scheduler", cluster.scheduler_address) == 0
    with rasterio.open(image) as src:
        total = len(tile_grid(src.height, src.width, 128, 16))
    assert f"{total}/{total}" in capsys.readouterr().err


def test_cog_mask_as_gdal_sees_it(tmp_path, data_dir, pointwise_checkpoint):
    gdalinfo = pytest.importorskip("shutil").which("gdalinfo")
    if gdalinfo is None:
        pytest.skip("gdalinfo not installed")
    mask = tmp_path / "mask.tif"
    assert run(data_dir / "landsat7.tif", "--model", pointwise_checkpoint[0], "--out", mask, "--quiet") == 0
    info = subprocess.run([gdalinfo, "-json", str(mask)], capture_output=True, text=True, check=True).stdout
    assert '"LAYOUT":"COG"' in info.replace(" ", "")
    assert "colorTable" in info and "3857" in info


def test_existing_output_is_kept_without_overwrite(tmp_path, data_dir, pointwise_checkpoint, capsys):
    mask = tmp_path / "mask.tif"
    mask.write_bytes(b"precious")
    assert run(data_dir / "rmnp-rgb.tif", "--model", pointwise_checkpoint[0], "--out", mask, "--quiet") == 2
    assert mask.read_bytes() == b"precious"
    assert "exists" in capsys.readouterr().err
    assert run(data_dir / "rmnp-rgb.tif", "--model", pointwise_checkpoint[0], "--out", mask,
               "--quiet", "--overwrite") == 0
    with rasterio.open(mask) as out:
        assert out.count == 1


def bad_inputs(tmp_path, data_dir):
    text = tmp_path / "notes.tif"
    text.write_text("hello")
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.tif"
    whole = (data_dir / "landsat7.tif").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01not a model" * 10)
    nan_card = tmp_path / "nan_card.pt"
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 2, 1)), str(nan_card),
                   _extra_files={"card.json": '{"classes": ["a", "b"], "std": [NaN, 1, 1]}'})
    return {"text": text, "empty": empty, "truncated": truncated, "garbage_model": garbage, "nan_card": nan_card}


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing input", "not found"),
        ("text", "not recognized as being in a supported file format"),
        ("empty", "input is empty"),
        ("truncated", "is truncated: its image data run to byte"),
        ("missing model", "no such file"),
        ("garbage model", "not a segtile checkpoint"),
        ("card with NaN", "'std' holds nan"),
        ("band count", "the model takes 3 bands but the image has 1 band"),
        ("bands chosen", "the model takes 3 bands but --bands 1,1 chooses 2 of the image's 3 bands: choose 3 "
                         "(e.g. --bands 1,2,3; Python: bands=[1, 2, 3])"),
        ("band index", "out of range"),
        ("overlap", "overlap"),
        ("tile size", "--tile-size"),
        ("extension", "unknown output format"),
        ("shared style", "mask.qml would be written twice"),
        ("output dir", "output folder does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, data_dir, pointwise_checkpoint, capsys, case, message):
    files = bad_inputs(tmp_path, data_dir)
    model = pointwise_checkpoint[0]
    image = data_dir / "rmnp-rgb.tif"
    out = tmp_path / "mask.tif"
    args = {
        "missing input": [tmp_path / "nope.tif", "--model", model, "--out", out],
        "text": [files["text"], "--model", model, "--out", out],
        "empty": [files["empty"], "--model", model, "--out", out],
        "truncated": [files["truncated"], "--model", model, "--out", out],
        "missing model": [image, "--model", tmp_path / "nope.pt", "--out", out],
        "garbage model": [image, "--model", files["garbage_model"], "--out", out],
        "card with NaN": [image, "--model", files["nan_card"], "--out", out],
        "band count": [data_dir / "nuclei_img2d.tif", "--model", model, "--out", out],
        "bands chosen": [image, "--model", model, "--bands", "1,1", "--out", out],
        "band index": [image, "--model", model, "--bands", "1,2,9", "--out", out],
        "overlap": [image, "--model", model, "--tile-size", "64", "--overlap", "64", "--out", out],
        "tile size": [image, "--model", model, "--tile-size", "0", "--out", out],
        "extension": [image, "--model", model, "--out", tmp_path / "mask.png"],
        "shared style": [image, "--model", model, "--out", out, "--out", tmp_path / "mask.shp"],
        "output dir": [image, "--model", model, "--out", tmp_path / "no" / "such" / "dir" / "mask.tif"],
    }[case]
    assert run(*args, "--quiet") == 2
    err = capsys.readouterr().err
    assert err.startswith("segtile: error:") and err.count("\n") == 1
    assert message in err
    assert "Traceback" not in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_console_script_reports_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "segtile.cli", str(tmp_path / "nope.tif"),
                           "--model", "m.pt", "--out", str(tmp_path / "o.tif")],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("segtile: error:") and "Traceback" not in done.stderr


def test_exit_status_follows_whose_fault_it_is(capsys):
    from segtile.cli.command import report
    from segtile.sources import SourceError

    assert report(SourceError("cannot open x.tif: damaged")) == 2
    assert report(FileNotFoundError(2, "No such file or directory", "/data/x.tif")) == 2
    assert report(ValueError("operands could not be broadcast together")) == 1  # numpy's: a bug of ours
    assert report(RuntimeError("boom")) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "segtile: error: cannot open x.tif: damaged"
    assert err[1] == "segtile: error: /data/x.tif: No such file or directory"
    assert err[2].startswith("segtile: failed: operands could not be broadcast") and "--debug" in err[2]


class SignalsItselfWhenCollected:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # lands while this finaliser runs, where Python swallows it


def test_an_interrupt_swallowed_by_a_finaliser_is_raised_again():
    from segtile.cli.command import _signals_as_interrupts

    with _signals_as_interrupts() as received:
        with pytest.raises(KeyboardInterrupt):
            SignalsItselfWhenCollected()  # collected at once
            for _ in range(2000):  # the run goes on: the interrupt must land here
                time.sleep(0.001)
    assert received == {"signal": signal.SIGTERM}
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the test process goes on
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_the_interrupt_handlers_go_in_only_once_the_rest_of_the_set_up_is_done(monkeypatch):
    """A Ctrl-C that lands as segtile's handlers appear (what a user, or tests/test_cli_safety.py,
    sees as "segtile has started") must find main inside the try that makes it exit status 130:
    with the library messages set up after the handlers, it killed segtile by the signal (-2)
    under load."""
    from contextlib import contextmanager

    from segtile.cli import command

    handlers_during_set_up = []

    @contextmanager
    def recording(shown: bool):
        handlers_during_set_up.append(signal.getsignal(signal.SIGTERM))
        yield

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(command, "_library_messages", recording)
    assert command.main(["--version"]) == 0
    assert handlers_during_set_up == [before]  # not yet segtile's
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the test process goes on
    signal.signal(signal.SIGTERM, before)


def test_a_reader_that_stops_early_ends_the_run_quietly(tmp_path, data_dir):
    """``segtile eval ... --json | head -c 1``: no traceback and no error line, as cat or gdalinfo."""
    import subprocess
    import sys

    truth = data_dir / "bahamas_labels_heldout.tif"
    reader, writer = os.pipe()
    os.close(reader)  # the reader has gone before segtile writes anything
    done = subprocess.run([sys.executable, "-m", "segtile.cli", "eval", truth, truth, "--classes", "water,land,cloud",
                           "--json", "--quiet"],
                          stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(writer)
    assert done.returncode == 128 + 13 and done.stderr == ""  # SIGPIPE's status


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_fifos_are_refused_in_one_line_before_a_reader_waits_on_them(tmp_path, data_dir, pointwise_checkpoint):
    fifo = tmp_path / "fifo.tif"
    os.mkfifo(fifo)
    image, model, out = data_dir / "rmnp-rgb.tif", pointwise_checkpoint[0], tmp_path / "mask.tif"
    cases = [
        ([fifo, "--model", model, "-o", out], f"input {fifo} is a FIFO (named pipe), not a regular file"),
        ([image, "--model", fifo, "-o", out], f"model {fifo} is a FIFO"),
        ([image, "--model", model, "--mask", fifo, "-o", out], f"area of interest {fifo} is a FIFO"),
        (["eval", data_dir / "nuclei_mask2d.tif", fifo, "--classes", "a,b"], f"labels {fifo} is a FIFO"),
    ]
    # in a child process with a deadline: a reader waiting on the FIFO would never return
    code = ("import json, sys; from segtile.cli import main\n"
            "for args in json.loads(sys.argv[1]): print(main(args + ['--quiet']), flush=True)")
    done = subprocess.run([sys.executable, "-c", code, json.dumps([[str(a) for a in args] for args, _ in cases])],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2"] * len(cases)
    errors = done.stderr.strip().splitlines()
    assert len(errors) == len(cases) and "Traceback" not in done.stderr
    for error, (_, message) in zip(errors, cases):
        assert error.startswith("segtile: error: ") and message in error
    assert not out.exists()
