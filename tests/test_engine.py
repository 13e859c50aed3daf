"""The engine: seam-free stitching, nodata skipping, georeference, schedulers."""

import threading
import time

import dask
import dask.array as da
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from dask.callbacks import Callback

from segtile import segment
from segtile.tiling.blend import BLENDS
from tests.conftest import whole_image_logits


def random_image(bands: int, height: int, width: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(bands, height, width)).astype(np.float32)


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize(
    "height, width, tile, overlap, chunk, stripe",
    [
        (100, 130, 32, 8, 40, 0),     # many tiles, chunks not aligned to tiles, one stripe
        (100, 130, 32, 8, 40, 40),    # the same, every chunk column its own stripe
        (64, 64, 64, 16, 64, 64),     # exactly one tile
        (37, 53, 64, 16, 1024, 8),    # smaller than a tile: padded and cropped
        (20, 200, 64, 0, 50, 100),    # thinner than a tile along one axis, no overlap, 2 stripes
        (40, 33, 17, 14, 23, 23),     # the largest overlap allowed (a stride of 1/8 of the tile), 2 stripes
    ],
)
def test_stitched_logits_equal_whole_image_logits(pointwise_model, blend, height, width, tile, overlap, chunk, stripe):
    model = pointwise_model(bands=3, classes=5)
    image = random_image(3, height, width)
    result = segment(image, model, tile_size=tile, overlap=overlap, blend=blend,
                     batch_size=3, chunk_size=chunk, stripe_width=stripe, device="cpu")
    logits = result.logits.compute()
    assert logits.shape == (5, height, width) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, whole_image_logits(model, image), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(
        result.labels.compute(), np.argmax(whole_image_logits(model, image), axis=0)
    )


def test_probabilities_are_a_softmax(pointwise_model):
    model = pointwise_model(bands=1, classes=3)
    image = random_image(1, 50, 40)
    probabilities = segment(image, model, tile_size=32, overlap=8, device="cpu").probabilities.compute()
    expected = torch.softmax(torch.from_numpy(whole_image_logits(model, image)), dim=0).numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)


class CountingModel(torch.nn.Module):
    """Wraps a model and records how many tiles, and how many pixels, it was given."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.tiles_seen = 0
        self.pixels_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tiles_seen += x.shape[0]
        self.pixels_seen += x.shape[0] * x.shape[2] * x.shape[3]
        return self.inner(x)


def write_geotiff(path, image: np.ndarray, nodata=None, transform=None, crs="EPSG:32618"):
    bands, height, width = image.shape
    profile = dict(driver="GTiff", width=width, height=height, count=bands, dtype=image.dtype,
                   crs=crs, transform=transform or Affine(10, 0, 500000, 0, -10, 4000000),
                   nodata=nodata, tiled=True, blockxsize=16, blockysize=16)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)


def test_nodata_tiles_are_skipped_and_nodata_pixels_stay_nodata(tmp_path, pointwise_model):
    image = np.random.default_rng(3).integers(1, 255, size=(3, 96, 96), dtype=np.uint8)
    image[:, :, :48] = 0               # left half nodata: the 3 tiles fully inside it never run
    image[:, 60:62, 70:72] = 0          # a few nodata pixels inside a valid tile
    path = tmp_path / "half.tif"
    write_geotiff(path, image, nodata=0)
    model = CountingModel(pointwise_model(bands=3, classes=2))
    result = segment(path, model, tile_size=32, overlap=0, batch_size=2, device="cpu")
    labels = result.labels.compute()
    assert model.tiles_seen - 1 == 6    # 1 tile for the class probe, then 6 of the 9 tiles
    assert (labels[:, :48] == result.nodata).all()
    assert (labels[60:62, 70:72] == result.nodata).all()
    valid = (image != 0).all(axis=0)
    assert (labels[valid] < 2).all()
    assert np.isnan(result.logits.compute()[:, ~valid]).all()


class SmoothedAgainstItself(torch.nn.Module):
    """Class 0 where a pixel's 3x3 neighbourhood (within the tile) is as bright as the pixel, 1
    where it is darker: on a uniform image every pixel is 0 unless the network is shown a band of
    zeros beside the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = x[:, :1]
        smoothed = torch.nn.functional.avg_pool2d(first, 3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([smoothed * 1.01, first], dim=1)


def test_the_padding_past_the_image_edge_is_shown_to_the_network_as_the_reflected_image(tmp_path):
    path = tmp_path / "uniform.tif"
    write_geotiff(path, np.ones((3, 37, 45), dtype=np.float32))
    labels = segment(path, SmoothedAgainstItself(), tile_size=64, overlap=16, device="cpu").labels.compute()
    assert labels.shape == (37, 45) and (labels == 0).all()  # zeroed padding made the last row and column 1


def test_georeference_comes_from_a_real_geotiff(data_dir, pointwise_model):
    path = data_dir / "bahamas_rgb.tif"
    result = segment(path, pointwise_model(bands=3, classes=2), tile_size=256, overlap=32, device="cpu")
    with rasterio.open(path) as src:
        assert result.crs == src.crs
        assert result.transform == src.transform
        assert result.shape == (src.height, src.width)
    labels = result.labels.compute()
    assert labels.shape == (718, 791)


def test_seven_band_raster_with_band_selection(data_dir, pointwise_model):
    path = data_dir / "landsat_crop.tif"
    model = pointwise_model(bands=3, classes=3)
    result = segment(path, model, bands=[4, 3, 2], tile_size=128, overlap=16, device="cpu")
    window = rasterio.windows.Window(300, 200, 70, 50)
    with rasterio.open(path) as src:
        pixels = src.read([4, 3, 2], window=window).astype(np.float32)
    got = result.logits[:, 200:250, 300:370].compute()
    np.testing.assert_allclose(got, whole_image_logits(model, pixels), rtol=1e-5, atol=1e-4)


def test_one_band_raster(data_dir, pointwise_model):
    model = pointwise_model(bands=1, classes=2)
    result = segment(data_dir / "nuclei_img2d.tif", model, tile_size=128, overlap=32, device="cpu")
    with rasterio.open(data_dir / "nuclei_img2d.tif") as src:
        image = src.read().astype(np.float32)
    np.testing.assert_array_equal(result.labels.compute(),
                                  np.argmax(whole_image_logits(model, image), axis=0))
    assert result.crs is None


def test_distributed_cluster_gives_the_threaded_labels(data_dir, tmp_path):
    distributed = pytest.importorskip("distributed")
    from segtile.models import ModelCard, PSPNet, save_checkpoint

    torch.manual_seed(0)
    checkpoint = tmp_path / "psp.pt"
    card = ModelCard(classes=("a", "b", "c"), in_channels=3, scale=255.0, tile_size=64, overlap=16)
    save_checkpoint(checkpoint, PSPNet(layers=18, classes=3, width=0.125).eval(), card)
    path = data_dir / "rmnp-rgb.tif"
    threaded = segment(path, checkpoint, batch_size=4, chunk_size=128, device="cpu")
    expected = threaded.labels.compute(scheduler="threads")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        got = segment(path, checkpoint, batch_size=4, chunk_size=128, device="cpu").labels.compute()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tile_size": 32, "overlap": 32}, "overlap"),
        ({"tile_size": 0}, "tile size"),
        ({"batch_size": 0}, "batch size"),
        ({"blend": "median"}, "unknown blend"),
        ({"device": "tpu"}, "device"),
        ({"bands": [1, 2]}, "band"),
        ({"stitch_on_device": "yes"}, "stitch_on_device must be True, False or None"),
    ],
)
def test_bad_arguments_raise_clear_errors(pointwise_model, kwargs, message):
    image = random_image(3, 40, 40)
    with pytest.raises(ValueError, match=message):
        segment(image, pointwise_model(bands=3, classes=2), **kwargs)


def test_unreadable_source_is_a_clear_error(tmp_path, pointwise_model):
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    with pytest.raises(ValueError):
        segment(text, pointwise_model())


def test_nothing_runs_until_asked(pointwise_model):
    model = CountingModel(pointwise_model(bands=3, classes=2))
    result = segment(random_image(3, 64, 64), model, tile_size=32, overlap=0, device="cpu")
    seen_after_build = model.tiles_seen
    assert seen_after_build == 1  # the class probe only
    with dask.config.set(scheduler="threads"):
        result.labels.compute()
    assert model.tiles_seen == seen_after_build + 4


class Identity(torch.nn.Module):
    """Returns its input: the logits are the very tensor the predictor fed it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_a_model_returning_its_input_does_not_see_later_batches_overwrite_it():
    # 1-band, 1-pixel tiles: the only layout where the channels-last input buffer is also a
    # contiguous (B, 1, 1, 1) array, so the logits would be the buffer itself.
    image = random_image(1, 6, 7)
    result = segment(image, Identity(), tile_size=1, overlap=0, batch_size=2, chunk_size=3, device="cpu")
    np.testing.assert_allclose(result.logits.compute(), image, rtol=1e-6, atol=1e-6)


class ReshapesWithView(torch.nn.Module):
    """A 1x1 convolution whose output is flattened with ``.view``, which channels-last cannot take."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return y.view(y.shape[0], -1).view(y.shape)


class HoldsAFiveDimensionalWeight(torch.nn.Module):
    """A 1x1 convolution beside a 3-D convolution's 5-D weight (no channels-last conversion)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.unused = torch.nn.Conv3d(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


@pytest.mark.parametrize("wrapper", [ReshapesWithView, HoldsAFiveDimensionalWeight])
def test_networks_that_cannot_run_channels_last_run_in_the_plain_layout(pointwise_model, wrapper):
    inner = pointwise_model(bands=3, classes=2)
    image = random_image(3, 50, 70)
    result = segment(image, wrapper(inner), tile_size=32, overlap=8, batch_size=2, device="cpu")
    np.testing.assert_allclose(result.logits.compute(), whole_image_logits(inner, image), rtol=1e-5, atol=1e-5)


def test_a_process_keeps_only_the_latest_predictors(pointwise_model):
    from segtile.inference import predictor

    model = pointwise_model(bands=3, classes=2)
    for seed in range(4):
        segment(random_image(3, 20, 20, seed), model, tile_size=16, overlap=4, device="cpu").labels.compute()
    assert len(predictor._PREDICTORS) == predictor.CACHED_PREDICTORS


def test_result_progress_bar_counts_every_tile(pointwise_model, capsys):
    image = random_image(3, 60, 90)
    result = segment(image, pointwise_model(bands=3, classes=2), tile_size=32, overlap=8, chunk_size=40,
                     stripe_width=40, device="cpu")
    with result.progress():
        result.labels.compute()
    assert "18/18" in capsys.readouterr().err   # 3 rows x (4 columns + 2 repeated on stripe boundaries)


def test_a_cluster_of_worker_processes_gives_the_threaded_labels(tmp_path, data_dir):
    from segtile.cli import main

    threaded, clustered = tmp_path / "threads.tif", tmp_path / "workers.tif"
    common = ["--resolution", "60", "--tile-size", "128", "--quiet", "--device", "cpu"]
    assert main([str(data_dir / "landsat7.tif"), "-o", str(threaded), *common]) == 0
    assert main([str(data_dir / "landsat7.tif"), "-o", str(clustered), "--workers", "2", *common]) == 0
    with rasterio.open(threaded) as a, rasterio.open(clustered) as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))


def test_relative_paths_reach_workers_that_run_in_another_folder(tmp_path, data_dir, monkeypatch, capsys):
    """A scheduler's workers read the input and write the work store from their own working
    folder: the paths they get must not be relative to the caller's."""
    from distributed import LocalCluster

    from segtile.cli import main

    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    (here / "image.tif").write_bytes((data_dir / "landsat7.tif").read_bytes())
    monkeypatch.chdir(elsewhere)  # where the workers start
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        monkeypatch.chdir(here)
        status = main(["image.tif", "-o", "mask.tif", "--resolution", "60", "--tile-size", "128", "--quiet",
                       "--device", "cpu", "--scheduler", cluster.scheduler_address])
    assert (status, capsys.readouterr().err) == (0, "")
    assert (here / "mask.tif").exists() and list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("address", ["notanaddress"])  # (a closed port: the same line, after the 10 s timeout)
def test_a_scheduler_that_cannot_be_reached_is_one_line(tmp_path, data_dir, capsys, address):
    from segtile.cli import main

    assert main([str(data_dir / "rmnp-rgb.tif"), "-o", str(tmp_path / "m.tif"), "--scheduler", address,
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"segtile: error: cannot reach the Dask scheduler at {address}: ") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_device_asked_of_a_cluster_is_checked_on_its_workers(tmp_path, data_dir, capsys):
    from segtile.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the workers would take it")
    status = main([str(data_dir / "rmnp-rgb.tif"), "-o", str(tmp_path / "m.tif"), "--workers", "1",
                   "--device", "cuda", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and err == "segtile: error: device 'cuda' asked for, but CUDA is not available here\n"
    assert not list(tmp_path.iterdir())


def test_gpus_on_a_machine_without_any_is_one_line(tmp_path, data_dir, capsys):
    from segtile.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main([str(data_dir / "rmnp-rgb.tif"), "-o", str(tmp_path / "m.tif"), "--gpus", "all", "--quiet"]) == 2
    assert capsys.readouterr().err == "segtile: error: --gpus asked for, but this machine has no CUDA device\n"


def test_a_client_for_a_gpu_cluster_is_not_refused_a_cuda_device_here(pointwise_model):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        result = segment(random_image(3, 40, 40), pointwise_model(), device="cuda:3", tile_size=32, overlap=8)
    assert result.options.device == "cuda:3"  # resolved where the model runs, on the workers


def batch_markers(result, chunk: int) -> list[tuple[int, int, tuple]]:
    """For each batch task of ``result``'s labels: its stripe, the chunk row of its first tile and
    the stitch markers it waits for."""
    from dask.core import get_dependencies

    from segtile.engine.graph import BATCH_PREFIX

    graph = dict(result.labels.__dask_graph__())
    return [(key[1], graph[key][3][0].window.row_off // chunk,
             [d for d in get_dependencies(graph, key) if d[0].startswith("segtile-done-")])
            for key in graph if isinstance(key, tuple) and key[0].startswith(BATCH_PREFIX)]


def test_on_a_cluster_no_batch_starts_before_the_chunk_row_above_it_is_stitched(pointwise_model):
    """A distributed scheduler runs every ready batch, far ahead of the stitching (about twice
    the memory of the threaded run per worker): built for a cluster, every batch task waits for
    the stitching of the chunk row ``BATCH_LEAD_ROWS`` above its first tile. Built for the local
    scheduler, which orders better without, none does."""
    from distributed import Client

    from segtile.engine.graph import BATCH_LEAD_ROWS

    def segmented():
        return segment(random_image(3, 200, 150), pointwise_model(bands=3, classes=2), tile_size=32, overlap=8,
                       batch_size=2, chunk_size=32, stripe_width=64, device="cpu")

    assert all(markers == [] for _, _, markers in batch_markers(segmented(), 32))
    with Client(processes=False, dashboard_address=None):
        batches = batch_markers(segmented(), 32)
    waiting = 0
    for stripe, first_row, markers in batches:
        row = first_row - BATCH_LEAD_ROWS
        if row < 0:
            assert markers == []
            continue
        waiting += 1
        (marker,) = markers
        assert marker[1:] == (row, min(2 * stripe + 1, 4))  # the last chunk of that row in the stripe (2 columns)
    assert waiting > len(batches) / 2


class SlowOnce(torch.nn.Module):
    """A 1x1 convolution to ``classes`` that takes ``seconds`` over its third batch, as a thread
    slowed down by the machine's load would."""

    def __init__(self, classes: int, seconds: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, classes, 1)
        self.seconds, self.calls, self.lock = seconds, 0, threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.calls += 1
            slow = self.calls == 3
        if slow:
            time.sleep(self.seconds)
        return self.conv(x)


class BatchesAlive(Callback):
    """The most batch results alive at once during a computation: held by the scheduler for the
    chunks that need them, or being made; and every batch task run, by stripe."""

    def __init__(self) -> None:
        super().__init__()
        self.lock, self.running, self.most, self.run = threading.Lock(), set(), 0, []

    def _pretask(self, key, dsk, state) -> None:
        with self.lock:
            self.running.add(key)

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        from segtile.engine.graph import BATCH_PREFIX

        def is_batch(k) -> bool:
            return isinstance(k, tuple) and str(k[0]).startswith(BATCH_PREFIX)

        with self.lock:
            self.running.discard(key)
            if is_batch(key):
                self.run.append(key[1:])
            self.most = max(self.most, sum(map(is_batch, set(state["cache"]) | self.running)))


@pytest.mark.parametrize("consumer", ["compute", "to_zarr"])
def test_a_slow_thread_lets_no_other_run_ahead_of_the_stitching(tmp_path, consumer):
    """A thread slowed down over one batch let the other run every later batch of the stripe, and
    then other stripes, each result waiting in memory for the slow one (27 batch results alive
    here where the memory plan counts under 10). Each batch now waits behind the stitching, so
    the results alive stay within what the plan counts, whoever consumes the result."""
    from segtile.tiling.budget import held_tiles

    image = random_image(3, 600, 96)
    sizes = {"tile_size": 32, "overlap": 8, "batch_size": 1, "chunk_size": 16, "stripe_width": 48}
    with dask.config.set(scheduler="threads", num_workers=2):
        result = segment(image, SlowOnce(classes=8, seconds=0.5).eval(), device="cpu", **sizes)
        alive = BatchesAlive()
        with alive:
            if consumer == "compute":
                labels = result.labels.compute()
            else:
                da.to_zarr(result.labels, tmp_path / "labels.zarr")
    planned = held_tiles(32, 8, 16, 48, 1) + 2 - 1  # the stitching frontier, a batch on the other thread
    assert alive.most <= planned
    if consumer == "compute":
        model = SlowOnce(classes=8, seconds=0)
        np.testing.assert_array_equal(labels, np.argmax(whole_image_logits(model.conv, image), axis=0))


def test_a_slice_runs_only_the_stripes_and_rows_it_asks_for():
    """The waits behind the stitching are added for the stripes a computation asks for, down to
    the rows it asks for: a slice runs no batch of a stripe it does not touch."""
    image = random_image(3, 200, 96)
    result = segment(image, SlowOnce(classes=4, seconds=0).eval(), tile_size=32, overlap=8, batch_size=1,
                     chunk_size=16, stripe_width=48, device="cpu")
    whole = result.labels.compute()
    for rows, columns, stripes in [(slice(150, 200), slice(60, 90), {1}), (slice(0, 20), slice(30, 70), {0, 1})]:
        alive = BatchesAlive()
        with alive:
            part = result.labels[rows, columns].compute()
        np.testing.assert_array_equal(part, whole[rows, columns])
        assert {stripe for stripe, _ in alive.run} == stripes
        if rows.start == 0:
            assert len(alive.run) < 12  # the two stripes' top rows only


def test_results_stitched_on_the_device_are_those_stitched_on_the_host(pointwise_model):
    """On a GPU the tile results stay there and only the products come back: the same sums,
    divisions and argmax as on the host, run here by torch on the CPU. Invalid pixels, tiles
    without any, several stripes and chunks that cut tiles included."""
    model = torch.nn.Conv2d(3, 4, 3, padding=1).eval()
    image = random_image(3, 90, 110)
    image[:, 10:30, 5:40] = np.nan
    image[:, 60:, 70:] = np.nan  # whole tiles with nothing valid: never run
    stitched = {}
    for on_device in (False, True):
        result = segment(image, model, tile_size=32, overlap=8, batch_size=3, chunk_size=40, stripe_width=40,
                         device="cpu", stitch_on_device=on_device)
        stitched[on_device] = dask.compute(result.labels, result.probabilities, result.logits)
    (host_labels, host_probabilities, host_logits), (labels, probabilities, logits) = stitched[False], stitched[True]
    np.testing.assert_array_equal(labels, host_labels)
    assert (labels == 255).sum() == np.isnan(image[0]).sum()
    np.testing.assert_allclose(probabilities, host_probabilities, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(logits, host_logits, rtol=1e-6, atol=1e-6)


def test_results_stay_on_the_device_only_when_the_model_runs_on_a_gpu_of_this_process(pointwise_model):
    from distributed import Client

    from segtile.engine.graph import BATCH_PREFIX, stitches_on_device

    def kept_on_device(**kwargs) -> bool:
        result = segment(random_image(3, 40, 40), pointwise_model(bands=3, classes=2), tile_size=32, overlap=8,
                         **kwargs)
        graph = dict(result.labels.__dask_graph__())
        (flag,) = {task[6] for key, task in graph.items() if isinstance(key, tuple) and key[0].startswith(BATCH_PREFIX)}
        return flag

    assert stitches_on_device(segment(random_image(3, 8, 8), pointwise_model(bands=3, classes=2)).options) \
        == torch.cuda.is_available()
    assert not kept_on_device(device="cpu")
    assert kept_on_device(device="cpu", stitch_on_device=True)
    with Client(processes=False, dashboard_address=None):
        assert not kept_on_device(device="cpu", stitch_on_device=True)  # results cross processes there


def _network_in_training() -> torch.nn.Module:
    """A network being trained, with a frozen batch norm (in eval mode) and dropout, whose 3x3
    weights take another layout in channels-last."""
    torch.manual_seed(1)
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                  torch.nn.Dropout(0.5), torch.nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        network[1].running_mean.uniform_(-1, 1)
    network.train()
    network[1].eval()
    return network


@pytest.mark.parametrize("script", [False, True], ids=["module", "torchscript"])
def test_segment_gives_the_callers_module_back_as_it_was(script):
    import copy

    network = _network_in_training()
    if script:
        network = torch.jit.script(network)
    modes = [module.training for module in network.modules()]
    state = {name: tensor.clone() for name, tensor in network.state_dict().items()}
    image = random_image(3, 40, 48)
    labels = segment(image, network, tile_size=32, overlap=8, device="cpu").labels.compute()
    assert [module.training for module in network.modules()] == modes == [True, True, False, True, True]
    for name, tensor in network.state_dict().items():
        assert tensor.device.type == "cpu" and tensor.is_contiguous(), name
        assert torch.equal(tensor, state[name]), name
    evaluated = copy.deepcopy(network).eval()  # what it gives in eval mode: no dropout
    expected = segment(image, evaluated, tile_size=32, overlap=8, device="cpu").labels.compute()
    np.testing.assert_array_equal(labels, expected)


def test_a_copy_on_another_device_leaves_the_module_as_it_was_and_keeps_tied_weights_tied():
    # (a TorchScript module is deep-copied and moved with .to(), which the meta device does not take)
    from segtile.models.borrowed import copy_on_device

    network = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2), torch.nn.Conv2d(2, 2, 1))
    network[2].weight = network[0].weight
    copied = copy_on_device(network, torch.device("meta")).eval()
    assert all(tensor.device.type == "meta" for tensor in copied.state_dict().values())
    assert all(tensor.device.type == "cpu" for tensor in network.state_dict().values())
    assert network.training and not copied.training
    assert copied[2].weight is copied[0].weight


@pytest.mark.parametrize("on_device", [False, True])
def test_half_precision_logits_of_tile_corners_keep_their_winner(on_device):
    """Where only tile corners meet (a small overlap), a gaussian blend weighs each about 1e-7:
    weighted before the cast to float16, logits of a few tenths fell to 0 for every class and the
    label tied to class 0. Stitched here from four tiles' corners, in float16 as a GPU run sends them."""
    from rasterio.windows import Window

    from segtile.engine.graph import TileResult, stitch_chunk
    from segtile.inference.predictor import for_stitching
    from segtile.tiling.blend import tile_weight

    tile, corner = 64, 4
    weight = torch.from_numpy(tile_weight("gaussian", tile, 8, (False,) * 4).copy())
    assert weight[0, 0] < 1e-6
    logits = torch.tensor([0.0, 0.02, 0.08]).expand(1, tile, tile, 3).contiguous()  # class 2 wins everywhere
    results = []
    for row, col in ((0, 0), (0, 1), (1, 0), (1, 1)):  # each tile's corner of the chunk is its own corner
        rows = slice(tile - corner, tile) if row == 0 else slice(0, corner)
        cols = slice(tile - corner, tile) if col == 0 else slice(0, corner)
        sent, weighted = for_stitching(logits.clone(), weight[None, :, :, None], "fp16")
        assert sent.dtype == torch.float16
        tile_logits, tile_weight_ = sent[0, rows, cols], weight[rows, cols]
        if not on_device:
            tile_logits, tile_weight_ = tile_logits.numpy(), tile_weight_.numpy()
        results.append(TileResult(Window(col * corner, row * corner, corner, corner), tile_logits, tile_weight_,
                                  weighted))
    labels = stitch_chunk(Window(0, 0, 2 * corner, 2 * corner), 3, ("labels",), None, results)["labels"]
    np.testing.assert_array_equal(labels, np.full((2 * corner, 2 * corner), 2))


def test_half_precision_logits_beyond_float16_s_range_do_not_poison_the_sums():
    """Cast to float16, a logit of 1e6 is infinite, and a pixel without weight would add 0 x inf
    = NaN to the chunk's sums: clamped, it adds 0."""
    from rasterio.windows import Window

    from segtile.engine.graph import TileResult, stitch_chunk
    from segtile.inference.predictor import for_stitching

    logits = torch.tensor([1e6, 0.0]).expand(1, 2, 2, 2).contiguous()
    weight = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    sent, weighted = for_stitching(logits, weight[None, :, :, None], "fp16")
    other = TileResult(Window(0, 0, 2, 2), np.array([[[0.0, 1.0]] * 2] * 2, dtype=np.float32),
                       np.ones((2, 2), np.float32))
    tiles = [TileResult(Window(0, 0, 2, 2), sent[0].numpy(), weight.numpy(), weighted), other]
    out = stitch_chunk(Window(0, 0, 2, 2), 2, ("labels", "logits"), None, tiles)
    assert np.isfinite(out["logits"]).all()
    np.testing.assert_array_equal(out["labels"], [[1, 0], [0, 0]])
