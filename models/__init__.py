"""Networks and checkpoints for segtile: PSPNet, ResNet backbones, model cards."""

from models.card import CardError, ModelCard, default_card

__all__ = ["CardError", "ModelCard", "default_card"]
