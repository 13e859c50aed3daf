"""The benchmarks compare the work they say: segtile's benchmark workload processes every pixel of a
colour slide unless asked for the tissue only (its default there is tissue only), and prints the
options it ran with; the label comparison says over which pixels it was taken."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from bench.compare import NODATA, compare_labels
from bench.measure import run_workload

SLIDE = "examples/data/cmu_small_region.svs"  # a colour slide with µm/px: tissue detection is segtile's default


@pytest.fixture(scope="module")
def labels(tmp_path_factory) -> dict[str, tuple[dict, zarr.Array]]:
    """The workload's report and labels on the slide, whole and tissue only."""
    folder = tmp_path_factory.mktemp("bench")
    runs = {}
    for mode, flags in (("whole", []), ("tissue", ["--tissue"])):
        out = folder / f"{mode}.zarr"
        measured = run_workload("segtile", "--slide", "--input", SLIDE, "--out", str(out), "--batch-size", "8", *flags)
        runs[mode] = measured.report, zarr.open_array(out, mode="r")
    return runs


def test_the_workload_labels_every_pixel_of_a_colour_slide_by_default(labels):
    report, whole = labels["whole"]
    assert np.count_nonzero(whole[:] == NODATA) == 0
    assert report["options"]["pixels"] == "all (no mask)"
    assert report["options"]["tta"] == "none" and report["options"]["batch"] == "8"
    assert report["options"]["grid"] == "2220 x 2967 px at 0.499 µm/px"


def test_the_tissue_mode_says_so_and_runs_fewer_tiles(labels):
    (whole_report, _), (tissue_report, tissue) = labels["whole"], labels["tissue"]
    assert tissue_report["options"]["pixels"].startswith("tissue only (")
    assert 0 < np.count_nonzero(tissue[:] == NODATA) < tissue.size
    assert tissue_report["tiles_run"] < whole_report["tiles_run"]


def test_the_comparison_is_taken_on_the_pixels_both_labelled(labels):
    (_, whole), (_, tissue) = labels["whole"], labels["tissue"]
    agreement = compare_labels(tissue, whole)
    labelled = np.count_nonzero(tissue[:] != NODATA) / tissue.size
    assert agreement.compared == pytest.approx(labelled)
    assert agreement.ours == pytest.approx(labelled) and agreement.theirs == 1.0
    assert agreement.agree == 1.0  # a pointwise model: tiling cannot change a label
    assert "of the slide" in agreement.describe("the whole run")


def test_disagreement_counts_only_where_both_labelled():
    ours = np.array([[0, 1, NODATA, NODATA]], dtype=np.uint8)
    theirs = np.array([[0, 0, 1, NODATA]], dtype=np.uint8)
    agreement = compare_labels(ours, theirs)
    assert (agreement.agree, agreement.ours, agreement.theirs, agreement.compared) == (0.5, 0.5, 0.75, 0.5)
