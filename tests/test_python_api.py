"""How the Python API is reached: the import name, and the model used when none is given."""

import subprocess
import sys

from segtile import segment
from segtile.models.builtin import DEFAULT_MODEL, builtin_models


def test_segtile_imports_from_a_folder_with_its_own_models_and_tiler(tmp_path):
    for name in ("models", "tiler"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('the user\\'s own {name}.py was imported')\n")
    control = subprocess.run([sys.executable, "-c", "import models"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)
    assert "the user's own models.py was imported" in control.stderr  # the folder's files do shadow
    code = ("from segtile import segment, Segmentation; import segtile.models; "
            "from segtile.models import load_checkpoint; print(segment.__module__, segtile.models.__name__)")
    completed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["segtile.api", "segtile.models"]
    assert "own" not in completed.stderr


def test_without_a_model_segment_uses_segtile_model_else_the_installed_default(data_dir, monkeypatch):
    monkeypatch.delenv("SEGTILE_MODEL", raising=False)
    assert segment(data_dir / "bahamas_rgb.tif").spec.path == str(builtin_models()[DEFAULT_MODEL])
    monkeypatch.setenv("SEGTILE_MODEL", "nuclei_psp18")
    result = segment(data_dir / "nuclei_img2d.tif")
    assert result.spec.path == str(builtin_models()["nuclei_psp18"])
    assert result.card.classes == ("background", "nucleus")
    assert segment(data_dir / "nuclei_img2d.tif", "nuclei_psp18").spec.path == result.spec.path  # by name
