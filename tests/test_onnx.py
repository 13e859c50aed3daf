"""ONNX: export with the card in the metadata, models run by onnxruntime on the same engine,
and Deepness's metadata read as a card."""

import json
import pickle

import numpy as np
import onnx
import pytest
import torch

from segtile import segment
from segtile.cli import main
from segtile.inference.predictor import ModelError
from segtile.models import CardError, ModelCard, PSPNet, load_checkpoint, save_checkpoint
from segtile.models.onnx_export import export_onnx
from segtile.models.onnx_runtime import CARD_KEY, OnnxError, execution_providers
from tests.test_pspnet import randomise_batch_norms

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")

CARD = ModelCard(classes=["water", "land", "cloud"], colors=["#0000ff", "#00ff00", "#ffffff"], scale=255.0,
                 mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], resolution=30.0, resolution_unit="m",
                 tile_size=48, overlap=8, alignment=8, tta="flip", extra={"author": "tests"})


def image(height: int = 90, width: int = 120, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (3, height, width)).astype(np.uint8)


@pytest.fixture(scope="module")
def checkpoint_and_onnx(tmp_path_factory):
    """A small PSPNet checkpoint and its ONNX export."""
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    net = PSPNet(layers=18, classes=3, width=0.125).eval()
    randomise_batch_norms(net)
    checkpoint = save_checkpoint(folder / "psp.pt", net, CARD)
    return checkpoint, export_onnx(folder / "psp.onnx", net, CARD)


def export_plain(module: torch.nn.Module, path, shape=(1, 3, 64, 64), dynamic: bool = False, raw=None,
                 **metadata) -> None:
    """``module`` exported by torch alone, with ``metadata`` added as Deepness's docs show:
    every value JSON-encoded by hand (``raw``: values written as they are)."""
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(module.eval(), (torch.zeros(shape),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": axes, "y": axes} if dynamic else None, dynamo=False)
    model = onnx.load(str(path))
    texts = {key: json.dumps(value) for key, value in metadata.items()} | (raw or {})
    for key, text in texts.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, text
    onnx.save(model, str(path))


def test_export_keeps_the_card_and_dynamic_axes(checkpoint_and_onnx):
    model = onnx.load(str(checkpoint_and_onnx[1]))
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    assert ModelCard.from_json(metadata[CARD_KEY]) == CARD
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    assert load_checkpoint(checkpoint_and_onnx[1]).card == CARD


def test_onnx_runs_on_the_engine_with_the_checkpoints_labels(checkpoint_and_onnx):
    checkpoint, exported = checkpoint_and_onnx
    pixels = image()
    options = {"tile_size": 41, "overlap": 8, "batch_size": 3}
    expected = segment(pixels, checkpoint, **options)
    got = segment(pixels, exported, **options)
    np.testing.assert_allclose(got.logits.compute(), expected.logits.compute(), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got.labels.compute(), expected.labels.compute())


def test_the_network_survives_pickling_devices_and_layouts(checkpoint_and_onnx):
    network = load_checkpoint(checkpoint_and_onnx[1]).module
    x = torch.randn(2, 3, 33, 41)
    first = network(x)
    copy = pickle.loads(pickle.dumps(network))  # as a Dask worker gets it: sessions are made anew
    assert copy.to("cpu").to(memory_format=torch.channels_last) is copy
    torch.testing.assert_close(copy(x.contiguous(memory_format=torch.channels_last)), first)
    assert copy.providers("cpu") == ["CPUExecutionProvider"]


@pytest.mark.parametrize("device, available, expected", [
    ("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
    ("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"],
     [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]),
    ("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"],
     [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]),
    ("cuda", ["CPUExecutionProvider"], ["CPUExecutionProvider"]),
])
def test_cuda_runs_where_the_batch_is_on_a_gpu_and_onnxruntime_has_it(device, available, expected):
    assert execution_providers(torch.device(device), available) == expected


class Standardised(torch.nn.Module):
    """A pointwise network ending in softmax or sigmoid, as Deepness zoo models output."""

    def __init__(self, classes: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, classes, 1)
        self.activation = torch.nn.Sigmoid() if classes == 1 else torch.nn.Softmax(dim=1)

    def forward(self, x):
        return self.activation(self.conv(x))


DEEPNESS = {"model_type": "Segmentor", "class_names": {0: "field", 1: "forest", 2: "road", 3: "water"},
            "resolution": 50, "tile_size": 64, "tiles_overlap": 10,
            "standardization_mean": [0.485, 0.456, 0.406], "standardization_std": [0.229, 0.224, 0.225]}


def deepness_labels(network: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    """What Deepness computes on the whole image: pixels / 255, standardised, argmax."""
    mean = np.array(DEEPNESS["standardization_mean"], np.float32)[:, None, None]
    std = np.array(DEEPNESS["standardization_std"], np.float32)[:, None, None]
    x = torch.from_numpy((pixels / np.float32(255) - mean) / std)[None].float()
    with torch.inference_mode():
        out = network(x)[0].numpy()
    return (out[0] > 0.5).astype(np.uint8) if out.shape[0] == 1 else out.argmax(0)


@pytest.fixture
def deepness_file(tmp_path):
    """A Deepness-style segmentation model: fixed input (1, 3, 64, 64), softmax output."""
    path = tmp_path / "landcover.onnx"
    network = Standardised(classes=4)
    export_plain(network, path, **DEEPNESS)
    return path, network


def test_deepness_metadata_becomes_the_card(deepness_file):
    card = load_checkpoint(deepness_file[0]).card
    assert card.classes == ("field", "forest", "road", "water")
    assert (card.scale, card.mean, card.std) == (255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert (card.resolution, card.resolution_unit) == (0.5, "m")
    assert (card.tile_size, card.overlap) == (64, 6)  # 10 % of 64 px, rounded down as Deepness does
    assert card.extra["source"] == "deepness"


@pytest.mark.parametrize("tile_size", [64, 40])  # the model's size, and smaller tiles padded to it
def test_a_deepness_model_segments_as_deepness_would(deepness_file, tile_size):
    path, network = deepness_file
    pixels = image(100, 150)
    labels = segment(pixels, path, tile_size=tile_size, overlap=6, batch_size=3).labels.compute()
    np.testing.assert_array_equal(labels, deepness_labels(network, pixels))


def test_tiles_larger_than_a_fixed_input_are_refused_in_one_line(deepness_file):
    with pytest.raises(ModelError, match="64x64 px at most, not 80x80: use --tile-size 64"):
        segment(image(), deepness_file[0], tile_size=80, overlap=8).labels.compute()


def test_a_one_channel_sigmoid_model_gets_a_background_class(tmp_path):
    path = tmp_path / "roads.onnx"
    network = Standardised(classes=1, seed=3)
    # class_names as a Python literal, which Deepness accepts too
    export_plain(network, path, dynamic=True, raw={"class_names": "{0: 'road'}"},
                 standardization_mean=DEEPNESS["standardization_mean"],
                 standardization_std=DEEPNESS["standardization_std"])
    assert load_checkpoint(path).card.classes == ("background", "road")
    pixels = image(70, 50, seed=2)
    labels = segment(pixels, path, tile_size=32, overlap=4).labels.compute()
    expected = deepness_labels(network, pixels)
    assert 0 < expected.mean() < 1
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("metadata, message", [
    ({"model_type": "Detector"}, "segmentation models"),
    ({"class_names": {0: "a", 2: "b"}}, "without gaps"),
    ({"class_names": {0: "a", 1: "b"}}, "2 names for 4 output channels"),
    ({"tiles_overlap": "lots"}, "non-negative number"),
])
def test_bad_deepness_metadata_is_a_card_error(tmp_path, metadata, message):
    path = tmp_path / "model.onnx"
    export_plain(Standardised(classes=4), path, **metadata)
    with pytest.raises(CardError, match=message):
        load_checkpoint(path)


def test_an_onnx_file_without_metadata_gets_a_default_card(tmp_path):
    path = tmp_path / "plain.onnx"
    export_plain(Standardised(classes=5), path, dynamic=True)
    card = load_checkpoint(path).card
    assert card.classes == tuple(f"class_{i}" for i in range(5)) and (card.scale, card.mean) == (1.0, (0.0,) * 3)


def test_export_refuses_a_network_that_froze_its_input_size(tmp_path):
    class SizeDependent(torch.nn.Module):
        def forward(self, x):
            return x[:, :2] if x.shape[2] > 60 else -x[:, :2]

    with pytest.raises(OnnxError, match="does not export for tiles of any size"):
        export_onnx(tmp_path / "frozen.onnx", SizeDependent(), ModelCard(classes=["a", "b"]))


def test_segment_reports_a_deepness_detector_in_one_line(tmp_path, data_dir, capsys):
    path = tmp_path / "planes.onnx"
    export_plain(Standardised(classes=4), path, model_type="Detector")
    capsys.readouterr()
    assert main([str(data_dir / "rmnp-rgb.tif"), "--model", str(path), "--out", str(tmp_path / "m.tif")]) == 2
    err = capsys.readouterr().err
    assert "segmentation models (Segmentor) only" in err and err.count("\n") == 1

