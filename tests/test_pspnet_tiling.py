"""PSPNet tiles that line up: features every 8 px, upsampled with align_corners, so tiles of 8k + 1
pixels starting at multiples of 8 (the card's ``alignment``) agree with the untiled network."""

import numpy as np
import pytest
import rasterio
import torch

from segtile import segment
from segtile.inference.normalise import Normalisation, normalise_
from segtile.models import LoadedModel, PSPNet, load_checkpoint
from segtile.models.builtin import DEFAULT_MODEL, builtin_models


def test_pspnet_checkpoints_and_networks_carry_their_alignment():
    assert load_checkpoint(builtin_models()[DEFAULT_MODEL]).card.alignment == 8  # saved before output_stride was
    from segtile.models import load_model

    for stride in (8, 4, 2):
        assert load_model(PSPNet(layers=18, classes=2, width=0.125, output_stride=stride)).card.alignment == stride


@pytest.mark.parametrize("stride", [8, 4, 2])
def test_the_features_sit_every_output_stride_pixels_and_a_checkpoint_keeps_the_stride(tmp_path, stride):
    from segtile.models import ModelCard, save_checkpoint

    torch.manual_seed(0)
    net = PSPNet(layers=18, classes=2, width=0.125, output_stride=stride).eval()
    x = torch.randn(1, 3, 8 * 8 + 1, 8 * 6 + 1)
    with torch.inference_mode():
        features = net.layer4(net.layer3(net.layer2(net.layer1(net.layer0(x)))))
        assert features.shape[-2:] == (64 // stride + 1, 48 // stride + 1)
        save_checkpoint(tmp_path / "net.pt", net, ModelCard(classes=("a", "b"), in_channels=3))
        loaded = load_checkpoint(tmp_path / "net.pt")
        assert loaded.config["output_stride"] == stride
        torch.testing.assert_close(loaded.module(x), net(x))


@pytest.mark.parametrize("tile, overlap", [(128, 32), (256, 64)])
def test_aligned_tiles_agree_with_the_untiled_network_far_better(data_dir, tile, overlap):
    # The nuclei demo model: its logits vary fast across its objects, so drift shows plainly (with
    # the Landsat default model, whose water varies slowly, aligned tiles gain less: 0.82-0.85 of
    # the drifting error, 1-2 points of agreement, at these tilings).
    model = load_checkpoint(builtin_models()["nuclei_psp18"])
    with rasterio.open(data_dir / "nuclei_img2d.tif") as src:
        image = src.read()[:, :401, :505]  # 401 x 505: 8k + 1 both ways, exact in one piece
    x = torch.from_numpy(image.astype(np.float32))[None]
    with torch.inference_mode():
        untiled = model.module.eval()(normalise_(x, Normalisation.of(model.card)))[0].numpy()

    def tiled(alignment: int) -> np.ndarray:
        card = model.card.__class__(**{**model.card.to_dict(), "alignment": alignment})
        result = segment(image, LoadedModel(model.module, card), tile_size=tile, overlap=overlap, device="cpu")
        return result.logits.compute()

    aligned, drifting = tiled(8), tiled(1)
    error_aligned, error_drifting = (np.mean(np.abs(t - untiled)) for t in (aligned, drifting))
    agree_aligned, agree_drifting = (np.mean(t.argmax(0) == untiled.argmax(0)) for t in (aligned, drifting))
    assert error_aligned < 0.8 * error_drifting
    assert agree_aligned > agree_drifting + 0.02
