"""``dask.distributed`` in segtile: which client, if any, runs the work; clusters on this machine
(one worker per GPU, or several CPU processes); and local thread pools that are joined before an
interrupted run cleans up."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterator

import dask
import dask.system
from dask.base import get_scheduler
from distributed import Client, LocalCluster

from segtile.engine.heap import without_malloc_settings
from segtile.errors import ClusterError


def active_client(collection: Any) -> Client | None:
    """The ``dask.distributed`` client that would compute ``collection``, or ``None`` when a
    local scheduler would."""
    client = getattr(get_scheduler(collections=[collection]), "__self__", None)  # a Client's .get
    return client if isinstance(client, Client) else None


def current_client() -> Client | None:
    """The ``dask.distributed`` client new work would run on (the default one), or ``None``
    when work runs in this process."""
    client = getattr(get_scheduler(), "__self__", None)
    return client if isinstance(client, Client) else None


def task_threads() -> int:
    """How many tasks run at once in one process, as Dask runs them: on a ``dask.distributed``
    cluster, the most threads a worker of the current client has; else the local scheduler's
    threads: Dask's ``num_workers`` setting, or the CPUs this process may use
    (``dask.system.cpu_count``: its CPU affinity and cgroup quota, not the machine's count)."""
    client = current_client()
    if client is not None:
        threads = client.nthreads()  # {worker address: threads}; empty before any worker joined
        if threads:
            return max(threads.values())
    return dask.config.get("num_workers", None) or dask.system.cpu_count()


@contextmanager
def joined_threads() -> Iterator[None]:
    """Run the computes inside on a thread pool of this block's own (unless a ``dask.distributed``
    client runs them), and return only when its threads are idle, even on an exception: after
    Ctrl-C no task is left writing into a folder that is being removed."""
    if current_client() is not None:
        yield
        return
    pool = ThreadPoolExecutor(max_workers=task_threads(), thread_name_prefix="segtile")
    try:
        with dask.config.set(pool=pool):
            yield
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def parse_gpus(text: str) -> list[int] | None:
    """``"all"`` -> ``None`` (every GPU of this machine); ``"0,2"`` -> ``[0, 2]``."""
    if text == "all":
        return None
    try:
        devices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ClusterError(f"--gpus takes 'all' or GPU numbers such as 0,1, not {text!r}") from None
    if not devices or min(devices) < 0 or len(set(devices)) != len(devices):
        raise ClusterError(f"--gpus takes 'all' or distinct GPU numbers such as 0,1, not {text!r}")
    return devices


@contextmanager
def local_cluster(*, workers: int | None = None, gpus: list[int] | None | str = "none") -> Iterator[Client]:
    """A ``dask.distributed`` cluster on this machine, as the default client inside the block:
    one worker per GPU (``gpus``: a list, or ``None`` for all of them), each seeing only its
    own device (``cuda`` on a worker is its GPU), through dask-cuda's ``LocalCUDACluster`` when
    installed; or ``workers`` CPU processes sharing the cores. The workers keep segtile's heap
    settings (:mod:`segtile.engine.heap`), not the malloc variables Dask's nannies set."""
    spawn_environ = without_malloc_settings(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn_environ}):
        if gpus != "none":
            cluster = _gpu_cluster(gpus)
        else:
            threads = max(1, dask.system.cpu_count() // workers)
            cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                                   dashboard_address=None)
    with cluster, Client(cluster) as client:
        yield client


def _gpu_cluster(devices: list[int] | None):
    """One worker process per GPU of ``devices`` (all of this machine's when ``None``)."""
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise ClusterError("--gpus asked for, but this machine has no CUDA device")
    devices = list(range(count)) if devices is None else devices
    missing = [d for d in devices if d >= count]
    if missing:
        raise ClusterError(f"--gpus: no GPU {missing[0]} on this machine (it has {count})")
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:  # the optional extra segtile[cuda]: a worker per device, set by hand
        from distributed import Nanny, Scheduler, SpecCluster

        workers = {f"gpu-{d}": {"cls": Nanny, "options": {"nthreads": 2, "env": {"CUDA_VISIBLE_DEVICES": str(d)}}}
                   for d in devices}
        return SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard_address": None}}, workers=workers)
    return LocalCUDACluster(CUDA_VISIBLE_DEVICES=",".join(map(str, devices)), dashboard_address=None)
