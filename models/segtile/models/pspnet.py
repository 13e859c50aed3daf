"""PSPNet: a dilated ResNet, a pyramid pooling module, a main and an auxiliary head.

Zhao et al., "Pyramid Scene Parsing Network" (CVPR 2017). The module names and parameter
shapes follow the first author's PyTorch implementation (hszhao/semseg), so its checkpoints load
into :class:`PSPNet` with ``strict=True`` (see :func:`segtile.models.load_reference_state_dict`), and in
eval mode, on inputs of size ``8k + 1``, the logits are the same computation.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segtile.errors import ArchitectureError
from segtile.models.resnet import dilated_resnet, scaled_channels

ZOOM_FACTORS = (1, 2, 4, 8)


class PyramidPooling(nn.Module):
    """Average-pool the features to ``bin x bin`` grids, project, upsample, and concatenate.

    Per bin: AdaptiveAvgPool2d -> 1x1 conv (no bias) to ``in_channels // len(bins)`` -> BN ->
    ReLU, upsampled bilinearly (``align_corners=True``) to the feature size. The output is the
    input features followed by each pooled branch, in the order of ``bins``.
    """

    def __init__(self, in_channels: int, bins: Sequence[int]) -> None:
        super().__init__()
        reduction = max(1, in_channels // len(bins))
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(size),
                nn.Conv2d(in_channels, reduction, kernel_size=1, bias=False),
                nn.BatchNorm2d(reduction),
                nn.ReLU(inplace=True),
            )
            for size in bins
        )
        self.out_channels = in_channels + reduction * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        branches = [x]
        for branch in self.features:
            branches.append(F.interpolate(branch(x), size=size, mode="bilinear", align_corners=True))
        return torch.cat(branches, dim=1)


def classifier(in_channels: int, hidden: int, classes: int, dropout: float) -> nn.Sequential:
    """A segmentation head: 3x3 conv (no bias) -> BN -> ReLU -> Dropout2d -> 1x1 conv to classes."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=dropout),
        nn.Conv2d(hidden, classes, kernel_size=1),
    )


class PSPNet(nn.Module):
    """Pyramid Scene Parsing Network over a dilated ResNet (output stride 8, the paper's, or 4, 2).

    Args:
        layers: ResNet depth: 50, 101 (or 152) with bottleneck blocks, the reference's layout;
            18 or 34 with basic blocks, for small and fast models.
        classes: number of output channels (classes).
        bins: pyramid pooling grid sizes.
        dropout: Dropout2d probability in both heads (active in training only).
        zoom_factor: 8 gives logits of the input's size; 1, 2, 4 give logits of size
            ``(H - 1) * zoom_factor // 8 + 1`` (the reference's ``(H - 1) / 8 * zoom + 1``).
        in_channels: number of input bands.
        width: multiplies every channel count, backbone and heads (1.0 is the reference).
        output_stride: the features sit every 8 pixels (the reference), or 4 or 2: finer masks
            of small objects, at 4 or 16 times the computation of the backbone's later stages
            (:data:`segtile.models.resnet.OUTPUT_STRIDES`).

    In training mode ``forward`` returns ``(main_logits, aux_logits)``, the auxiliary head
    reading ``layer3``; in eval mode it returns the main logits only.
    """

    def __init__(self, layers: int = 50, classes: int = 150, bins: Sequence[int] = (1, 2, 3, 6),
                 dropout: float = 0.1, zoom_factor: int = 8, in_channels: int = 3,
                 width: float = 1.0, output_stride: int = 8) -> None:
        super().__init__()
        bins = tuple(int(b) for b in bins)
        _check_options(classes, bins, dropout, zoom_factor, in_channels)
        self._config = {
            "layers": int(layers), "classes": int(classes), "bins": list(bins),
            "dropout": float(dropout), "zoom_factor": int(zoom_factor),
            "in_channels": int(in_channels), "width": float(width), "output_stride": int(output_stride),
        }
        self.zoom_factor = int(zoom_factor)
        self.output_stride = int(output_stride)
        backbone = dilated_resnet(layers, in_channels, width, int(output_stride))
        self.layer0, self.layer1, self.layer2, self.layer3, self.layer4 = backbone.stages
        self.ppm = PyramidPooling(backbone.out_channels, bins)
        self.cls = classifier(self.ppm.out_channels, scaled_channels(512, width), classes, dropout)
        self.aux = classifier(backbone.mid_channels, scaled_channels(256, width), classes, dropout)
        for stage in backbone.stages:
            _initialise(stage)

    @property
    def alignment(self) -> int:
        """Tiles line up pixel for pixel when they start at multiples of this and are ``8k + 1``
        wide: the features sit every ``output_stride`` pixels and are upsampled with
        ``align_corners=True``."""
        return self.output_stride

    def config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this network: ``PSPNet(**net.config())``."""
        return {**self._config, "bins": list(self._config["bins"])}

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        height, width = x.shape[-2], x.shape[-1]
        size = [(height - 1) * self.zoom_factor // 8 + 1, (width - 1) * self.zoom_factor // 8 + 1]
        x = self.layer2(self.layer1(self.layer0(x)))
        mid = self.layer3(x)
        main = self.cls(self.ppm(self.layer4(mid)))
        main = F.interpolate(main, size=size, mode="bilinear", align_corners=True)
        if self.training:
            aux = F.interpolate(self.aux(mid), size=size, mode="bilinear", align_corners=True)
            return main, aux
        return main


def _check_options(classes: int, bins: tuple[int, ...], dropout: float, zoom_factor: int,
                   in_channels: int) -> None:
    if classes < 1:
        raise ArchitectureError(f"classes must be at least 1, not {classes}")
    if not bins or min(bins) < 1:
        raise ArchitectureError(f"bins must be positive grid sizes, not {list(bins)}")
    if not 0.0 <= dropout < 1.0:
        raise ArchitectureError(f"dropout must lie in [0, 1), not {dropout}")
    if zoom_factor not in ZOOM_FACTORS:
        raise ArchitectureError(f"zoom_factor must be one of {ZOOM_FACTORS}, not {zoom_factor}")
    if in_channels < 1:
        raise ArchitectureError(f"in_channels must be at least 1, not {in_channels}")


def _initialise(backbone: nn.Module) -> None:
    """He initialisation for convolutions, identity for batch norm (as the reference's ResNet).

    Applied to the backbone only: the pyramid pooling module and the heads keep PyTorch's default
    initialisation, as in the reference. (He's ``fan_out`` rule on the last 1x1 convolution, whose
    fan-out is the class count, would start training with logits of a huge scale.)
    """
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
