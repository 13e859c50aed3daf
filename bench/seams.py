"""Seams: do a model's labels change along the lines where tiles meet?

For each tiling (tile size, overlap) a bundled image is segmented with a demo model (the nuclei
model on the nuclei image; ``--model water_rgbn_psp18`` or ``landsat_rgb_psp18`` on a held-out
scene of theirs, :data:`SCENES`), and the labels are compared with the labels of one tile covering
the whole image (no seam
anywhere). The **tile borders** are the lines inside the image where a tile starts or ends: a
tile's outermost pixels see the least context, and a too narrow overlap stitches its strip from
the outermost pixels of two tiles. Three figures per tiling:

- *disagreement at seams*: the fraction of pixels within 4 px of a tile border whose label
  differs from the one-tile labels; *in the interior*: the same for pixels 16 px or more from
  every tile border;
- *edge ratio*: how much more often two neighbours across a tile border differ in label than two
  neighbours anywhere else (1: the borders leave no trace; a straight edge of a class along a
  border shows as a ratio well above 1), and the same ratio of the one-tile labels at the same
  lines: what chance gives where objects are few (a lake's shore that happens to run along a
  line);
- *held-out mIoU*: ``segtile eval`` against the held-out labels, so a tiling that hides seams is
  not bought with accuracy.

    python -m bench.seams                       # the nuclei model, a few tilings (about a minute)
    python -m bench.seams --tilings 129,17 257,65 --png bench/out/seams
    python -m bench.seams --model water_rgbn_psp18 --tilings 129,17 129,65 257,65
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import rasterio

from bench.measure import print_options, segtile_options
from segtile import segment
from segtile.models import load_checkpoint
from segtile.models.builtin import builtin_models
from segtile.tiling.grid import aligned_tiling, tile_starts
from segtile.training.evaluate import evaluate

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
NEAR, FAR = 4, 16  # px from a tile border: counted as at the border, as interior
DEFAULT_TILINGS = ("129,17", "129,65", "129,81", "161,81", "193,97", "257,65", "257,129")
# model -> the bundled image it is measured on and that image's held-out labels
SCENES = {
    "nuclei_psp18": ("nuclei_img2d.tif", "nuclei_labels_heldout.tif"),
    "water_rgbn_psp18": ("naip_2010_rgbn_10m.tif", "naip_2010_water.tif"),
    "landsat_rgb_psp18": ("gsl_north_landsat7_rgbn.tif", "gsl_north_landsat7_water.tif"),
}


def seam_lines(length: int, tile: int, overlap: int, alignment: int) -> list[float]:
    """The tile borders inside the image along one axis: where a tile starts or ends (between
    two pixels)."""
    starts = tile_starts(length, tile, overlap, alignment)
    return sorted({float(s) for s in starts if s > 0} | {float(s + tile) for s in starts if s + tile < length})


def distance_to_seams(length: int, lines: list[float]) -> np.ndarray:
    """Each pixel's distance (in px) to the nearest seam line along one axis (inf: none)."""
    centres = np.arange(length) + 0.5
    if not lines:
        return np.full(length, np.inf)
    return np.min(np.abs(centres[:, None] - np.array(lines)[None, :]), axis=1)


def edge_ratio(labels: np.ndarray, lines: list[float], axis: int) -> float:
    """How much more often neighbours across a tile border differ than neighbours elsewhere."""
    changes = np.diff(labels.astype(np.int16), axis=axis) != 0  # pair i: pixels i and i + 1 along ``axis``
    rates = changes.mean(axis=1 - axis)
    at_border = np.zeros(len(rates), bool)
    for line in lines:
        at_border[int(line) - 1] = True  # the pair the border passes between
    return float(rates[at_border].mean() / max(rates[~at_border].mean(), 1e-12)) if at_border.any() else 1.0


def measure(image: np.ndarray, model: str, tile: int, overlap: int, reference: np.ndarray,
            scene: Path, truth: Path) -> dict[str, float]:
    """The figures of one tiling (see the module's docstring)."""
    alignment = load_checkpoint(builtin_models()[model]).card.alignment
    tile, overlap = aligned_tiling(tile, overlap, alignment)
    result = segment(image, model, tile_size=tile, overlap=overlap, device="cpu")
    labels = result.labels.compute()
    rows = seam_lines(image.shape[-2], tile, overlap, alignment)
    columns = seam_lines(image.shape[-1], tile, overlap, alignment)
    distance = np.minimum(distance_to_seams(len(labels), rows)[:, None],
                          distance_to_seams(labels.shape[1], columns)[None, :])
    differs = labels != reference
    with tempfile.TemporaryDirectory() as folder:
        mask = Path(folder) / "mask.tif"
        segment(scene, model, tile_size=tile, overlap=overlap, device="cpu").to_geotiff(mask)
        miou = evaluate(mask, truth).scores.miou
    return {"tile": tile, "overlap": overlap,
            "at seams": float(differs[distance <= NEAR].mean()) if (distance <= NEAR).any() else float("nan"),
            "interior": float(differs[distance >= FAR].mean()),
            "edge ratio": max(edge_ratio(labels, rows, 0), edge_ratio(labels, columns, 1)),
            "edge ratio untiled": max(edge_ratio(reference, rows, 0), edge_ratio(reference, columns, 1)),
            "miou": miou, "options": segtile_options(result), "labels": labels, "rows": rows, "columns": columns}


def save_png(labels: np.ndarray, image: np.ndarray, rows: list[float], columns: list[float], path: Path) -> None:
    """The outlines of the labels (yellow) over the image, the tile borders in blue, at twice the size."""
    from PIL import Image

    brightness = image[:3].mean(axis=0)
    grey = (np.clip(brightness / np.percentile(brightness, 99.5), 0, 1) * 255).astype(np.uint8)
    picture = np.stack([grey] * 3, axis=-1)
    for line in rows:
        picture[int(line), :] = (0, 0, 255)
    for line in columns:
        picture[:, int(line)] = (0, 0, 255)
    outline = np.zeros(labels.shape, bool)
    outline[1:] |= labels[1:] != labels[:-1]
    outline[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    picture[outline] = (255, 215, 0)
    Image.fromarray(picture).resize((2 * labels.shape[1], 2 * labels.shape[0]), Image.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="nuclei_psp18", choices=sorted(SCENES))
    parser.add_argument("--tilings", nargs="+", default=DEFAULT_TILINGS, metavar="TILE,OVERLAP")
    parser.add_argument("--png", type=Path, help="also draw each tiling's labels and tile borders as PNG here")
    args = parser.parse_args()
    scene, truth = (DATA / name for name in SCENES[args.model])
    with rasterio.open(scene) as source:
        image = source.read()  # (bands, H, W)
    whole = -(-max(image.shape[-2:]) // 8) * 8 + 1  # one tile over the whole image, on PSPNet's lattice
    one_tile = segment(image, args.model, tile_size=whole, overlap=0, device="cpu")
    reference = one_tile.labels.compute()
    print("| tile | overlap | disagreement at seams | in the interior | edge ratio at seams | same lines, one tile "
          "| held-out mIoU |")
    print("|---|---|---|---|---|---|---|")
    ran_with = {"segtile, one tile (the reference)": segtile_options(one_tile)}
    for tiling in args.tilings:
        tile, overlap = (int(value) for value in tiling.split(","))
        figures = measure(image, args.model, tile, overlap, reference, scene, truth)
        print(f"| {figures['tile']} | {figures['overlap']} | {figures['at seams']:.2%} | {figures['interior']:.2%} "
              f"| {figures['edge ratio']:.2f} | {figures['edge ratio untiled']:.2f} | {figures['miou']:.4f} |")
        ran_with[f"segtile, tile {figures['tile']} overlapping by {figures['overlap']}"] = figures["options"]
        if args.png:
            args.png.mkdir(parents=True, exist_ok=True)
            save_png(figures["labels"], image, figures["rows"], figures["columns"],
                     args.png / f"seams_{figures['tile']}_{figures['overlap']}.png")
    for side, options in ran_with.items():
        print_options(side, options)


if __name__ == "__main__":
    main()
