"""The demo models in models/segtile/models/demo: small enough to ship, cards that say what they are, and the
held-out mIoU their README reports, measured again here as `segtile eval` measures it."""

import re
from pathlib import Path

import pytest

from segtile.api import segment
from segtile.models import load_checkpoint
from segtile.training.evaluate import evaluate

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "models" / "segtile" / "models" / "demo"
DATA = REPO / "examples" / "data"

# model, image, held-out ground truth, classes, resolution and unit, lowest acceptable held-out mIoU
MODELS = {
    "nuclei_psp18.pt": ("nuclei_img2d.tif", "nuclei_labels_heldout.tif", ("background", "nucleus"), (None, None), 0.6),
    "landsat_rgb_psp18.pt": ("bahamas_rgb.tif", "bahamas_labels_heldout.tif", ("water", "land", "cloud"),
                             (300.04, "m"), 0.5),
}


def reported_miou(name: str) -> float:
    """The held-out mIoU models/segtile/models/demo/README.md reports for ``name`` (its figures table)."""
    match = re.search(rf"^\| `{re.escape(name)}` \| ([0-9.]+) \|", (DEMO / "README.md").read_text(), re.M)
    assert match, f"models/segtile/models/demo/README.md reports no held-out mIoU for {name}"
    return float(match.group(1))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_demo_model_reaches_the_held_out_miou_its_readme_reports(tmp_path, name):
    image, truth, classes, (resolution, unit), floor = MODELS[name]
    path = DEMO / name
    assert path.stat().st_size < 3_000_000
    card = load_checkpoint(path).card
    assert card.classes == classes and card.resolution_unit == unit and card.alignment == 8
    assert card.resolution == (pytest.approx(resolution) if resolution else None)
    assert card.extra["training"]["images"] == [image]
    mask = tmp_path / "mask.tif"
    segment(DATA / image, path, device="cpu").to_geotiff(mask)
    measured = evaluate(mask, DATA / truth).scores.miou
    assert measured >= floor
    assert measured == pytest.approx(reported_miou(name), abs=0.005)
