"""Write the label rasters the demo models in models/segtile/models/demo were trained and evaluated on.

Run from the repository root:  python examples/make_demo_labels.py
It writes, into examples/data, for each demo a training label raster and a held-out one (the
evaluation ground truth), on the image's own grid; 255 = unlabelled:

* bahamas_labels_train.tif / bahamas_labels_heldout.tif, for bahamas_rgb.tif (Landsat, 300 m).
  **These labels come from a spectral rule, not from ground truth** (:func:`bahamas_rule`):
  a model trained on them learns to reproduce the rule with spatial context. Rows 0-539 are
  labelled for training, rows 540-717 are held out.
* nuclei_labels_train.tif / nuclei_labels_heldout.tif, for nuclei_img2d.tif: foreground is an
  instance label > 0 of its hand-annotated mask nuclei_mask2d.tif (2018 Data Science Bowl). Rows
  0-383 are labelled for training, rows 384-511 are held out.

A training run may read the image pixels of the held-out rows as the context of a window that
straddles the boundary, never their labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

DATA = Path(__file__).resolve().parent / "data"
UNLABELLED = 255

WATER, LAND, CLOUD = 0, 1, 2
CLOUD_MIN_BRIGHTNESS = 140  # a pixel is cloud when even its darkest band is this bright
BAHAMAS_HELD_OUT_FROM_ROW = 540
NUCLEI_HELD_OUT_FROM_ROW = 384


def bahamas_rule(pixels: np.ndarray, nodata: int = 0) -> np.ndarray:
    """Water / land / cloud from the RGB values of ``pixels`` (3, H, W) uint8, in this order:

    - nodata (all three bands equal ``nodata``) -> 255, unlabelled;
    - cloud: min(R, G, B) >= 140, bright and grey-white;
    - water: blue >= red (the clear blue shallows and the dark blue-green deep water);
    - land: blue < red (the olive-brown vegetation and bare ground of Andros island).
    """
    red, _, blue = pixels.astype(np.int16)
    labels = np.where(blue >= red, WATER, LAND).astype(np.uint8)
    labels[pixels.min(axis=0) >= CLOUD_MIN_BRIGHTNESS] = CLOUD
    labels[(pixels == nodata).all(axis=0)] = UNLABELLED
    return labels


def nuclei_foreground(instances: np.ndarray) -> np.ndarray:
    """0 = background, 1 = nucleus (any instance label > 0)."""
    return (instances > 0).astype(np.uint8)


def split_rows(labels: np.ndarray, first_held_out_row: int) -> tuple[np.ndarray, np.ndarray]:
    """The labels of the rows above ``first_held_out_row`` and those of the rows from it on,
    each a full-size raster with the other rows unlabelled."""
    train, held_out = labels.copy(), labels.copy()
    train[first_held_out_row:] = UNLABELLED
    held_out[:first_held_out_row] = UNLABELLED
    return train, held_out


def write_labels(path: Path, labels: np.ndarray, like: rasterio.io.DatasetReader) -> None:
    """``labels`` as a compressed uint8 GeoTIFF on the grid of ``like`` (its CRS and transform, if any)."""
    profile = {"driver": "GTiff", "width": like.width, "height": like.height, "count": 1, "dtype": "uint8",
               "nodata": UNLABELLED, "compress": "deflate", "tiled": True, "blockxsize": 256, "blockysize": 256}
    if like.crs is not None:
        profile.update(crs=like.crs, transform=like.transform)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(labels, 1)
    per_class = np.bincount(labels[labels != UNLABELLED]).tolist()
    print(f"wrote {path.relative_to(DATA.parent.parent)}: pixels per class {per_class}, "
          f"{(labels == UNLABELLED).sum()} unlabelled")


def main() -> None:
    with rasterio.open(DATA / "bahamas_rgb.tif") as image:
        train, held_out = split_rows(bahamas_rule(image.read()), BAHAMAS_HELD_OUT_FROM_ROW)
        write_labels(DATA / "bahamas_labels_train.tif", train, image)
        write_labels(DATA / "bahamas_labels_heldout.tif", held_out, image)
    with rasterio.open(DATA / "nuclei_mask2d.tif") as mask:
        train, held_out = split_rows(nuclei_foreground(mask.read(1)), NUCLEI_HELD_OUT_FROM_ROW)
        write_labels(DATA / "nuclei_labels_train.tif", train, mask)
        write_labels(DATA / "nuclei_labels_heldout.tif", held_out, mask)


if __name__ == "__main__":
    main()
