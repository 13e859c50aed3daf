"""Jobs that would surprise: a grid far from the image's, an overlap or chunk size that multiplies
the work, a grid of absurd size, a memory plan for threads the process cannot use. Each is refused
in one line before any work (exit 2, nothing written), or planned as the user can check."""

import json
import os
import subprocess
import sys
import time
import warnings

import dask
import dask.array as da
import pytest
import rasterio
import torch

from segtile import segment
from segtile.cli import main
from segtile.errors import ResolutionWarning
from segtile.models import LoadedModel, ModelCard, save_torchscript
from segtile.tiling.budget import parse_size, plan_memory

MANY_CLASSES = ModelCard(classes=tuple(f"c{i}" for i in range(150)), tile_size=513, overlap=65)


@pytest.fixture
def model_at_300m(tmp_path):
    """A TorchScript 1x1 convolution whose card says it was trained at 300 m, as the default model's."""
    path = tmp_path / "models" / "at300m.pt"
    path.parent.mkdir()
    card = ModelCard(classes=("water", "land", "cloud"), tile_size=128, overlap=16, resolution=300.0,
                     resolution_unit="m")
    save_torchscript(path, torch.nn.Conv2d(3, 3, 1).eval(), card)
    return path


def run(capsys, *args) -> tuple[int, list[str]]:
    """``segtile ARGS``: the exit status and the lines on stderr."""
    status = main([str(a) for a in args])
    return status, capsys.readouterr().err.strip().splitlines()


def test_a_300_m_model_stops_before_a_grid_ten_times_coarser(capsys, tmp_path, data_dir, model_at_300m):
    """The old default model (300 m) on a 30 m Landsat scene made a 218 x 192 px mask with only a note."""
    status, lines = run(capsys, data_dir / "landsat7.tif", "--model", model_at_300m, "-o", tmp_path / "mask.tif")
    assert status == 2 and len(lines) == 1
    assert lines[0].startswith("segtile: error: the image has 30 m pixels and the model was trained at 300 m: on "
                               "the model's grid it would be 218 x 192 px (10x coarser than the image's 2181 x 1917 "
                               "px); choose --resolution native to process the image's own pixels, or --resolution "
                               "300 for the model's grid anyway")
    assert [path.name for path in tmp_path.iterdir()] == ["models"]


@pytest.mark.parametrize("grid, shape", [("native", (1917, 2181)), ("model", (192, 218)), ("100", (575, 654))])
def test_the_grid_chosen_is_the_grid_written(capsys, tmp_path, data_dir, model_at_300m, grid, shape):
    status, lines = run(capsys, data_dir / "landsat7.tif", "--model", model_at_300m, "-o", tmp_path / "mask.tif",
                        "--resolution", grid)
    assert status == 0, lines
    with rasterio.open(tmp_path / "mask.tif") as mask, rasterio.open(data_dir / "landsat7.tif") as image:
        assert mask.shape == shape
        assert mask.bounds == pytest.approx(image.bounds)


@pytest.mark.parametrize("options, message", [
    (("--tile-size", "256", "--overlap", "255"),
     "an overlap of 255 px on tiles of 256 px leaves a stride of 1 px: every pixel would be run about 65536 times; "
     "give an overlap of at most 224 px (a stride of an eighth of the tile)"),
    (("--tile-size", "256", "--overlap", "248", "--memory-limit", "300M"),
     "an overlap of 248 px on tiles of 256 px leaves a stride of 8 px: every pixel would be run about 1024 times"),
    (("--chunk-size", "1",), "the job would make 2.27e+06 tasks (a grid of 791 x 718 px, output chunks of 1 px"),
    (("--resolution", "1e-9",), "the job would make 2.32e+24 tasks (a grid of 237330000000000 x 215430000000000 px"),
    (("--tile-size", "512", "--overlap", "448", "--memory-limit", "100M", "--chunk-size", "1024"),
     "--chunk-size as given hold about"),
])
def test_jobs_that_cannot_be_run_within_bounds_are_refused_at_once(capsys, tmp_path, data_dir, options, message):
    """Before: stride 1 was killed by the kernel at 24 GB, stride 8 under a 300 MB limit peaked at
    1.8 GiB, a 1e-9 m grid grew by 100 MB/s before any tile, chunks of 1 px ran 9 tiles in 5 minutes."""
    started = time.monotonic()
    status, lines = run(capsys, data_dir / "bahamas_rgb.tif", "-o", tmp_path / "mask.tif", *options)
    assert status == 2 and len(lines) == 1
    assert lines[0].startswith(f"segtile: error: {message}"), lines[0]
    assert time.monotonic() - started < 30
    assert list(tmp_path.iterdir()) == []


def test_the_memory_plan_counts_the_cpus_this_process_may_use():
    """Dask runs as many threads as the CPUs the process may use (its affinity, its cgroup quota);
    the plan counted every CPU of the machine (on a 4-CPU container of a 128-core host: 32 times
    too many threads, chunks shrunk to the smallest)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        pytest.skip("needs two CPUs to give the process one of them")
    script = (
        f"import os; os.sched_setaffinity(0, {{{cpus[0]}}})\n"
        "import json, dask.array as da, torch\n"
        "from segtile import segment\n"
        "from segtile.models import LoadedModel\n"
        "from tests.test_job_limits import MANY_CLASSES\n"
        "model = LoadedModel(torch.nn.Conv2d(3, 150, 1), MANY_CLASSES)\n"
        "options = segment(da.zeros((3, 2000, 2000), dtype='uint8'), model, device='cpu').options\n"
        "print(json.dumps([options.batch_size, options.chunk_size, options.stripe_width]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    alone = plan_memory(classes=150, tile_size=513, overlap=65, threads=1, shape=(2000, 2000))
    both = plan_memory(classes=150, tile_size=513, overlap=65, threads=2, shape=(2000, 2000))
    assert alone != both
    assert json.loads(done.stdout) == [alone.batch_size, alone.chunk_size, alone.stripe_width]


def test_on_a_cluster_the_memory_plan_counts_a_worker_s_threads():
    distributed = pytest.importorskip("distributed")
    model = LoadedModel(torch.nn.Conv2d(3, 150, 1), MANY_CLASSES)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        options = segment(da.zeros((3, 2000, 2000), dtype="uint8"), model, device="cpu").options
    alone = plan_memory(classes=150, tile_size=513, overlap=65, threads=1, shape=(2000, 2000))
    assert (options.batch_size, options.chunk_size, options.stripe_width) == (
        alone.batch_size, alone.chunk_size, alone.stripe_width)


def test_chunks_the_plan_shrinks_far_are_a_note_naming_the_limit_that_keeps_them():
    """Each thread holds a chunk being stitched, so many threads shrink a many-class job's
    chunks: to 64 px, silently, on a 128-core host. The note names the limit for chunks of 512 px."""
    model = LoadedModel(torch.nn.Conv2d(3, 150, 1), MANY_CLASSES)
    image = da.zeros((3, 2000, 2000), dtype="uint8")
    with dask.config.set(num_workers=4), pytest.warns(ResolutionWarning, match="chunks of 128 px") as noted:
        options = segment(image, model, device="cpu").options
    assert options.chunk_size == 128
    note = next(str(w.message) for w in noted if "memory plan" in str(w.message))
    assert note.startswith("the memory plan stitches chunks of 128 px (not 1024): 150 classes on 4 threads"), note
    named = parse_size(note.split("--memory-limit ")[1].split(" ")[0])
    assert plan_memory(classes=150, tile_size=513, overlap=65, threads=4, shape=(2000, 2000),
                       limit=named).chunk_size == 512
    with dask.config.set(num_workers=2), warnings.catch_warnings():
        warnings.simplefilter("error", ResolutionWarning)
        assert segment(image, model, device="cpu").options.chunk_size == 256
