"""Running a network that belongs to the caller without changing it.

A user who hands segtile the module they are training (to validate it mid-training, say) must
get it back as it was: in its own training mode, on its own device, in its own memory format.
Two tools do that without copying the network where it already is:

* :func:`eval_mode` puts every submodule in eval mode for the length of a ``with`` block and
  gives each its own flag back afterwards (a frozen batch norm in eval mode inside a module in
  training mode stays so);
* :func:`copy_on_device` copies a network whose weights are elsewhere onto the device the work
  runs on, the weights created there directly (never a second copy in host memory for an
  ``nn.Module``; a TorchScript module is copied on its own device first, then moved).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` with every submodule in eval mode inside the block, each one's training flag
    as it was afterwards (also when the block raises)."""
    flags = [(submodule, submodule.training) for submodule in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for submodule, training in flags:
            submodule.training = training


def is_on_device(module: nn.Module, device: torch.device) -> bool:
    """Whether every parameter and buffer of ``module`` is on ``device`` (a network without any
    is everywhere)."""
    wanted = _indexed(device)
    return all(_indexed(tensor.device) == wanted for tensor in _tensors(module))


def copy_on_device(module: nn.Module, device: torch.device) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers are on ``device``; ``module`` is left
    as it is. Tied weights stay tied. An ``nn.Module``'s tensors are copied straight to the
    device (the structure is deep-copied around them); a TorchScript module is deep-copied where
    it is, then moved."""
    if isinstance(module, torch.jit.ScriptModule):
        return copy.deepcopy(module).to(device)
    on_device: dict[int, torch.Tensor] = {}
    for tensor in _tensors(module):
        moved = tensor.detach().to(device)
        if isinstance(tensor, nn.Parameter):
            moved = nn.Parameter(moved, requires_grad=tensor.requires_grad)
        on_device[id(tensor)] = moved
    return copy.deepcopy(module, memo=on_device)


def _tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    return itertools.chain(module.parameters(), module.buffers())


def _indexed(device: torch.device) -> torch.device:
    """``device`` with its index (``cuda`` is the current CUDA device)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device
