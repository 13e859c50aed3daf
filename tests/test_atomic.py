"""Outputs appear complete or not at all: single files, folders, sidecars, several outputs."""

import errno
import os
import subprocess
import sys
import warnings
from contextlib import contextmanager

import pytest

from segtile.writers import atomic
from segtile.writers.atomic import (
    LeftoverWarning,
    OutputError,
    OutputExistsError,
    OutputSet,
    atomic_output,
    check_output,
)


class Boom(Exception):
    pass


def entries(folder):
    """Everything in ``folder``, hidden names included."""
    return sorted(os.listdir(folder))


def test_file_appears_only_at_the_end(tmp_path):
    final = tmp_path / "mask.tif"
    with atomic_output(final) as temporary:
        assert temporary.name == "mask.tif" and temporary.parent.parent == tmp_path
        assert temporary.parent.name.startswith(".mask.tif.tmp-")
        temporary.write_bytes(b"new")
        assert not final.exists()
    assert final.read_bytes() == b"new"
    assert entries(tmp_path) == ["mask.tif"]


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_failure_mid_write_leaves_nothing(tmp_path, error):
    with pytest.raises(error):
        with atomic_output(tmp_path / "mask.tif") as temporary:
            temporary.write_bytes(b"half")
            raise error()
    assert entries(tmp_path) == []


def test_existing_output_kept_without_overwrite(tmp_path):
    final = tmp_path / "mask.tif"
    final.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match=r"exists: .*mask.tif \(use --overwrite; Python: overwrite=True\)"):
        with atomic_output(final):
            pytest.fail("the block must not run")
    assert final.read_bytes() == b"old"
    assert entries(tmp_path) == ["mask.tif"]
    assert issubclass(OutputExistsError, ValueError)


def test_existing_output_replaced_with_overwrite_only_on_success(tmp_path):
    final = tmp_path / "mask.tif"
    final.write_bytes(b"old")
    with pytest.raises(Boom):
        with atomic_output(final, overwrite=True) as temporary:
            temporary.write_bytes(b"half")
            raise Boom()
    assert final.read_bytes() == b"old"
    with atomic_output(final, overwrite=True) as temporary:
        temporary.write_bytes(b"new")
    assert final.read_bytes() == b"new"
    assert entries(tmp_path) == ["mask.tif"]


def test_folder_output_created_and_replaced(tmp_path):
    final = tmp_path / "out.zarr"
    with atomic_output(final, directory=True) as temporary:
        (temporary / "labels").mkdir(parents=True)
        (temporary / "labels" / "c0").write_bytes(b"first")
    assert (final / "labels" / "c0").read_bytes() == b"first"
    with pytest.raises(Boom):
        with atomic_output(final, overwrite=True, directory=True) as temporary:
            temporary.mkdir()
            (temporary / "partial").write_bytes(b"x")
            raise Boom()
    assert entries(final) == ["labels"]
    with atomic_output(final, overwrite=True, directory=True) as temporary:
        temporary.mkdir()
        (temporary / "zarr.json").write_text("{}")
    assert entries(final) == ["zarr.json"]
    assert entries(tmp_path) == ["out.zarr"]


def test_sidecar_files_travel_with_the_output(tmp_path):
    with atomic_output(tmp_path / "regions.shp") as temporary:
        for suffix in (".shp", ".shx", ".dbf", ".prj"):
            temporary.with_suffix(suffix).write_bytes(suffix.encode())
    assert entries(tmp_path) == ["regions.dbf", "regions.prj", "regions.shp", "regions.shx"]
    assert (tmp_path / "regions.dbf").read_bytes() == b".dbf"


def test_output_set_commits_all_or_none(tmp_path):
    (tmp_path / "b.gpkg").write_bytes(b"old b")
    with pytest.raises(Boom):
        with OutputSet(overwrite=True) as outputs:
            outputs.add(tmp_path / "a.tif").write_bytes(b"a")
            outputs.add(tmp_path / "b.gpkg").write_bytes(b"b")
            raise Boom()
    assert entries(tmp_path) == ["b.gpkg"]
    assert (tmp_path / "b.gpkg").read_bytes() == b"old b"
    with OutputSet(overwrite=True) as outputs:
        outputs.add(tmp_path / "a.tif").write_bytes(b"a")
        outputs.add(tmp_path / "b.gpkg").write_bytes(b"b")
    assert entries(tmp_path) == ["a.tif", "b.gpkg"]
    assert (tmp_path / "b.gpkg").read_bytes() == b"b"


def test_output_set_rolls_back_when_an_output_appears_meanwhile(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"old a")
    with pytest.raises(OutputExistsError):
        with OutputSet(overwrite=False) as outputs:
            outputs.add(tmp_path / "b.gpkg").write_bytes(b"b")
            outputs.add(tmp_path / "c.fgb").write_bytes(b"c")
            (tmp_path / "c.fgb").write_bytes(b"someone else's")
    assert entries(tmp_path) == ["a.tif", "c.fgb"]
    assert (tmp_path / "c.fgb").read_bytes() == b"someone else's"


def test_output_never_written_is_an_error(tmp_path):
    with pytest.raises(OutputError, match="nothing was written"):
        with OutputSet() as outputs:
            outputs.add(tmp_path / "a.tif")
    assert entries(tmp_path) == []


def test_bad_destinations(tmp_path):
    with pytest.raises(OutputError, match="output folder does not exist"):
        with atomic_output(tmp_path / "missing" / "mask.tif"):
            pass
    with pytest.raises(OutputError, match="named twice"):
        with OutputSet() as outputs:
            outputs.add(tmp_path / "mask.tif")
            outputs.add(str(tmp_path / "." / "mask.tif"))
    assert entries(tmp_path) == []


def test_check_output_before_any_work(tmp_path):
    check_output(tmp_path / "new.tif")
    (tmp_path / "old.zarr").mkdir()
    with pytest.raises(OutputExistsError, match="output exists: .*old.zarr"):
        check_output(tmp_path / "old.zarr")
    check_output(tmp_path / "old.zarr", overwrite=True, directory=True)
    with pytest.raises(OutputError, match="output folder does not exist: .*missing"):
        check_output(tmp_path / "missing" / "new.tif", overwrite=True)
    assert entries(tmp_path) == ["old.zarr"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            with atomic_output(folder / "mask.tif"):
                pass
    finally:
        folder.chmod(0o755)


@contextmanager
def renames_interrupted(monkeypatch, finals, at: dict[int, BaseException]):
    """Count every rename of an output's final path (moving an old one aside, a new one in, either
    back); raise ``at[n]`` instead of the n-th: a Ctrl-C or a failure landing at that very step."""
    count = [0]
    finals = {str(path) for path in finals}

    def counted(rename):
        def wrapper(source, target, *args, **kwargs):
            if {str(source), str(target)} & finals:
                count[0] += 1
                if count[0] in at:
                    raise at[count[0]]
            return rename(source, target, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(atomic, "rename_no_replace", counted(atomic.rename_no_replace))
    monkeypatch.setattr(atomic.os, "replace", counted(os.replace))
    monkeypatch.setattr(atomic.os, "rename", counted(os.rename))
    yield
    monkeypatch.undo()


def old_outputs(folder, names=("a.tif", "b.gpkg", "c.fgb")):
    for name in names:
        (folder / name).write_bytes(b"old " + name.encode())
    return names


def commit_new(folder, names):
    with OutputSet(overwrite=True) as outputs:
        for name in names:
            outputs.add(folder / name).write_bytes(b"new " + name.encode())


def test_a_second_ctrl_c_while_undoing_a_commit_still_puts_every_old_output_back(tmp_path, monkeypatch):
    names = old_outputs(tmp_path)
    # renames 1-4 put a and b in place; the 5th (c aside) meets the first Ctrl-C, the next (the
    # undo's first step) the second
    second_ctrl_c = {5: KeyboardInterrupt(), 6: KeyboardInterrupt()}
    with renames_interrupted(monkeypatch, [tmp_path / n for n in names], second_ctrl_c):
        with pytest.raises(KeyboardInterrupt):
            commit_new(tmp_path, names)
    assert entries(tmp_path) == sorted(names)
    assert all((tmp_path / name).read_bytes() == b"old " + name.encode() for name in names)


def test_an_old_output_that_cannot_be_put_back_is_kept_for_the_next_run(tmp_path, monkeypatch):
    names = old_outputs(tmp_path)
    failure = PermissionError(errno.EACCES, "Permission denied")
    # renames 1-4 put a and b in place, the 5th fails; the undo takes a back (6), puts the old a
    # back (7), takes b back (8), and cannot put the old b back (9)
    with renames_interrupted(monkeypatch, [tmp_path / n for n in names], {5: Boom(), 9: failure}):
        with pytest.raises(Boom) as raised:
            commit_new(tmp_path, names)
    assert "the next segtile run for these outputs does it" in raised.value.__notes__[0]
    assert (tmp_path / "a.tif").read_bytes() == b"old a.tif"  # the other steps went on
    assert (tmp_path / "c.fgb").read_bytes() == b"old c.fgb"
    assert not (tmp_path / "b.gpkg").exists()
    assert [p.read_bytes() for p in tmp_path.glob(".b.gpkg.tmp-*/.replaced/b.gpkg")] == [b"old b.gpkg"]
    with pytest.warns(LeftoverWarning, match="undid the half-done commit of a segtile run .*put back the "
                                             "previous b.gpkg"):
        with pytest.raises(OutputExistsError):  # the next run for b puts it back first
            OutputSet(overwrite=False).add(tmp_path / "b.gpkg")
    assert entries(tmp_path) == sorted(names)
    assert all((tmp_path / name).read_bytes() == b"old " + name.encode() for name in names)


KILLED_COMMITS = """
import os, signal, sys
from pathlib import Path
from segtile.writers import atomic

def commit(folder):
    with atomic.OutputSet(overwrite=True) as outputs:
        for name in ("a.tif", "b.shp"):
            sidecars = [folder / "b.prj"] if name == "b.shp" else []
            outputs.add(folder / name, files=sidecars).write_bytes(b"new " + name.encode())

def killed_at(step, folder):
    count = [0]
    def counted(rename):
        def wrapper(*args, **kwargs):
            count[0] += 1
            if count[0] == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return rename(*args, **kwargs)
        return wrapper
    atomic.rename_no_replace = counted(atomic.rename_no_replace)
    atomic.os.replace = counted(os.replace)
    atomic.os.rename = counted(os.rename)
    atomic.shutil.rmtree = counted(atomic.shutil.rmtree)
    commit(folder)
    os._exit(3)  # the commit ended before the step: no more steps to kill at

for step in range(1, 30):
    folder = Path(sys.argv[1]) / str(step)
    folder.mkdir()
    for name in ("a.tif", "b.shp", "b.prj"):
        (folder / name).write_bytes(b"old " + name.encode())
    child = os.fork()
    if child == 0:
        killed_at(step, folder)
    _, status = os.waitpid(child, 0)
    if os.WIFEXITED(status):
        (folder / "ended").touch()
        break
"""


def test_a_commit_killed_at_any_step_is_finished_or_undone_by_the_next_run(tmp_path):
    """SIGKILL at every rename and removal of a commit (owner files, journals, moves, clean-up):
    the next run for the outputs finds them old or new, whole, and nothing else left."""
    subprocess.run([sys.executable, "-c", KILLED_COMMITS, str(tmp_path)], check=True, timeout=120)
    steps = sorted((p for p in tmp_path.iterdir()), key=lambda p: int(p.name))
    assert (steps[-1] / "ended").exists() and len(steps) > 8
    old = {"a.tif": b"old a.tif", "b.shp": b"old b.shp", "b.prj": b"old b.prj"}
    new = {"a.tif": b"new a.tif", "b.shp": b"new b.shp"}  # the new b has no .prj: the old one is removed
    seen = set()
    for folder in steps[:-1]:
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always")
            for name in ("a.tif", "b.shp"):
                atomic.recover_leftovers(folder / name)
        state = {p.name: p.read_bytes() for p in folder.iterdir()}
        assert state in (old, new), (folder.name, state, [str(n.message) for n in notes])
        seen.add("new" if state == new else "old")
    assert seen == {"old", "new"}
