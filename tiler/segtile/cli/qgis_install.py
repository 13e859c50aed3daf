"""Install segtile's QGIS plugin into a QGIS profile, and record which ``segtile`` it runs.

The plugin's files are package data (``segtile.qgis_plugin``, the repository's
``tiler/segtile/qgis_plugin/``), read with :mod:`importlib.resources`, so a wheel installs them too.
The plugin runs in QGIS's own Python, where segtile is not installed: it runs the ``segtile``
executable of this installation in a subprocess, by the absolute path written here into the
installed plugin (``install.json``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from segtile.errors import QgisInstallError
from segtile.qgis_plugin.runner import INSTALL_RECORD

PLUGIN = "segtile"  # the plugin's folder name, and its name for `qgis_process plugins enable`
_PROFILE_PLUGINS = Path("QGIS", "QGIS3", "profiles", "default", "python", "plugins")
_NOT_INSTALLED = ("__pycache__",)


@dataclass(frozen=True)
class Installed:
    """Where the plugin went, which segtile it runs, and whether anything changed."""

    folder: Path
    executable: Path
    changed: bool


def default_plugins_dir() -> Path:
    """The plugins folder of QGIS's default profile on this system (Linux: under
    ``$XDG_DATA_HOME``, by default ``~/.local/share``; macOS: ``~/Library/Application Support``;
    Windows: ``%APPDATA%``)."""
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or home / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / _PROFILE_PLUGINS


def segtile_executable() -> Path:
    """The absolute path of this installation's ``segtile`` executable: the one running now,
    else the console script in this interpreter's scripts folder (a venv's ``bin``, or the
    user scheme's for ``pip install --user``).

    Raises:
        QgisInstallError: there is none (segtile run from a source tree never installed).
    """
    name = "segtile.exe" if sys.platform == "win32" else "segtile"
    candidates = [Path(sys.argv[0])] if Path(sys.argv[0]).name == name else []
    for scheme in (sysconfig.get_default_scheme(), sysconfig.get_preferred_scheme("user")):
        candidates.append(Path(sysconfig.get_path("scripts", scheme)) / name)
    for candidate in candidates:
        if candidate.is_file():
            return Path(os.path.abspath(candidate))
    raise QgisInstallError(f"cannot find this installation's {name} executable (looked for "
                           f"{', '.join(str(c) for c in candidates)}): install segtile with pip first")


def plugin_files(executable: Path) -> dict[str, bytes]:
    """Every file of the installed plugin, by its path relative to the plugin's folder: the
    package's files and the record of ``executable``."""
    from segtile.version import version

    files = _tree(resources.files("segtile.qgis_plugin"))
    record = {"segtile": str(executable), "version": version()}
    files[INSTALL_RECORD] = (json.dumps(record, indent=2) + "\n").encode("utf-8")
    return files


def install(plugins_dir: Path, overwrite: bool = False) -> Installed:
    """Install the plugin as ``plugins_dir/segtile``; an identical install is left as it is.

    Raises:
        QgisInstallError: a different plugin is there and ``overwrite`` is false, or the place
            is taken by a file.
    """
    executable = segtile_executable()
    folder = plugins_dir / PLUGIN
    wanted = plugin_files(executable)
    if folder.exists() and not folder.is_dir():
        raise QgisInstallError(f"{folder} is a file, not a plugin folder: remove it first")
    if folder.is_dir():
        if _tree(folder) == wanted:
            return Installed(folder, executable, changed=False)
        if not overwrite:
            raise QgisInstallError(f"a different segtile plugin is installed in {folder} "
                                   "(use --overwrite to replace it)")
    plugins_dir.mkdir(parents=True, exist_ok=True)
    _replace(folder, wanted)
    return Installed(folder, executable, changed=True)


def uninstall(plugins_dir: Path) -> Path:
    """Remove the plugin from ``plugins_dir``; return the folder removed.

    Raises:
        QgisInstallError: no plugin installed by segtile is there.
    """
    folder = plugins_dir / PLUGIN
    if not (folder / INSTALL_RECORD).is_file():
        raise QgisInstallError(f"no segtile plugin installed by `segtile qgis install` in {plugins_dir}")
    shutil.rmtree(folder)
    return folder


def _tree(root: Traversable) -> dict[str, bytes]:
    """The files under ``root`` (a package's resources or a folder), by relative path."""
    files: dict[str, bytes] = {}
    for child in root.iterdir():
        if child.name in _NOT_INSTALLED:
            continue
        if child.is_dir():
            files.update({f"{child.name}/{name}": data for name, data in _tree(child).items()})
        else:
            files[child.name] = child.read_bytes()
    return files


def _replace(folder: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into a new folder beside ``folder``, then swap it in: QGIS never sees a
    half-written plugin, and a failure leaves the old one in place."""
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    new, old = work / "new", work / "old"
    try:
        for name, data in files.items():
            (new / name).parent.mkdir(parents=True, exist_ok=True)
            (new / name).write_bytes(data)
        if folder.exists():
            folder.rename(old)
        try:
            new.rename(folder)
        except BaseException:
            if old.exists():
                old.rename(folder)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
