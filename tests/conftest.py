"""Shared fixtures: the real sample images and small, fast models."""

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"  # real images committed with the repository (see its README)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture
def pointwise_model():
    """A 1x1 convolution: each pixel's logits depend on that pixel only (the seam contract)."""

    def make(bands: int = 3, classes: int = 4, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        return torch.nn.Conv2d(bands, classes, kernel_size=1).eval()

    return make


@pytest.fixture
def counted(tmp_path, pointwise_model):
    """A lazy result on a small GeoTIFF, and the counting model it runs (at zero tiles seen)."""
    from segtile import segment
    from tests.test_engine import CountingModel, write_geotiff

    path = tmp_path / "image.tif"
    write_geotiff(path, np.random.default_rng(4).integers(1, 255, size=(3, 80, 96), dtype=np.uint8))
    model = CountingModel(pointwise_model(bands=3, classes=3))
    result = segment(path, model, tile_size=32, overlap=8, device="cpu")
    model.tiles_seen = 0  # forget the class probe
    return result, model


def whole_image_logits(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """The model run on the whole image at once: the reference the stitched result must equal."""
    with torch.inference_mode():
        x = torch.from_numpy(image.astype(np.float32))[None]
        return model(x)[0].numpy()


# One torch thread: the suite's tensors are tiny, and on a shared 2-core machine more threads
# only contend (small convolutions ran many times slower with 2 threads under load).
torch.set_num_threads(1)
