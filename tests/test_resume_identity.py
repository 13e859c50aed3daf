"""What a work store is resumed for: the run identity covers every option that changes a pixel of
an output and every file read, by content, so work of another run is never mixed in."""

import inspect
import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from segtile import segment
from segtile.cli import build_parser, command_parser, with_command
from segtile.cli.segment_run import segment_settings
from segtile.models import ModelCard, save_torchscript
from segtile.store import identity as resume
from segtile.store.identity import claim_work_folder, prepare_work, run_identity
from segtile.writers.outputs import WriteOptions, output_kind, probability_precision
from tests.geodata import IMAGE_TRANSFORM, pixel_box, write_polygons, write_raster

SLIDE = Path(__file__).resolve().parents[1] / "examples" / "data" / "cmu_small_region.svs"


def pointwise(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    save_torchscript(path, torch.jit.script(torch.nn.Conv2d(3, 3, 1)),
                     ModelCard(classes=("a", "b", "c"), tile_size=64, overlap=8))
    return path


def identity(image, model, *options) -> dict:
    """The identity ``segtile IMAGE --model MODEL -o out.tif OPTIONS`` records, as run.json keeps it."""
    args = build_parser().parse_args(with_command([str(image), "--model", str(model), "-o", "out.tif",
                                                   *map(str, options)]))
    settings = segment_settings(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = segment(args.input[0], args.model, **settings)
    precision = probability_precision([output_kind("out.tif")], WriteOptions(probabilities=args.probabilities))
    return json.loads(json.dumps(run_identity(result, args.input[0], args.model, precision, settings)))


def old_identity(path: Path) -> tuple:
    """How an input was identified before: path, size and modification time."""
    stat = path.stat()
    return str(path), stat.st_size, stat.st_mtime_ns


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("identity")
    rng = np.random.default_rng(0)
    write_raster(folder / "image.tif", rng.integers(0, 255, size=(3, 96, 128), dtype=np.uint8))
    halves = {"left": (0, 96, 0, 64), "right": (0, 96, 64, 128)}
    for name, box in halves.items():
        write_polygons(folder / f"{name}.geojson", [pixel_box(IMAGE_TRANSFORM, *box)], [name])
    return {"folder": folder, "image": folder / "image.tif", "model": pointwise(folder / "model.pt"),
            "left": folder / "left.geojson", "right": folder / "right.geojson"}


CHANGED_BY = {  # options that change pixels: (one run's, the other's)
    "a mask": ([], ["--mask", "left"]),
    "another mask": (["--mask", "left"], ["--mask", "right"]),
    "tile size": ([], ["--tile-size", "48"]),
    "overlap": ([], ["--overlap", "4"]),
    "blend": ([], ["--blend", "linear"]),
    "chunk size": (["--chunk-size", "64"], ["--chunk-size", "32"]),
    "precision": ([], ["--precision", "bf16"]),
    "augmentation": ([], ["--tta", "flip"]),
    "scales": ([], ["--scales", "0.5,1"]),
    "bands": ([], ["--bands", "3,2,1"]),
    "resolution": ([], ["--resolution", "60"]),
    "probabilities kept": ([], ["--probabilities"]),
}


@pytest.mark.parametrize("option", CHANGED_BY)
def test_every_option_that_changes_pixels_is_in_the_identity(files, option):
    one, other = ([str(files.get(a, a)) for a in args] for args in CHANGED_BY[option])
    assert identity(files["image"], files["model"], *one) != identity(files["image"], files["model"], *other)


SLIDE_CHANGED_BY = {
    "tissue detection off": ([], ["--no-tissue-mask"]),
    "tissue threshold": (["--tissue-threshold", "0.1"], ["--tissue-threshold", "0.2"]),
    "µm per pixel": ([], ["--mpp", "1"]),
}


@pytest.mark.parametrize("option", SLIDE_CHANGED_BY)
def test_tissue_detection_and_the_slide_grid_are_in_the_identity(files, option):
    one, other = SLIDE_CHANGED_BY[option]
    assert identity(SLIDE, files["model"], *one) != identity(SLIDE, files["model"], *other)


def test_the_pyramid_level_is_in_the_identity(tmp_path, files):
    pyramid = tmp_path / "pyramid.tif"
    shutil.copy2(files["image"], pyramid)
    subprocess.run(["gdaladdo", "-q", str(pyramid), "2"], check=True)
    assert identity(pyramid, files["model"]) != identity(pyramid, files["model"], "--level", "1")


@pytest.mark.parametrize("option", [["--batch-size", "1"], ["--stripe-width", "64"], ["--memory-limit", "2G"],
                                    ["--device", "cpu"], ["--simplify", "2"], ["--quiet"]])
def test_options_that_change_no_pixel_leave_the_identity_alone(files, option):
    """A run killed for want of memory resumes with a smaller batch or stripe."""
    base = ["--chunk-size", "64", "--batch-size", "4"]
    assert identity(files["image"], files["model"], *base) == identity(files["image"], files["model"], *base, *option)


def test_every_option_of_segment_is_in_the_identity_or_said_to_change_no_pixel():
    """A new option of segment() must be classified here before a resume can mix its runs."""
    parameters = set(inspect.signature(segment).parameters) - {"source", "model"}
    assert parameters == set(resume.GIVEN_OPTIONS) | set(resume.BY_EFFECT) | set(resume.LEFT_OUT)
    command_options = {action.dest for action in command_parser("segment")._actions}
    run_control = {"help", "input", "out", "model", "resume", "overwrite", "progress", "quiet", "scheduler", "gpus",
                   "workers", "debug", "run", "summary",
                   "mosaic"}  # the inputs as one image: each of them is in the identity's image
    writer_options = {"probabilities", "simplify", "min_area", "skip_classes", "qupath_objects", "creation_options",
                      "zarr_format"}
    assert command_options - run_control - writer_options == set(segment_settings(build_parser().parse_args(
        ["segment", "x.tif", "-o", "y.tif"])))


def test_the_model_and_segtile_version_are_in_the_identity(files, monkeypatch):
    before = identity(files["image"], files["model"])
    other = pointwise(files["folder"] / "other.pt", seed=1)
    assert other.stat().st_size == files["model"].stat().st_size
    assert identity(files["image"], other) != before
    monkeypatch.setattr(resume, "version", lambda: "0.0.0-other")
    assert identity(files["image"], files["model"]) != before


def replaced_keeping_size_and_time(path: Path, content: bytes, how: str) -> None:
    """Give ``path`` other bytes of the same size, its modification time kept, as the tools do."""
    reference = path.with_name(path.name + ".reference")
    shutil.copy2(path, reference)  # cp -p: its time too
    if how == "cp -p":
        source = path.with_name(path.name + ".new")
        source.write_bytes(content)
        subprocess.run(["touch", "-r", str(reference), str(source)], check=True)
        subprocess.run(["cp", "-p", str(source), str(path)], check=True)
    elif how == "rsync -t":  # rsync writes a temporary beside the file, sets its time, renames it over
        temporary = path.with_name(f".{path.name}.rsync-tmp")
        temporary.write_bytes(content)
        os.utime(temporary, ns=(reference.stat().st_atime_ns, reference.stat().st_mtime_ns))
        os.replace(temporary, path)
    elif how == "touch -r":
        with open(path, "r+b") as file:  # edited in place
            file.write(content)
        subprocess.run(["touch", "-r", str(reference), str(path)], check=True)
    reference.unlink()


def other_pixels(path: Path) -> bytes:
    """The bytes of a GeoTIFF like ``path`` (same size and layout) with other pixels."""
    other = path.with_name("other-pixels.tif")
    write_raster(other, np.random.default_rng(7).integers(0, 255, size=(3, 96, 128), dtype=np.uint8))
    content = other.read_bytes()
    other.unlink()
    return content


@pytest.mark.parametrize("how", ["cp -p", "rsync -t", "touch -r"])
def test_an_input_rewritten_with_its_size_and_time_kept_is_another_input(tmp_path, files, how):
    image = tmp_path / "image.tif"
    shutil.copy2(files["image"], image)
    before, old = identity(image, files["model"]), old_identity(image)
    replaced_keeping_size_and_time(image, other_pixels(image), how)
    assert old_identity(image) == old  # what the identity used to see did not change
    assert identity(image, files["model"]) != before


def test_a_vrt_whose_source_changed_is_another_input(tmp_path, files):
    source = tmp_path / "image.tif"
    shutil.copy2(files["image"], source)
    vrt = tmp_path / "mosaic.vrt"
    subprocess.run(["gdalbuildvrt", "-q", str(vrt), str(source)], check=True)
    before = identity(vrt, files["model"])
    assert str(source) in [f["path"] for f in before["image"]]
    replaced_keeping_size_and_time(source, other_pixels(source), "cp -p")
    assert identity(vrt, files["model"]) != before


def test_a_mask_whose_content_or_sidecar_changed_is_another_mask(tmp_path, files):
    mask = tmp_path / "area.geojson"
    shutil.copy2(files["left"], mask)
    before = identity(files["image"], files["model"], "--mask", mask)
    shutil.copy2(files["right"], mask)  # the same name, another area
    assert identity(files["image"], files["model"], "--mask", mask) != before

    shapefile = write_polygons(tmp_path / "area.shp", [pixel_box(IMAGE_TRANSFORM, 0, 96, 0, 64)], ["in"])
    before = identity(files["image"], files["model"], "--mask", shapefile)
    prj = shapefile.with_suffix(".prj")
    assert str(prj) in [f["path"] for f in before["mask"]]
    prj.write_text(prj.read_text().replace("UTM zone 18N", "UTM zone 18N "))  # the .prj alone changed
    assert identity(files["image"], files["model"], "--mask", shapefile) != before


def test_the_external_data_of_an_onnx_model_is_part_of_the_model(tmp_path, files):
    onnx = pytest.importorskip("onnx")
    from segtile.cli.convert_run import convert

    exported = tmp_path / "exported.onnx"
    convert(files["model"], exported)
    model = onnx.load(str(exported))
    onnx.save_model(model, str(tmp_path / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
                    size_threshold=0)
    before = identity(files["image"], tmp_path / "model.onnx")
    data = tmp_path / "model.onnx.data"
    assert str(data) in [f["path"] for f in before["model"]["files"]]
    weights = bytearray(data.read_bytes())
    weights[0] ^= 0x40
    data.write_bytes(bytes(weights))
    assert identity(files["image"], tmp_path / "model.onnx") != before


def test_work_of_another_run_is_replaced_with_a_note_naming_what_differs(tmp_path, files):
    args = [str(files["image"]), "--model", str(files["model"]), "-o", str(tmp_path / "m.tif"), "--chunk-size", "64"]
    folder = tmp_path / ".m.tif.segtile-work"

    def prepared(*options, resume_it=True):
        parsed = build_parser().parse_args(with_command([*args, *options]))
        settings = segment_settings(parsed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = segment(parsed.input[0], parsed.model, **settings)
        with claim_work_folder(folder):
            work = prepare_work(folder, result, run_identity(result, parsed.input[0], parsed.model, None, settings),
                                None, resume_it)
            work.store.fill(result.products("labels"))
        return work

    prepared("--mask", str(files["left"]), resume_it=False)
    work = prepared("--mask", str(files["right"]))
    assert work.done == frozenset()
    assert work.note == (f"the work kept in {folder} is from another run (another mask; other options: mask): "
                         "starting afresh")
    assert prepared("--mask", str(files["right"])).note == "resuming: 4 of 4 chunks were done"
