"""The QGIS plugin in real QGIS, headless: installed with `segtile qgis install`, enabled and run
with `qgis_process`, and driven through PyQGIS (outputs loaded with their styles; Cancel).

Skipped where QGIS is not installed, except when ``SEGTILE_REQUIRE_QGIS`` is set (CI sets it):
then a missing QGIS fails the test. QGIS runs as a user would run it: a throw-away HOME (so the
plugin goes to the default profile), no display (``QT_QPA_PLATFORM=offscreen``), and a PATH
without this virtual environment's ``bin``, which would make QGIS's Python crash.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import torch

from segtile.cli.qgis_install import segtile_executable
from segtile.models import ModelCard, save_torchscript
from segtile.models.builtin import choose_model
from segtile.models.checkpoint import load_checkpoint

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "bahamas_rgb.tif"
SESSION = Path(__file__).resolve().parent / "qgis_session.py"
PROFILE_PLUGINS = Path(".local/share/QGIS/QGIS3/profiles/default/python/plugins")
QGIS_TIMEOUT = 300  # seconds for one QGIS command: a hang fails the test instead of the suite


def qgis_environment(home: Path) -> dict[str, str]:
    """This process's environment as QGIS must see it (see the module docstring)."""
    venv_bin = str(Path(sys.executable).parent)
    hidden = ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV", "XDG_DATA_HOME", "XDG_CONFIG_HOME")
    env = {name: value for name, value in os.environ.items() if name not in hidden}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    runtime = home / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env.update(HOME=str(home), QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(runtime))
    return env


def qgis_python(env: dict[str, str]) -> str | None:
    """The first ``python3`` on ``env``'s PATH that can import PyQGIS (QGIS's own Python)."""
    for folder in env["PATH"].split(os.pathsep):
        candidate = shutil.which("python3", path=folder)
        if candidate and subprocess.run([candidate, "-c", "import qgis.core"], env=env,
                                        capture_output=True).returncode == 0:
            return candidate
    return None


@pytest.fixture(scope="module")
def qgis(tmp_path_factory):
    """QGIS with the plugin installed by `segtile qgis install` and enabled by `qgis_process`."""
    home = tmp_path_factory.mktemp("home")
    env = qgis_environment(home)
    # Debian's /usr/bin/qgis_process wrapper passes an option QGIS 3.22 rejects; the binary works.
    qgis_process = shutil.which("qgis_process.bin", path=env["PATH"]) or shutil.which("qgis_process", path=env["PATH"])
    python = qgis_python(env)
    if qgis_process is None or python is None:
        missing = "qgis_process" if qgis_process is None else "PyQGIS (python3-qgis)"
        if os.environ.get("SEGTILE_REQUIRE_QGIS"):
            pytest.fail(f"SEGTILE_REQUIRE_QGIS is set but {missing} is not installed")
        pytest.skip(f"{missing} is not installed")
    subprocess.run([segtile_executable(), "qgis", "install"], env=env, check=True, capture_output=True)
    assert (home / PROFILE_PLUGINS / "segtile" / "install.json").is_file()
    enabled = subprocess.run([qgis_process, "plugins", "enable", "segtile"], env=env, capture_output=True,
                             text=True, timeout=QGIS_TIMEOUT)
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    image = home / SAMPLE.name  # a copy: QGIS writes statistics beside the rasters it opens (.aux.xml)
    shutil.copy(SAMPLE, image)
    return {"env": env, "qgis_process": qgis_process, "python": python, "plugins": home / PROFILE_PLUGINS,
            "image": image}


def polygons_by_class(path: Path) -> dict[str, tuple[int, int]]:
    """class_name -> (number of polygons, total area in whole m², the pixels being 300 m wide)."""
    meta, _, geometry, fields = pyogrio.raw.read(path, layer=path.stem)
    names = dict(zip(meta["fields"], fields))["class_name"]
    areas = shapely.area(shapely.from_wkb(geometry))
    return {name: (int((names == name).sum()), round(areas[names == name].sum())) for name in set(names)}


def test_qgis_process_segments_like_the_cli(qgis, tmp_path):
    cli_mask, cli_polygons = tmp_path / "cli.tif", tmp_path / "cli.gpkg"
    subprocess.run([segtile_executable(), qgis["image"], "-o", cli_mask, "-o", cli_polygons, "--quiet"], check=True)
    mask, polygons = tmp_path / "qgis.tif", tmp_path / "qgis.gpkg"
    done = subprocess.run([qgis["qgis_process"], "run", "segtile:segment", "--", f"INPUT={qgis['image']}",
                           f"OUTPUT={mask}", f"POLYGONS={polygons}"],
                          env=qgis["env"], capture_output=True, text=True, timeout=QGIS_TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "segtile: model:" in done.stdout and "(the installed default)" in done.stdout
    with rasterio.open(cli_mask) as expected, rasterio.open(mask) as got:
        assert (got.crs, got.transform, got.shape) == (expected.crs, expected.transform, expected.shape)
        expected_labels, labels = expected.read(1), got.read(1)
    np.testing.assert_array_equal(labels, expected_labels)
    assert len(np.unique(labels)) > 2  # a real segmentation, not a blank mask
    assert polygons_by_class(polygons) == polygons_by_class(cli_polygons)
    assert mask.with_suffix(".qml").is_file()
    assert "layer_styles" in pyogrio.list_layers(polygons)[:, 0]


def test_qgis_process_reports_segtile_errors(qgis, tmp_path):
    done = subprocess.run([qgis["qgis_process"], "run", "segtile:segment", "--", f"INPUT={qgis['image']}",
                           f"OUTPUT={tmp_path / 'mask.tif'}", "BANDS=1,2,9"],
                          env=qgis["env"], capture_output=True, text=True, timeout=QGIS_TIMEOUT)
    assert done.returncode != 0
    assert "band 9 is out of range: the image has 3 bands" in done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == []


def first_band(image: Path, path: Path) -> Path:
    """A copy of ``image``'s first band (the default model takes three)."""
    with rasterio.open(image) as src, rasterio.open(path, "w", **{**src.profile, "count": 1}) as out:
        out.write(src.read(1), 1)
    return path


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    """The errors qgis_process reported for the algorithm (its "ERROR:" lines; qgis_process also
    echoes QGIS's critical log messages, for every algorithm, QGIS's own included)."""
    return [line.split("\t", 1)[1] for line in (done.stdout + done.stderr).splitlines() if line.startswith("ERROR:\t")]


def test_messages_name_the_qgis_parameters(qgis, tmp_path):
    """They named the command's options (--bands, with its Python spelling) in QGIS, where there are none."""
    one_band = first_band(qgis["image"], tmp_path / "one_band.tif")
    done = qgis_run(qgis, "segment", INPUT=one_band, OUTPUT=tmp_path / "mask.tif")
    assert done.returncode != 0
    assert error_lines(done) == ["the model takes 3 bands (bands 1,2,3 of its card) but the image has 1 band: choose "
                                 "3 with BANDS (e.g. BANDS=1,1,1) or use a model made for 1 band"]
    assert "--bands" not in done.stdout + done.stderr and "Python:" not in done.stdout + done.stderr
    assert [path.name for path in tmp_path.iterdir() if "mask" in path.name] == []  # nothing written


def test_resolution_chooses_the_grid_of_the_mask(qgis, tmp_path):
    landsat = tmp_path / "landsat7.tif"  # 30 m: ten times finer than a model trained at 300 m
    shutil.copy(SAMPLE.parent / "landsat7.tif", landsat)
    model = tmp_path / "at300m.pt"
    save_torchscript(model, torch.nn.Conv2d(3, 3, 1).eval(),
                     ModelCard(classes=("water", "land", "cloud"), resolution=300.0, resolution_unit="m"))
    done = qgis_run(qgis, "segment", INPUT=landsat, MODEL=model, OUTPUT=tmp_path / "refused.tif")
    assert done.returncode != 0
    assert error_lines(done)[0].endswith("choose RESOLUTION=native to process the image's own pixels, or "
                                         "RESOLUTION=300 for the model's grid anyway, or a model trained on "
                                         "such images")
    mask = tmp_path / "mask.tif"
    done = qgis_run(qgis, "segment", INPUT=qgis["image"], OUTPUT=mask, RESOLUTION=600)
    assert done.returncode == 0, done.stdout + done.stderr
    with rasterio.open(mask) as written, rasterio.open(qgis["image"]) as source:
        assert written.shape == (round(source.height / 2), round(source.width / 2))
        assert written.bounds == pytest.approx(source.bounds)


def test_pyqgis_loads_styled_outputs_cancel_leaves_nothing_and_an_error_is_reported_once(qgis, tmp_path):
    one_band = first_band(qgis["image"], tmp_path / "one_band.tif")
    done = subprocess.run([qgis["python"], SESSION, qgis["plugins"], qgis["image"], tmp_path, one_band],
                          env=qgis["env"], capture_output=True, text=True, timeout=QGIS_TIMEOUT)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    card = load_checkpoint(choose_model(None).path).card
    classes = [[name, colour.lower()] for name, colour in zip(card.classes, card.colors)]
    layers = {Path(layer["source"]).name: layer for layer in report["loaded"]}
    assert layers["mask.tif"]["renderer"] == "paletted"
    assert [[label, colour] for _, label, colour in layers["mask.tif"]["entries"]] == classes
    assert layers["polygons.shp"]["renderer"] == "categorizedSymbol"
    assert [[label, colour] for _, label, colour in layers["polygons.shp"]["entries"]] == classes
    canceled = report["canceled"]
    assert not canceled["succeeded"]
    assert canceled["errors"] == ["canceled: segtile stopped and removed its unfinished outputs"]
    assert canceled["files"] == []  # no output and no temporary folder
    failed = report["failed"]
    assert not failed["succeeded"]
    told = [line for line in failed["lines"] if "the image has 1 band" in line]
    assert told == ["error: the model takes 3 bands (bands 1,2,3 of its card) but the image has 1 band: choose 3 with "
                    "BANDS (e.g. BANDS=1,1,1) or use a model made for 1 band"]
    batch = report["batch"]  # Processing's "Run as batch process": one instance, row after row
    assert batch["supports_batch"]
    assert batch["succeeded"] == [False, True]
    assert [name for name in batch["files"] if not name.endswith((".qml", ".aux.xml"))] == ["second.gpkg", "second.tif"]


def qgis_run(qgis, algorithm: str, **parameters) -> subprocess.CompletedProcess:
    """``qgis_process run segtile:ALGORITHM -- NAME=VALUE ...``, in the plugin's QGIS."""
    return subprocess.run([qgis["qgis_process"], "run", f"segtile:{algorithm}", "--",
                           *(f"{name}={value}" for name, value in parameters.items())],
                          env=qgis["env"], capture_output=True, text=True, timeout=QGIS_TIMEOUT)


def test_qgis_process_trains_a_model_segment_takes(qgis, tmp_path):
    data = SAMPLE.parent
    image, labels = tmp_path / "nuclei.tif", tmp_path / "labels.tif"
    shutil.copy(data / "nuclei_img2d.tif", image)
    shutil.copy(data / "nuclei_labels_train.tif", labels)
    model = tmp_path / "nuclei.pt"
    done = qgis_run(qgis, "train", IMAGE=image, LABELS=labels, CLASSES="background,nucleus", EPOCHS=1,
                    STEPS_PER_EPOCH=2, TILE_SIZE=64, BATCH_SIZE=2, WIDTH=0.125, DEVICE="cpu", OUTPUT=model)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "epoch 1/1: loss" in done.stdout
    card = load_checkpoint(model).card
    assert card.classes == ("background", "nucleus") and card.in_channels == 1
    mask = tmp_path / "mask.tif"
    done = qgis_run(qgis, "segment", INPUT=image, MODEL=model, OUTPUT=mask)
    assert done.returncode == 0, done.stdout + done.stderr
    with rasterio.open(mask) as written, rasterio.open(image) as source:
        assert written.shape == source.shape


def test_qgis_process_evaluates_like_the_cli(qgis, tmp_path):
    mask = tmp_path / "mask.tif"
    subprocess.run([segtile_executable(), qgis["image"], "-o", mask, "--quiet"], check=True)
    truth = tmp_path / "truth.tif"
    shutil.copy(SAMPLE.parent / "bahamas_water.tif", truth)
    expected = json.loads(subprocess.run([segtile_executable(), "eval", mask, truth, "--json", "--quiet"],
                                         check=True, capture_output=True, text=True).stdout)
    done = qgis_run(qgis, "eval", PREDICTION=mask, GROUND_TRUTH=truth)
    assert done.returncode == 0, done.stdout + done.stderr
    results = dict(line.split(":\t", 1) for line in done.stdout.splitlines() if ":\t" in line)
    assert float(results["MIOU"]) == pytest.approx(expected["mIoU"])
    assert float(results["OVERALL_ACCURACY"]) == pytest.approx(expected["allAcc"])
    assert json.loads(results["REPORT"])["confusion_matrix"] == expected["confusion_matrix"]
    assert f"mIoU {expected['mIoU']:.4f}" in done.stdout
