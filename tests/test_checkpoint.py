"""Checkpoints: round trips, TorchScript with and without a card, every way a file can be wrong."""

import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from segtile.models import (
    CardError,
    CheckpointError,
    LoadedModel,
    ModelCard,
    PSPNet,
    load_checkpoint,
    load_model,
    load_reference_state_dict,
    probe_card,
    save_checkpoint,
    save_torchscript,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")



def small_pspnet(classes: int = 3, seed: int = 0, **kwargs) -> PSPNet:
    """A tiny PSPNet with random weights and batch-norm statistics (none left at 0 or 1)."""
    torch.manual_seed(seed)
    model = PSPNet(layers=18, classes=classes, width=0.125, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(seed + 11)
    return model.eval()


def card_for(classes: int = 3, bands: int = 3) -> ModelCard:
    return ModelCard(
        classes=[f"c{i}" for i in range(classes)], colors=["#102030"] * classes,
        in_channels=bands, mean=[0.1 * (i + 1) for i in range(bands)], std=[0.2] * bands,
        scale=255.0, resolution=10.0, resolution_unit="m", tile_size=128, overlap=16,
        extra={"author": "tests"},
    )


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_round_trip_keeps_weights_card_and_architecture(tmp_path):
    model, card = small_pspnet(in_channels=4, bins=(1, 2)), card_for(bands=4)
    path = save_checkpoint(tmp_path / "m.pt", model, card)
    loaded = load_checkpoint(path)
    assert isinstance(loaded, LoadedModel)
    assert_same_weights(loaded.module, model)
    assert loaded.card == replace(card, alignment=8)  # a PSPNet's tiles line up on 8 px
    assert loaded.config == {"name": "pspnet", "layers": 18, "classes": 3, "bins": [1, 2],
                             "dropout": 0.1, "zoom_factor": 8, "in_channels": 4, "width": 0.125,
                             "output_stride": 8}
    assert not loaded.module.training
    x = torch.randn(1, 4, 40, 33)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), model(x), rtol=0, atol=0)


def test_checkpoint_is_a_plain_dict_readable_without_code(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", small_pspnet(), card_for())
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "segtile-checkpoint" and payload["version"] == 1
    assert payload["card"]["classes"] == ["c0", "c1", "c2"]
    assert payload["arch"]["name"] == "pspnet"


def test_torchscript_with_card(tmp_path):
    model, card = small_pspnet(), card_for()
    path = save_torchscript(tmp_path / "m.ts", model, card)
    loaded = load_checkpoint(path)
    assert loaded.card == card and loaded.config is None
    x = torch.randn(2, 3, 33, 50)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), model(x))


def test_torchscript_card_json_spellings(tmp_path):
    """A card.json written by hand: bands as 1-based indices, mpp for slides."""
    module = torch.jit.script(torch.nn.Conv2d(3, 2, 1))
    card_json = '{"classes": ["tumour", "stroma"], "bands": [3, 2, 1], "mpp": 0.5, "scale": 255}'
    torch.jit.save(module, str(tmp_path / "m.ts"), _extra_files={"card.json": card_json})
    card = load_checkpoint(tmp_path / "m.ts").card
    assert card.bands == (3, 2, 1) and card.in_channels == 3
    assert card.resolution == 0.5 and card.resolution_unit == "um" and card.scale == 255.0


def test_torchscript_without_card_gets_probed_defaults(tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(4, 5, 1)), str(tmp_path / "m.ts"))
    card = load_checkpoint(tmp_path / "m.ts").card
    assert card.classes == tuple(f"class_{i}" for i in range(5))
    assert card.in_channels == 4 and card.mean == (0.0,) * 4 and card.std == (1.0,) * 4


class FirstTwoChannels(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :2] * 2.0


class Flatten(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def test_torchscript_without_parameters_is_probed_with_three_bands(tmp_path):
    torch.jit.save(torch.jit.script(FirstTwoChannels()), str(tmp_path / "m.ts"))
    card = load_checkpoint(tmp_path / "m.ts").card
    assert card.num_classes == 2 and card.in_channels == 3


def test_torchscript_that_gives_no_logits_and_has_no_card(tmp_path):
    torch.jit.save(torch.jit.script(Flatten()), str(tmp_path / "m.ts"))
    with pytest.raises(CheckpointError, match="no card"):
        load_checkpoint(tmp_path / "m.ts")


def test_probing_for_a_given_band_count_says_why_it_fails_and_keeps_training_mode():
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).train()
    assert probe_card(network, bands=3).num_classes == 4
    assert network.training
    with pytest.raises(CheckpointError, match=r"cannot segment 2 band\(s\): it fails on a \(1, 2, 64, 64\) input"):
        probe_card(network, bands=2)
    assert network.training


def test_torchscript_with_a_bad_card(tmp_path):
    module = torch.jit.script(torch.nn.Conv2d(3, 2, 1))
    torch.jit.save(module, str(tmp_path / "m.ts"), _extra_files={"card.json": '{"bands": 3}'})
    with pytest.raises(CardError, match="'classes' is missing"):
        load_checkpoint(tmp_path / "m.ts")


def test_save_torchscript_of_an_unscriptable_module(tmp_path):
    class Unscriptable(torch.nn.Module):
        def forward(self, x):
            return sum(t for t in [x, x])

    with pytest.raises(CheckpointError, match="cannot be scripted"):
        save_torchscript(tmp_path / "m.ts", Unscriptable(), card_for())


def test_load_model_accepts_paths_loaded_models_and_modules(tmp_path):
    model, card = small_pspnet(classes=4), card_for(classes=4)
    path = save_checkpoint(tmp_path / "m.pt", model, card)
    loaded = load_model(path)
    assert loaded.card == replace(card, alignment=8)
    assert load_model(loaded) is loaded
    bare = load_model(small_pspnet(classes=4))
    assert bare.card.num_classes == 4 and bare.config["classes"] == 4
    conv = load_model(torch.nn.Conv2d(2, 6, 1))
    assert conv.card.num_classes == 6 and conv.card.in_channels == 2 and conv.config is None
    with pytest.raises(CheckpointError, match="not int"):
        load_model(3)


def test_reference_weights_from_data_parallel_load_strictly():
    source, target = small_pspnet(seed=1), small_pspnet(seed=2)
    saved = {"epoch": 100, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}
    load_reference_state_dict(target, saved)
    assert_same_weights(target, source)
    load_reference_state_dict(target, small_pspnet(seed=3).state_dict())  # without the wrapper


def test_reference_weights_that_do_not_fit():
    weights = small_pspnet().state_dict()
    del weights["cls.4.bias"]
    weights["extra.weight"] = torch.zeros(1)
    weights["aux.4.weight"] = torch.zeros(9, 32, 1, 1)
    weights["aux.4.bias"] = [0.0, 0.0, 0.0]
    with pytest.raises(CheckpointError) as error:
        load_reference_state_dict(small_pspnet(), weights)
    message = str(error.value)
    assert "1 missing (first 'cls.4.bias')" in message
    assert "1 unexpected (first 'extra.weight')" in message
    assert "2 of another shape (first 'aux.4.weight': (9, 32, 1, 1) instead of (3, 32, 1, 1))" in message
    assert "\n" not in message


def test_save_refuses_a_card_that_does_not_fit(tmp_path):
    with pytest.raises(CardError, match="4 classes, but the network outputs 3"):
        save_checkpoint(tmp_path / "m.pt", small_pspnet(), card_for(classes=4))
    with pytest.raises(CardError, match="1 input bands, but the network takes 3"):
        save_torchscript(tmp_path / "m.ts", small_pspnet(), card_for(bands=1))
    assert not (tmp_path / "m.pt").exists()


def test_save_refuses_networks_it_cannot_rebuild(tmp_path):
    with pytest.raises(CheckpointError, match="save_torchscript"):
        save_checkpoint(tmp_path / "m.pt", torch.nn.Conv2d(3, 3, 1), card_for())


def write_payload(path: Path, **changes) -> Path:
    """A valid checkpoint with some of its entries replaced (None removes the entry)."""
    model = small_pspnet()
    payload = {"format": "segtile-checkpoint", "version": 1,
               "arch": {"name": "pspnet", **model.config()},
               "state_dict": model.state_dict(), "card": card_for().to_dict()}
    payload.update(changes)
    torch.save({k: v for k, v in payload.items() if v is not None}, path)
    return path


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def torch_file(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def fake_torchscript(path: Path) -> Path:
    """A zip that looks like TorchScript (it has constants.pkl) but holds no program."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/constants.pkl", b"garbage")
    return path


CARD = card_for().to_dict()
NOISE = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()

# case -> (how to write the file in a tmp dir, a fragment of the message it must raise)
BROKEN = {
    "missing": (lambda d: d / "nope.pt", "nope.pt: no such file"),
    "directory": (lambda d: d, "is a directory"),
    "empty": (lambda d: written(d / "empty.pt", b""), "is empty"),
    "text": (lambda d: written(d / "notes.txt", b"not a network\n"), "not a segtile checkpoint"),
    "random bytes": (lambda d: written(d / "noise.pt", NOISE), "not a segtile checkpoint"),
    "bare state_dict": (lambda d: torch_file(d / "bare.pt", small_pspnet().state_dict()),
                        "bare weights"),
    "reference training checkpoint": (lambda d: torch_file(d / "train_epoch_100.pth", {
        "epoch": 100, "state_dict": {f"module.{k}": v for k, v in small_pspnet().state_dict().items()}}),
        "bare weights; a PSPNet trained by the reference code (hszhao/semseg) converts with `segtile convert"),
    "pickled module": (lambda d: torch_file(d / "module.pt", torch.nn.Conv2d(1, 1, 1)),
                       "not a segtile checkpoint"),
    "another torch file": (lambda d: torch_file(d / "list.pt", [1, 2, 3]), "not a segtile checkpoint"),
    "damaged TorchScript": (lambda d: fake_torchscript(d / "m.ts"), "unreadable TorchScript file"),
    "newer version": (lambda d: write_payload(d / "v2.pt", version=2), "version 2"),
    "no arch": (lambda d: write_payload(d / "m.pt", arch=None), "no 'arch'"),
    "no weights": (lambda d: write_payload(d / "m.pt", state_dict=None), "no 'state_dict'"),
    "card not a dict": (lambda d: write_payload(d / "m.pt", card=["x"]), "'card' is a list"),
    "unknown arch": (lambda d: write_payload(d / "m.pt", arch={"name": "unet"}),
                     "unknown architecture 'unet'"),
    "invalid arch": (lambda d: write_payload(d / "m.pt", arch={"name": "pspnet", "layers": 42}),
                     "invalid pspnet architecture: ResNet depth 42"),
    "arch typo": (lambda d: write_payload(d / "m.pt", arch={"name": "pspnet", "layer": 18}),
                  "invalid pspnet architecture"),
    "wrong weights": (lambda d: write_payload(d / "m.pt", state_dict={
        **small_pspnet().state_dict(), "cls.4.weight": torch.zeros(5, 64, 1, 1)}),
        "(5, 64, 1, 1) instead of (3, 64, 1, 1)"),
    "card without classes": (lambda d: write_payload(d / "m.pt", card={
        k: v for k, v in CARD.items() if k != "classes"}), "'classes' is missing"),
    "card with another class count": (lambda d: write_payload(d / "m.pt", card={
        **CARD, "classes": ["a", "b"], "colors": []}), "2 classes, but the network outputs 3"),
    "card with a bad colour": (lambda d: write_payload(d / "m.pt", card={**CARD, "colors": ["red"] * 3}),
                               "'#rrggbb'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_files_raise_one_line_errors(tmp_path, case):
    write, fragment = BROKEN[case]
    path = write(tmp_path)
    with pytest.raises(ValueError) as error:
        load_checkpoint(path)
    kind = CardError if case.startswith("card with") or case == "card without classes" else CheckpointError
    assert type(error.value) is kind
    assert fragment in str(error.value)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)
