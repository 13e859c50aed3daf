"""The command's work store: one run at a time, never a folder of the user's, damaged chunks
computed again, a full disk said in one line, and a resume that says what it did."""

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from segtile import segment
from segtile.cli import build_parser, main, with_command
from segtile.cli.segment_run import segment_settings
from segtile.models import ModelCard, save_torchscript
from segtile.store.identity import claim_work_folder, prepare_work, run_identity, work_folder

IMAGE = Path(__file__).resolve().parents[1] / "examples" / "data" / "rmnp-rgb.tif"  # 485 x 373
OPTIONS = ("--chunk-size", "128")  # 4 x 3 chunks


def run(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "pointwise.pt"
    torch.manual_seed(3)
    save_torchscript(path, torch.jit.script(torch.nn.Conv2d(3, 3, 1)),
                     ModelCard(classes=("a", "b", "c"), tile_size=128, overlap=16))
    return path


@pytest.fixture(scope="module")
def expected(tmp_path_factory, model) -> np.ndarray:
    """The mask an uninterrupted run writes."""
    out = tmp_path_factory.mktemp("expected") / "m.tif"
    assert run(IMAGE, "--model", model, "-o", out, *OPTIONS, "--quiet") == 0
    return mask(out)


def mask(path: Path) -> np.ndarray:
    with rasterio.open(path) as written:
        return written.read(1)


def kept_work(out: Path, model: Path, leave_out=frozenset()) -> Path:
    """The work store ``segtile IMAGE --model MODEL -o OUT`` leaves when it dies after finishing
    every chunk but those in ``leave_out``: made by the command's own steps, short of the outputs."""
    args = build_parser().parse_args(with_command([str(IMAGE), "--model", str(model), "-o", str(out), *OPTIONS]))
    settings = segment_settings(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = segment(args.input[0], args.model, **settings)
    folder = work_folder(out)
    with claim_work_folder(folder):
        work = prepare_work(folder, result, run_identity(result, args.input[0], args.model, None, settings), None,
                            resume=False)
        work.store.fill(result.products("labels", skip=leave_out), skip=leave_out)
    return folder


def chunk_file(folder: Path, row: int, column: int) -> Path:
    return folder / "work.zarr" / "labels" / "c" / str(row) / str(column)


def resume(out: Path, model: Path, capsys) -> str:
    """Run the same command with ``--resume``; its stderr, once it succeeded."""
    status = run(IMAGE, "--model", model, "-o", out, *OPTIONS, "--resume", "--progress", "json")
    err = capsys.readouterr().err
    assert status == 0, err
    return err


def stray_files(folder: Path) -> None:
    for name in (".DS_Store", "._0-0", "Thumbs.db", ".0-1.tmp"):
        (folder / "done" / name).write_bytes(b"\x00\x05\x16\x07")


DAMAGE = {  # what is done to a store with every chunk finished, and what the resumed run says
    "chunk lost": (lambda folder: chunk_file(folder, 1, 1).unlink(), "resuming: 11 of 12 chunks were done; 1 more "
                   "were marked done but their files no longer hold what was written"),
    "chunk replaced by another": (lambda folder: shutil.copy(chunk_file(folder, 0, 0), chunk_file(folder, 1, 1)),
                                  "resuming: 11 of 12 chunks were done; 1 more"),
    "chunk cut short": (lambda folder: chunk_file(folder, 1, 1).write_bytes(chunk_file(folder, 1, 1).read_bytes()[:40]),
                        "resuming: 11 of 12 chunks were done; 1 more"),
    "chunk emptied": (lambda folder: chunk_file(folder, 1, 1).write_bytes(b""),
                      "resuming: 11 of 12 chunks were done; 1 more"),
    "chunk overwritten": (lambda folder: chunk_file(folder, 1, 1).write_bytes(os.urandom(300)),
                          "resuming: 11 of 12 chunks were done; 1 more"),
    "stray files in done/": (stray_files, "resuming: 12 of 12 chunks were done"),
    "done/ lost": (lambda folder: shutil.rmtree(folder / "done"),
                   "resuming: 0 of 12 chunks were done (the work store's done/ folder, which lists them, is missing)"),
    "Zarr metadata damaged": (lambda folder: (folder / "work.zarr" / "labels" / "zarr.json").write_text("{"),
                              "is damaged (its Zarr store cannot be read): starting afresh"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_store_is_resumed_for_what_is_whole_and_the_rest_computed_again(tmp_path, model, expected, capsys,
                                                                                   damage):
    out = tmp_path / "m.tif"
    folder = kept_work(out, model)
    harm, note = DAMAGE[damage]
    harm(folder)
    assert note in resume(out, model, capsys)
    np.testing.assert_array_equal(mask(out), expected)
    assert not folder.exists()


def test_a_resume_with_nothing_left_says_so(tmp_path, model, expected, capsys):
    out = tmp_path / "m.tif"
    kept_work(out, model)
    summary = json.loads(resume(out, model, capsys).strip().splitlines()[-1])
    assert summary["summary"].startswith("nothing left to compute: all 12 chunks were done by an earlier run; wrote")
    assert "Mpx/s" not in summary["summary"] and summary["tiles_run"] == 0
    np.testing.assert_array_equal(mask(out), expected)


def test_a_partial_resume_reports_what_it_computed(tmp_path, model, capsys):
    out = tmp_path / "m.tif"
    kept_work(out, model, leave_out=frozenset({(0, 0), (0, 1), (0, 2), (0, 3)}))  # the first row: 485 x 128 px
    summary = json.loads(resume(out, model, capsys).strip().splitlines()[-1])
    assert summary["summary"].startswith(f"{summary['tiles_run']} tiles run; 0.1 of 0.2 Mpx (the rest resumed) in ")


def test_a_second_run_for_the_same_outputs_is_refused_while_the_first_runs(tmp_path, model, capsys):
    out = tmp_path / "m.tif"
    folder = kept_work(out, model, leave_out=frozenset({(0, 0)}))
    markers = sorted(os.listdir(folder / "done"))
    with claim_work_folder(folder):  # a live run: this process, holding the store's lock
        assert run(IMAGE, "--model", model, "-o", out, *OPTIONS) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert f"another segtile run (process {os.getpid()} on " in err
        assert f"is writing these outputs, with its work store in {folder}: wait for it to end" in err
        assert sorted(os.listdir(folder / "done")) == markers and not out.exists()


HOLD_THE_STORE = """
import sys, time
from pathlib import Path
from segtile.store.identity import claim_work_folder
with claim_work_folder(Path(sys.argv[1])):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_store_held_by_a_live_process_is_refused_and_a_dead_ones_resumed(tmp_path, model, expected, capsys):
    out = tmp_path / "m.tif"
    folder = kept_work(out, model, leave_out=frozenset({(0, 0)}))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_STORE, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        assert run(IMAGE, "--model", model, "-o", out, *OPTIONS, "--resume") == 2
        assert f"another segtile run (process {holder.pid} on " in capsys.readouterr().err
    finally:
        holder.kill()  # no clean-up: its lock goes with it
        holder.wait()
    assert "resuming: 11 of 12 chunks were done" in resume(out, model, capsys)
    np.testing.assert_array_equal(mask(out), expected)


@pytest.mark.parametrize("contents", [["photo.jpg"], ["done", "work.zarr"], ["run.json"]])
def test_a_folder_named_like_a_work_store_is_never_emptied(tmp_path, model, capsys, contents):
    folder = tmp_path / ".m.tif.segtile-work"
    folder.mkdir()
    for name in contents:
        (folder / name).write_text("the user's own")
    assert run(IMAGE, "--model", model, "-o", tmp_path / "m.tif", *OPTIONS) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is no work store of segtile's" in err
    assert "segtile removes only what it wrote" in err
    assert sorted(os.listdir(folder)) == sorted(contents)
    assert all((folder / name).read_text() == "the user's own" for name in contents)
    assert sorted(os.listdir(tmp_path)) == [".m.tif.segtile-work"]


def test_a_file_named_like_a_work_store_is_never_removed(tmp_path, model, capsys):
    (tmp_path / ".m.tif.segtile-work").write_text("the user's own")
    assert run(IMAGE, "--model", model, "-o", tmp_path / "m.tif", *OPTIONS) == 2
    assert "is no work store of segtile's (file" in capsys.readouterr().err
    assert (tmp_path / ".m.tif.segtile-work").read_text() == "the user's own"


def test_an_empty_folder_named_like_a_work_store_is_used_and_removed(tmp_path, model):
    (tmp_path / ".m.tif.segtile-work").mkdir()
    assert run(IMAGE, "--model", model, "-o", tmp_path / "m.tif", *OPTIONS, "--quiet") == 0
    assert sorted(os.listdir(tmp_path)) == ["m.qml", "m.tif", "m.tif.aux.xml"]


@pytest.fixture
def small_disk(tmp_path):
    """A real file system of 1 MiB (tmpfs), mounted for the test: a disk that fills up."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("mounting a small file system needs root")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(disk: Path, leave: int = 0) -> None:
    """Fill ``disk`` up to ``leave`` bytes free."""
    stat = os.statvfs(disk)
    size = stat.f_bavail * stat.f_frsize - leave
    with open(disk / "filler", "wb") as file:
        file.write(b"\x00" * max(size, 0))


def test_a_full_disk_at_the_work_store_is_one_line_exit_2(small_disk, model, capsys):
    fill(small_disk)
    assert run(IMAGE, "--model", model, "-o", small_disk / "m.tif", *OPTIONS, "--quiet") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"segtile: error: cannot create the work store in {small_disk}: the disk holding "
                          f"{small_disk} is full"), err
    assert os.listdir(small_disk) == ["filler"]


@pytest.mark.parametrize("room", [4_000, 12_000, 20_000, 24_000])  # the disk fills at different steps
def test_a_full_disk_while_writing_a_mask_says_so_and_keeps_the_work(tmp_path, small_disk, model, capsys, room):
    big = tmp_path / "big"
    big.mkdir()
    fill(small_disk, leave=room)
    outputs = ["-o", big / "m.zarr", "-o", small_disk / "m.tif"]
    assert run(IMAGE, "--model", model, *outputs, *OPTIONS, "--quiet") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"the disk holding {small_disk} is full" in err, err
    assert "the same command with --resume continues from it" in err
    assert os.listdir(small_disk) == ["filler"]
    assert os.listdir(big) == [".m.zarr.segtile-work"]
