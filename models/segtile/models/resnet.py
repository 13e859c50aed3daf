"""Dilated ResNet backbones with output stride 8 (or 4, 2), in the layout of hszhao/semseg's PSPNet.

The backbone is five ``nn.Sequential`` stages, ``layer0`` (a deep stem of three 3x3 convolutions
and a max-pool, stride 4) and ``layer1`` … ``layer4`` (residual stages). ``layer2`` halves the
resolution once more; ``layer3`` and ``layer4`` keep it (stride 1) and dilate their 3x3
convolutions by 2 and 4 instead, so the features sit at 1/8 of the input size while the
receptive field grows as in an undilated ResNet. Output stride 4 keeps ``layer2``'s resolution
too (dilations 2, 4, 8) and 2 drops the stem's max-pool as well (dilations 2, 4, 8, 16): the same
receptive field and weights' shapes, finer features (for small objects such as 10 m ponds) at 4
or 16 times the computation of the stages that run finer. For bottleneck depths (50, 101, 152) at width 1
the parameter names and shapes are exactly those of the reference implementation, whose
checkpoints therefore load with ``strict=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
from torch import nn

from segtile.errors import ArchitectureError

# depth -> (block kind, blocks per stage), as in the ResNet paper.
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

# output stride -> the stages' strides and dilations, and whether the stem max-pools. 8 is the
# reference's (stem 4, then layer2 x2); each stride given up doubles the dilations after it.
OUTPUT_STRIDES: dict[int, tuple[tuple[int, ...], tuple[int, ...], bool]] = {
    8: ((1, 2, 1, 1), (1, 1, 2, 4), True),
    4: ((1, 1, 1, 1), (1, 2, 4, 8), True),
    2: ((1, 1, 1, 1), (2, 4, 8, 16), False),
}
_STAGE_PLANES = (64, 128, 256, 512)
RESIDUAL_STAGES = ("layer1", "layer2", "layer3", "layer4")

# torchvision / semseg ImageNet ResNet stem names -> positions inside ``layer0``.
_STEM_KEYS = {"conv1": "layer0.0", "bn1": "layer0.1", "conv2": "layer0.3",
              "bn2": "layer0.4", "conv3": "layer0.6", "bn3": "layer0.7"}


def scaled_channels(channels: int, width: float) -> int:
    """``channels`` multiplied by the width factor, rounded, and at least 1."""
    return max(1, int(round(channels * width)))


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """A 3x3 convolution without bias whose padding keeps the size (at stride 1)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride,
                     padding=dilation, dilation=dilation, bias=False)


def shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """The projection shortcut: 1x1 convolution (carrying the stride) and batch norm."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a residual connection (ResNet-18/34); both are dilated."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided or dilated), 1x1 expand by 4, and a residual connection."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {
    "basic": BasicBlock, "bottleneck": Bottleneck,
}


def deep_stem(in_channels: int, hidden: int, out_channels: int, pool: bool = True) -> nn.Sequential:
    """``layer0``: three 3x3 conv-BN-ReLU (the first with stride 2), then a stride-2 max-pool
    (unless not ``pool``: output stride 2)."""
    return nn.Sequential(
        conv3x3(in_channels, hidden, stride=2), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        conv3x3(hidden, hidden), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        conv3x3(hidden, out_channels), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        *([nn.MaxPool2d(kernel_size=3, stride=2, padding=1)] if pool else []),
    )


def residual_stage(block: type[BasicBlock] | type[Bottleneck], in_channels: int, planes: int,
                   blocks: int, stride: int, dilation: int) -> nn.Sequential:
    """``blocks`` residual blocks; the first projects the shortcut when the shape changes.

    Every block of the stage uses the same dilation (the reference's scheme, no multi-grid).
    """
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = shortcut(in_channels, out_channels, stride)
    layers = [block(in_channels, planes, stride, dilation, downsample)]
    layers += [block(out_channels, planes, 1, dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


@dataclass
class Backbone:
    """The five stages of a dilated ResNet and the channel counts the heads attach to."""

    stages: tuple[nn.Sequential, ...]
    mid_channels: int  # layer3's output: where the auxiliary head reads
    out_channels: int  # layer4's output: what the pyramid pooling module reads


def dilated_resnet(layers: int, in_channels: int = 3, width: float = 1.0, output_stride: int = 8) -> Backbone:
    """Build the ``layer0`` … ``layer4`` stages of a ResNet of depth ``layers`` whose features sit
    every ``output_stride`` pixels (:data:`OUTPUT_STRIDES`).

    The stem's output is 128 channels for bottleneck depths (as the reference) and 64 for
    basic-block depths (so ``layer1`` needs no projection, as in torchvision's ResNet-18/34).
    ``width`` scales every channel count.
    """
    if layers not in DEPTHS:
        raise ArchitectureError(f"ResNet depth {layers} is not one of {sorted(DEPTHS)}")
    if not width > 0:
        raise ArchitectureError(f"width must be positive, not {width}")
    if output_stride not in OUTPUT_STRIDES:
        raise ArchitectureError(f"output stride must be one of {sorted(OUTPUT_STRIDES)}, not {output_stride}")
    strides, dilations, pool = OUTPUT_STRIDES[output_stride]
    kind, counts = DEPTHS[layers]
    block = _BLOCKS[kind]
    stem_hidden = scaled_channels(64, width)
    channels = scaled_channels(128 if kind == "bottleneck" else 64, width)
    stages = [deep_stem(in_channels, stem_hidden, channels, pool)]
    stage_channels = []
    for planes, blocks, stride, dilation in zip(_STAGE_PLANES, counts, strides, dilations):
        planes = scaled_channels(planes, width)
        stages.append(residual_stage(block, channels, planes, blocks, stride, dilation))
        channels = planes * block.expansion
        stage_channels.append(channels)
    return Backbone(tuple(stages), mid_channels=stage_channels[2], out_channels=channels)


def torchvision_key(key: str) -> str:
    """Where a torchvision-layout ResNet tensor lives in our backbone (same name if a stage's)."""
    module, _, rest = key.partition(".")
    if module in _STEM_KEYS:
        return f"{_STEM_KEYS[module]}.{rest}"
    return key


def normalised_conv(module: str) -> str | None:
    """The convolution a batch norm of a ResNet normalises (``bn2`` -> ``conv2``,
    ``downsample.1`` -> ``downsample.0``), or ``None`` when ``module`` is not a batch norm."""
    head, _, last = module.rpartition(".")
    if last.startswith("bn"):
        return f"{head}.conv{last[2:]}" if head else f"conv{last[2:]}"
    if last == "1" and head.endswith("downsample"):
        return f"{head}.0"
    return None


def load_torchvision_backbone(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy ImageNet ResNet weights in torchvision's key layout into ``model``'s backbone.

    ``conv1``/``bn1`` (and ``conv2``/``bn2``/``conv3``/``bn3`` of deep-stem checkpoints such as
    the reference's ``resnet50_v2.pth``) go to ``layer0``; ``layer1`` … ``layer4`` keep their
    names. A convolution is copied when its target exists with the same shape, a batch norm
    when, in addition, the convolution it normalises was copied. So torchvision's 7x7 stem (and,
    for depth 50+, the first convolution and the projection of ``layer1``, which read the deep
    stem's 128 channels instead of 64) stay as initialised. Dilation and stride do not change
    weight shapes: every other backbone tensor maps.

    Returns:
        the keys of ``state_dict`` that were not copied (``fc.*`` always among them).
    """
    targets = model.state_dict()

    def fits(key: str) -> bool:
        name = torchvision_key(key)
        return name in targets and targets[name].shape == state_dict[key].shape

    copied_convs = {key.rpartition(".")[0] for key, tensor in state_dict.items()
                    if tensor.ndim == 4 and fits(key)}
    mapped: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in state_dict.items():
        conv = normalised_conv(key.rpartition(".")[0])
        if fits(key) and (conv is None or conv in copied_convs):
            mapped[torchvision_key(key)] = tensor
        else:
            unmapped.append(key)
    model.load_state_dict(mapped, strict=False)
    return unmapped


def resnet_depth(keys: Iterable[str]) -> int | None:
    """The depth of the ResNet whose tensors are named ``keys`` (a state_dict's), from its residual
    stages ``layer1`` … ``layer4``: two layers a basic block, three a bottleneck (one with a
    ``conv3``), and the stem and the classifier (18, 34, 50, 101...); ``None`` when no key lies
    in those stages."""
    staged = [key for key in keys if key.split(".")[0] in RESIDUAL_STAGES]
    blocks = {".".join(key.split(".")[:2]) for key in staged}
    if not blocks:
        return None
    bottleneck = any(".conv3." in key for key in staged)
    return len(blocks) * (3 if bottleneck else 2) + 2
