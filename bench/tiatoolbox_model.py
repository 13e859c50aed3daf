"""The benchmark's pointwise model in the form TIAToolbox's engines require (a ``ModelABC``).

Imported only by the TIAToolbox workload, in the benchmark's own venv (``bench/README.md``):
TIAToolbox is never a segtile dependency.

TIAToolbox's ``SemanticSegmentor`` calls ``infer_batch(model, batch, device=...)`` with a batch of
patches ``(N, h, w, 3)`` uint8 (channels last) straight from its reader, averages the returned
``(N, h, w, classes)`` arrays where patches overlap, then applies ``postproc`` to the whole
probability map (a Dask array) to get the labels. Where no patch ran (outside its ``masks=``)
that map is zero in every class, and the labels are ``NODATA``, as segtile's are where it skipped
a tile: so the label agreement is taken on the pixels both engines labelled.
"""

from __future__ import annotations

import numpy as np
import torch
from tiatoolbox.models.models_abc import ModelABC

from bench.compare import NODATA
from bench.workloads import pointwise_model


class PointwiseTIAModel(ModelABC):
    """``bench.workloads.pointwise_model`` (the same seeded 1x1 convolution segtile runs), fed the
    pixels as float32 without normalisation, as segtile feeds a bare ``torch.nn.Module``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = pointwise_model()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, classes, h, w)`` of float images ``(N, bands, h, w)``."""
        return self.net(images)

    @staticmethod
    def infer_batch(model: torch.nn.Module, batch_data: torch.Tensor, *, device: str) -> np.ndarray:
        """Class probabilities ``(N, h, w, classes)`` of a batch of uint8 patches ``(N, h, w, bands)``."""
        model.eval()
        images = batch_data.to(device=device, dtype=torch.float32).permute(0, 3, 1, 2)
        with torch.inference_mode():
            probabilities = torch.softmax(model(images), dim=1)
        return probabilities.permute(0, 2, 3, 1).cpu().numpy()

    @staticmethod
    def postproc(image: np.ndarray) -> np.ndarray:
        """Labels: the most probable class of each pixel, ``NODATA`` where no patch ran (every
        class at zero, which a softmax never gives); works on numpy and Dask arrays."""
        return np.where(image.max(axis=-1) > 0, image.argmax(axis=-1), NODATA)  # Dask dispatches np.where
