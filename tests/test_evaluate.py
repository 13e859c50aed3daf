"""``segtile eval``: a confusion matrix counted by hand, the reference's metrics, ground truth as
rasters or polygons, and every bad input as a one-line error."""

import json

import numpy as np
import pytest
import rasterio

from segtile.cli import main
from segtile.errors import SegtileError
from segtile.training.evaluate import EvalError, evaluate, prediction_classes
from segtile.training.metrics import confusion_matrix, scores
from tests.geodata import IMAGE_TRANSFORM, pixel_box, write_polygons, write_raster

CLASSES = ("a", "b", "c")
NODATA = 255
# Ground truth (255 = unlabelled) and prediction (255 = nodata) of a 3 x 4 image.
TRUTH = np.array([[0, 0, 1, 1],
                  [0, 2, 1, 255],
                  [2, 2, 1, 1]], dtype=np.uint8)
PREDICTED = np.array([[0, 1, 1, 1],
                      [0, 2, 0, 2],
                      [2, 0, 1, 255]], dtype=np.uint8)
# Counted by hand over the 10 pixels labelled in both: rows = truth, columns = prediction.
CONFUSION = [[2, 1, 0],
             [1, 3, 0],
             [1, 0, 2]]


@pytest.fixture
def files(tmp_path):
    """The prediction as a segtile-like mask (nodata 255, class names in band 1's tags) and the
    truth as a label raster on the same grid."""
    prediction = write_raster(tmp_path / "pred.tif", PREDICTED, nodata=NODATA)
    with rasterio.open(prediction, "r+") as dataset:
        dataset.update_tags(1, CLASS_NAMES=json.dumps(list(CLASSES)))
    return prediction, write_raster(tmp_path / "truth.tif", TRUTH)


def run(*args) -> int:
    return main([str(a) for a in args])


def test_confusion_matrix_and_metrics_equal_the_hand_count(files):
    evaluation = evaluate(*files, chunk_size=2)  # windows of 2 x 2, cut short at the edges
    s = evaluation.scores
    assert evaluation.classes == CLASSES
    assert s.confusion.tolist() == CONFUSION
    # I = (2, 3, 2), T = (3, 4, 3), predicted areas (4, 4, 2), so U = (5, 5, 3)
    assert s.iou.tolist() == pytest.approx([2 / 5, 3 / 5, 2 / 3])
    assert s.accuracy.tolist() == pytest.approx([2 / 3, 3 / 4, 2 / 3])
    assert s.miou == pytest.approx((2 / 5 + 3 / 5 + 2 / 3) / 3)
    assert s.macc == pytest.approx((2 / 3 + 3 / 4 + 2 / 3) / 3)
    assert s.allacc == pytest.approx(7 / 10) and s.pixels == 10
    assert (s.reference_miou, s.reference_macc) == pytest.approx((s.miou, s.macc))


def test_a_class_absent_from_both_is_left_out_of_the_means_but_kept_in_the_reference_figures():
    s = scores(np.pad(np.array(CONFUSION), ((0, 1), (0, 1))))  # a fourth class, never seen
    assert np.isnan(s.iou[3]) and np.isnan(s.accuracy[3])
    assert s.miou == pytest.approx((2 / 5 + 3 / 5 + 2 / 3) / 3)
    assert s.reference_miou == pytest.approx((2 / 5 + 3 / 5 + 2 / 3 + 0) / 4)
    predicted_only = scores(np.array([[3, 1], [0, 0]]))  # class 1 predicted, absent from the truth
    assert predicted_only.iou.tolist()[1] == 0.0 and np.isnan(predicted_only.accuracy[1])


def test_confusion_matrix_counts_only_the_pixels_asked_for():
    truth, predicted = np.array([0, 1, 1, 2]), np.array([0, 2, 1, 2])
    counted = np.array([True, True, False, True])
    assert confusion_matrix(truth, predicted, 3, counted).tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]


def test_ground_truth_as_polygons_gives_the_same_matrix(tmp_path, files):
    prediction, _ = files
    boxes, names = [], []
    for row, col in zip(*np.nonzero(TRUTH != 255)):  # one pixel-sized square per labelled pixel
        boxes.append(pixel_box(IMAGE_TRANSFORM, row, row + 1, col, col + 1))
        names.append(CLASSES[TRUTH[row, col]])
    truth = write_polygons(tmp_path / "truth.gpkg", boxes, names)
    assert evaluate(prediction, truth).scores.confusion.tolist() == CONFUSION


@pytest.mark.parametrize("suffix", [".fgb", ".shp"])
def test_polygon_ground_truth_cut_short_anywhere_is_an_error_never_a_score(tmp_path, files, suffix):
    # OGR reads what is left of a truncated FlatGeobuf (no feature at all) or shapefile (features
    # without geometry) without an error: the score would be of a part of the ground truth
    prediction, _ = files
    boxes, names = [], []
    for row, col in zip(*np.nonzero(TRUTH != 255)):
        boxes.append(pixel_box(IMAGE_TRANSFORM, row, row + 1, col, col + 1))
        names.append(CLASSES[TRUTH[row, col]])
    truth = write_polygons(tmp_path / f"truth{suffix}", boxes, names)
    assert evaluate(prediction, truth).scores.confusion.tolist() == CONFUSION
    whole = truth.read_bytes()
    for end in range(100, len(whole), max(1, len(whole) // 25)):
        truth.write_bytes(whole[:end])
        with pytest.raises(SegtileError, match="truncated"):
            evaluate(prediction, truth)


def test_a_truncated_ground_truth_raster_is_named_truncated(tmp_path, files):
    prediction, truth = files
    whole = truth.read_bytes()
    truth.write_bytes(whole[:-3])
    with pytest.raises(SegtileError, match="is truncated: its image data run to byte"):
        evaluate(prediction, truth)


def test_a_prediction_of_whole_floats_is_one_of_class_indices_and_other_floats_are_refused(tmp_path, files):
    _, truth = files
    floats = write_raster(tmp_path / "floats.tif", PREDICTED.astype(np.float32), nodata=NODATA)
    assert evaluate(floats, truth, classes=CLASSES).scores.confusion.tolist() == CONFUSION
    scores = write_raster(tmp_path / "scores.tif", np.where(PREDICTED == 255, 255, PREDICTED * 0.3).astype(np.float32),
                          nodata=NODATA)  # 0, 0.3 and 0.6: not a mask
    with pytest.raises(EvalError, match=r"predicted value 0.3 is not a class index: .* holds float32 values"):
        evaluate(scores, truth, classes=CLASSES)


def test_nothing_compared_says_whether_the_truth_labels_anything_there(tmp_path, files):
    prediction, truth = files
    unlabelled = write_raster(tmp_path / "unlabelled.tif", np.full((3, 4), 255, np.uint8))
    with pytest.raises(EvalError, match="labels no pixel on the grid of .* damaged file, or labels of another place"):
        evaluate(prediction, unlabelled)
    nodata = write_raster(tmp_path / "nodata.tif", np.full((3, 4), NODATA, np.uint8), nodata=NODATA)
    with pytest.raises(EvalError, match="the 11 pixels .* labels are all nodata in"):
        evaluate(nodata, truth, classes=CLASSES)


def test_ground_truth_on_a_finer_grid_is_reprojected_onto_the_prediction(tmp_path, files):
    prediction, _ = files
    fine = write_raster(tmp_path / "fine.tif", np.kron(TRUTH, np.ones((3, 3), np.uint8)),
                        transform=IMAGE_TRANSFORM * IMAGE_TRANSFORM.scale(1 / 3))
    assert evaluate(prediction, fine).scores.confusion.tolist() == CONFUSION


def test_the_command_prints_tables_and_json(files, capsys):
    assert run("eval", *files, "--quiet") == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "mIoU 0.5556   mAcc 0.6944   allAcc 0.7000   (10 pixels compared)" in out
    assert out.splitlines()[2].split() == ["a", "2", "1", "0"]
    assert run("eval", *files, "--json", "--classes", "x,y,z") == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["classes"] == ["x", "y", "z"] and report["confusion_matrix"] == CONFUSION
    assert report["iou"]["y"] == pytest.approx(0.6) and report["mIoU"] == pytest.approx(0.5556, abs=1e-4)
    assert "segtile eval" in err  # the progress bar


def test_class_names_come_from_the_card_when_the_band_has_none(tmp_path):
    path = write_raster(tmp_path / "mask.tif", PREDICTED)
    assert prediction_classes(path) is None
    with rasterio.open(path, "r+") as dataset:
        dataset.update_tags(SEGTILE_CARD=json.dumps({"classes": ["p", "q", "r"], "tile_size": 64}))
    assert prediction_classes(path) == ("p", "q", "r")


def bad_cases(tmp_path, prediction, truth):
    unnamed = write_raster(tmp_path / "unnamed.tif", PREDICTED, nodata=NODATA)
    two_bands = write_raster(tmp_path / "two.tif", np.stack([PREDICTED, PREDICTED]))
    out_of_range = write_raster(tmp_path / "seven.tif", np.full((3, 4), 7, np.uint8))
    empty_truth = write_raster(tmp_path / "empty.tif", np.full((3, 4), 255, np.uint8))
    return {
        "missing prediction": ([tmp_path / "nope.tif", truth], "nope.tif"),
        "missing truth": ([prediction, tmp_path / "nope.gpkg"], "labels not found"),
        "no class names": ([unnamed, truth], "carries no class names: name them with --classes"),
        "several bands": ([two_bands, truth, "--classes", "a,b,c"], "has 2"),
        "another class count": ([prediction, truth, "--classes", "a,b"], "has 3 classes (a, b, c), but 2"),
        "not a class index": ([out_of_range, truth, "--classes", "a,b,c"], "predicted value 7 is not a class index"),
        "truth not a class index": ([prediction, out_of_range], "value 7 (row 0, column 0) is not a class index"),
        "nothing to compare": ([prediction, empty_truth], "no pixel to compare"),
        "bad chunk size": ([prediction, truth, "--chunk-size", "0"], "expected a positive integer"),
    }


@pytest.mark.parametrize("case", ["missing prediction", "missing truth", "no class names", "several bands",
                                  "another class count", "not a class index", "truth not a class index",
                                  "nothing to compare", "bad chunk size"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, files, capsys, case):
    arguments, fragment = bad_cases(tmp_path, *files)[case]
    assert run("eval", *arguments, "--quiet") == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and err.startswith("segtile: error:")


def test_evaluate_raises_eval_error_for_a_mask_of_other_classes(tmp_path, files):
    _, truth = files
    with pytest.raises(EvalError):
        evaluate(write_raster(tmp_path / "seven.tif", np.full((3, 4), 7, np.uint8)), truth, classes=CLASSES)
