"""`segtile qgis install|uninstall`: the plugin's files, from the package, into a plugins folder,
with the path of this installation's segtile; never over a different install unasked."""

import importlib.util
import json
import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest

from segtile.cli import main
from segtile.cli.qgis_install import default_plugins_dir, plugin_files, segtile_executable

REPO = Path(__file__).resolve().parents[1]
PLUGIN_SOURCE = REPO / "tiler" / "segtile" / "qgis_plugin"


def run(*args) -> int:
    return main(["qgis", *(str(a) for a in args)])


def installed_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_install_copies_the_plugin_and_records_this_segtile(tmp_path, capsys):
    assert run("install", "--plugins-dir", tmp_path) == 0
    folder = tmp_path / "segtile"
    files = installed_files(folder)
    record = json.loads(files.pop("install.json"))
    source = {str(p.relative_to(PLUGIN_SOURCE)): p.read_bytes() for p in PLUGIN_SOURCE.rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    assert files == source
    assert {"metadata.txt", "__init__.py", "icon.svg"} <= set(files)
    assert b"hasProcessingProvider=yes" in files["metadata.txt"]
    executable = Path(record["segtile"])
    assert executable.is_absolute() and executable == segtile_executable()
    done = subprocess.run([executable, "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("segtile ")
    out = capsys.readouterr().out
    assert f"installed the QGIS plugin in {folder}" in out and "plugins enable segtile" in out


def test_same_install_again_changes_nothing(tmp_path, capsys):
    assert run("install", "--plugins-dir", tmp_path) == 0
    before = installed_files(tmp_path / "segtile")
    assert run("install", "--plugins-dir", tmp_path) == 0
    assert installed_files(tmp_path / "segtile") == before
    assert "already installed" in capsys.readouterr().out


def test_a_different_install_is_replaced_only_with_overwrite(tmp_path, capsys):
    assert run("install", "--plugins-dir", tmp_path) == 0
    record = tmp_path / "segtile" / "install.json"
    record.write_text(json.dumps({"segtile": "/another/venv/bin/segtile"}))
    capsys.readouterr()
    assert run("install", "--plugins-dir", tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("segtile: error: a different segtile plugin is installed") and err.count("\n") == 1
    assert "/another/venv" in record.read_text()
    assert run("install", "--plugins-dir", tmp_path, "--overwrite") == 0
    assert json.loads(record.read_text())["segtile"] == str(segtile_executable())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["segtile"]  # no staging folder left


def test_uninstall_removes_only_an_install_of_ours(tmp_path, capsys):
    assert run("uninstall", "--plugins-dir", tmp_path) == 2
    (tmp_path / "segtile").mkdir()
    (tmp_path / "segtile" / "mine.py").write_text("")
    assert run("uninstall", "--plugins-dir", tmp_path) == 2
    assert (tmp_path / "segtile" / "mine.py").exists()
    (tmp_path / "segtile" / "mine.py").unlink()
    (tmp_path / "segtile").rmdir()
    assert run("install", "--plugins-dir", tmp_path) == 0
    assert run("uninstall", "--plugins-dir", tmp_path) == 0
    assert list(tmp_path.iterdir()) == []
    assert "no segtile plugin" in capsys.readouterr().err


def test_a_file_in_the_way_is_an_error(tmp_path, capsys):
    (tmp_path / "segtile").write_text("not a folder")
    assert run("install", "--plugins-dir", tmp_path, "--overwrite") == 2
    assert (tmp_path / "segtile").read_text() == "not a folder"
    assert "is a file" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="the Linux layout")
def test_default_folder_is_the_default_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    expected = tmp_path / ".local/share/QGIS/QGIS3/profiles/default/python/plugins"
    assert default_plugins_dir() == expected
    assert run("install") == 0
    assert (expected / "segtile" / "metadata.txt").is_file()
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_plugins_dir() == tmp_path / "data/QGIS/QGIS3/profiles/default/python/plugins"


def test_the_plugin_is_package_data(tmp_path):
    """Built as a wheel, segtile carries the plugin's files (not only a git checkout does)."""
    source = tmp_path / "source"  # a copy: building writes build/ and egg-info folders beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("tiler", "models"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(tmp_path),
                    str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("segtile-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"segtile/qgis_plugin/{name}" for name in plugin_files(Path("segtile")) if name != "install.json"}
    assert expected <= names
    assert resources.files("segtile.qgis_plugin").joinpath("metadata.txt").is_file()
