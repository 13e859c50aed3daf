"""Segment nuclei on a whole-slide image (H&E) from Python: the pathology path of segtile.

    python examples/segment_a_slide.py [--out FOLDER] [--mpp 0.25]     # under a minute on a laptop CPU

What it shows: a slide keeps its µm per pixel through segtile (``mpp=`` chooses the pixel size the
model runs at, resampled window by window); an image derived from the slide, lazily with dask,
keeps it too when given the slide's georeference; ``preview()`` gives a look in a second; the
outputs are on the slide's grid, with polygons as QuPath objects in level-0 pixel coordinates
(where slide annotations live).

Be clear about the model: segtile ships no model trained on H&E. The closest demo model,
``nuclei_psp18``, was trained on one fluorescence image (``examples/data/nuclei_img2d.tif``: one
channel, nuclei bright on a dark background, about 24 px across; see models/segtile/models/demo/README.md). On
an H&E slide nuclei are dark purple on pink, in three channels. So this example hands the model
what it knows: the hematoxylin channel of the slide (colour deconvolution with Ruifrok and
Johnston's H&E stain vectors), in which nuclei are bright like a nuclear stain, at 0.25 µm/px,
where the slide's nuclei (about 6 µm) are as many pixels wide as the training image's. The
result finds many nuclei in the loose tissue and marks false ones in dense purple tissue (the
epidermis); it is a demonstration of the path, not a nucleus detector. For real work, train on
your own annotated H&E (``segtile train --image slide.svs --labels annotations.geojson``, see
docs/training.md) and use that model here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import dask.array as da
import numpy as np
import shapely
import tifffile

from segtile import segment
from segtile.sources import MemorySource, open_source

SLIDE = Path(__file__).resolve().parent / "data" / "cmu_small_region.svs"
MPP = 0.25  # µm per pixel the model runs at by default (the slide has 0.499)

# Ruifrok & Johnston (2001): optical density of hematoxylin, eosin and DAB per unit of stain (RGB).
STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
UNMIX = np.linalg.inv(STAINS / np.linalg.norm(STAINS, axis=1, keepdims=True))
GAIN = 120  # hematoxylin density of nuclei (0.35-1.2) to the training image's nucleus values (40-140)


def hematoxylin(rgb: np.ndarray) -> np.ndarray:
    """The hematoxylin amount of RGB pixels ``(h, w, 3)`` uint8, as uint16 ``(h, w)`` on the
    scale of the fluorescence image the model was trained on."""
    density = -np.log10((rgb.astype(np.float32) + 1) / 256)
    return np.clip(density @ UNMIX[:, 0] * GAIN, 0, 65535).astype(np.uint16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("slide-example"), help="folder for the outputs")
    parser.add_argument("--mpp", type=float, default=MPP, help=f"µm per pixel the model runs at (default {MPP})")
    args = parser.parse_args()
    out, mpp = args.out, args.mpp
    out.mkdir(parents=True, exist_ok=True)

    slide = open_source(SLIDE)  # how segtile sees the slide: size, µm/px, pyramid levels
    print(f"{SLIDE.name}: {slide.width}×{slide.height} px, {slide.georef.mpp} µm/px, "
          f"{len(slide.level_shapes)} level(s)")

    # The hematoxylin channel, computed tile by tile only when segtile reads a window of it.
    rgb = da.from_zarr(tifffile.imread(SLIDE, aszarr=True))  # (H, W, 3), lazy
    nuclear = rgb.map_blocks(hematoxylin, drop_axis=2, dtype=np.uint16)
    result = segment(MemorySource(nuclear, georef=slide.georef), "nuclei_psp18", mpp=mpp)
    print(result)

    result.preview(max_size=1024).save(out / "slide_preview.png")  # seconds: a look before the run
    mask, polygons = result.write(out / "nuclei_mask.tif", out / "nuclei.geojson", overwrite=True)

    labels = tifffile.imread(mask)  # a slide's mask: a TIFF with µm resolution tags, no map coordinates
    share = (labels == 1).mean()
    print(f"{mask}: {labels.shape[1]}×{labels.shape[0]} px at {mpp} µm/px, {share:.1%} nucleus")
    # A slide's .geojson holds QuPath objects (File ▸ Import objects): plain GeoJSON features whose
    # "classification" names the class, in level-0 pixel coordinates.
    features = json.loads(polygons.read_text())["features"]
    nuclei = shapely.from_geojson([json.dumps(f["geometry"]) for f in features
                                   if f["properties"]["classification"]["name"] == "nucleus"])
    left, top, right, bottom = shapely.total_bounds(nuclei)
    median_area = np.median(shapely.area(nuclei)) * slide.georef.mpp**2  # level-0 pixels to µm²
    print(f"{polygons}: {len(nuclei)} nucleus regions, median {median_area:.0f} µm², within x {left:.0f}–{right:.0f}, "
          f"y {top:.0f}–{bottom:.0f} of the slide's level-0 pixels")


if __name__ == "__main__":
    main()
