"""Device names and precisions: checked where the job is set up, resolved where the model runs.

A device name (``auto``, ``cpu``, ``cuda``, ``cuda:1``) is only text until a process builds the
network: on a ``dask.distributed`` cluster that is a worker, whose GPUs the client may not have.
So :func:`check_device` checks the spelling (and, for a job that runs in this process, that the
device exists here), and :func:`resolve_device` turns the name into a ``torch.device`` where
the network is built. torch is imported only there, so the CLI's ``--help`` stays fast.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from segtile.errors import DeviceError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "fp16", "bf16")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(device: str, precision: str = "fp32", *, here: bool = True) -> None:
    """Raise :class:`DeviceError` for a misspelt device or precision, fp16 asked of the CPU, or
    (with ``here``: the model runs in this process) a device this machine does not have."""
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise DeviceError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device == "cpu":
        raise DeviceError("fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    if here:
        check_precision(precision, resolve_device(device))


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU; ``cuda:N`` is checked
    against the devices of this process."""
    import torch

    if not isinstance(device, str) or not _DEVICE.match(device):
        raise DeviceError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} asked for, but CUDA is not available here")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise DeviceError(f"device {device!r} does not exist: this machine has {count} CUDA device(s)")
    return resolved


def check_precision(precision: str, device: torch.device) -> None:
    """Raise :class:`DeviceError` for an unknown precision or fp16 on a device without CUDA."""
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise DeviceError("fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
