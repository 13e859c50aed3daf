"""PSPNet: the reference's state_dict layout, its eval-mode computation, sizes, backbone loading.
(Its training is tested in test_train.py.)"""


import pytest
import torch
import torch.nn.functional as F

from segtile.models import ArchitectureError, PSPNet, load_torchvision_backbone

BOTTLENECK_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
BASIC_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
STAGE_PLANES = (64, 128, 256, 512)


def batch_norm_entries(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    shapes = {name: (channels,) for name in ("weight", "bias", "running_mean", "running_var")}
    shapes["num_batches_tracked"] = ()
    return {f"{prefix}.{name}": shape for name, shape in shapes.items()}


def reference_layout(blocks: tuple[int, ...], classes: int, bins: int = 4) -> dict[str, tuple]:
    """Every state_dict key of hszhao/semseg's PSPNet and its shape, from the architecture."""
    layout = {"layer0.0.weight": (64, 3, 3, 3), "layer0.3.weight": (64, 64, 3, 3),
              "layer0.6.weight": (128, 64, 3, 3)}
    layout |= batch_norm_entries("layer0.1", 64) | batch_norm_entries("layer0.4", 64)
    layout |= batch_norm_entries("layer0.7", 128)
    inplanes = 128
    for stage, (planes, count) in enumerate(zip(STAGE_PLANES, blocks), start=1):
        for block in range(count):
            p = f"layer{stage}.{block}"
            layout[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            layout[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            layout[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
            layout |= batch_norm_entries(f"{p}.bn1", planes) | batch_norm_entries(f"{p}.bn2", planes)
            layout |= batch_norm_entries(f"{p}.bn3", 4 * planes)
            if block == 0:
                layout[f"{p}.downsample.0.weight"] = (4 * planes, inplanes, 1, 1)
                layout |= batch_norm_entries(f"{p}.downsample.1", 4 * planes)
            inplanes = 4 * planes
    for index in range(bins):
        layout[f"ppm.features.{index}.1.weight"] = (2048 // bins, 2048, 1, 1)
        layout |= batch_norm_entries(f"ppm.features.{index}.2", 2048 // bins)
    for head, in_dim, hidden in (("cls", 4096, 512), ("aux", 1024, 256)):
        layout[f"{head}.0.weight"] = (hidden, in_dim, 3, 3)
        layout |= batch_norm_entries(f"{head}.1", hidden)
        layout[f"{head}.4.weight"] = (classes, hidden, 1, 1)
        layout[f"{head}.4.bias"] = (classes,)
    return layout


@pytest.mark.parametrize("layers", [50, 101])
def test_state_dict_has_exactly_the_reference_keys_and_shapes(layers):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = PSPNet(layers=layers, classes=21)
    got = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert got == reference_layout(BOTTLENECK_BLOCKS[layers], classes=21)


def functional_reference(weights: dict, x: torch.Tensor, bins=(1, 2, 3, 6)) -> torch.Tensor:
    """The reference's eval-mode forward written with torch.nn.functional from its weights:
    deep stem, stride 2 only in layer2's first block, dilation 2 (layer3) and 4 (layer4) on
    every block's 3x3 convolution, PPM, main head, upsampling to (H - 1) / 8 * 8 + 1."""

    def conv(t, name, stride=1, dilation=1):
        w = weights[f"{name}.weight"]
        padding = dilation * (w.shape[-1] // 2)
        return F.conv2d(t, w, weights.get(f"{name}.bias"), stride, padding, dilation)

    def bn(t, name):
        return F.batch_norm(t, weights[f"{name}.running_mean"], weights[f"{name}.running_var"],
                            weights[f"{name}.weight"], weights[f"{name}.bias"], False, 0.0, 1e-5)

    out_size = ((x.shape[2] - 1) // 8 * 8 + 1, (x.shape[3] - 1) // 8 * 8 + 1)
    t = F.relu(bn(conv(x, "layer0.0", stride=2), "layer0.1"))
    t = F.relu(bn(conv(t, "layer0.3"), "layer0.4"))
    t = F.relu(bn(conv(t, "layer0.6"), "layer0.7"))
    t = F.max_pool2d(t, 3, 2, 1)
    for stage, (stride, dilation) in enumerate(zip((1, 2, 1, 1), (1, 1, 2, 4)), start=1):
        block = 0
        while f"layer{stage}.{block}.conv1.weight" in weights:
            p = f"layer{stage}.{block}"
            s = stride if block == 0 else 1
            out = F.relu(bn(conv(t, f"{p}.conv1"), f"{p}.bn1"))
            out = F.relu(bn(conv(out, f"{p}.conv2", s, dilation), f"{p}.bn2"))
            out = bn(conv(out, f"{p}.conv3"), f"{p}.bn3")
            if f"{p}.downsample.0.weight" in weights:
                t = bn(conv(t, f"{p}.downsample.0", s), f"{p}.downsample.1")
            t = F.relu(out + t)
            block += 1
    pooled = [t]
    for index, size in enumerate(bins):
        p = F.adaptive_avg_pool2d(t, size)
        p = F.relu(bn(conv(p, f"ppm.features.{index}.1"), f"ppm.features.{index}.2"))
        pooled.append(F.interpolate(p, t.shape[2:], mode="bilinear", align_corners=True))
    t = F.relu(bn(conv(torch.cat(pooled, 1), "cls.0"), "cls.1"))
    t = conv(t, "cls.4")
    return F.interpolate(t, out_size, mode="bilinear", align_corners=True)


def randomise_batch_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Random batch-norm affine parameters and statistics, so that eval-mode BN is no identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)


@pytest.mark.parametrize("size", [(33, 41), (41, 25)])
def test_eval_logits_equal_the_reference_computation_on_8k_plus_1_inputs(size):
    torch.manual_seed(0)
    model = PSPNet(layers=50, classes=5, width=0.125).eval()
    randomise_batch_norms(model)
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        got = model(x)
        expected = functional_reference(model.state_dict(), x)
    assert got.shape == (2, 5, *size)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_dilation_and_strides_give_output_stride_8():
    model = PSPNet(layers=50, classes=2, width=0.125)
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].downsample[0].stride == (2, 2)
    for stage, dilation in ((model.layer3, 2), (model.layer4, 4)):
        assert stage[0].downsample[0].stride == (1, 1)
        for block in stage:
            assert block.conv2.stride == (1, 1)
            assert block.conv2.dilation == (dilation, dilation)
            assert block.conv2.padding == (dilation, dilation)
    with torch.inference_mode():
        features = model.layer4(model.layer3(model.layer2(model.layer1(model.layer0(
            torch.zeros(1, 3, 65, 97))))))
    assert features.shape[2:] == (9, 13)


@pytest.mark.parametrize("layers", [18, 34])
def test_basic_block_backbones(layers):
    model = PSPNet(layers=layers, classes=3, width=0.25).eval()
    stages = (model.layer1, model.layer2, model.layer3, model.layer4)
    assert tuple(len(stage) for stage in stages) == BASIC_BLOCKS[layers]
    assert model.layer4[-1].conv2.out_channels == 128  # 512 x 0.25
    assert model.layer4[-1].conv2.dilation == (4, 4)
    assert model.cls[0].out_channels == 128 and model.aux[0].out_channels == 64
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)


@pytest.mark.parametrize("size", [(65, 97), (50, 50), (33, 1), (1, 1), (64, 70)])
def test_logits_have_the_input_size(size):
    model = PSPNet(layers=18, classes=4, width=0.125, in_channels=2).eval()
    with torch.inference_mode():
        assert model(torch.zeros(1, 2, *size)).shape == (1, 4, *size)


def test_training_mode_returns_main_and_auxiliary_logits():
    model = PSPNet(layers=18, classes=3, width=0.125).train()
    main, aux = model(torch.randn(2, 3, 40, 48))
    assert main.shape == aux.shape == (2, 3, 40, 48)
    assert not torch.equal(main, aux)


@pytest.mark.parametrize("zoom, expected", [(1, 5), (2, 9), (4, 17), (8, 33)])
def test_zoom_factor_gives_the_reference_output_size(zoom, expected):
    model = PSPNet(layers=18, classes=2, width=0.125, zoom_factor=zoom).eval()
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 33, 33)).shape[2:] == (expected, expected)


def test_config_rebuilds_the_same_architecture():
    model = PSPNet(layers=34, classes=7, bins=(1, 3), width=0.125, in_channels=4, dropout=0.2)
    twin = PSPNet(**model.config())
    assert {k: v.shape for k, v in twin.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    assert model.config()["bins"] == [1, 3]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"layers": 42}, "depth"), ({"zoom_factor": 3}, "zoom_factor"), ({"width": 0}, "width"),
     ({"bins": ()}, "bins"), ({"classes": 0}, "classes"), ({"dropout": 1.0}, "dropout"),
     ({"in_channels": 0}, "in_channels")],
)
def test_invalid_options_raise_architecture_error(kwargs, message):
    with pytest.raises(ArchitectureError, match=message):
        PSPNet(**{"layers": 18, "classes": 2, "width": 0.125, **kwargs})


def torchvision_layout(kind: str, blocks: tuple[int, ...], stem: str = "7x7") -> dict[str, tuple]:
    """Key -> shape of a torchvision ResNet (or, with stem="deep", a deep-stem ImageNet ResNet)."""
    expansion = 4 if kind == "bottleneck" else 1
    if stem == "7x7":
        layout = {"conv1.weight": (64, 3, 7, 7)} | batch_norm_entries("bn1", 64)
    else:
        layout = {"conv1.weight": (64, 3, 3, 3), "conv2.weight": (64, 64, 3, 3),
                  "conv3.weight": (64, 64, 3, 3)}
        for name in ("bn1", "bn2", "bn3"):
            layout |= batch_norm_entries(name, 64)
    inplanes = 64
    for stage, (planes, count) in enumerate(zip(STAGE_PLANES, blocks), start=1):
        for block in range(count):
            p = f"layer{stage}.{block}"
            if kind == "bottleneck":
                convs = {"conv1": (planes, inplanes, 1, 1), "conv2": (planes, planes, 3, 3),
                         "conv3": (4 * planes, planes, 1, 1)}
            else:
                convs = {"conv1": (planes, inplanes, 3, 3), "conv2": (planes, planes, 3, 3)}
            for name, shape in convs.items():
                layout[f"{p}.{name}.weight"] = shape
                layout |= batch_norm_entries(f"{p}.bn{name[-1]}", shape[0])
            if block == 0 and (stage > 1 or inplanes != planes * expansion):
                layout[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                layout |= batch_norm_entries(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    return layout | {"fc.weight": (1000, 512 * expansion), "fc.bias": (1000,)}


def random_state_dict(layout: dict[str, tuple], seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) if shape else torch.tensor(7)
            for key, shape in layout.items()}


def test_torchvision_resnet18_weights_fill_the_whole_backbone_but_the_stem():
    model = PSPNet(layers=18, classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights = random_state_dict(torchvision_layout("basic", BASIC_BLOCKS[18]))
    unmapped = load_torchvision_backbone(model, weights)
    stem = ["conv1.weight"] + list(batch_norm_entries("bn1", 64))
    assert sorted(unmapped) == sorted(stem + ["fc.weight", "fc.bias"])
    after = model.state_dict()
    for key, tensor in weights.items():
        if key.startswith("layer"):
            assert torch.equal(after[key], tensor), key
    for key in after:
        if key.startswith(("layer0", "ppm", "cls", "aux")):
            assert torch.equal(after[key], before[key]), key


def test_deep_stem_imagenet_weights_map_onto_layer0():
    model = PSPNet(layers=18, classes=3)
    weights = random_state_dict(torchvision_layout("basic", BASIC_BLOCKS[18], stem="deep"))
    assert sorted(load_torchvision_backbone(model, weights)) == ["fc.bias", "fc.weight"]
    after = model.state_dict()
    for source, target in (("conv1", "layer0.0"), ("bn1", "layer0.1"), ("conv2", "layer0.3"),
                           ("bn2", "layer0.4"), ("conv3", "layer0.6"), ("bn3", "layer0.7")):
        assert torch.equal(after[f"{target}.weight"], weights[f"{source}.weight"])


@pytest.mark.filterwarnings("ignore:for .*num_batches_tracked:UserWarning")  # meta tensors
def test_torchvision_resnet50_leaves_the_stem_and_layer1_inputs_unmapped():
    with torch.device("meta"):
        model = PSPNet(layers=50, classes=3)
        weights = {k: torch.empty(s) for k, s in
                   torchvision_layout("bottleneck", BOTTLENECK_BLOCKS[50]).items()}
    unmapped = load_torchvision_backbone(model, weights)
    expected = ["conv1.weight", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight",
                "fc.weight", "fc.bias"]
    for bn in ("bn1", "layer1.0.bn1", "layer1.0.downsample.1"):
        expected += list(batch_norm_entries(bn, 1))
    assert sorted(unmapped) == sorted(expected)
