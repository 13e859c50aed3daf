"""segtile convert: the reference's training checkpoints (--from semseg) as segtile checkpoints
with their cards, checkpoints as ONNX files, and every way the command can be used wrongly."""

import argparse
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
import torch

from segtile import segment
from segtile.cli import main
from segtile.cli.convert import DATASETS as CLI_DATASETS
from segtile.cli.convert_run import convert
from segtile.models import CheckpointError, ModelCard, PSPNet, load_checkpoint, save_checkpoint, save_torchscript
from segtile.models.builtin import DEFAULT_MODEL, builtin_models, choose_model
from segtile.models.semseg import semseg_architecture
from segtile.models.semseg_datasets import DATASETS
from tests.test_pspnet import functional_reference, randomise_batch_norms


def run(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def semseg_checkpoint(tmp_path_factory):
    """A file as hszhao/semseg's tool/train.py saves it: a PSPNet-50 for VOC2012 (21 classes)
    with seeded random weights, every key behind DataParallel's ``module.``, the epoch, and the
    SGD state (backbone and heads in two parameter groups, a momentum buffer after one step)."""
    torch.manual_seed(0)
    net = PSPNet(layers=50, classes=21)
    randomise_batch_norms(net)
    backbone = [p for name, p in net.named_parameters() if name.startswith("layer")]
    heads = [p for name, p in net.named_parameters() if not name.startswith("layer")]
    optimizer = torch.optim.SGD([{"params": backbone, "lr": 0.01}, {"params": heads, "lr": 0.1}],
                                lr=0.01, momentum=0.9, weight_decay=1e-4)
    net.cls[4].bias.grad = torch.ones_like(net.cls[4].bias)
    optimizer.step()
    weights = {key: value.clone() for key, value in net.state_dict().items()}
    path = tmp_path_factory.mktemp("semseg") / "train_epoch_50.pth"
    torch.save({"epoch": 50, "state_dict": {f"module.{k}": v for k, v in weights.items()},
                "optimizer": optimizer.state_dict()}, path)
    return path, weights


def test_semseg_weights_convert_to_a_checkpoint_with_the_reference_logits(tmp_path, semseg_checkpoint, capsys):
    source, weights = semseg_checkpoint
    out = tmp_path / "voc_psp50.pt"
    assert run("convert", source, "--from", "semseg", "--dataset", "voc2012", "--out", out) == 0
    assert capsys.readouterr().out == f"segtile: wrote {out}\n"
    loaded = load_checkpoint(out)
    assert (loaded.config["layers"], loaded.config["classes"]) == (50, 21)
    x = torch.randn(1, 3, 33, 41, generator=torch.Generator().manual_seed(1))  # 8k + 1
    with torch.inference_mode():
        torch.testing.assert_close(loaded.module(x), functional_reference(weights, x), rtol=1e-4, atol=1e-4)
    card = loaded.card
    assert card.classes == DATASETS["voc2012"].names and card.colors == DATASETS["voc2012"].colors
    assert card.mean == pytest.approx((123.675, 116.28, 103.53)) and card.scale == 1.0
    assert card.std == pytest.approx((58.395, 57.12, 57.375))
    assert (card.tile_size, card.overlap, card.alignment, card.tta) == (473, 157, 8, "flip")
    assert card.extra["dataset"] == "voc2012" and card.extra["epoch"] == 50


def test_weights_of_another_dataset_are_refused_with_the_one_that_fits(tmp_path, semseg_checkpoint, capsys):
    out = tmp_path / "m.pt"
    assert run("convert", semseg_checkpoint[0], "--from", "semseg", "--dataset", "ade20k", "--out", out) == 2
    err = capsys.readouterr().err
    assert "21 classes, but ade20k has 150 (--dataset voc2012?)" in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("layers, classes", [(50, 150), (101, 19)])
def test_depth_and_classes_are_read_from_the_weights(layers, classes):
    with torch.device("meta"):
        keys = PSPNet(layers=layers, classes=classes).state_dict()
    assert semseg_architecture({f"module.{k}": v for k, v in keys.items()}) == (layers, classes)


@pytest.mark.parametrize("dataset, count, first, last, colour_of_first, crop", [
    ("ade20k", 150, "wall", "flag", "#787878", 473),
    ("voc2012", 21, "background", "tvmonitor", "#000000", 473),
    ("cityscapes", 19, "road", "bicycle", "#804080", 713),
])
def test_dataset_tables_hold_the_reference_classes(dataset, count, first, last, colour_of_first, crop):
    table = DATASETS[dataset]
    assert len(table.names) == len(set(table.names)) == count
    assert (table.names[0], table.names[-1], table.colors[0], table.crop_size) == (first, last, colour_of_first, crop)


def test_the_command_offers_every_dataset_of_the_tables():
    assert set(CLI_DATASETS) == set(DATASETS)


def bad_conversions(tmp_path):
    """Each case: the arguments after ``segtile convert`` and a part of the message expected."""
    psanet = tmp_path / "psanet.pth"
    torch.save({"state_dict": {"module.psa.0.weight": torch.zeros(1), "module.cls.4.weight": torch.zeros(2, 1, 1, 1)}},
               psanet)
    pickled = tmp_path / "with_args.pth"
    torch.save({"state_dict": {}, "args": argparse.Namespace(layers=50)}, pickled)
    scripted = save_torchscript(tmp_path / "pointwise.ts", torch.nn.Conv2d(3, 2, 1), ModelCard(classes=["a", "b"]))
    existing = tmp_path / "existing.pt"
    existing.write_bytes(b"precious")
    semseg = ["--from", "semseg", "--dataset", "voc2012", "--out", tmp_path / "m.pt"]
    return {
        "no dataset": ([psanet, "--from", "semseg", "--out", tmp_path / "m.pt"], "--dataset"),
        "dataset without semseg": ([scripted, "--dataset", "ade20k", "--out", tmp_path / "m.onnx"], "--from semseg"),
        "psanet": ([psanet, *semseg], "PSANet"),
        "pickled objects": ([pickled, *semseg], "(argparse.Namespace)"),
        "missing": ([tmp_path / "nope.pth", *semseg], "no such file"),
        "segtile to checkpoint": ([scripted, "--to", "checkpoint", "--out", tmp_path / "m.pt"], "--from semseg"),
        "onnx named .pt": ([scripted, "--to", "onnx", "--out", tmp_path / "m.pt"], "writes a .onnx file"),
        "no such model": (["no_such_model", "--out", tmp_path / "m.pt"], "installed models: "),
        "extension": ([scripted, "--out", tmp_path / "m.h5"], "(.onnx)"),
        "exists": ([psanet, "--from", "semseg", "--dataset", "voc2012", "--out", existing], "exists"),
    }


BAD_CONVERSIONS = ["no dataset", "dataset without semseg", "psanet", "pickled objects", "missing",
                   "segtile to checkpoint", "onnx named .pt", "no such model", "extension", "exists"]


@pytest.mark.parametrize("case", BAD_CONVERSIONS)
def test_bad_conversions_are_one_line_and_exit_2(tmp_path, case, capsys):
    args, message = bad_conversions(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run("convert", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("segtile: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "existing.pt").read_bytes() == b"precious"


def test_an_unknown_dataset_is_refused_before_the_weights_are_read(tmp_path):
    with pytest.raises(CheckpointError, match="unknown semseg dataset 'coco'"):
        convert(tmp_path / "nope.pth", tmp_path / "m.pt", source_format="semseg", dataset="coco")
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_converts_to_onnx_with_its_card(tmp_path, capsys):
    card = ModelCard(classes=["a", "b"], tile_size=64, overlap=8, alignment=8, tta="flip")
    checkpoint = save_checkpoint(tmp_path / "m.pt", PSPNet(layers=18, classes=2, width=0.125), card)
    exported = tmp_path / "m.onnx"
    assert run("convert", checkpoint, "--out", exported) == 0
    assert capsys.readouterr().out == f"segtile: wrote {exported}\n"
    assert load_checkpoint(exported).card == card
    assert run("convert", exported, "--out", tmp_path / "again.onnx") == 2
    assert "is an ONNX file already" in capsys.readouterr().err


def test_an_installed_model_converts_by_name_to_torchscript_with_its_card(tmp_path, data_dir, capsys):
    """`segtile convert NAME --to torchscript`: the installed model's card travels inside the file,
    and segtile gives the TorchScript file the labels it gives the checkpoint."""
    scripted = tmp_path / "nuclei.pt"
    assert run("convert", "nuclei_psp18", "--to", "torchscript", "--out", scripted) == 0
    assert capsys.readouterr().out == f"segtile: wrote {scripted}\n"
    installed = load_checkpoint(choose_model("nuclei_psp18").path)
    loaded = load_checkpoint(scripted)
    assert isinstance(loaded.module, torch.jit.ScriptModule) and loaded.card == installed.card
    pixels = tifffile.imread(data_dir / "nuclei_img2d.tif")[None, :200, :300]
    expected = segment(pixels, "nuclei_psp18").labels.compute()
    np.testing.assert_array_equal(segment(pixels, scripted).labels.compute(), expected)


def test_a_torchscript_export_runs_in_a_host_without_segtile(tmp_path):
    """What a libtorch host does (C++ ``torch::jit::load(path, device, extra_files)``, the Deep Java
    Library): load the file with torch alone, read card.json, normalise as it says, get logits."""
    card = ModelCard(classes=["a", "b"], scale=255.0, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2], tile_size=65,
                     overlap=8, alignment=8)
    torch.manual_seed(0)
    net = PSPNet(layers=18, classes=2, width=0.125).eval()
    checkpoint = save_checkpoint(tmp_path / "m.pt", net, card)
    scripted = tmp_path / "m_ts.pt"
    assert run("convert", checkpoint, "--out", scripted) == 0
    host = textwrap.dedent(f"""
        import json, sys, torch
        extra = {{"card.json": ""}}
        module = torch.jit.load({str(scripted)!r}, map_location="cpu", _extra_files=extra)
        card = json.loads(extra["card.json"])
        pixels = torch.arange(2 * 3 * 65 * 65, dtype=torch.float32).reshape(2, 3, 65, 65) % 256
        mean, std = (torch.tensor(card[name]).view(1, 3, 1, 1) for name in ("mean", "std"))
        x = (pixels / card["scale"] - mean) / std
        torch.save(module(x), {str(tmp_path / "host.pt")!r})
        print("segtile" in sys.modules)
        """)
    done = subprocess.run([sys.executable, "-c", host], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    pixels = torch.arange(2 * 3 * 65 * 65, dtype=torch.float32).reshape(2, 3, 65, 65) % 256
    x = (pixels / 255.0 - torch.tensor(card.mean).view(1, 3, 1, 1)) / torch.tensor(card.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        torch.testing.assert_close(torch.load(tmp_path / "host.pt"), net(x), rtol=1e-4, atol=1e-4)


def test_segtile_models_lists_the_installed_models_with_their_summaries(capsys):
    assert run("models") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(builtin_models())
    for name, path in builtin_models().items():
        line = next(line for line in lines if line.startswith(name))
        assert line.endswith(f": {load_checkpoint(path).card.summary()}")
        assert ("(default)" in line) == (name == DEFAULT_MODEL)
