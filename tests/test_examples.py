"""The examples run as written: the notebook (executed in a kernel) and the slide script."""

import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import rasterio
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_the_notebook_runs_and_writes_its_outputs(tmp_path, monkeypatch):
    monkeypatch.delenv("SEGTILE_MODEL", raising=False)  # the installed default model
    notebook = nbformat.read(EXAMPLES / "segment_in_a_notebook.ipynb", as_version=4)
    (tmp_path / "data").symlink_to(EXAMPLES / "data")  # run in a copy: outputs land in tmp_path
    NotebookClient(notebook, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on any cell error

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    shown = [output.data for output in outputs if output.output_type == "execute_result"]
    assert any(data["text/plain"].startswith("<Segmentation 791×718 px, 2 classes (water, land)") for data in shown)
    assert any("image/png" in data and "water" in data.get("text/html", "") for data in shown)  # the preview
    printed = "".join(output.text for output in outputs if output.output_type == "stream" and output.name == "stdout")
    assert "EPSG:32618 (718, 791)" in printed and "km² in the mask" in printed
    warned = "".join(output.text for output in outputs if output.output_type == "stream" and output.name == "stderr")
    assert "Warning" not in warned  # the progress bar only

    out = tmp_path / "outputs"
    with rasterio.open(out / "bahamas_mask.tif") as mask:
        assert mask.shape == (718, 791) and set(np.unique(mask.read(1))) <= {0, 1, 2, 255}
    assert (out / "bahamas_regions.gpkg").stat().st_size > 0
    assert (out / "bahamas_classes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_slide_example_runs(tmp_path):
    completed = subprocess.run([sys.executable, str(EXAMPLES / "segment_a_slide.py"), "--out", str(tmp_path),
                                "--mpp", "0.5"], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "cmu_small_region.svs: 2220×2967 px, 0.499 µm/px" in completed.stdout
    assert "nucleus regions" in completed.stdout
    with rasterio.open(tmp_path / "nuclei_mask.tif") as mask:
        assert (mask.width, mask.height) == (2216, 2961)  # the slide at 0.5 µm/px
    assert (tmp_path / "nuclei.geojson").exists() and (tmp_path / "slide_preview.png").exists()
