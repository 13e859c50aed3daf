"""Networks and checkpoints for segtile: PSPNet, ResNet backbones, model cards, training."""

from segtile.errors import ArchitectureError, CardError, CheckpointError
from segtile.models.card import ModelCard, default_card
from segtile.models.checkpoint import (
    LoadedModel,
    load_checkpoint,
    load_model,
    load_reference_state_dict,
    probe_card,
    save_checkpoint,
    save_torchscript,
)
from segtile.models.pspnet import PSPNet
from segtile.models.resnet import load_torchvision_backbone

__all__ = [
    "ArchitectureError",
    "CardError",
    "CheckpointError",
    "LoadedModel",
    "ModelCard",
    "PSPNet",
    "default_card",
    "load_checkpoint",
    "load_model",
    "probe_card",
    "load_reference_state_dict",
    "load_torchvision_backbone",
    "save_checkpoint",
    "save_torchscript",
]
