"""The tile progress bar: every tile counted once, whatever the scheduler does with the graph."""

import numpy as np
import pytest

from segtile import segment
from segtile.engine.events import listen, report


def image(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(3, height, width)).astype(np.float32)


def test_a_single_tile_whose_task_dask_fuses_is_counted(pointwise_model, capsys):
    result = segment(image(64, 64), pointwise_model(bands=3, classes=2), tile_size=64, overlap=16, device="cpu")
    with result.progress():
        result.labels.compute()
    assert "1/1" in capsys.readouterr().err


def test_local_threads_are_counted_while_a_cluster_client_exists(pointwise_model, capsys):
    distributed = pytest.importorskip("distributed")
    result = segment(image(60, 90), pointwise_model(bands=3, classes=2), tile_size=32, overlap=8, device="cpu")
    with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        with result.progress():
            result.labels.compute(scheduler="threads")
    assert "12/12" in capsys.readouterr().err


def test_reports_reach_only_the_listener_of_their_topic():
    counts = []
    with listen("mine", counts.append):
        report("mine", 3)
        report("another run", 5)
    report("mine", 7)  # after the block: nobody listens
    assert counts == [3]


def test_an_error_in_the_block_survives_a_lost_cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        client = distributed.Client(cluster)
        with pytest.raises(KeyError, match="the user's error"):
            with listen("topic", print, client):
                client.close()
                raise KeyError("the user's error")
