"""segtile against TIAToolbox's ``SemanticSegmentor`` on the same pyramidal slide, the same pixels.

Both sides run the same 1x1-convolution model (``bench.workloads.pointwise_model``; TIAToolbox
gets it wrapped as a ``ModelABC``, ``bench/tiatoolbox_model.py``) on the CPU at level 0
(TIAToolbox: ``baseline`` resolution 1.0), patches of 512 every 448 pixels (overlap 64), batches
of 8, no test-time augmentation, each in a fresh process, one run each, over the same pixels:

* by default the whole slide: segtile with ``tissue=False`` (its default on a colour slide is to
  detect the tissue and skip the glass), TIAToolbox with no mask;
* with ``--tissue``, the tissue only: segtile detects it (``tissue=True``), and TIAToolbox gets the
  very mask segtile finds, written as a PNG of the slide's overview (``masks=``), so it runs the
  patches on tissue only.

The work of each side:

* segtile reads the slide tile by tile with its slide reader (tifffile), blends the overlaps
  (gaussian) and writes the labels to Zarr;
* TIAToolbox reads patches with its ``TIFFWSIReader`` (tifffile), averages the overlapping
  probabilities into a whole-slide canvas, takes the argmax and writes the labels to Zarr. With
  ``--memory-threshold N`` a second TIAToolbox run spills its canvas to disk past N % RAM use.

The slide is ``bench/out/slide_<size>.tif``, built by ``bench/make_slide.py`` when missing (and
kept for a rerun); the label outputs are deleted at the end. The report names the mode and the
options each side ran with, and gives each side's work time (after imports and model), process
wall time and peak RSS (from the kernel), the ratios time TIAToolbox / segtile and peak RSS
TIAToolbox / segtile, the label agreement on the pixels both labelled and the share of the slide
they are (TIAToolbox's labels are nodata where no patch ran), the load before and after, and the
versions. Run it in the benchmark's venv, which has both (``bench/README.md``):

    bench/.venv-tiatoolbox/bin/python -m bench.vs_tiatoolbox                  # 20000 x 20000, whole slide
    bench/.venv-tiatoolbox/bin/python -m bench.vs_tiatoolbox --tissue         # tissue only, both sides
    bench/.venv-tiatoolbox/bin/python -m bench.vs_tiatoolbox --size 4000 --memory-threshold 10
"""

from __future__ import annotations

import argparse
import platform
import shutil
from importlib.metadata import version
from pathlib import Path

import numpy as np
import zarr

from bench.compare import Row, compare_labels, load_line, print_table
from bench.make_slide import make_slide
from bench.measure import Measured, print_options, run_workload

OUT = Path(__file__).resolve().parent / "out"


def write_tissue_mask(slide: Path, out: Path) -> float:
    """The tissue segtile finds on ``slide`` (``tissue=True`` finds the same: the detection is
    deterministic), written to ``out`` as a PNG of its overview (255 on tissue), which TIAToolbox
    reads as a mask of the whole slide; returns the share of the slide it covers."""
    from PIL import Image

    from segtile.sources.slide import SlideSource
    from segtile.sources.tissue import detect_tissue

    source = SlideSource(slide)
    found = detect_tissue(source, source)
    Image.fromarray(found.tissue.astype(np.uint8) * 255).save(out)
    return found.fraction


def run_segtile(slide: Path, labels: Path, args: argparse.Namespace) -> Measured:
    """segtile's side, in a fresh process: slide -> Zarr labels at ``labels`` (the tissue only with ``--tissue``)."""
    shutil.rmtree(labels, ignore_errors=True)
    return run_workload(
        "segtile", "--slide", "--input", str(slide), "--out", str(labels), "--tile-size", str(args.tile_size),
        "--overlap", str(args.overlap), "--batch-size", str(args.batch_size), *(["--tissue"] if args.tissue else []),
    )


def run_tiatoolbox(slide: Path, folder: Path, args: argparse.Namespace, mask: Path | None,
                   memory_threshold: int | None) -> Measured:
    """TIAToolbox's side, in a fresh process: slide -> ``folder/<slide name>.zarr`` (the patches
    on ``mask`` only, when given)."""
    shutil.rmtree(folder, ignore_errors=True)
    spilling = ["--memory-threshold", str(memory_threshold)] if memory_threshold is not None else []
    masked = ["--mask", str(mask)] if mask is not None else []
    return run_workload(
        "tiatoolbox", "--input", str(slide), "--out", str(folder), "--tile-size", str(args.tile_size),
        "--overlap", str(args.overlap), "--batch-size", str(args.batch_size), *masked, *spilling,
    )


def row(measured: Measured) -> Row:
    """One table row from one run."""
    return (measured.report["seconds"], measured.wall_seconds, measured.peak_rss_mib,
            measured.report["rss_before_mib"])


def versions() -> str:
    """The versions that matter to the comparison, in one line."""
    names = ("segtile", "tiatoolbox", "torch", "tifffile", "imagecodecs", "dask", "zarr", "numpy")
    return f"Python {platform.python_version()}, " + ", ".join(f"{name} {version(name)}" for name in names)


def report_ratios(ours: Measured, theirs: Measured, label: str) -> None:
    """Time TIAToolbox / segtile and peak RSS TIAToolbox / segtile for one TIAToolbox run."""
    print(f"{label}: time TIAToolbox / segtile {theirs.report['seconds'] / ours.report['seconds']:.2f} (work), "
          f"{theirs.wall_seconds / ours.wall_seconds:.2f} (process wall); "
          f"peak RSS TIAToolbox / segtile {theirs.peak_rss_mib / ours.peak_rss_mib:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="side of the square slide, in pixels")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--memory-threshold", type=int,
                        help="also run TIAToolbox with this memory_threshold (%% RAM use past which it spills)")
    parser.add_argument("--tissue", action="store_true",
                        help="both sides on the tissue only (TIAToolbox gets segtile's tissue mask); "
                        "default: the whole slide")
    args = parser.parse_args()

    slide = OUT / f"slide_{args.size}.tif"
    if not slide.exists():
        make_slide(args.size, slide)
    mode = ("tissue only (TIAToolbox given segtile's tissue mask)" if args.tissue
            else "whole slide (no mask on either side)")
    mask = OUT / f"slide_{args.size}_tissue.png" if args.tissue else None
    if mask is not None:
        print(f"tissue mask: {write_tissue_mask(slide, mask):.1%} of the slide, {mask.name}", flush=True)
    ours_path, theirs_folder = OUT / "vs_tiatoolbox_segtile.zarr", OUT / "vs_tiatoolbox_tiatoolbox"
    spill_folder = OUT / "vs_tiatoolbox_tiatoolbox_spill"
    load_before = load_line()
    try:
        ours = run_segtile(slide, ours_path, args)
        print(f"segtile {ours.report['seconds']:.1f} s {ours.peak_rss_mib:.0f} MiB", flush=True)
        theirs = run_tiatoolbox(slide, theirs_folder, args, mask, None)
        print(f"TIAToolbox {theirs.report['seconds']:.1f} s {theirs.peak_rss_mib:.0f} MiB", flush=True)
        spilled = None
        if args.memory_threshold is not None:
            spilled = run_tiatoolbox(slide, spill_folder, args, mask, args.memory_threshold)
            print(f"TIAToolbox spilling {spilled.report['seconds']:.1f} s {spilled.peak_rss_mib:.0f} MiB", flush=True)
        load_after = load_line()
        agreement = compare_labels(
            zarr.open_array(ours_path, mode="r"), zarr.open_group(theirs.report["labels"], mode="r")["predictions"]
        )
    finally:
        for path in (ours_path, theirs_folder, spill_folder):
            shutil.rmtree(path, ignore_errors=True)

    rows = {"segtile (slide -> Zarr labels)": row(ours), "TIAToolbox SemanticSegmentor (-> Zarr)": row(theirs)}
    if spilled is not None:
        rows[f"TIAToolbox, memory_threshold={args.memory_threshold}"] = row(spilled)
    print(f"\n{slide.name}: {args.size} x {args.size}, {mode}, level 0, patch {args.tile_size}, "
          f"overlap {args.overlap}, batch {args.batch_size}, CPU, one run each")
    print_options("segtile", ours.report["options"])
    print_options("TIAToolbox", theirs.report["options"])
    print()
    print_table(rows)
    print()
    report_ratios(ours, theirs, "TIAToolbox")
    if spilled is not None:
        report_ratios(ours, spilled, f"TIAToolbox with memory_threshold={args.memory_threshold}")
    print(f"tiles run: segtile {ours.report['tiles_run']}, TIAToolbox {theirs.report['tiles_run']} patches")
    print(agreement.describe("TIAToolbox"))
    print(f"before: {load_before}; after: {load_after}")
    print(versions())


if __name__ == "__main__":
    main()
