"""Two threads adding up on the CPU: a few-class batch's arrays reuse the heap rather than being
mapped afresh (in segtile's cluster workers too), and threads sharing a predictor keep torch's own
threads for the network."""

import os
import resource
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from segtile.engine import heap
from segtile.engine.cluster import local_cluster
from segtile.inference.predictor import Predictor
from segtile.models import ModelCard

REUSE = """
import resource
import numpy as np
from segtile.engine import heap

heap.keep_large_arrays_off_the_heap()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(2 * 2**20, np.float32)  # 8 MiB, a 2-class batch's logits: its pages fault in once
before = faults()
for _ in range(20):
    np.ones(2 * 2**20, np.float32)
reused = faults() - before
resident = heap.resident_bytes()
many_classes = np.ones(64 * 2**20, np.uint8)
del many_classes
print(reused, heap.resident_bytes() - resident)
"""


@pytest.mark.skipif(heap._GLIBC is None, reason="the thresholds are glibc's")
def test_a_few_class_batch_reuses_the_heap_and_a_many_class_one_is_given_back():
    """Twenty 8 MiB arrays, one after the other: as mappings of their own (the 4 MiB threshold
    of before) 20 x 2048 page faults; from the heap, reused, almost none. A 64 MiB array is still
    its own mapping, returned to the system when freed."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", REUSE], env=env, capture_output=True, text=True, check=True)
    reused_faults, kept_bytes = map(int, out.stdout.split())
    assert reused_faults < 2048
    assert kept_bytes < 8 * 2**20


def _environ_and_page_faults_of_twenty_batches() -> tuple[str | None, int]:
    """On a worker: its ``MALLOC_TRIM_THRESHOLD_``, and the page faults of twenty 8 MiB arrays
    after segtile's heap settings (as the first batch makes them)."""
    heap.keep_large_arrays_off_the_heap()
    np.ones(2 * 2**20, np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        np.ones(2 * 2**20, np.float32)
    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(heap._GLIBC is None, reason="the thresholds are glibc's")
def test_the_workers_of_segtile_s_cluster_keep_segtile_s_heap_settings(monkeypatch):
    """Dask's nannies set ``MALLOC_TRIM_THRESHOLD_`` in each worker, which made segtile leave the
    heap as glibc then has it: every batch's arrays mapped afresh (20 x 2048 page faults here,
    and ``--workers 2`` 10 % slower: docs/performance.md, section 15). The workers of
    ``local_cluster`` (``--workers``, ``--gpus``) start without it."""
    for name in [name for name in os.environ if name.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    with local_cluster(workers=1) as client:
        ((environ, faults),) = client.run(_environ_and_page_faults_of_twenty_batches).values()
    assert environ is None
    assert faults < 2048


class ThreadCounting(torch.nn.Module):
    """A 1x1 convolution that notes how many torch threads each forward pass runs on."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, kernel_size=1)
        self.threads: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.threads.append(torch.get_num_threads())
        return self.conv(x)


@pytest.fixture
def two_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_threads_sharing_a_predictor_prepare_on_one_torch_thread_and_run_the_network_on_all(two_torch_threads):
    model = ThreadCounting().eval()
    predictor = Predictor(model, ModelCard(classes=("a", "b"), in_channels=3), torch.device("cpu"))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    weights = np.ones((2, 16, 16), dtype=np.float32)
    seen: dict[str, tuple] = {}
    first_done, second_done = threading.Event(), threading.Event()

    def run(name: str, done: threading.Event, wait_for: threading.Event | None) -> None:
        if wait_for is not None:
            wait_for.wait()
        logits = predictor(pixels, weights).logits.copy()
        with predictor._host_threads():
            host = torch.get_num_threads()
        seen[name] = (logits, host, torch.get_num_threads())
        done.set()
        if name == "first":  # alive until the second is done: another thread, not one reusing its id
            second_done.wait()

    threads = [threading.Thread(target=run, args=("first", first_done, None)),
               threading.Thread(target=run, args=("second", second_done, first_done))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # alone, the first thread kept torch's threads for everything; once a second thread ran
    # batches, its host-side operations went to one torch thread, its network stayed on two
    assert seen["first"][1] == 2 and seen["second"][1] == 1
    assert model.threads == [2, 2]
    assert seen["first"][2] == seen["second"][2] == 2 == torch.get_num_threads()  # given back
    np.testing.assert_array_equal(seen["first"][0], seen["second"][0])
