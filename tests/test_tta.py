"""Test-time augmentation: flips, rotations and scales averaged as probabilities in the predictor."""

import numpy as np
import pytest
import torch

from segtile import segment
from segtile.inference.tta import AugmentationError
from segtile.models import LoadedModel, ModelCard
from tests.conftest import whole_image_logits


def image(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(3, 70, 90)).astype(np.float32)


@pytest.mark.parametrize("tta", ["flip", "d4"])
def test_a_pointwise_model_gives_the_same_labels_with_flips_and_rotations(pointwise_model, tta):
    model = pointwise_model(bands=3, classes=4)
    plain = segment(image(), model, tile_size=32, overlap=8, device="cpu", tta=None)
    augmented = segment(image(), model, tile_size=32, overlap=8, device="cpu", tta=tta)
    np.testing.assert_array_equal(augmented.labels.compute(), plain.labels.compute())
    np.testing.assert_allclose(augmented.probabilities.compute(), plain.probabilities.compute(), atol=1e-5)


class LeftEdge(torch.nn.Module):
    """Says class 1 on the left half of its input, class 0 on the right: not flip-invariant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1]
        left = (torch.arange(width) < width // 2).float().expand(x.shape[0], 1, x.shape[2], width)
        return torch.cat([1 - left, left], dim=1) * 4


def test_flips_are_mapped_back_before_averaging():
    card = ModelCard(classes=("right", "left"), in_channels=1, tile_size=64, overlap=0)
    result = segment(np.zeros((1, 64, 64), np.float32), LoadedModel(LeftEdge(), card), tta="flip", device="cpu")
    probabilities = result.probabilities.compute()
    # the flipped copy says the opposite everywhere: averaged, both classes are equally likely
    np.testing.assert_allclose(probabilities, 0.5, atol=1e-6)


def test_multi_scale_keeps_a_pointwise_model_close(pointwise_model):
    model = pointwise_model(bands=3, classes=3)
    smooth = np.repeat(np.repeat(image()[:, ::5, ::5], 5, axis=1), 5, axis=2)  # blocks of 5 px
    result = segment(smooth, model, tile_size=64, overlap=16, device="cpu", tta=None, scales=(0.5, 1.0, 1.5))
    agreement = np.mean(result.labels.compute() == np.argmax(whole_image_logits(model, smooth), axis=0))
    assert agreement > 0.9


def test_the_card_suggests_an_augmentation_and_says_so(pointwise_model):
    card = ModelCard(classes=("a", "b"), tile_size=32, overlap=8, tta="flip")
    with pytest.warns(UserWarning, match="suggests test-time augmentation 'flip'"):
        result = segment(image(), LoadedModel(pointwise_model(classes=2), card), device="cpu")
    assert result.options.augmentation.mode == "flip"
    assert segment(image(), LoadedModel(pointwise_model(classes=2), card), device="cpu",
                   tta=None).options.augmentation.mode is None


@pytest.mark.parametrize("tta, scales, message", [("spin", (1.0,), "unknown test-time augmentation"),
                                                  (None, (0.0,), "scales must be positive")])
def test_bad_augmentations_are_refused(pointwise_model, tta, scales, message):
    with pytest.raises(AugmentationError, match=message):
        segment(image(), pointwise_model(), device="cpu", tta=tta, scales=scales)
