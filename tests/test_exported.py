"""torch.export archives (.pt2) as models: their card, their shapes held to, the labels of the
same network run from a segtile checkpoint."""

import numpy as np
import pytest
import tifffile
import torch

from segtile import segment
from segtile.cli import main
from segtile.models import CheckpointError, ModelCard, PSPNet, load_checkpoint, save_checkpoint
from tests.test_pspnet import randomise_batch_norms

CARD = ModelCard(classes=["water", "land", "cloud"], scale=255.0, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3],
                 tile_size=49, overlap=9, alignment=8)


def image(height: int = 90, width: int = 120, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (3, height, width)).astype(np.uint8)


@pytest.fixture(scope="module")
def pspnet_files(tmp_path_factory):
    """A small PSPNet as a segtile checkpoint and as a .pt2 archive exported for any batch and any
    8k + 1 height and width (what PSPNet takes), with and without its card."""
    folder = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    net = PSPNet(layers=18, classes=3, width=0.125).eval()
    randomise_batch_norms(net)
    rows, columns = torch.export.Dim("rows", min=2, max=128), torch.export.Dim("columns", min=2, max=128)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(net, (torch.zeros(2, 3, 33, 33),),
                                  dynamic_shapes=({0: batch, 2: 8 * rows + 1, 3: 8 * columns + 1},))
    torch.export.save(program, folder / "psp.pt2", extra_files={"card.json": CARD.to_json()})
    torch.export.save(program, folder / "bare.pt2")
    return save_checkpoint(folder / "psp.pt", net, CARD), folder / "psp.pt2", folder / "bare.pt2"


def test_an_exported_pspnet_gives_the_checkpoints_labels(pspnet_files):
    checkpoint, exported, _ = pspnet_files
    loaded = load_checkpoint(exported)
    assert loaded.card == load_checkpoint(checkpoint).card
    pixels = image()
    expected = segment(pixels, checkpoint, batch_size=3).labels.compute()
    np.testing.assert_array_equal(segment(pixels, exported, batch_size=3).labels.compute(), expected)


def test_an_archive_without_a_card_gets_one_from_its_shapes(pspnet_files):
    """Bands and classes from the program's input and output; a tile it takes (8k + 1 up to 512
    px) on its lattice of 8."""
    card = load_checkpoint(pspnet_files[2]).card
    assert (card.in_channels, card.classes) == (3, ("class_0", "class_1", "class_2"))
    assert (card.tile_size, card.alignment) == (505, 8)


@pytest.fixture
def fixed_program(tmp_path):
    """A pointwise network exported for batches of exactly 2 tiles of 32 x 32 px."""
    torch.manual_seed(1)
    network = torch.nn.Conv2d(3, 4, 1).eval()
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(network, (torch.zeros(2, 3, 32, 32),)), path)
    return network, path


def test_a_fixed_batch_and_tile_are_met(fixed_program):
    """Batches of 3 tiles run as 2 + 2 (one padded); the card tiles at the exported size."""
    network, path = fixed_program
    card = load_checkpoint(path).card
    assert (card.tile_size, card.overlap, card.alignment) == (32, 8, 1)
    pixels = image(70, 90)
    got = segment(pixels, path, batch_size=3).labels.compute()
    expected = segment(pixels, network, tile_size=32, overlap=8, batch_size=3).labels.compute()
    np.testing.assert_array_equal(got, expected)


def test_the_command_refuses_another_tile_size_in_one_line(fixed_program, tmp_path, capsys):
    pixels_file = tmp_path / "image.tif"
    tifffile.imwrite(pixels_file, image(70, 90), photometric="rgb", planarconfig="separate")
    assert main([str(pixels_file), "--model", str(fixed_program[1]), "--tile-size", "48", "--quiet",
                 "--out", str(tmp_path / "mask.tif")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "takes tiles of height 32 and width 32 px, not 48x48: use --tile-size 32" in err
    assert not (tmp_path / "mask.tif").exists()


def test_a_file_that_is_no_archive_is_one_line(tmp_path):
    path = tmp_path / "broken.pt2"
    path.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a torch.export archive torch can load"):
        load_checkpoint(path)
