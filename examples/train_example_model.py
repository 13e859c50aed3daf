"""Train the demo model models/demo/bahamas_psp18.pt: a tiny PSPNet-18 on a Landsat scene.

The labels are not ground truth: they come from a spectral rule on the RGB values (below), so
the network learns to reproduce that rule with spatial context. It exists to show the whole
chain (training, checkpoint with its card, tiled inference) on real imagery in a few minutes
on a laptop CPU, not to map anything.

Run it with segtile installed (``pip install -e .``):  python examples/train_example_model.py
It is seeded and takes under three minutes on two CPU cores. models/demo/README.md is the
model card in prose.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import rasterio
import torch

from segtile.models import ModelCard, PSPNet, save_checkpoint
from segtile.models.train import pixel_accuracy, predict_labels, train

HERE = Path(__file__).resolve().parent
IMAGE = HERE / "data" / "bahamas_rgb.tif"
CHECKPOINT = HERE.parent / "models" / "demo" / "bahamas_psp18.pt"

IGNORE = 255
WATER, LAND, CLOUD = 0, 1, 2
CLOUD_MIN_BRIGHTNESS = 140  # a pixel is cloud when even its darkest band is this bright
HELD_OUT_FROM_ROW = 540  # rows below this one are never cropped for training


def rule_labels(pixels: np.ndarray, nodata: int = 0) -> np.ndarray:
    """Water / land / cloud from the RGB values of ``pixels`` (3, H, W) uint8.

    - nodata: all three bands equal ``nodata`` -> 255 (ignored by the loss and the accuracy);
    - cloud: min(R, G, B) >= 140, bright and grey-white;
    - water: blue >= red (the clear blue shallows and the dark blue-green deep water);
    - land: blue < red (the olive-brown vegetation and bare ground of Andros island).
    """
    red, _, blue = pixels.astype(np.int16)
    labels = np.where(blue >= red, WATER, LAND).astype(np.uint8)
    labels[pixels.min(axis=0) >= CLOUD_MIN_BRIGHTNESS] = CLOUD
    labels[(pixels == nodata).all(axis=0)] = IGNORE
    return labels


def band_statistics(pixels: np.ndarray, valid: np.ndarray, scale: float) -> tuple[list, list]:
    """Per-band mean and standard deviation of the valid pixels, after dividing by ``scale``."""
    values = pixels[:, valid].astype(np.float64) / scale
    return values.mean(axis=1).round(4).tolist(), values.std(axis=1).round(4).tolist()


def main() -> None:
    torch.set_num_threads(2)
    started = time.perf_counter()
    with rasterio.open(IMAGE) as src:
        pixels = src.read()
    labels = rule_labels(pixels)
    mean, std = band_statistics(pixels, labels != IGNORE, 255.0)
    card = ModelCard(
        classes=("water", "land", "cloud"),
        colors=("#1f5fbf", "#3f9b3f", "#f2f2f2"),
        bands=(1, 2, 3),
        mean=mean,
        std=std,
        scale=255.0,
        resolution=300.0,
        resolution_unit="m",
        tile_size=256,
        overlap=32,
        extra={
            "name": "bahamas_psp18",
            "purpose": "demo: labels come from a spectral rule, not from ground truth",
            "trained_on": "examples/data/bahamas_rgb.tif, rows 0-539",
        },
    )
    model = PSPNet(layers=18, classes=3, width=0.1875, dropout=0.1)
    history = train(
        model, pixels[:, :HELD_OUT_FROM_ROW], labels[:HELD_OUT_FROM_ROW],
        epochs=15, steps_per_epoch=40, tile_size=192, batch_size=8, lr=5e-3,
        ignore_index=IGNORE, card=card, seed=0,
        on_epoch=lambda epoch, loss: print(f"epoch {epoch:2d}  loss {loss:.4f}", flush=True),
    )
    predicted = predict_labels(model, pixels, card)
    top, bottom = slice(0, HELD_OUT_FROM_ROW), slice(HELD_OUT_FROM_ROW, None)
    print(f"pixel accuracy vs the rule labels: training rows {pixel_accuracy(predicted[top], labels[top]):.3f}, "
          f"held-out rows {pixel_accuracy(predicted[bottom], labels[bottom]):.3f}, "
          f"whole image {pixel_accuracy(predicted, labels):.3f}")
    CHECKPOINT.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(CHECKPOINT, model, card)
    size_mb = CHECKPOINT.stat().st_size / 1e6
    print(f"wrote {CHECKPOINT.relative_to(HERE.parent)} ({size_mb:.1f} MB) after {len(history)} epochs "
          f"in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
