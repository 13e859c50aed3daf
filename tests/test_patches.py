"""Patch classifiers in WSInfer's layout (config.json + torchscript_model.pt) run as coarse maps:
each patch's class painted over it, as WSInfer would classify that patch."""

import json

import numpy as np
import pytest
import rasterio
import tifffile
import torch
import torch.nn.functional as F

from segtile import segment
from segtile.cli import main
from segtile.models import CheckpointError, load_checkpoint

PATCH, INPUT = 16, 8  # patch_size_pixels, and Resize's size
MEAN, STD = [0.6, 0.5, 0.4], [0.2, 0.25, 0.3]
CLASSES = ["stroma", "tumor", "fat"]


class TinyClassifier(torch.nn.Module):
    """(N, 3, 8, 8) patches -> (N, 3) logits: a convolution, global pooling, a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.head = torch.nn.Linear(6, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def wsinfer_config(**changes) -> dict:
    config = {"spec_version": "1.0", "architecture": "tiny", "num_classes": len(CLASSES), "class_names": CLASSES,
              "patch_size_pixels": PATCH, "spacing_um_px": 0.5,
              "transform": [{"name": "Resize", "arguments": {"size": INPUT}}, {"name": "ToTensor"},
                            {"name": "Normalize", "arguments": {"mean": MEAN, "std": STD}}]}
    return config | changes


@pytest.fixture
def wsinfer_model(tmp_path):
    """A WSInfer model folder holding a tiny seeded classifier, and the classifier."""
    torch.manual_seed(0)
    classifier = TinyClassifier().eval()
    folder = tmp_path / "tiny-wsinfer"
    folder.mkdir()
    torch.jit.save(torch.jit.script(classifier), str(folder / "torchscript_model.pt"))
    (folder / "config.json").write_text(json.dumps(wsinfer_config()))
    return folder, classifier


def classify_patches(classifier: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    """What WSInfer does, patch by patch on the lattice from the corner (whole patches only): the
    class of each patch, painted over it."""
    bands, height, width = pixels.shape
    labels = np.zeros((height // PATCH * PATCH, width // PATCH * PATCH), np.uint8)
    for row in range(0, labels.shape[0], PATCH):
        for column in range(0, labels.shape[1], PATCH):
            patch = torch.from_numpy(pixels[:, row:row + PATCH, column:column + PATCH].astype(np.float32))[None]
            patch = F.interpolate(patch, size=(INPUT, INPUT), mode="bilinear", align_corners=False, antialias=True)
            x = (patch / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
            with torch.inference_mode():
                labels[row:row + PATCH, column:column + PATCH] = int(classifier(x).argmax())
    return labels


def test_the_card_comes_from_the_config(wsinfer_model):
    card = load_checkpoint(wsinfer_model[0]).card
    assert card.classes == tuple(CLASSES) and card.in_channels == 3
    assert (card.scale, card.mean, card.std) == (255.0, tuple(MEAN), tuple(STD))
    assert (card.resolution, card.resolution_unit) == (0.5, "um")
    assert (card.tile_size % PATCH, card.overlap, card.alignment, card.tile_extra) == (0, 0, PATCH, 0)


@pytest.mark.parametrize("tile_size, overlap", [(None, None), (48, 16), (40, 10)])
def test_each_patch_gets_the_class_wsinfer_gives_it(wsinfer_model, tile_size, overlap):
    """Whatever the tiling asked for (rounded to whole patches on the lattice), every whole patch
    is painted with its own class, and the patches cut by the image's edge get one too."""
    folder, classifier = wsinfer_model
    pixels = np.random.default_rng(1).integers(0, 256, (3, 70, 90)).astype(np.uint8)
    labels = segment(pixels, folder, tile_size=tile_size, overlap=overlap, batch_size=3).labels.compute()
    expected = classify_patches(classifier, pixels)
    np.testing.assert_array_equal(labels[:expected.shape[0], :expected.shape[1]], expected)
    assert len(np.unique(expected)) > 1  # a map, not one class everywhere
    edge = labels[expected.shape[0]:, :]
    assert edge.size and (edge != 255).all()
    for row in range(0, 70, PATCH):  # the edge patches are patches too: one class each
        for column in range(0, 90, PATCH):
            assert len(np.unique(labels[row:row + PATCH, column:column + PATCH])) == 1


def test_the_command_maps_a_slide_with_a_wsinfer_model(wsinfer_model, tmp_path, capsys):
    image = tmp_path / "patchy.tif"
    pixels = np.random.default_rng(2).integers(0, 256, (64, 96, 3)).astype(np.uint8)
    tifffile.imwrite(image, pixels, photometric="rgb")
    out = tmp_path / "map.tif"
    assert main([str(image), "--model", str(wsinfer_model[0]), "--resolution", "native", "--out", str(out),
                 "--quiet"]) == 0
    with rasterio.open(out) as mask:
        labels = mask.read(1)
    np.testing.assert_array_equal(labels, classify_patches(wsinfer_model[1], pixels.transpose(2, 0, 1)))


@pytest.mark.parametrize("changes, message", [
    ({"class_names": ["a"]}, "'class_names' must list num_classes (3) names"),
    ({"patch_size_pixels": 0}, "'patch_size_pixels' must be a positive integer"),
    ({"transform": [{"name": "CenterCrop"}]}, "transform 'CenterCrop' is not one segtile applies"),
    ({"spacing_um_px": None}, "'spacing_um_px' must be a positive number"),
])
def test_a_bad_config_is_one_line(wsinfer_model, changes, message):
    folder = wsinfer_model[0]
    (folder / "config.json").write_text(json.dumps(wsinfer_config(**changes)))
    with pytest.raises(CheckpointError, match=f"config.json: {message}".replace("(", r"\(").replace(")", r"\)")):
        load_checkpoint(folder)


def test_a_folder_of_something_else_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file nor a model folder"):
        load_checkpoint(tmp_path)
