"""The package's layering: the import-linter contracts of pyproject.toml hold, and break when an
import points the wrong way; the command's parser stays light.

segtile is one package from two source roots (tiler/segtile and models/segtile/models), which
import-linter cannot merge from an editable install; the contracts are checked on the package as
a wheel installs it: models/ inside segtile/.
"""

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")


def installed_layout(folder: Path) -> Path:
    """A copy of the package laid out as installed, in ``folder``; returns the folder to import it from."""
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "tiler" / "segtile", folder / "segtile", ignore=skip)
    shutil.copytree(REPO / "models" / "segtile" / "models", folder / "segtile" / "models", ignore=skip)
    return folder


def lint_imports(site: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the contracts of pyproject.toml (it reads the one in its working folder) on
    the package in ``site``."""
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(site)},
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def site(tmp_path):
    if LINT_IMPORTS is None:
        pytest.fail("lint-imports is not installed: install the test extras (import-linter)")
    return installed_layout(tmp_path)


def test_every_import_contract_is_kept(site):
    done = lint_imports(site)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout and "Contracts: 5 kept" in done.stdout, done.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("models/card.py", "from segtile.engine import graph", "segtile.models is a leaf"),
    ("tiling/blend.py", "import torch", "segtile.tiling is pure arithmetic"),
    ("sources/base.py", "from segtile.tiling import grid", "Layers"),
    ("writers/geotiff.py", "from segtile.inference import predictor", "Writers take arrays"),
])
def test_an_import_against_the_layers_breaks_its_contract(site, module, line, contract):
    with open(site / "segtile" / module, "a") as file:
        file.write(f"\n{line}\n")
    done = lint_imports(site)
    assert done.returncode == 1
    broken = done.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, done.stdout


@pytest.mark.parametrize("room", ["segtile", "segtile.sources", "segtile.tiling", "segtile.inference", "segtile.engine",
                                  "segtile.store", "segtile.writers", "segtile.training", "segtile.batch",
                                  "segtile.cli", "segtile.models", "segtile.qgis_plugin"])
def test_every_public_name_of_a_room_is_there(room):
    package = importlib.import_module(room)
    assert package.__all__
    assert [name for name in package.__all__ if not hasattr(package, name)] == []


def test_the_command_parser_imports_nothing_heavy():
    code = ("import sys; from segtile.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'dask', 'rasterio', 'zarr') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]"]


def test_every_room_is_a_package_the_wheel_installs():
    """Each folder of the two source roots with an ``__init__.py`` is listed in pyproject.toml's
    packages: an editable install finds a room that is not, a wheel leaves it out (and the command
    then fails on its import)."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    rooms = {"segtile." + ".".join(init.parent.relative_to(REPO / "tiler" / "segtile").parts)
             for init in (REPO / "tiler" / "segtile").glob("*/**/__init__.py")}
    rooms |= {"segtile.models." + ".".join(init.parent.relative_to(REPO / "models" / "segtile" / "models").parts)
              for init in (REPO / "models" / "segtile" / "models").glob("*/**/__init__.py")}
    assert rooms | {"segtile", "segtile.models"} <= listed, sorted(rooms - listed)
