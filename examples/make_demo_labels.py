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

And, for the default model (water / land, ``landsat_rgb_psp18.pt``), one label raster per scene,
the whole scene, 0 = water, 1 = land, 255 = unlabelled. **These come from rules too**, checked by
eye on pictures of each scene (``--pictures DIR`` writes them), not from ground truth:

* bahamas_water.tif, for bahamas_rgb.tif (RGB only): :func:`bahamas_rule`, its clouds unlabelled;
* gsl_landsat7_water.tif, gsl_north_landsat7_water.tif and naip_YYYY_water.tif (2010, 2014-2020),
  for the red/green/blue/near-infrared scenes of the same names (Landsat 7 at 30 m, NAIP at 10 m):
  :func:`nir_rule` (NDWI and near-infrared thresholds; the pixels neither threshold is sure of
  are left unlabelled).
"""

from __future__ import annotations

import argparse
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


NDWI_WATER = 0.2  # (green - NIR) / (green + NIR) at least this: open water
NIR_WATER = 35  # or near-infrared this dark (8-bit): water absorbs NIR, land reflects it
NDWI_LAND = 0.0  # land: NDWI at most this ...
NIR_LAND = 60  # ... and near-infrared at least this bright


def nir_rule(pixels: np.ndarray, nodata: int = 0) -> np.ndarray:
    """Water / land from red, green, blue, near-infrared ``pixels`` (4, H, W) uint8:

    - water: NDWI >= 0.2 or NIR <= 35 (open water absorbs near-infrared; dark lakes whose green
      is as dark as their NIR still have NIR <= 35);
    - land: NDWI <= 0 and NIR >= 60 (vegetation, soil, rock and salt crust reflect it);
    - anything else (bare fields and salt flats with NDWI between 0 and 0.2, mountain shadows,
      mixed shore pixels) and nodata (all bands ``nodata``) -> 255, unlabelled.
    """
    green, nir = pixels[1].astype(np.float64), pixels[3].astype(np.float64)
    ndwi = (green - nir) / np.maximum(green + nir, 1)
    labels = np.full(green.shape, UNLABELLED, dtype=np.uint8)
    labels[(ndwi <= NDWI_LAND) & (nir >= NIR_LAND)] = LAND
    labels[(ndwi >= NDWI_WATER) | (nir <= NIR_WATER)] = WATER
    labels[(pixels == nodata).all(axis=0)] = UNLABELLED
    return labels


def water_land(labels: np.ndarray) -> np.ndarray:
    """Water / land / cloud labels with the clouds unlabelled (the default model has no cloud class)."""
    labels = labels.copy()
    labels[labels == CLOUD] = UNLABELLED
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


WATER_SCENES = {  # image -> its water / land labels, for the default model
    "gsl_landsat7_rgbn.tif": "gsl_landsat7_water.tif",
    "gsl_north_landsat7_rgbn.tif": "gsl_north_landsat7_water.tif",
    "naip_2010_rgbn_10m.tif": "naip_2010_water.tif",
    **{f"naip_{year}_rgbn_10m.tif": f"naip_{year}_water.tif" for year in (2014, 2015, 2016, 2017, 2018, 2019, 2020)},
}
PALETTE = {WATER: (31, 95, 191), LAND: (63, 155, 63), UNLABELLED: (255, 0, 255)}


def write_picture(path: Path, pixels: np.ndarray, labels: np.ndarray) -> None:
    """The scene's true colour (2-98 % stretch) beside its labels (water blue, land green,
    unlabelled magenta), as a PNG to look at."""
    from PIL import Image

    rgb = np.zeros((*labels.shape, 3), dtype=np.uint8)
    for band in range(3):
        values = pixels[band].astype(np.float64)
        low, high = np.percentile(values[values > 0], (2, 98))
        rgb[..., band] = np.clip((values - low) / max(high - low, 1) * 255, 0, 255)
    coloured = np.zeros_like(rgb)
    for label, colour in PALETTE.items():
        coloured[labels == label] = colour
    Image.fromarray(np.concatenate([rgb, coloured], axis=1)).save(path)


def write_water_labels(pictures: Path | None) -> None:
    """The default model's water / land labels of every scene (see the module's docstring)."""
    with rasterio.open(DATA / "bahamas_rgb.tif") as image:
        pixels = image.read()
        scenes = [("bahamas_water.tif", pixels, water_land(bahamas_rule(pixels)), image)]
        write_labels(DATA / "bahamas_water.tif", scenes[0][2], image)
    for image_name, labels_name in WATER_SCENES.items():
        with rasterio.open(DATA / image_name) as image:
            pixels = image.read()
            labels = nir_rule(pixels)
            write_labels(DATA / labels_name, labels, image)
            scenes.append((labels_name, pixels, labels, image))
    if pictures is not None:
        pictures.mkdir(parents=True, exist_ok=True)
        for labels_name, pixels, labels, _ in scenes:
            write_picture(pictures / labels_name.replace(".tif", ".png"), pixels, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=Path, metavar="DIR", help="also write each scene beside its labels as PNG")
    args = parser.parse_args()
    write_water_labels(args.pictures)
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
