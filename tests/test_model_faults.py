"""Invalid pixels, non-finite logits and networks that misbehave: named faults, never wrong results."""

import dask.array as da
import numpy as np
import pytest
import torch

from segtile import segment
from segtile.api import ResolutionWarning
from segtile.errors import SegtileError
from segtile.inference.predictor import ModelError
from segtile.models import LoadedModel, ModelCard, load_checkpoint, save_torchscript
from segtile.sources import MemorySource


def test_nan_pixels_are_filled_before_the_model_and_only_they_become_nodata():
    # A 3x3 convolution sees its neighbours: one NaN fed to it would spread NaN around it
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
    image = np.random.default_rng(0).normal(size=(1, 128, 128)).astype(np.float32)
    image[0, 40:60, 50:70] = np.nan
    source = MemorySource(image, nodata=float("nan"))
    labels = segment(source, model, tile_size=128, overlap=0, device="cpu").labels.compute()
    invalid = np.isnan(image[0])
    assert (labels[invalid] == 255).all()
    assert (labels[~invalid] != 255).all()  # one tile, yet only the 400 NaN pixels are nodata


def test_nan_pixels_are_invalid_even_without_a_declared_nodata():
    model = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
    image = np.ones((1, 64, 64), dtype=np.float32)
    image[0, 10, 10] = np.inf
    labels = segment(image, model, tile_size=64, overlap=0, device="cpu").labels.compute()
    assert labels[10, 10] == 255 and (labels != 255).sum() == 64 * 64 - 1


class NaNWhere(torch.nn.Module):
    """A 1x1 convolution whose logits are NaN where the first band exceeds ``threshold``."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.conv(x)
        return torch.where(x[:, :1] > self.threshold, torch.full_like(logits, float("nan")), logits)


@pytest.mark.parametrize("on_device", [False, True])
def test_nonfinite_logits_never_reach_the_stitched_sums(on_device):
    image = np.zeros((1, 96, 96), dtype=np.float32)
    image[0, :, 60:] = 1.0  # the model answers NaN there
    result = segment(image, NaNWhere(0.5), tile_size=48, overlap=16, device="cpu", stitch_on_device=on_device)
    logits = result.logits.compute()
    labels = result.labels.compute()
    assert np.isfinite(logits[:, :, :60]).all()  # overlapping tiles did not smear NaN across
    assert (labels[:, 60:] == 255).all() and (labels[:, :60] != 255).all()


@pytest.fixture
def three_class_card():
    return ModelCard(classes=("a", "b", "c"), in_channels=1, tile_size=32, overlap=8)


def test_a_card_that_names_other_classes_than_the_network_gives_is_named(tmp_path, three_class_card):
    path = tmp_path / "model.pt"
    save_torchscript(path, torch.nn.Conv2d(1, 4, 1), three_class_card)
    with pytest.raises(ModelError, match="gives 4 classes but its card names 3"):
        segment(np.zeros((1, 40, 40), np.float32), path, device="cpu").labels.compute()
    assert issubclass(ModelError, SegtileError)


class WrongSize(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 3, x.shape[2] // 2, x.shape[3] // 2)


def test_logits_of_another_size_are_named(three_class_card):
    model = LoadedModel(WrongSize(), three_class_card)
    with pytest.raises(ModelError, match=r"shape \(1, 3, 16, 16\) for a batch of 1 tile\(s\) of 32x32 px"):
        segment(np.zeros((1, 32, 32), np.float32), model, device="cpu").labels.compute()


class Failing(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], 7, -1)  # not a multiple of 7: fails at run time


def test_a_torchscript_failure_names_its_cause_not_the_interpreter(tmp_path, three_class_card):
    path = tmp_path / "failing.pt"
    save_torchscript(path, torch.jit.script(Failing()), three_class_card)
    with pytest.raises(ModelError) as failure:
        segment(np.zeros((1, 32, 32), np.float32), load_checkpoint(path), device="cpu").labels.compute()
    message = str(failure.value)
    assert message.startswith("the model failed on a batch of 1 tile(s) of 32x32 px with 1 band(s): ")
    assert "TorchScript interpreter" not in message and "invalid" in message


def test_a_card_without_bands_takes_the_first_bands_of_a_wider_image(data_dir):
    card = ModelCard(classes=("x", "y"), in_channels=3, tile_size=64, overlap=8)  # bands=None
    model = torch.nn.Conv2d(3, 2, 1)
    path = data_dir / "landsat_crop.tif"  # 7 bands
    with pytest.warns(ResolutionWarning, match="the image has 7 bands and the model takes 3: reading bands 1,2,3 "
                      r"\(B1, B2, B3; the first 3\); choose others with --bands \(Python: bands=\[...\]\)"):
        result = segment(path, LoadedModel(model, card), device="cpu")
    window = result.labels[:64, :64].compute()
    assert window.shape == (64, 64)
    chosen = ModelCard(classes=("x", "y"), bands=(4, 3, 2), tile_size=64, overlap=8)
    assert "reading bands 4,3,2 (B4, B3, B2; the model card's choice)" in segment(
        path, LoadedModel(model, chosen), device="cpu").notes[0]
    assert segment(path, LoadedModel(model, card), bands=[4, 3, 2], device="cpu").notes == ()  # the user's choice


def test_a_dask_array_is_computed_once_per_tile():
    calls = []

    def count(block):
        if block.size:  # dask also calls it once on an empty block, to learn its output type
            calls.append(block.shape)
        return block

    image = da.map_blocks(count, da.zeros((1, 64, 64), chunks=(1, 64, 64), dtype=np.float32), dtype=np.float32)
    source = MemorySource(image, nodata=-1.0)
    segment(source, torch.nn.Conv2d(1, 2, 1), tile_size=64, overlap=0, device="cpu").labels.compute()
    assert len(calls) == 1  # pixels and validity come from one read


def test_tiles_larger_than_the_image_are_clamped(pointwise_model):
    result = segment(np.zeros((3, 70, 90), np.float32), pointwise_model(), tile_size=100_000, overlap=64,
                     device="cpu")
    assert result.options.tile_size == 90 and result.options.overlap == 64
    assert result.labels.compute().shape == (70, 90)
