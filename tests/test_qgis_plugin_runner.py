"""The QGIS plugin's runner, without QGIS: it drives the real ``segtile`` executable of this
installation in a subprocess, follows its progress, reports its errors and cancels it cleanly."""

import json
import sys

import pytest

from segtile.cli.qgis_install import segtile_executable
from segtile.qgis_plugin import runner


@pytest.fixture(scope="module")
def segtile():
    return str(segtile_executable())


class Recorder(runner.Listener):
    """A listener that keeps what it was told, and cancels at the first progress report when asked."""

    def __init__(self, cancel_at_first_progress: bool = False):
        self.reports, self.messages, self.warnings = [], [], []
        super().__init__(progress=lambda fraction, stage: self.reports.append((fraction, stage)),
                         message=self.messages.append, warning=self.warnings.append,
                         canceled=lambda: cancel_at_first_progress and bool(self.reports))


def test_progress_summary_and_a_clean_environment(segtile, data_dir, tmp_path, monkeypatch):
    # QGIS's PYTHONHOME / PYTHONPATH would break the installation's interpreter: they are cleared.
    monkeypatch.setenv("PYTHONHOME", str(tmp_path / "qgis-python"))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "qgis-python"))
    mask = tmp_path / "mask.tif"
    listener = Recorder()
    outcome = runner.run([segtile, "segment", str(data_dir / "rmnp-rgb.tif"), "--out", str(mask),
                          "--progress", "json"], listener)
    fractions = [fraction for fraction, _ in listener.reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [stage for _, stage in listener.reports][0] == "inference"
    assert {stage for _, stage in listener.reports} == {"inference", "writing mask.tif"}
    assert outcome.summary["outputs"] == [str(mask)] and outcome.summary["tiles_run"] > 0
    assert listener.messages[0].startswith("segtile: model:")
    assert listener.messages[-1] == f"segtile: {outcome.summary['summary']}"
    assert mask.is_file()


def test_segtile_error_is_its_one_line(segtile, data_dir, tmp_path):
    with pytest.raises(runner.SegtileFailed, match=r"^band 9 is out of range: the image has 3 bands$"):
        runner.run([segtile, "segment", str(data_dir / "rmnp-rgb.tif"), "--out", str(tmp_path / "m.tif"),
                    "--bands", "1,2,9", "--progress", "json"])
    assert list(tmp_path.iterdir()) == []


def test_cancel_stops_segtile_and_leaves_nothing_behind(segtile, data_dir, tmp_path):
    listener = Recorder(cancel_at_first_progress=True)
    with pytest.raises(runner.Canceled):
        runner.run([segtile, "segment", str(data_dir / "bahamas_rgb.tif"), "--out", str(tmp_path / "m.tif"),
                    "--out", str(tmp_path / "p.gpkg"), "--tile-size", "32", "--overlap", "16",
                    "--progress", "json"], listener)
    assert "segtile: SIGTERM; no output was written" in listener.messages  # stopped mid-run, not finished
    assert list(tmp_path.iterdir()) == []  # no output, no temporary folder


def test_an_interruption_from_outside_reports_what_segtile_kept(tmp_path):
    """segtile's last line, e.g. a training's finished epochs, is the message, not a guess."""
    stand_in = tmp_path / "interrupted-training"
    stand_in.write_text(f"#!{sys.executable}\nimport sys\n"
                        "print('segtile: interrupted; m.pt holds epoch 1 of 3: continue with --resume m.pt', "
                        "file=sys.stderr)\nsys.exit(130)\n")
    stand_in.chmod(0o755)
    with pytest.raises(runner.SegtileFailed, match=r"^segtile: interrupted; m.pt holds epoch 1 of 3"):
        runner.run([str(stand_in)])


def test_a_command_that_cannot_start(tmp_path):
    with pytest.raises(runner.SegtileFailed, match="cannot run"):
        runner.run([str(tmp_path / "segtile")])


def test_recorded_executable(tmp_path, segtile):
    with pytest.raises(runner.SegtileFailed, match="segtile qgis install"):
        runner.recorded_executable(tmp_path)
    (tmp_path / runner.INSTALL_RECORD).write_text(json.dumps({"segtile": str(tmp_path / "gone")}))
    with pytest.raises(runner.SegtileFailed, match="gone"):
        runner.recorded_executable(tmp_path)
    (tmp_path / runner.INSTALL_RECORD).write_text(json.dumps({"segtile": segtile}))
    assert str(runner.recorded_executable(tmp_path)) == segtile
