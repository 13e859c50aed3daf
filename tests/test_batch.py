"""Many inputs in one command: folders, globs, @lists, {stem} outputs, skipped and failed items,
the summary, resuming an interrupted cohort, and segment_many in Python."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pytest
import rasterio
import torch
from distributed import Client, LocalCluster
from rasterio.windows import Window

import segtile
from segtile.batch import expand_inputs, fill_template, plan_items
from segtile.cli import main
from segtile.errors import BatchError
from segtile.models import ModelCard, save_torchscript
from tests.test_resume import SlowPointwise

CROPS = {"north": Window(0, 0, 160, 120), "south": Window(200, 240, 150, 130), "east": Window(320, 40, 160, 110)}


@pytest.fixture
def model(tmp_path) -> Path:
    """A TorchScript 1x1 convolution with a 3-class card (tiles of 64)."""
    torch.manual_seed(0)
    path = tmp_path / "pointwise.pt"
    save_torchscript(path, torch.nn.Conv2d(3, 3, 1).eval(),
                     ModelCard(classes=("water", "land", "cloud"), in_channels=3, tile_size=64, overlap=16))
    return path


@pytest.fixture
def tiles(tmp_path, data_dir) -> Path:
    """A folder of three crops of a real GeoTIFF, a text file that is no image, and no output."""
    folder = tmp_path / "tiles"
    folder.mkdir()
    for name, window in CROPS.items():
        crop_of(data_dir / "rmnp-rgb.tif", window, folder / f"{name}.tif")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def crop_of(image: Path, window: Window, path: Path, descriptions: tuple[str, ...] | None = None) -> Path:
    """``window`` of a real GeoTIFF, written to ``path`` with its georeference and its bands'
    colours and descriptions (``descriptions`` instead, when given)."""
    with rasterio.open(image) as source:
        profile = {**source.profile, "width": window.width, "height": window.height,
                   "transform": source.window_transform(window),
                   "alpha": "unspecified"}  # else GDAL makes a fourth band of red, green, blue an alpha band
        with rasterio.open(path, "w", **profile) as crop:
            crop.write(source.read(window=window))
            for band, description in enumerate(descriptions or source.descriptions, start=1):
                crop.set_band_description(band, description or "")
    return path


def damage(path: Path) -> None:
    """Cut a real GeoTIFF short: its header is there, its pixels are not."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def run(*args) -> int:
    return main([str(a) for a in args] + ["--device", "cpu"])


def labels(path: Path) -> np.ndarray:
    with rasterio.open(path) as mask:
        return mask.read(1)


def test_a_folder_with_a_damaged_file_writes_the_others_and_says_why_in_the_summary(tmp_path, tiles, model, capsys):
    damage(tiles / "south.tif")
    out = tmp_path / "out"
    out.mkdir()
    status = run(tiles, "--model", model, "-o", out / "{stem}.tif", "-o", out / "{stem}.gpkg",
                 "--summary", tmp_path / "summary.csv")
    err = capsys.readouterr().err
    assert status == 2
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith((".qml", ".aux.xml"))) == [
        "east.gpkg", "east.tif", "north.gpkg", "north.tif"]
    with (tmp_path / "summary.csv").open() as stream:
        rows = {Path(row["input"]).name: row for row in csv.DictReader(stream)}
    assert list(rows) == ["east.tif", "north.tif", "south.tif"]  # the folder's images, not notes.txt
    assert [rows[n]["status"] for n in rows] == ["done", "done", "failed"]
    assert "south.tif" in rows["south.tif"]["error"] and rows["north.tif"]["error"] == ""
    assert int(rows["north.tif"]["tiles"]) > 0 and float(rows["north.tif"]["seconds"]) > 0
    assert rows["north.tif"]["outputs"] == f"{out / 'north.tif'};{out / 'north.gpkg'}"
    assert f"failed: {tiles / 'south.tif'}: {rows['south.tif']['error']}" in err
    assert err.strip().splitlines()[-1].startswith("segtile: error: 3 inputs: 2 done, 0 skipped, 1 failed")
    assert "Traceback" not in err


def test_a_rerun_skips_the_finished_items_and_runs_the_rest(tmp_path, tiles, model, capsys):
    out = tmp_path / "out"
    out.mkdir()
    summary = tmp_path / "again.json"
    assert run(tiles / "north.tif", "--model", model, "-o", out / "{stem}.tif", "--summary", summary) == 0
    finished = (out / "north.tif").stat().st_mtime_ns
    capsys.readouterr()  # and the same command again replaces its summary
    assert run(tiles, "--model", model, "-o", out / "{stem}.tif", "--summary", tmp_path / "again.json") == 0
    rows = {Path(r["input"]).name: r for r in json.loads((tmp_path / "again.json").read_text())}
    assert {name: row["status"] for name, row in rows.items()} == {
        "east.tif": "done", "north.tif": "skipped", "south.tif": "done"}
    assert rows["north.tif"]["tiles"] == 0 and rows["north.tif"]["outputs"] == [str(out / "north.tif")]
    assert (out / "north.tif").stat().st_mtime_ns == finished
    assert f"skipped: {tiles / 'north.tif'}: its outputs exist" in capsys.readouterr().err
    assert run(tiles, "--model", model, "-o", out / "{stem}.tif", "--overwrite", "--quiet") == 0
    assert (out / "north.tif").stat().st_mtime_ns != finished


def test_outputs_are_named_by_their_placeholders(tmp_path, tiles, model):
    out = tmp_path / "out"
    out.mkdir()
    assert run(tiles / "north.tif", tiles / "east.tif", "--model", model, "--quiet",
               "-o", out / "{parent}_{index:02d}_{stem}.tif", "-o", out / "{name}.gpkg") == 0
    assert {p.name for p in out.glob("*.tif")} == {"tiles_01_north.tif", "tiles_02_east.tif"}
    assert {p.name for p in out.glob("*.gpkg")} == {"north.tif.gpkg", "east.tif.gpkg"}
    with rasterio.open(tiles / "east.tif") as image:
        assert labels(out / "tiles_02_east.tif").shape == (image.height, image.width)


def test_several_inputs_and_an_output_without_placeholder_stop_before_any_work(tmp_path, tiles, model, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert run(tiles, "--model", model, "-o", out / "{stem}.tif", "-o", out / "all.gpkg") == 2
    err = capsys.readouterr().err
    assert err.startswith("segtile: error: with several inputs each output needs a placeholder")
    assert len(err.strip().splitlines()) == 1
    assert run(tiles, "--model", model, "-o", out / "{shape}.tif") == 2
    assert "unknown placeholder {shape}" in capsys.readouterr().err
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    assert run(tiles, "--model", model, "-o", out / "{stem}.tif", "--summary", tmp_path / "table.csv") == 2
    assert "table.csv exists and is no summary of segtile's" in capsys.readouterr().err
    assert (tmp_path / "table.csv").read_text() == "a,b\n1,2\n"
    assert run(tiles, "--model", model, "-o", out / "{stem}.tif", "--co", "BLOCKSIZE=abc") == 2  # not once per item
    err = capsys.readouterr().err
    assert "BLOCKSIZE" in err and len(err.strip().splitlines()) == 1
    assert list(out.iterdir()) == []


def test_two_inputs_writing_one_output_stop_before_any_work(tmp_path, tiles, model, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "north.tif").write_bytes((tiles / "north.tif").read_bytes())
    assert run(tiles / "north.tif", other / "north.tif", "--model", model, "-o", tmp_path / "{stem}.tif") == 2
    assert "would both write" in capsys.readouterr().err
    assert not (tmp_path / "north.tif").exists()


def test_a_list_file_and_a_quoted_glob_name_the_inputs(tmp_path, tiles, model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("list.txt").write_text("# the cohort\ntiles/north.tif\n\n  tiles/east.tif  \n")
    Path("out").mkdir()
    assert run("@list.txt", "--model", model, "-o", "out/{stem}.tif", "--quiet") == 0
    assert sorted(p.name for p in Path("out").glob("*.tif")) == ["east.tif", "north.tif"]
    assert run("tiles/[ns]*.tif", "--model", model, "-o", "out/{stem}.tif", "--summary", "s.csv", "--quiet") == 0
    with open("s.csv") as stream:
        assert [(r["input"], r["status"]) for r in csv.DictReader(stream)] == [
            ("tiles/north.tif", "skipped"), ("tiles/south.tif", "done")]


def test_expansion_passes_remote_inputs_untouched_and_never_takes_an_output_for_an_input(tmp_path, tiles):
    remote = ["https://example.org/scenes/a*.tif", "s3://bucket/slides/[ab].svs", "/vsicurl/https://x/*.tif"]
    assert expand_inputs(remote) == remote
    assert fill_template("{stem}.tif", remote[0] + "?token=1", 1) == "a*.tif"
    assert fill_template("{stem}", "/data/scene.ome.tif", 1) == "scene"
    (tiles / "north_mask.tif").write_bytes((tiles / "north.tif").read_bytes())  # an earlier run's mask, here
    items = plan_items([tiles], [tiles / "{stem}_mask.tif"])
    assert [Path(item.input).name for item in items] == ["east.tif", "north.tif", "south.tif"]
    with pytest.raises(BatchError, match="no image matches"):
        expand_inputs([str(tmp_path / "nothing*.tif")])
    with pytest.raises(BatchError, match="cannot read the list"):
        expand_inputs(["@" + str(tmp_path / "missing.txt")])


def test_one_input_keeps_the_single_run_behaviour(tmp_path, tiles, model, capsys):
    assert run(tiles / "north.tif", "--model", model, "-o", tmp_path / "m.tif", "--quiet") == 0
    assert run(tiles / "north.tif", "--model", model, "-o", tmp_path / "m.tif") == 2  # exists: an error, not a skip
    assert "output exists" in capsys.readouterr().err


def test_segment_many_yields_each_item_and_loads_the_model_once(tmp_path, tiles, model):
    damage(tiles / "south.tif")
    from segtile.api import _checkpoint_card

    _checkpoint_card.cache_clear()
    results = list(segtile.segment_many([tiles], [tmp_path / "{stem}.tif"], model, device="cpu", tile_size=64))
    assert [(Path(r.input).name, r.status) for r in results] == [
        ("east.tif", "done"), ("north.tif", "done"), ("south.tif", "failed")]
    assert _checkpoint_card.cache_info().misses == 1
    assert results[0].outputs == (str(tmp_path / "east.tif"),) and results[0].tiles > 0
    assert results[2].error and results[2].outputs == (str(tmp_path / "south.tif"),)
    again = list(segtile.segment_many([tiles / "north.tif", tiles / "east.tif"], [tmp_path / "{stem}.tif"], model))
    assert [r.status for r in again] == ["skipped", "skipped"]


def test_items_spread_over_cluster_workers_give_the_local_labels(tmp_path, tiles, model):
    local, spread = tmp_path / "local", tmp_path / "spread"
    local.mkdir(), spread.mkdir()
    assert run(tiles, "--model", model, "-o", local / "{stem}.tif", "--quiet") == 0
    assert run(tiles, "--model", model, "-o", spread / "{stem}.tif", "--quiet", "--workers", "2",
               "--summary", tmp_path / "s.json") == 0
    assert [r["status"] for r in json.loads((tmp_path / "s.json").read_text())] == ["done"] * 3
    for name in CROPS:
        assert np.array_equal(labels(local / f"{name}.tif"), labels(spread / f"{name}.tif"))


def test_an_item_whose_cluster_worker_dies_fails_alone_and_the_others_are_written(tmp_path, tiles, data_dir):
    slow = tmp_path / "slow.pt"
    save_torchscript(slow, torch.jit.script(SlowPointwise(steps=60)),
                     ModelCard(classes=("water", "land", "cloud"), tile_size=64, overlap=16))
    wide = crop_of(data_dir / "bahamas_rgb.tif", Window(100, 100, 256, 256), tiles / "a_wide.tif")
    out = tmp_path / "out"
    out.mkdir()
    results: list = []
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        first_worker = list(client.nthreads())[0]  # where the first item goes
        pid = client.run(os.getpid, workers=[first_worker])[first_worker]
        cohort = threading.Thread(target=lambda: results.extend(segtile.segment_many(
            [wide, tiles / "north.tif", tiles / "east.tif"], [out / "{stem}.tif"], slow, device="cpu",
            chunk_size=64, batch_size=1)))
        cohort.start()
        done = out / ".a_wide.tif.segtile-work" / "done"
        while cohort.is_alive() and not (done.is_dir() and os.listdir(done)):
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
        cohort.join(timeout=120)
    status = {Path(r.input).name: (r.status, r.error or "") for r in results}
    assert sorted(status) == ["a_wide.tif", "east.tif", "north.tif"]
    assert status["north.tif"][0] == status["east.tif"][0] == "done" and status["a_wide.tif"][0] == "failed"
    assert "worker died" in status["a_wide.tif"][1]
    assert (out / "north.tif").exists() and (out / "east.tif").exists() and not (out / "a_wide.tif").exists()


def test_an_interrupted_cohort_resumes_each_item_from_its_own_work(tmp_path, tiles, data_dir, capsys):
    slow = tmp_path / "slow.pt"
    save_torchscript(slow, torch.jit.script(SlowPointwise(steps=60)),
                     ModelCard(classes=("water", "land", "cloud"), tile_size=64, overlap=16))
    crop_of(data_dir / "bahamas_rgb.tif", Window(100, 100, 256, 256), tiles / "wide.tif")
    out = tmp_path / "out"
    out.mkdir()
    args = [tiles / "north.tif", tiles / "wide.tif", "--model", slow, "-o", out / "{stem}.tif",
            "--chunk-size", "64", "--batch-size", "1", "--device", "cpu", "--quiet"]
    killed = subprocess.Popen([sys.executable, "-m", "segtile.cli", *map(str, args)])
    done = out / ".wide.tif.segtile-work" / "done"
    while killed.poll() is None and not (done.is_dir() and len(os.listdir(done)) >= 3):
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)  # no clean-up at all: a crash
    killed.wait(timeout=60)
    assert (out / "north.tif").exists() and not (out / "wide.tif").exists()

    assert run(*args[:-3], "--resume", "--summary", tmp_path / "s.json") == 0
    rows = json.loads((tmp_path / "s.json").read_text())
    assert [row["status"] for row in rows] == ["skipped", "done"]
    assert "resuming: " in capsys.readouterr().err
    assert run(tiles / "wide.tif", "--model", slow, "-o", tmp_path / "{stem}.tif", "--chunk-size", "64",
               "--quiet", "--summary", tmp_path / "whole.json") == 0
    assert np.array_equal(labels(out / "wide.tif"), labels(tmp_path / "wide.tif"))
    all_tiles = json.loads((tmp_path / "whole.json").read_text())[0]["tiles"]
    assert 0 < rows[1]["tiles"] < all_tiles  # the chunks done before the crash were not run again


def test_a_mosaic_of_the_tiles_of_a_scene_is_segmented_as_the_scene(tmp_path, data_dir, model, capsys):
    scene = data_dir / "bahamas_rgb.tif"
    quarters = tmp_path / "quarters"
    quarters.mkdir()
    with rasterio.open(scene) as source:
        half_w, half_h = source.width // 2, source.height // 2
        for name, window in {"nw": Window(0, 0, half_w, half_h), "ne": Window(half_w, 0, source.width - half_w, half_h),
                             "sw": Window(0, half_h, half_w, source.height - half_h),
                             "se": Window(half_w, half_h, source.width - half_w, source.height - half_h)}.items():
            profile = {**source.profile, "width": window.width, "height": window.height,
                       "transform": source.window_transform(window)}
            with rasterio.open(quarters / f"{name}.tif", "w", **profile) as quarter:
                quarter.write(source.read(window=window))
    assert run(quarters, "--mosaic", "--model", model, "-o", tmp_path / "mosaic.tif", "--quiet") == 0
    assert run(scene, "--model", model, "-o", tmp_path / "scene.tif", "--quiet") == 0
    with rasterio.open(tmp_path / "mosaic.tif") as mosaic, rasterio.open(tmp_path / "scene.tif") as whole:
        assert (mosaic.crs, mosaic.transform, mosaic.shape) == (whole.crs, whole.transform, whole.shape)
        assert np.array_equal(mosaic.read(1), whole.read(1))
    assert run(quarters, "--mosaic", "--model", model, "-o", tmp_path / "{stem}.tif") == 2
    assert "a mosaic is one image: its outputs take no placeholder" in capsys.readouterr().err
