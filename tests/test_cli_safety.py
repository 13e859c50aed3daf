"""The segtile command never loses data, never prints a traceback, and says what went wrong in
one line: outputs in the way (sidecars included), the input as an output, interrupted runs,
damaged files, full disks, and options checked before any work."""

import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rasterio
import torch

from segtile.cli import main
from segtile.models import ModelCard, save_torchscript
from tests.geodata import write_raster

FULL_RESOLUTION = ("--resolution", "30")  # landsat7's own: the default model would run it at 300 m


def run(*args) -> int:
    return main([str(a) for a in args])


def segtile_process(*args, **kwargs) -> subprocess.Popen:
    """The real command in a fresh process: signals, file descriptors and limits as a user's."""
    return subprocess.Popen([sys.executable, "-m", "segtile.cli", *map(str, args)], stderr=subprocess.PIPE,
                            text=True, **kwargs)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def image(data_dir) -> Path:
    return data_dir / "rmnp-rgb.tif"


@pytest.mark.parametrize("existing, outputs", [
    ("m.qml", ["m.tif"]),
    ("m.tif.aux.xml", ["m.tif"]),
    ("m.probabilities.tif", ["m.tif", "--probabilities"]),
    ("m.probabilities.tif", ["m.tif"]),  # a mask's probabilities, asked for or not, are the mask's
    ("m.probabilities.tif.aux.xml", ["m.tif"]),
    ("r.dbf", ["r.shp"]),
    ("r.prj", ["r.shp"]),
])
def test_a_sidecar_in_the_way_counts_as_the_output_existing(tmp_path, image, existing, outputs, capsys):
    mine = tmp_path / existing
    mine.write_text("the user's own")
    args = [a if a.startswith("--") else tmp_path / a for a in outputs]
    assert run(image, "-o", *args, "--quiet") == 2
    assert mine.read_text() == "the user's own"
    assert f"{existing} exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]


def test_the_input_is_never_an_output_even_with_overwrite(tmp_path, image, capsys):
    copy = tmp_path / "image.tif"
    copy.write_bytes(image.read_bytes())
    assert run(copy, "-o", copy, "--overwrite", "--quiet") == 2
    assert copy.read_bytes() == image.read_bytes()
    assert "would replace the input" in capsys.readouterr().err


def test_a_folder_as_input_is_a_cohort_that_needs_a_placeholder_and_an_image(tmp_path, capsys):
    assert run(tmp_path, "-o", tmp_path / "m.tif", "--quiet") == 2
    assert "with several inputs each output needs a placeholder" in capsys.readouterr().err
    assert run(tmp_path, "-o", tmp_path / "{stem}.tif", "--quiet") == 2
    assert f"the folder {tmp_path} holds no image segtile reads" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("outputs, message", [
    (["r.gpkg", "--probabilities"], "probabilities are asked for, but none of the outputs holds them"),
    (["m.tif", "--qupath-objects", "detection"], "QuPath objects of type 'detection' are asked for, but none"),
])
def test_options_no_output_uses_are_refused(tmp_path, image, capsys, outputs, message):
    args = [a if a.startswith("--") or a == "detection" else tmp_path / a for a in outputs]
    assert run(image, "-o", *args, "--quiet") == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_never_replaced_by_a_file_output(tmp_path, image, capsys):
    folder = tmp_path / "mask.tif"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    assert run(image, "-o", folder, "--overwrite", "--quiet") == 2
    assert (folder / "precious.txt").read_text() == "keep me"
    assert "is a folder" in capsys.readouterr().err


def test_a_folder_that_is_no_zarr_store_is_never_replaced_by_a_store(tmp_path, image, capsys):
    folder = tmp_path / "out.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    assert run(image, "-o", folder, "--overwrite", "--quiet") == 2
    assert (folder / "notes.txt").read_text() == "keep me"
    assert "not a Zarr store" in capsys.readouterr().err
    assert run(image, "-o", tmp_path / "new.zarr", "--quiet") == 0
    assert run(image, "-o", tmp_path / "new.zarr", "--quiet", "--overwrite") == 0  # its own store: replaced


@pytest.mark.parametrize("option, value", [
    ("--simplify", "-1"), ("--simplify", "nan"), ("--min-area", "nan"), ("--min-area", "inf"),
    ("--tile-size", "0"), ("--overlap", "-3"), ("--batch-size", "1.5"), ("--stripe-width", "wide"),
    ("--tissue-threshold", "1"), ("--tissue-threshold", "2"), ("--quiet", ""),  # the last: after --progress json
])
def test_bad_option_values_fail_before_any_work(tmp_path, image, capsys, option, value):
    talk = ["--progress", "json"] if option == "--quiet" else ["--quiet"]
    assert run(image, "-o", tmp_path / "m.gpkg", *talk, *filter(None, [option, value])) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"segtile: error: argument {option}") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def nan_model(tmp_path) -> Path:
    """A TorchScript model whose logits are NaN everywhere."""

    class AllNaN(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 2, x.shape[2], x.shape[3]), float("nan"))

    path = tmp_path / "nan.pt"
    save_torchscript(path, torch.jit.script(AllNaN()), ModelCard(classes=("a", "b"), tile_size=128, overlap=16))
    return path


def test_a_model_that_gives_only_nan_is_an_error_and_writes_nothing(tmp_path, image, nan_model, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert run(image, "--model", nan_model, "-o", out / "m.tif", "--quiet") == 2
    assert "NaN or infinite logits for every pixel" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_a_model_that_gives_some_nan_is_a_warning(tmp_path, data_dir, capsys):
    class NaNOnBright(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.cat([x[:, :1], -x[:, :1]], dim=1)
            return torch.where(x[:, :1] > 200, torch.full_like(logits, float("nan")), logits)

    model = tmp_path / "some_nan.pt"
    save_torchscript(model, torch.jit.script(NaNOnBright()), ModelCard(classes=("a", "b"), tile_size=128, overlap=16))
    mask = tmp_path / "m.tif"
    assert run(data_dir / "rmnp-rgb.tif", "--model", model, "-o", mask) == 0
    err = capsys.readouterr().err
    assert "segtile: warning: the model gave NaN or infinite logits for" in err
    with rasterio.open(data_dir / "rmnp-rgb.tif") as src, rasterio.open(mask) as out:
        bright = (src.read(1) > 200) & (src.dataset_mask() > 0)
        assert bright.any() and (out.read(1)[bright] == 255).all()


def test_an_output_that_appears_during_the_run_is_not_replaced(tmp_path, image, monkeypatch):
    """Two runs racing for one output: the later commit fails instead of replacing the other's."""
    from segtile.writers import atomic

    mask = tmp_path / "m.tif"
    real_check = atomic.check_output

    def check_then_someone_else_writes(path, *args, **kwargs):
        real_check(path, *args, **kwargs)
        if Path(path) == mask:
            mask.write_text("the other run's")

    monkeypatch.setattr(atomic, "check_output", check_then_someone_else_writes)
    assert run(image, "-o", mask, "--quiet") == 2
    assert mask.read_text() == "the other run's"
    assert leftovers(tmp_path) == [".m.tif.segtile-work"]  # the inference, kept for --resume --overwrite


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_run_leaves_nothing(tmp_path, data_dir, signum, status):
    process = segtile_process(data_dir / "landsat7.tif", "-o", tmp_path / "m.tif", "-o", tmp_path / "p.gpkg",
                              "--tile-size", "64", "--overlap", "8", "--batch-size", "1", "--progress", "json",
                              *FULL_RESOLUTION)
    for line in process.stderr:
        if line.startswith("{") and json.loads(line).get("done", 0) > 0:
            break
    process.send_signal(signum)
    err = process.stderr.read()
    assert process.wait(timeout=120) == status
    last = err.strip().splitlines()[-1]
    assert "no output was written" in last and "Traceback" not in err
    kept = [p.name for p in tmp_path.iterdir()]
    assert kept in ([], [".m.tif.segtile-work"])  # nothing but the finished work, kept for --resume
    assert bool(kept) == last.endswith("the same command with --resume continues from it")


def wait_for_segtile_to_catch_sigterm(process: subprocess.Popen) -> None:
    """Wait until ``segtile.cli.main`` has started (its handler for SIGTERM shows in /proc):
    from then on it is importing what the command needs, for a second or more."""
    mask = 1 << (signal.SIGTERM - 1)
    while process.poll() is None:
        status = Path(f"/proc/{process.pid}/status").read_text()
        caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
        if caught & mask:
            return
        time.sleep(0.005)


def test_ctrl_c_while_starting_and_twice_while_stopping_prints_no_traceback(tmp_path, data_dir):
    early = segtile_process(data_dir / "landsat7.tif", "-o", tmp_path / "m.tif")
    wait_for_segtile_to_catch_sigterm(early)  # still importing
    early.send_signal(signal.SIGINT)
    err = early.stderr.read()
    assert early.wait(timeout=60) == 130 and "Traceback" not in err
    late = segtile_process(data_dir / "landsat7.tif", "-o", tmp_path / "m.tif", "--tile-size", "64",
                           "--batch-size", "1", "--progress", "json", *FULL_RESOLUTION)
    for line in late.stderr:
        if line.startswith("{") and json.loads(line).get("done", 0) > 0:
            break
    for _ in range(3):
        late.send_signal(signal.SIGINT)
        time.sleep(0.02)
    err = late.stderr.read()
    assert late.wait(timeout=120) == 130 and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] in ([], [".m.tif.segtile-work"])


DAMAGE = {  # three bytes changed in the header of a real file: (offset, new value)
    "bahamas_rgb.tif": [[(266, 201), (189, 250), (375, 15)],   # GDAL warns about the directory order
                        [(240, 22), (157, 201), (331, 87)],    # tile offsets and sizes disagree
                        [(281, 92), (46, 130), (16, 36)]],     # a tag of the wrong type, ignored
    "nuclei_img2d.tif": [[(193, 102), (177, 50), (105, 221)]],  # a damaged shape in the description
    "rmnp-rgb.tif": [[(95, 151), (61, 170), (369, 216)]],     # strips that cannot be decoded
}


@pytest.mark.parametrize("name, damage", [(n, d) for n, cases in DAMAGE.items() for d in cases])
def test_damaged_headers_give_one_line_or_a_silent_success(tmp_path, data_dir, name, damage):
    data = bytearray((data_dir / name).read_bytes())
    for offset, value in damage:
        data[offset] = value
    damaged = tmp_path / name
    damaged.write_bytes(bytes(data))
    process = segtile_process(damaged, "-o", tmp_path / "m.tif", "--quiet", "--bands", "1,1,1")
    err = process.stderr.read()
    status = process.wait(timeout=120)
    assert (status, err) == (0, "") or (status == 2 and err.startswith("segtile: error:") and err.count("\n") == 1), err


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))


@pytest.mark.parametrize("output", ["m.tif", "p.gpkg", "p.shp", "s.zarr"])
def test_a_full_disk_is_one_line_and_exit_2_whatever_the_format(tmp_path, data_dir, output):
    process = segtile_process(data_dir / "landsat7.tif", "-o", tmp_path / output, "--quiet", "--chunk-size", "2048",
                              *FULL_RESOLUTION, preexec_fn=_limit_file_size)
    err = process.stderr.read()
    status = process.wait(timeout=120)
    if status == 0:
        pytest.skip(f"{output} fits under the size limit")
    assert status == 2 and err.startswith("segtile: error: cannot write") and err.count("\n") == 1, err
    kept = [p.name for p in tmp_path.iterdir()]
    assert kept in ([], [f".{output}.segtile-work"])  # only the finished work, for --resume
    assert bool(kept) == ("--resume continues from it" in err)


@pytest.mark.parametrize("co, outputs, message", [
    ("NO_SUCH_OPTION=1", ["m.tif"], "driver COG does not support creation option NO_SUCH_OPTION"),
    ("BLOCKSIZE=abc", ["m.tif"], "creation option BLOCKSIZE=abc: expected a positive integer"),
    ("COMPRESS", ["m.tif"], "argument --co: expected KEY=VALUE"),
    ("COMPRESS=ZSTD", ["m.gpkg"], "creation options apply to GeoTIFF outputs"),
])
def test_creation_options_are_checked_before_any_work(tmp_path, image, capsys, co, outputs, message):
    out = [arg for name in outputs for arg in ("-o", tmp_path / name)]
    assert run(image, *out, "--co", co, "--quiet") == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_creation_options_reach_the_geotiff(tmp_path, image):
    assert run(image, "-o", tmp_path / "m.tif", "--co", "compress=zstd", "--co", "BLOCKSIZE=256", "--quiet") == 0
    with rasterio.open(tmp_path / "m.tif") as written:
        assert written.compression.name == "zstd" and written.block_shapes[0] == (256, 256)


def test_overwriting_replaces_every_file_of_the_old_output_written_this_time_or_not(tmp_path, image):
    mask = tmp_path / "m.tif"
    assert run(image, "-o", mask, "--probabilities", "--quiet") == 0
    (tmp_path / "m.probabilities.tif.aux.xml").write_text("<PAMDataset/>")  # statistics GDAL keeps beside it
    assert run(image, "-o", mask, "--overwrite", "--quiet") == 0  # no probabilities this time
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.qml", "m.tif", "m.tif.aux.xml"]

    with rasterio.open(image) as source:
        pixels = source.read()
    plain = write_raster(tmp_path / "plain.tif", pixels, crs=None)  # no CRS: a shapefile without .prj
    regions = tmp_path / "r.shp"
    assert run(image, "-o", regions, "--quiet") == 0
    assert (tmp_path / "r.prj").exists()
    assert run(plain, "-o", regions, "--overwrite", "--quiet") == 0
    assert not (tmp_path / "r.prj").exists()


LEFT_BY_A_KILLED_WRITER = """
import os, signal, sys
from segtile.writers.atomic import OutputSet

OutputSet().add(sys.argv[1]).write_bytes(b"half a mask")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_what_a_killed_run_left_is_removed_by_the_next_run_with_a_note(tmp_path, image, capsys):
    from segtile.writers.atomic import OutputSet

    mask = tmp_path / "m.tif"
    live = OutputSet()
    writing = live.add(mask).parent  # a live run (this process) writing the same output
    killed = subprocess.run([sys.executable, "-c", LEFT_BY_A_KILLED_WRITER, str(mask)])
    assert killed.returncode == -signal.SIGKILL
    [dead] = set(leftovers(tmp_path)) - {writing.name}
    unowned = tmp_path / ".m.tif.tmp-olderversion"  # an older segtile's: no owner file
    unowned.mkdir()
    remote = tmp_path / ".m.tif.tmp-remote"
    remote.mkdir()
    (remote / ".segtile-owner").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0}))
    assert run(image, "-o", mask, "--progress", "json") == 0
    err = capsys.readouterr().err
    assert f"segtile: note: removed {dead}, the unfinished output of a segtile run that died (process " in err
    assert f"segtile: note: {unowned} is the unfinished output of a segtile run that names no owner" in err
    assert f"segtile: note: {remote} is the unfinished output of a segtile run on elsewhere: left alone" in err
    assert leftovers(tmp_path) == sorted([unowned.name, remote.name, writing.name])
    live.discard()
    assert leftovers(tmp_path) == sorted([unowned.name, remote.name])
