"""Outputs appear complete or not at all: single files, folders, sidecars, several outputs."""

import os

import pytest

from segtile.writers.atomic import OutputError, OutputExistsError, OutputSet, atomic_output, check_output


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
