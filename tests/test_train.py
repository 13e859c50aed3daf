"""``segtile train``: training from label rasters and polygons, the split, the optimiser and its
schedule, resuming, --init, the card filled from the data, and every bad input."""

import json

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine
from rasterio.windows import Window

from segtile.api import segment
from segtile.cli import main
from segtile.georef import Georef
from segtile.inference.normalise import Normalisation
from segtile.models import LoadedModel, ModelCard, PSPNet, load_checkpoint, save_checkpoint
from segtile.models.checkpoint import read_training_state
from segtile.models.resnet import resnet_depth
from segtile.sources import open_source
from segtile.sources.labels import IGNORE, open_labels
from segtile.sources.working_grid import choose_grid
from segtile.training.augment import rescale
from segtile.training.datacard import card_from_data, native_resolution, suggested_tiling, value_scale
from segtile.training.loop import (
    TrainError,
    TrainOptions,
    draw_batch,
    make_optimizer,
    network_input,
    poly_lr,
    segmentation_loss,
    train,
)
from segtile.training.sampling import SamplingError, TrainingData
from tests.geodata import IMAGE_TRANSFORM, pixel_box, write_polygons, write_raster
from tests.test_pspnet import BASIC_BLOCKS, BOTTLENECK_BLOCKS, random_state_dict, torchvision_layout

TINY = ["--layers", "18", "--width", "0.125", "--tile-size", "32", "--batch-size", "2", "--quiet"]


def run(*args) -> int:
    return main([str(a) for a in args])


def blocks_scene(seed: int = 0, size: int = 96):
    """A 3-band uint8 image of 16-pixel squares, each dark or bright (plus noise), its labels, and
    a nodata corner (0 in every band, unlabelled)."""
    rng = np.random.default_rng(seed)
    labels = np.kron(rng.integers(0, 2, (size // 16, size // 16)), np.ones((16, 16), np.int64)).astype(np.uint8)
    pixels = np.clip(60 + 120 * labels + rng.normal(0, 20, (3, size, size)), 1, 255).astype(np.uint8)
    pixels[:, :8, :8] = 0
    labels[:8, :8] = IGNORE
    return pixels, labels


@pytest.fixture
def scene(tmp_path):
    """The blocks scene as a georeferenced GeoTIFF (nodata 0) and a label raster on its grid."""
    pixels, labels = blocks_scene()
    image = write_raster(tmp_path / "image.tif", pixels, nodata=0)
    return image, write_raster(tmp_path / "labels.tif", labels)


def test_training_from_a_label_raster_writes_a_checkpoint_whose_card_is_filled_from_the_data(tmp_path, scene):
    image, labels = scene
    out = tmp_path / "model.pt"
    assert run("train", "--image", image, "--labels", labels, "--classes", "dark,bright", "--out", out,
               "--colors", "#000000,#ffffff", "--epochs", "2", "--steps-per-epoch", "2", "--val-fraction", "0",
               *TINY) == 0
    loaded = load_checkpoint(out)
    card = loaded.card
    assert isinstance(loaded.module, PSPNet) and loaded.config["width"] == 0.125
    assert card.classes == ("dark", "bright") and card.colors == ("#000000", "#ffffff")
    assert card.bands == (1, 2, 3) and card.in_channels == 3
    assert card.extra["band_names"] == ["red", "green", "blue"]  # GDAL's colour interpretation of a 3-band uint8
    assert card.scale == 255.0
    with rasterio.open(image) as src:  # 9 blocks, all under the 64 statistics windows: every valid pixel
        pixels, valid = src.read().astype(np.float64) / 255, src.dataset_mask() > 0
    np.testing.assert_allclose(card.mean, pixels[:, valid].mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(card.std, pixels[:, valid].std(axis=1), rtol=1e-5)
    assert (card.resolution, card.resolution_unit, card.resolution_range) == (30.0, "m", (30.0, 30.0))
    assert (card.tile_size, card.overlap, card.alignment) == (33, 9, 8)
    record = card.extra["training"]
    assert record["images"] == ["image.tif"] and record["labels"] == ["labels.tif"]
    assert record["epochs_done"] == 2 and record["steps_done"] == 4 and len(record["loss"]) == 2
    assert record["val_miou"] == [None, None]
    state = read_training_state(out)
    assert state["step"] == 4 and state["epoch"] == 2 and state["optimizer"]["param_groups"][0]["momentum"] == 0.9


def test_the_card_records_scale_resolution_and_tiling_from_the_data():
    assert value_scale(np.uint8) == 255 and value_scale(np.uint16) == 65535 and value_scale(np.float32) == 1
    assert value_scale(np.int16) == 1
    assert native_resolution(Georef(mpp=0.2527)) == (0.2527, "um", {})
    degrees = Affine(0.0003, 0, -75, 0, -0.0003, 25)
    assert native_resolution(Georef(crs=rasterio.CRS.from_epsg(4326), transform=degrees)) == \
        (None, None, {"pixel_size": 0.0003, "pixel_size_unit": "degree"})
    feet = rasterio.CRS.from_epsg(2227)  # California zone III, US survey feet
    resolution, unit, _ = native_resolution(Georef(crs=feet, transform=Affine(2, 0, 6e6, 0, -2, 2e6)))
    assert unit == "m" and resolution == pytest.approx(2 * 1200 / 3937)
    assert native_resolution(Georef()) == (None, None, {})
    assert suggested_tiling(256) == (257, 33) and suggested_tiling(473) == (473, 57)
    assert suggested_tiling(128) == (129, 17)


def test_the_card_records_the_range_of_pixel_sizes_trained_for(tmp_path, scene):
    """A model trained on images of 30 and 45 m pixels serves both on their own grids."""
    image, labels = scene
    pixels, label_array = blocks_scene(seed=1)
    coarser = IMAGE_TRANSFORM * Affine.scale(1.5)
    write_raster(tmp_path / "coarse.tif", pixels, transform=coarser, nodata=0)
    write_raster(tmp_path / "coarse_labels.tif", label_array, transform=coarser)
    out = tmp_path / "model.pt"
    assert run("train", "--image", image, "--labels", labels, "--image", tmp_path / "coarse.tif", "--labels",
               tmp_path / "coarse_labels.tif", "--classes", "dark,bright", "--out", out, "--epochs", "1",
               "--steps-per-epoch", "1", "--val-fraction", "0", *TINY) == 0
    card = load_checkpoint(out).card
    assert (card.resolution, card.resolution_range) == (30.0, (30.0, 45.0))
    assert choose_grid(open_source(tmp_path / "coarse.tif"), card)[1] == []  # 45 m runs on its own grid


def test_scale_augmentation_shows_other_pixel_sizes_and_widens_the_card_range(tmp_path, scene):
    """Windows of a random zoom in [1/Z, Z] are resampled to the tile; the card then serves the
    images' pixel sizes up to Z times the coarsest (30 m trained with Z = 2: 30-60 m)."""
    image, labels = scene
    source = open_source(image)
    data = TrainingData([source], [open_labels(labels, source, ("dark", "bright"))], 32, 0.0, 0)
    options = TrainOptions(tile_size=32, batch_size=4, scale_augment=2.0)
    batch = draw_batch(data, options, step=0)
    assert batch.pixels.shape == (4, 3, 32, 32) and batch.labels.shape == (4, 32, 32)
    assert set(np.unique(batch.labels)) <= {0, 1, IGNORE}  # labels resampled by nearest neighbour, never mixed
    sample = data.read(0, Window(16, 16, 64, 64))
    halved = rescale(sample, 32)
    np.testing.assert_array_equal(halved.labels, sample.labels[::2, ::2])  # 16-px squares: nearest keeps them
    assert halved.pixels.mean() == pytest.approx(sample.pixels.mean(), rel=0.01)  # averaged, as a coarser sensor
    out = tmp_path / "model.pt"
    assert run("train", "--image", image, "--labels", labels, "--classes", "dark,bright", "--out", out, "--epochs",
               "1", "--steps-per-epoch", "1", "--val-fraction", "0", "--scale-augment", "2", *TINY) == 0
    card = load_checkpoint(out).card
    assert (card.resolution, card.resolution_range) == (30.0, (30.0, 60.0))
    assert card.extra["training"]["scale_augment"] == 2.0


def test_training_from_a_geopackage_of_polygons(tmp_path, scene):
    image, _ = scene
    boxes = [pixel_box(IMAGE_TRANSFORM, 16, 48, 16, 48), pixel_box(IMAGE_TRANSFORM, 60, 90, 50, 90)]
    polygons = write_polygons(tmp_path / "labels.gpkg", boxes, ["field", "water"], field="class")
    out = tmp_path / "model.pt"
    assert run("train", "--image", image, "--labels", polygons, "--classes", "water,field", "--out", out,
               "--epochs", "1", "--steps-per-epoch", "2", "--val-fraction", "0.3", *TINY) == 0
    record = load_checkpoint(out).card.extra["training"]
    assert record["steps_done"] == 2 and record["val_miou"][0] is not None


def test_training_from_qupath_geojson_on_an_image_without_crs(tmp_path):
    pixels, _ = blocks_scene(seed=3, size=64)
    image = write_raster(tmp_path / "image.tif", pixels[0].astype(np.uint16) * 40, crs=None)
    def square(x, y):
        return {"type": "Polygon", "coordinates": [[[x, y], [x + 20, y], [x + 20, y + 20], [x, y + 20], [x, y]]]}

    features = [{"type": "Feature", "geometry": square(x, y),
                 "properties": {"objectType": "annotation", "classification": {"name": name, "color": [0, 0, 0]}}}
                for x, y, name in ((4, 4, "Tumor"), (36, 10, "Stroma"), (10, 40, "Tumor"))]
    annotations = tmp_path / "annotations.geojson"
    annotations.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    out = tmp_path / "model.pt"
    assert run("train", "--image", image, "--labels", annotations, "--classes", "Stroma,Tumor", "--out", out,
               "--epochs", "1", "--steps-per-epoch", "1", *TINY) == 0
    card = load_checkpoint(out).card
    assert card.scale == 65535 and card.in_channels == 1 and card.resolution is None


def test_a_run_interrupted_and_resumed_ends_as_the_uninterrupted_run(tmp_path, scene):
    """The first epoch of a 3-epoch run is saved as the command saves it, then the run stops (as
    on Ctrl-C); `--resume` then finishes it exactly as one uninterrupted `segtile train` run."""
    image, labels = scene
    options = TrainOptions(epochs=3, tile_size=32, batch_size=2, steps_per_epoch=2, val_fraction=0.2)
    whole, interrupted, resumed = tmp_path / "whole.pt", tmp_path / "interrupted.pt", tmp_path / "resumed.pt"
    assert run("train", "--image", image, "--labels", labels, "--classes", "dark,bright", "--out", whole,
               "--epochs", "3", "--steps-per-epoch", "2", "--val-fraction", "0.2", *TINY) == 0

    torch.manual_seed(options.seed)  # what the command does before training, step by step
    model = PSPNet(layers=18, classes=2, width=0.125, in_channels=3)
    source = open_source(image)
    data = TrainingData([source], [open_labels(labels, source, ("dark", "bright"))], 32, 0.2, options.seed)
    card = card_from_data(data, ("dark", "bright"), None, (1, 2, 3), source.band_names)

    def save_and_stop(result, state):
        save_checkpoint(interrupted, model, card, training=state.to_dict())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(model, data, card, options, on_epoch=save_and_stop)
    assert read_training_state(interrupted)["step"] == 2
    assert run("train", "--image", image, "--labels", labels, "--resume", interrupted, "--out", resumed, "--quiet") == 0
    state, expected = read_training_state(resumed), read_training_state(whole)
    assert state["step"] == expected["step"] == 6
    assert [e["loss"] for e in state["history"]] == [e["loss"] for e in expected["history"]]
    assert [e["val_miou"] for e in state["history"]] == [e["val_miou"] for e in expected["history"]]
    a, b = load_checkpoint(resumed).module.state_dict(), load_checkpoint(whole).module.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_ctrl_c_after_an_epoch_says_which_epoch_the_output_holds(tmp_path, scene, capsys, monkeypatch):
    """The interruption lands after the first epoch is saved (a real run, stopped there)."""
    import segtile.training.runner

    real_train = segtile.training.runner.train

    def stopped_after_the_first_epoch(*args, on_epoch, **kwargs):
        def save_then_stop(result, state):
            on_epoch(result, state)
            raise KeyboardInterrupt

        return real_train(*args, on_epoch=save_then_stop, **kwargs)

    monkeypatch.setattr(segtile.training.runner, "train", stopped_after_the_first_epoch)
    image, labels = scene
    out = tmp_path / "part.pt"
    assert run("train", "--image", image, "--labels", labels, "--classes", "dark,bright", "--out", out,
               "--epochs", "3", "--steps-per-epoch", "1", "--val-fraction", "0", *TINY) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"segtile: interrupted; {out} holds epoch 1 of 3: continue with --resume {out} --out {out} --overwrite")
    assert read_training_state(out)["epoch"] == 1


def test_resuming_with_more_epochs_continues_from_the_saved_step(tmp_path, scene):
    image, labels = scene
    first, more = tmp_path / "first.pt", tmp_path / "more.pt"
    common = ["--image", image, "--labels", labels, "--quiet"]
    assert run("train", *common, "--classes", "dark,bright", "--out", first, "--epochs", "2", "--steps-per-epoch",
               "2", "--val-fraction", "0.2", *TINY) == 0
    assert run("train", *common, "--resume", first, "--out", tmp_path / "again.pt") == 2  # its 2 epochs are done
    assert run("train", *common, "--resume", first, "--out", more, "--epochs", "3") == 0
    before, after = read_training_state(first), read_training_state(more)
    assert (before["step"], after["step"], after["epoch"]) == (4, 6, 3)
    assert after["history"][:2] == before["history"] and len(after["history"]) == 3
    assert load_checkpoint(more).card.extra["training"]["steps_done"] == 6


@pytest.mark.parametrize("kind, depth", [("basic", 18), ("basic", 34), ("bottleneck", 50), ("bottleneck", 101)])
def test_the_depth_of_a_resnet_file_and_of_a_backbone(kind, depth):
    blocks = (BASIC_BLOCKS if kind == "basic" else BOTTLENECK_BLOCKS)[depth]
    assert resnet_depth(torchvision_layout(kind, blocks)) == depth
    assert resnet_depth(PSPNet(layers=depth, classes=2, width=0.125).state_dict()) == depth
    assert resnet_depth({"conv1.weight": None, "fc.weight": None}) is None


def test_init_loads_torchvision_resnet_weights_and_reports_what_did_not_map(tmp_path, scene, capsys):
    image, labels = scene
    weights = random_state_dict(torchvision_layout("basic", BASIC_BLOCKS[18]))
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}}, tmp_path / "resnet18.pth")
    out = tmp_path / "model.pt"
    assert run("train", "--image", image, "--labels", labels, "--classes", "dark,bright", "--out", out,
               "--init", tmp_path / "resnet18.pth", "--layers", "18", "--width", "1", "--tile-size", "32",
               "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "1", "--lr", "1e-12",
               "--val-fraction", "0", "--quiet") == 0
    err = capsys.readouterr().err
    assert f"of {len(weights)} tensors loaded; not mapped: conv1.weight, bn1.weight" in err and "fc.weight" in err
    trained = load_checkpoint(out).module.state_dict()
    torch.testing.assert_close(trained["layer3.1.conv2.weight"], weights["layer3.1.conv2.weight"])
    assert load_checkpoint(out).card.extra["training"]["init"] == "resnet18.pth"


def test_training_and_inference_feed_the_network_the_same_tensor(tmp_path):
    """One window of a uint16 image with nodata, read for training and run by the tiler as one tile."""
    rng = np.random.default_rng(5)
    pixels = rng.integers(100, 4000, (2, 48, 48), dtype=np.uint16)
    pixels[:, 10:14, 20:30] = 7  # nodata in both bands
    path = write_raster(tmp_path / "image.tif", pixels, nodata=7)
    card = ModelCard(classes=("a", "b"), in_channels=2, mean=(0.02, 0.03), std=(0.01, 0.02), scale=65535)

    class Recorder(torch.nn.Module):
        def forward(self, x):
            self.seen = x.clone()
            return torch.zeros(x.shape[0], 2, *x.shape[2:])

    recorder = Recorder()
    segment(path, LoadedModel(recorder, card), tile_size=48, overlap=0, batch_size=1, device="cpu").labels.compute()
    source = open_source(path)
    data = TrainingData([source], [open_labels(np.zeros((48, 48), np.uint8), source, card.classes)], 48, 0.0, 0)
    sample = data.read(0, Window(0, 0, 48, 48))
    trained_on = network_input(sample.pixels[None], sample.valid[None], Normalisation.of(card), torch.device("cpu"))
    assert torch.equal(trained_on, recorder.seen.contiguous())
    assert (trained_on[0, :, 10:14, 20:30] == 0).all() and (trained_on != 0).float().mean() > 0.9


def test_training_windows_never_touch_validation_blocks_and_pad_past_the_edge(tmp_path):
    pixels, labels = blocks_scene(seed=1, size=80)  # 80 = 2.5 tiles of 32: edge blocks are cut short
    source = open_source(write_raster(tmp_path / "image.tif", pixels, nodata=0))
    data = TrainingData([source], [open_labels(labels, source, ("dark", "bright"))], 32, 0.25, seed=4)
    assert len(data.val_blocks) == 2 and len(data.train_blocks) == 7
    val = np.zeros((80, 80), bool)
    for _, window in data.val_windows():
        val[window.row_off:window.row_off + 32, window.col_off:window.col_off + 32] = True
    rng = np.random.default_rng(0)
    for side in (32, 48, 20):  # the tile, and windows of scale augmentation, larger and smaller
        for _ in range(200):
            block = data.train_blocks[rng.integers(len(data.train_blocks))]
            window = data._place(block, rng, side)
            assert window.width == window.height in (side, min(side, 32))  # a tile when no window fits
            assert not val[window.row_off:window.row_off + window.height,
                           window.col_off:window.col_off + window.width].any()
    edge = data.read(0, Window(64, 64, 32, 32))  # 16 x 16 inside the image, the rest padding
    assert edge.pixels.shape == (3, 32, 32) and not edge.valid[16:].any() and not edge.valid[:, 16:].any()
    assert (edge.labels[16:] == IGNORE).all() and (edge.labels[:, 16:] == IGNORE).all()
    np.testing.assert_array_equal(edge.labels[:16, :16], labels[64:, 64:])


def test_the_split_needs_blocks_to_spare(tmp_path):
    pixels, labels = blocks_scene(size=32)
    source = open_source(write_raster(tmp_path / "image.tif", pixels))
    with pytest.raises(SamplingError, match="too few to hold out"):
        TrainingData([source], [open_labels(labels, source, ("a", "b"))], 32, 0.1, 0)


def test_sgd_with_momentum_weight_decay_and_ten_times_faster_heads_on_the_poly_schedule():
    model = PSPNet(layers=18, classes=2, width=0.125)
    optimiser = make_optimizer(model, 0.01)
    assert isinstance(optimiser, torch.optim.SGD)
    backbone, heads = optimiser.param_groups
    assert (backbone["lr"], heads["lr"]) == (0.01, pytest.approx(0.1))
    assert backbone["momentum"] == 0.9 and backbone["weight_decay"] == 1e-4
    assert len(backbone["params"]) + len(heads["params"]) == len(list(model.parameters()))
    assert all(p is q for p, q in zip(heads["params"], [*model.ppm.parameters(), *model.cls.parameters(),
                                                         *model.aux.parameters()]))
    assert poly_lr(0.01, 0, 100) == 0.01 and poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9)


def test_loss_is_main_plus_weighted_aux_over_labelled_pixels():
    torch.manual_seed(0)
    main, aux = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0] = 255
    expected = F.cross_entropy(main, target, ignore_index=255) + 0.4 * F.cross_entropy(aux, target, ignore_index=255)
    torch.testing.assert_close(segmentation_loss((main, aux), target), expected)
    torch.testing.assert_close(segmentation_loss(main, target), F.cross_entropy(main, target, ignore_index=255))
    assert segmentation_loss((main, aux), torch.full_like(target, 255)).item() == 0.0


def test_training_in_python_fits_a_brightness_rule(tmp_path):
    pixels, labels = blocks_scene(seed=2)
    source = open_source(write_raster(tmp_path / "image.tif", pixels, nodata=0))
    data = TrainingData([source], [open_labels(labels, source, ("dark", "bright"))], 48, 0.0, 0)
    card = ModelCard(classes=["dark", "bright"], in_channels=3, mean=[0.5] * 3, std=[0.25] * 3, scale=255)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1))
    history = train(model, data, card, TrainOptions(epochs=3, steps_per_epoch=10, tile_size=48, batch_size=4, lr=0.05))
    assert len(history) == 3 and history[-1].loss < 0.5 * history[0].loss and not model.training
    sample = data.read(0, Window(0, 0, 96, 96))
    with torch.inference_mode():
        predicted = model(network_input(sample.pixels[None], sample.valid[None], Normalisation.of(card),
                                        torch.device("cpu")))[0].argmax(0).numpy()
    labelled = labels != IGNORE
    assert np.mean(predicted[labelled] == labels[labelled]) > 0.95


@pytest.mark.parametrize("kwargs, message", [({"batch_size": 1}, "at least 2"), ({"epochs": 0}, "at least 1"),
                                             ({"lr": 0.0}, "positive"), ({"val_fraction": 1.0}, r"\[0, 1\)"),
                                             ({"scale_augment": 0.5}, "at least 1")])
def test_options_that_cannot_train_are_refused(kwargs, message):
    with pytest.raises(TrainError, match=message):
        TrainOptions(**kwargs)


def bad_cases(tmp_path, image, labels):
    """Each case: arguments after ``train`` and a fragment of the one-line error."""
    out = tmp_path / "model.pt"
    base = ["--image", image, "--labels", labels, "--classes", "dark,bright", "--out", out]
    other = write_raster(tmp_path / "two_bands.tif", np.ones((2, 96, 96), np.uint8))
    (tmp_path / "exists.pt").write_bytes(b"precious")
    not_weights = tmp_path / "notes.pth"
    not_weights.write_text("hello")
    plain = tmp_path / "plain.pt"
    torch.save({"format": "segtile-checkpoint"}, plain)
    bad_values = write_raster(tmp_path / "bad_labels.tif", np.full((96, 96), 7, np.uint8))
    polygons = write_polygons(tmp_path / "p.gpkg", [pixel_box(IMAGE_TRANSFORM, 0, 40, 0, 40)], ["forest"])
    return {
        "labels count": (["--image", image, "--image", image, "--labels", labels, "--classes", "a,b", "--out", out],
                         "give one --labels per --image"),
        "no classes": (["--image", image, "--labels", labels, "--out", out], "name the classes with --classes"),
        "class twice": ([*base[:4], "--classes", "a,a", "--out", out], "names a class twice"),
        "batch of one": ([*base, "--batch-size", "1"], "batch size must be at least 2"),
        "val fraction 1": ([*base, "--val-fraction", "1"], "validation fraction must lie in [0, 1)"),
        "zero width": ([*base, "--width", "0"], "expected a finite number > 0"),
        "bad layers": ([*base, "--layers", "19"], "invalid choice"),
        "output exists": ([*base[:-1], tmp_path / "exists.pt"], "output exists"),
        "output not a checkpoint": ([*base[:-1], tmp_path / "m.onnx"], "training writes a segtile checkpoint (.pt or "
                                                                       ".pth); for ONNX, convert it once trained"),
        "colours": ([*base, "--colors", "#000000"], "1 colours for 2 classes"),
        "device": ([*base, "--device", "tpu"], "unknown device"),
        "bands differ": ([*base[:2], "--image", other, "--labels", labels, "--labels", labels, *base[4:]],
                         "2 band(s) where 3 are needed"),
        "band out of range": ([*base, "--bands", "4"], "band 4 is out of range"),
        "missing image": (["--image", tmp_path / "nope.tif", *base[2:]], "nope.tif"),
        "unknown class name": ([*base[:2], "--labels", polygons, *base[4:]], "'forest' in field 'class_name'"),
        "label value": ([*base[:2], "--labels", bad_values, *base[4:], "--epochs", "1", "--steps-per-epoch", "1"],
                        "value 7"),
        "not weights": ([*base, "--init", not_weights], "not a file of PyTorch weights"),
        "init at small width": ([*base, "--init", tmp_path / "tiny.pth", "--width", "0.125"], "no tensor fits"),
        "init of another depth": ([*base, "--init", tmp_path / "tiny.pth", "--width", "1", "--layers", "34"],
                                  "tiny.pth: a ResNet-18, where PSPNet-34's backbone is a ResNet-34: give --layers 18"),
        "resume without state": ([*base, "--resume", plain], "plain.pt"),
        "resume and init": ([*base, "--resume", plain, "--init", not_weights], "choose one"),
        "missing resume": ([*base, "--resume", tmp_path / "gone.pt"], "no such file"),
    }


CASES = ["labels count", "no classes", "class twice", "batch of one", "val fraction 1", "zero width", "bad layers",
         "output exists", "output not a checkpoint", "colours", "device", "bands differ", "band out of range",
         "missing image",
         "unknown class name", "label value", "not weights", "init at small width", "init of another depth",
         "resume without state",
         "resume and init", "missing resume"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, scene, capsys, case):
    torch.save(random_state_dict(torchvision_layout("basic", BASIC_BLOCKS[18])), tmp_path / "tiny.pth")
    arguments, fragment = bad_cases(tmp_path, *scene)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run("train", "--tile-size", "32", "--batch-size", "2", "--layers", "18", *arguments, "--quiet") == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and err.startswith("segtile: error:"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary left behind
    assert (tmp_path / "exists.pt").read_bytes() == b"precious"


def test_a_resumed_run_keeps_its_settings(tmp_path, scene, capsys):
    image, labels = scene
    first = tmp_path / "first.pt"
    assert run("train", "--image", image, "--labels", labels, "--classes", "dark,bright", "--out", first,
               "--epochs", "1", "--steps-per-epoch", "1", "--val-fraction", "0", *TINY) == 0
    common = ["--image", image, "--labels", labels, "--resume", first, "--out", tmp_path / "next.pt", "--quiet"]
    for extra, fragment in ((["--tile-size", "64"], "--tile-size 64 differs from the resumed run's 32"),
                            (["--classes", "a,b"], "differ from the resumed network's dark,bright"),
                            (["--layers", "34"], "--layers 34 differs from the resumed network's 18"),
                            (["--output-stride", "4"], "--output-stride 4 differs from the resumed network's 8")):
        assert run("train", *common, *extra) == 2
        assert fragment in capsys.readouterr().err


def test_progress_as_json_records_for_programs(tmp_path, scene, capsys):
    """What the QGIS plugin reads: JSON progress records up to 1, and a line per epoch, on stderr."""
    image, labels = scene
    loud = [arg for arg in TINY if arg != "--quiet"]
    assert run("train", "--image", image, "--labels", labels, "--classes", "dark,bright", "--out",
               tmp_path / "m.pt", "--epochs", "2", "--steps-per-epoch", "2", "--progress", "json", *loud) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records[0]["progress"] == 0 and records[-1] == {"stage": "training", "done": 4, "total": 4,
                                                           "progress": 1.0}
    assert [line.split(":")[0] for line in lines if line.startswith("epoch")] == ["epoch 1/2", "epoch 2/2"]
    assert captured.out == ""


def test_a_finer_output_stride_is_trained_and_saved_with_the_tile_alignment_it_needs(tmp_path, scene):
    image, labels = scene
    out = tmp_path / "fine.pt"
    assert run("train", "--image", image, "--labels", labels, "--classes", "dark,bright", "--out", out,
               "--epochs", "1", "--steps-per-epoch", "1", "--output-stride", "4", *TINY) == 0
    model = load_checkpoint(out)
    assert model.config["output_stride"] == 4 and model.card.alignment == 4
