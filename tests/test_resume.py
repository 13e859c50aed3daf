"""Resuming after a crash: a run killed part way continues from its work store, computes only
what is missing, and writes exactly what an uninterrupted run writes."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import torch

from segtile.cli import main
from segtile.models import ModelCard, save_torchscript
from tests.geodata import pixel_box, write_polygons


class SlowPointwise(torch.nn.Module):
    """A 1x1 convolution made slow by many exact no-op steps: each pixel alone, so tiling can't
    change it, and slow enough to be killed part way."""

    def __init__(self, steps: int = 150) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.steps):
            x = torch.sqrt(x * x + 1.0) - 1.0 + x - torch.sqrt(x * x + 1.0) + 1.0
        return self.conv(x)


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "slow.pt"
    save_torchscript(path, torch.jit.script(SlowPointwise()),
                     ModelCard(classes=("water", "land", "cloud"), tile_size=256, overlap=32))
    return path


ARGS = ("--chunk-size", "256", "--batch-size", "1", "--progress", "json", "--device", "cpu")


def segtile(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "segtile.cli", *map(str, args), *ARGS], stderr=subprocess.PIPE,
                            text=True)


def summary(err: str) -> dict:
    return json.loads(next(line for line in reversed(err.splitlines()) if line.startswith('{"summary"')))


def outputs(folder: Path) -> tuple[np.ndarray, list]:
    with rasterio.open(folder / "m.tif") as mask:
        labels = mask.read(1)
    _, _, geometry, fields = pyogrio.raw.read(folder / "p.gpkg")
    return labels, sorted(zip(fields[0].tolist(), geometry))


def test_a_run_killed_part_way_resumes_and_equals_an_uninterrupted_run(tmp_path, data_dir, slow_model):
    image = data_dir / "bahamas_rgb.tif"
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    whole.mkdir(), resumed.mkdir()
    uninterrupted = segtile(image, "--model", slow_model, "-o", whole / "m.tif", "-o", whole / "p.gpkg")
    err = uninterrupted.stderr.read()
    assert uninterrupted.wait(timeout=300) == 0, err
    all_tiles = summary(err)["tiles_run"]

    killed = segtile(image, "--model", slow_model, "-o", resumed / "m.tif", "-o", resumed / "p.gpkg")
    work = resumed / ".m.tif.segtile-work"
    for line in killed.stderr:
        if line.startswith("{") and json.loads(line).get("done", 0) >= all_tiles // 2:
            if len(list((work / "done").iterdir())) >= 2:
                break
    killed.send_signal(signal.SIGKILL)  # no clean-up at all: a crash, a power cut
    killed.wait(timeout=60)
    assert [p.name for p in resumed.iterdir()] == [".m.tif.segtile-work"]  # killed during inference
    done_before = len(list((work / "done").iterdir()))

    again = segtile(image, "--model", slow_model, "-o", resumed / "m.tif", "-o", resumed / "p.gpkg", "--resume",
                    "--overwrite")
    err = again.stderr.read()
    assert again.wait(timeout=300) == 0, err
    assert f"resuming: {done_before} of" in err
    assert summary(err)["tiles_run"] < all_tiles
    assert not work.exists()
    labels, polygons = outputs(resumed)
    expected_labels, expected_polygons = outputs(whole)
    np.testing.assert_array_equal(labels, expected_labels)
    assert polygons == expected_polygons


def interrupted_store(folder: Path, image: Path, model: Path, *options) -> Path:
    """A work store as a killed run leaves it, with at least one chunk done: SIGKILL part way."""
    run = segtile(image, "--model", model, "-o", folder / "m.tif", *options)
    done = folder / ".m.tif.segtile-work" / "done"
    for line in run.stderr:
        if line.startswith("{") and json.loads(line).get("done", 0) >= 4 and done.is_dir() and any(done.iterdir()):
            break
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=60)
    return folder / ".m.tif.segtile-work"


def test_work_of_another_model_or_input_is_never_resumed(tmp_path, data_dir, slow_model):
    image = tmp_path / "image.tif"
    image.write_bytes((data_dir / "bahamas_rgb.tif").read_bytes())
    work = interrupted_store(tmp_path, image, slow_model)
    assert work.exists()
    other = tmp_path / "other.pt"
    save_torchscript(other, torch.jit.script(SlowPointwise()),
                     ModelCard(classes=("water", "land", "cloud"), tile_size=256, overlap=32, extra={"v": 2}))
    run = segtile(image, "--model", other, "-o", tmp_path / "m.tif", "--resume")
    err = run.stderr.read()
    assert run.wait(timeout=300) == 0, err
    assert "is from another run (another model; another model card): starting afresh" in err
    assert "resuming" not in err

    second = tmp_path / "second"
    second.mkdir()
    work = interrupted_store(second, image, slow_model)
    assert work.exists()
    image.write_bytes(image.read_bytes())  # the same pixels, but a file changed since the work was done
    os.utime(image, (image.stat().st_atime, image.stat().st_mtime + 10))
    run = segtile(image, "--model", slow_model, "-o", second / "m.tif", "--resume")
    err = run.stderr.read()
    assert run.wait(timeout=300) == 0, err
    assert "is from another run (the input image.tif changed): starting afresh" in err
    assert "resuming" not in err


def test_without_resume_old_work_is_replaced_and_the_run_says_it_could_have_resumed(tmp_path, data_dir,
                                                                                     slow_model):
    image = data_dir / "bahamas_rgb.tif"
    work = interrupted_store(tmp_path, image, slow_model)
    assert work.exists()
    run = segtile(image, "--model", slow_model, "-o", tmp_path / "m.tif")
    err = run.stderr.read()
    assert run.wait(timeout=300) == 0, err
    assert "(--resume would have continued it)" in err
    assert summary(err)["tiles_run"] > 0 and not work.exists()


def test_work_done_with_another_mask_is_never_resumed(tmp_path, data_dir, slow_model):
    """The reproduction: killed with --mask left.geojson, resumed with --mask right.geojson."""
    image = data_dir / "bahamas_rgb.tif"
    with rasterio.open(image) as source:
        transform, crs, (height, width) = source.transform, source.crs, source.shape
        valid = source.dataset_mask() > 0
    middle = width // 2
    for name, (start, stop) in {"left": (0, middle), "right": (middle, width)}.items():
        write_polygons(tmp_path / f"{name}.geojson", [pixel_box(transform, 0, height, start, stop)], [name],
                       crs=crs.to_wkt())
    work = interrupted_store(tmp_path, image, slow_model, "--mask", tmp_path / "left.geojson")
    assert len(list((work / "done").iterdir())) > 0
    run = segtile(image, "--model", slow_model, "-o", tmp_path / "m.tif", "--mask", tmp_path / "right.geojson",
                  "--resume")
    err = run.stderr.read()
    assert run.wait(timeout=300) == 0, err
    assert "is from another run (another mask; other options: mask): starting afresh" in err
    with rasterio.open(tmp_path / "m.tif") as mask:
        labels = mask.read(1)
        nodata = mask.nodata
    assert (labels[:, :middle - 1] == nodata).all()  # nothing of the left run's work
    right = labels[:, middle + 1:]
    assert (right[valid[:, middle + 1:]] != nodata).all()  # and all of the right's


def test_a_second_run_for_the_same_outputs_is_refused_and_the_first_goes_on(tmp_path, data_dir, slow_model, capsys):
    """The reproduction: `segtile img.tif --model a.pt -o m.tif & segtile img.tif --model b.pt -o m.tif`."""
    image = data_dir / "bahamas_rgb.tif"
    other = tmp_path / "b.pt"
    other.write_bytes(slow_model.read_bytes())
    first = segtile(image, "--model", slow_model, "-o", tmp_path / "m.tif", "--tta", "flip")  # slower still
    for line in first.stderr:
        if line.startswith("{") and json.loads(line).get("done", 0) >= 1:
            break
    assert main([str(image), "--model", str(other), "-o", str(tmp_path / "m.tif"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"another segtile run (process {first.pid} on " in err, err
    rest = first.stderr.read()
    assert first.wait(timeout=300) == 0, rest
    assert summary(rest)["tiles_run"] == 16  # every tile, by the first run alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.pt", "m.qml", "m.tif", "m.tif.aux.xml"]
