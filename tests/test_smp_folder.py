"""segmentation_models_pytorch models saved with save_pretrained, loaded from their folder: the
card made from config.json and card.json, what is missing asked for in one line, and (where smp
imports) the labels of the network itself."""

import json

import numpy as np
import pytest
import torch

from segtile import segment
from segtile.models import CardError, CheckpointError, LoadedModel, load_checkpoint


def smp_module():
    """segmentation_models_pytorch, or a skip saying why it cannot be imported here (PyPI's
    torchvision wheels are CUDA builds that do not load against a CPU-only torch)."""
    try:
        import segmentation_models_pytorch
    except Exception as exc:  # ImportError, or torchvision's RuntimeError
        pytest.skip(f"segmentation_models_pytorch does not import here: {type(exc).__name__}: {exc}")
    return segmentation_models_pytorch


def saved_config(folder, **arguments):
    """config.json as smp's save_pretrained writes it: the class, then the keyword arguments."""
    folder.mkdir(exist_ok=True)
    config = {"_model_class": "Unet", "encoder_name": "resnet18", "encoder_depth": 3,
              "decoder_channels": [16, 8, 4], "in_channels": 3, "classes": 3} | arguments
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_folder_without_class_names_asks_for_them_in_card_json(tmp_path):
    folder = saved_config(tmp_path / "unet", encoder_weights="imagenet")
    with pytest.raises(CheckpointError, match=r"names no classes: write 3 class names into .*card\.json"):
        load_checkpoint(folder)


def test_a_one_class_folder_asks_for_two_names(tmp_path):
    folder = saved_config(tmp_path / "unet", encoder_weights="imagenet", classes=1)
    with pytest.raises(CheckpointError, match=r"write 2 class names \(background first: a one-class model\)"):
        load_checkpoint(folder)


def test_an_encoder_trained_from_scratch_asks_for_the_normalisation(tmp_path):
    folder = saved_config(tmp_path / "unet", encoder_weights=None)
    (folder / "card.json").write_text(json.dumps({"classes": ["water", "land", "cloud"]}))
    with pytest.raises(CheckpointError, match=r"encoder_weights null.*write it into .*card\.json, e\.g\. \{\"scale\""):
        load_checkpoint(folder)


def test_class_names_of_another_count_are_refused(tmp_path):
    folder = saved_config(tmp_path / "unet", encoder_weights=None)
    (folder / "card.json").write_text(json.dumps({"classes": ["a", "b"], "mean": [0, 0, 0], "std": [1, 1, 1]}))
    with pytest.raises(CardError, match="model card: 2 classes, but the network outputs 3"):
        load_checkpoint(folder)


def test_without_smp_the_folder_says_how_to_install_it(tmp_path):
    try:
        import segmentation_models_pytorch  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("segmentation_models_pytorch imports here")
    folder = saved_config(tmp_path / "unet", encoder_weights=None)
    (folder / "card.json").write_text(json.dumps({"classes": ["a", "b", "c"], "mean": [0, 0, 0], "std": [1, 1, 1]}))
    with pytest.raises(CheckpointError, match=r"need that package, importable: pip install 'segtile\[smp\]'"):
        load_checkpoint(folder)


@pytest.fixture
def saved_unet(tmp_path):
    """A tiny smp Unet (ResNet-18 encoder of depth 3, no pretrained weights) saved with
    save_pretrained, with the card.json a user adds; and the network itself."""
    smp = smp_module()
    torch.manual_seed(0)
    network = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 4),
                       in_channels=3, classes=3).eval()
    folder = tmp_path / "unet"
    network.save_pretrained(str(folder))
    card = {"classes": ["water", "land", "cloud"], "scale": 255, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    (folder / "card.json").write_text(json.dumps(card))
    return folder, network


def test_a_saved_unet_gives_the_labels_of_the_network_itself(saved_unet):
    folder, network = saved_unet
    loaded = load_checkpoint(folder)
    assert loaded.card.classes == ("water", "land", "cloud") and loaded.card.scale == 255
    assert (loaded.card.alignment, loaded.card.tile_extra) == (8, 0)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 90, 120)).astype(np.uint8)
    expected = segment(pixels, LoadedModel(network, loaded.card), batch_size=2).labels.compute()
    np.testing.assert_array_equal(segment(pixels, folder, batch_size=2).labels.compute(), expected)


def test_pretrained_weights_whose_normalisation_smp_cannot_give_ask_for_it(saved_unet, monkeypatch):
    """smp reads the normalisation of pretrained weights from the Hugging Face Hub: offline (as
    the tests run), the folder asks for it in card.json, and a card.json that gives it is used."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    folder = saved_unet[0]
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"encoder_weights": "imagenet"}))
    (folder / "card.json").write_text(json.dumps({"classes": ["water", "land", "cloud"]}))
    with pytest.raises(CheckpointError, match=r"smp gives no normalisation for encoder weights 'imagenet' "
                                              r"\(\w+\): write it into .*card\.json"):
        load_checkpoint(folder)
    given = {"classes": ["water", "land", "cloud"], "scale": 255, "mean": [0.485, 0.456, 0.406],
             "std": [0.229, 0.224, 0.225]}
    (folder / "card.json").write_text(json.dumps(given))
    assert load_checkpoint(folder).card.mean == tuple(given["mean"])
