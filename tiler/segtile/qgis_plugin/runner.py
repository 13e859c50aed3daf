"""Run the ``segtile`` command of the user's installation and follow it, line by line.

QGIS runs its own Python, where neither segtile nor torch is installed. So the plugin runs the
``segtile`` executable that ``segtile qgis install`` recorded (by its absolute path, in
``install.json`` beside this file) in a subprocess, with ``--progress json``: each progress line
on its stderr becomes a progress report, other lines are messages, and a failed run's one-line
``segtile: error: ...`` becomes the error. Cancelling sends SIGTERM, which segtile handles like
Ctrl-C (it removes its unfinished outputs), and waits for it to finish cleaning up.

The subprocess gets QGIS's environment without ``PYTHONHOME`` and ``PYTHONPATH``: they point at
QGIS's Python and would break the interpreter of the user's segtile installation.

Messages shown in QGIS name QGIS's parameters, not the command's options (:func:`in_terms_of`).

This module imports nothing from QGIS: segtile's own tests drive it against the real command.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_RECORD = "install.json"  # written by `segtile qgis install` into the installed plugin
CLEARED_VARIABLES = ("PYTHONHOME", "PYTHONPATH")
POLL_SECONDS = 0.1  # how often cancellation is checked while segtile runs
CLEAN_UP_SECONDS = 120  # how long a cancelled run may take to remove its outputs before it is killed
EXIT_INTERRUPTED = (130, 143)  # segtile stopped by SIGINT or SIGTERM (128 + the signal)
_MESSAGE_PREFIXES = {"segtile: error: ": "error", "segtile: failed: ": "error", "segtile: warning: ": "warning"}
_PYTHON_ASIDE = re.compile(r"\s*\(Python: [^()]*\)|;\s*Python: [^()]*(?=\))")  # (Python: x=...), (...; Python: x=...)
_OPTION_VALUE = r"(?:\d[\w.,:]*|native|model)"  # what follows an option in segtile's messages, when a value does
_REPEATED_NAME = re.compile(r"\b([A-Z][A-Z_]+)(?:, \1\b)+")  # "RESOLUTION, RESOLUTION" once two options map to one


class SegtileFailed(Exception):
    """segtile could not be run, or it exited with an error: the message is one line."""


class Canceled(Exception):
    """The run was cancelled; segtile stopped and removed what it had started to write."""


@dataclass
class Listener:
    """Where a run reports, and how it learns that it must stop.

    Attributes:
        progress: called with the fraction of the run done (0–1) and the current stage's name.
        message: called with each line meant for people (the model used, the summary).
        warning: called with each ``segtile: warning: ...`` line, without its prefix.
        canceled: polled while segtile runs; once it returns true the run is stopped.
    """

    progress: Callable[[float, str], None] = lambda fraction, stage: None
    message: Callable[[str], None] = lambda text: None
    warning: Callable[[str], None] = lambda text: None
    canceled: Callable[[], bool] = lambda: False


@dataclass
class Outcome:
    """A finished run: its summary record (``tiles_run``, ``outputs``...) and what it printed on stdout."""

    summary: dict = field(default_factory=dict)
    stdout: str = ""


def recorded_executable(plugin_folder: Path) -> Path:
    """The ``segtile`` executable recorded in ``plugin_folder`` at install.

    Raises:
        SegtileFailed: no record (the plugin was copied by hand), or the executable is gone.
    """
    record = plugin_folder / INSTALL_RECORD
    try:
        executable = Path(json.loads(record.read_text(encoding="utf-8"))["segtile"])
    except (OSError, ValueError, KeyError, TypeError):
        raise SegtileFailed(f"the plugin does not know which segtile to run ({record} is missing or damaged): "
                            "run `segtile qgis install --overwrite` from your segtile installation") from None
    if not executable.is_file():
        raise SegtileFailed(f"the segtile recorded at install is gone: {executable}; run `segtile qgis install "
                            "--overwrite` from your segtile installation")
    return executable


def environment(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` without the variables that tie Python to QGIS's interpreter, and with UTF-8 I/O."""
    cleaned = {name: value for name, value in base.items() if name not in CLEARED_VARIABLES}
    cleaned["PYTHONIOENCODING"] = "utf-8"
    return cleaned


def run(command: Sequence[str], listener: Listener | None = None) -> Outcome:
    """Run ``command`` (a segtile command line with ``--progress json``) and report as it goes.

    Raises:
        Canceled: ``listener.canceled()`` became true; segtile was stopped and has exited.
        SegtileFailed: segtile could not start, or exited with an error (its one-line message).
    """
    listener = listener or Listener()
    try:
        process = subprocess.Popen(
            list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=environment(os.environ), text=True, encoding="utf-8", errors="replace",
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
        )
    except OSError as exc:
        raise SegtileFailed(f"cannot run {command[0]}: {exc.strerror or exc}") from None
    lines: queue.Queue[str | None] = queue.Queue()
    stdout: list[str] = []
    readers = [threading.Thread(target=_read_lines, args=(process.stderr, lines.put, lambda: lines.put(None))),
               threading.Thread(target=_read_lines, args=(process.stdout, stdout.append, lambda: None))]
    for reader in readers:
        reader.daemon = True
        reader.start()
    report = _Report(listener)
    deadline = None  # once cancelled: when to stop waiting for segtile's clean-up
    while True:
        try:
            line = lines.get(timeout=POLL_SECONDS)
        except queue.Empty:
            line = ""
        if line is None:  # stderr closed: segtile is exiting
            break
        report.line(line)
        if deadline is None and listener.canceled():
            deadline = time.monotonic() + CLEAN_UP_SECONDS
            _stop(process)
        elif deadline is not None and time.monotonic() > deadline:
            process.kill()
    process.wait()
    for reader in readers:
        reader.join()
    if deadline is not None:
        _discard_work(command)
        raise Canceled("canceled: segtile stopped and removed its unfinished outputs")
    if process.returncode in EXIT_INTERRUPTED:  # its last line says what it kept (a training's finished epochs)
        raise SegtileFailed(report.last_line or "segtile was interrupted from outside; no output was written")
    if process.returncode != 0:
        raise SegtileFailed(report.error or report.last_line or f"segtile exited with status {process.returncode}")
    return Outcome(report.summary, "".join(stdout))


class _Report:
    """Turns segtile's stderr lines into calls of a :class:`Listener`; keeps the summary, the
    error line, and the last other line (all there is to report when segtile crashed)."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self.summary: dict = {}
        self.error = ""
        self.last_line = ""

    def line(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        record = _json_record(line)
        if record is not None and "progress" in record:
            self._listener.progress(float(record["progress"]), str(record.get("stage", "")))
        elif record is not None and "summary" in record:
            self.summary = record
            self._listener.message(f"segtile: {record['summary']}")
        elif _kind(line) == "warning":
            self._listener.warning(_without_prefix(line))
        elif _kind(line) == "error":
            self.error = _without_prefix(line)
        else:
            self.last_line = line
            self._listener.message(line)


def in_terms_of(text: str, parameters: Mapping[str, str]) -> str:
    """``text``, a message of segtile's, with the options it names written as the parameters
    (``parameters``: option -> parameter name) that set them: ``--bands 1,1,1`` becomes
    ``BANDS=1,1,1`` and ``--bands`` ``BANDS``; the Python spellings (``Python: bands=...``) are
    left out. Options without a parameter stay as they are."""
    text = _PYTHON_ASIDE.sub("", text)
    for option, name in parameters.items():
        pattern = rf"{re.escape(option)}(?![\w-])(?:[ =](?P<value>{_OPTION_VALUE})(?![\w-]))?"
        text = re.sub(pattern, lambda match, name=name: name + (f"={match['value']}" if match["value"] else ""), text)
    return _REPEATED_NAME.sub(r"\1", text)


def _json_record(line: str) -> dict | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _kind(line: str) -> str:
    return next((kind for prefix, kind in _MESSAGE_PREFIXES.items() if line.startswith(prefix)), "message")


def _without_prefix(line: str) -> str:
    return next((line[len(prefix):] for prefix in _MESSAGE_PREFIXES if line.startswith(prefix)), line)


def _read_lines(stream, deliver: Callable[[str], None], done: Callable[[], None]) -> None:
    """Hand every line of ``stream`` to ``deliver``; call ``done`` at its end."""
    for line in stream:
        deliver(line)
    stream.close()
    done()


def _discard_work(command: Sequence[str]) -> None:
    """Remove the work a cancelled run kept for ``--resume`` (``.NAME.segtile-work`` beside its
    first output, see docs/cli.md): cancelling in QGIS means leaving nothing behind."""
    for flag, value in zip(command, command[1:]):
        if flag in ("-o", "--out"):
            first = Path(value)
            shutil.rmtree(first.parent / f".{first.name}.segtile-work", ignore_errors=True)
            return


def _stop(process: subprocess.Popen) -> None:
    """Ask segtile to stop: SIGTERM, which it handles like Ctrl-C (Windows has no such signal:
    there the process is terminated at once)."""
    if process.poll() is not None:
        return
    if sys.platform == "win32":
        process.terminate()
    else:
        process.send_signal(signal.SIGTERM)

