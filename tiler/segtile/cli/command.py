"""The ``segtile`` command: ``segtile [segment] IMAGE --out ...``, and the ``train``, ``eval``,
``convert``, ``models`` and ``qgis`` subcommands.

Every error a user can cause (:class:`~segtile.errors.SegtileError`, and OS errors about their
files) ends in one line on stderr and exit status 2; anything else is a failure of segtile
itself, also one line, exit status 1 (``--debug`` shows the traceback and library messages).
Ctrl-C and SIGTERM stop the run the same way: outputs in progress are removed, and a second
signal during that clean-up is ignored rather than cutting it short.

This module imports nothing heavy: ``segtile --help`` must answer at once. Each subcommand
imports what it needs (torch, GDAL...) when it runs.
"""

from __future__ import annotations

import _thread
import argparse
import importlib
import logging
import os
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence, TextIO

from segtile.engine.interrupt import STOP, Interrupted
from segtile.version import version

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
REPEAT_SECONDS = 0.05  # after an interrupt swallowed by a finaliser, when it is raised again
COMMANDS = ("segment", "train", "eval", "convert", "models", "qgis")
_MODULES = {"eval": "evaluate"}  # `eval` is a builtin's name; its module is cli/evaluate.py


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr, exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"segtile: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``segtile`` parser with one subparser per command."""
    parser = _Parser(
        prog="segtile",
        description="Segment images too large for memory with a PSPNet, tile by tile. "
        "`segtile IMAGE --out OUTPUT` is short for `segtile segment IMAGE --out OUTPUT`.",
    )
    parser.add_argument("--version", action="version", version=f"segtile {version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"segtile.cli.{_MODULES.get(name, name)}").register(commands)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one subcommand (for its ``--help`` text)."""
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def help_text(command: str = "segment", width: int = 100) -> str:
    """A subcommand's ``--help`` at a fixed width (docs/cli.md embeds it; a test keeps them equal)."""
    parser = command_parser(command)
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=width)
    return parser.format_help()


def with_command(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``segment`` put in front when it names no command (``segtile IMAGE ...``)."""
    argv = list(argv)
    if argv and (argv[0] in COMMANDS or argv[0] in ("-h", "--help", "--version")):
        return argv
    return ["segment", *argv] if argv else argv


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``segtile`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    # the handlers go in last, right before the try that turns an interrupt into exit status 130:
    # a signal landing as they appear must not find a context still being set up outside it
    with _library_messages(shown=debug), _signals_as_interrupts() as received:
        try:
            try:
                args = build_parser().parse_args(with_command(argv))
            except SystemExit as done:  # --help, --version, or a usage error already printed
                return int(done.code or 0)
            if args.command is None:
                build_parser().print_help(sys.stderr)
                return EXIT_USAGE
            args.run(args)
            sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        except BrokenPipeError:  # stdout closed early (`segtile eval ... --json | head`): quietly, as cat does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 128 + signal.SIGPIPE
        except KeyboardInterrupt as interrupt:
            name = "SIGTERM" if received.get("signal") == signal.SIGTERM else "interrupted"
            outcome = interrupt.kept if isinstance(interrupt, Interrupted) else "no output was written"
            print(f"segtile: {name}; {outcome}{_notes(interrupt)}", file=sys.stderr)
            return 128 + received.get("signal", signal.SIGINT)
        except Exception as exc:
            if debug:
                raise
            return report(exc)
    return EXIT_OK


def report(exc: BaseException) -> int:
    """Print ``exc`` in one line; return the exit status it deserves."""
    from segtile.errors import SegtileError, one_line

    if isinstance(exc, SegtileError):
        print(f"segtile: error: {one_line(exc)}{_notes(exc)}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, OSError) and exc.filename is not None:  # the user's file: missing, full disk...
        print(f"segtile: error: {exc.filename}: {exc.strerror or one_line(exc)}{_notes(exc)}", file=sys.stderr)
        return EXIT_USAGE
    print(f"segtile: failed: {one_line(exc)} (run with --debug for details){_notes(exc)}", file=sys.stderr)
    return EXIT_FAILED


def _notes(exc: BaseException) -> str:
    """What the run added to ``exc`` (its notes: where its work was kept), on the same line."""
    return "".join(f"; {note}" for note in getattr(exc, "__notes__", ()))


@contextmanager
def _signals_as_interrupts() -> Iterator[dict[str, int]]:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the main thread, once: later signals are
    ignored, so the clean-up the first one started runs to its end, and they stay ignored after
    it (the process is exiting; a signal during the interpreter's shutdown would kill it with no
    exit status of ours). Yields a dict that records the signal received.

    A signal that lands while the main thread runs a finaliser (``__del__``, a weakref
    callback) raises there, where Python swallows the exception; that one is raised again at
    once, so a run is never left going after it was told to stop."""
    received: dict[str, int] = {}
    lost: list[bool] = []

    def interrupt(signum: int, _frame: object) -> None:
        if received and not lost:
            return
        lost.clear()
        received["signal"] = signum
        STOP.set()  # and every task from now on stops the run, wherever this raise lands
        raise KeyboardInterrupt

    def unraisable(report: sys.UnraisableHookArgs) -> None:
        if isinstance(report.exc_value, KeyboardInterrupt) and received:
            lost.append(True)  # signal again, from another thread, once this hook has returned
            threading.Timer(REPEAT_SECONDS, _thread.interrupt_main, args=(received["signal"],)).start()
        else:
            previous_hook(report)

    STOP.clear()
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield received
    finally:
        STOP.clear()
        sys.unraisablehook = previous_hook
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_IGN if received else handler)


@contextmanager
def _library_messages(shown: bool) -> Iterator[None]:
    """Unless ``shown``, keep library messages off stderr: Python log records (GDAL through
    rasterio, tifffile, distributed), Python warnings, and what C libraries print to the
    process's stderr themselves (libtiff on a full disk). segtile says what went wrong itself,
    in one line, on the real stderr, which ``sys.stderr`` still writes to."""
    if shown:
        logging.basicConfig(level=logging.WARNING)
        yield
        return
    root = logging.getLogger()
    silence = logging.NullHandler()  # a handler on the root: Python's last-resort printer stays quiet
    root.addHandler(silence)
    previous_stderr = sys.stderr
    with _c_stderr_to_devnull() as real_stderr, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sys.stderr = real_stderr
        try:
            yield
        finally:
            sys.stderr = previous_stderr
            root.removeHandler(silence)


@contextmanager
def _c_stderr_to_devnull() -> Iterator[TextIO]:
    """Point file descriptor 2 at /dev/null; yield a text stream on the real stderr (or
    ``sys.stderr`` itself when it does not write to descriptor 2, as under a test's capture)."""
    try:
        writes_to_descriptor_2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # captured, or no stderr at all (a detached process)
        writes_to_descriptor_2 = False
    if not writes_to_descriptor_2:
        yield sys.stderr
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    real = open(saved, "w", encoding=sys.stderr.encoding or "utf-8", errors="backslashreplace",
                buffering=1, closefd=False)
    try:
        yield real
    finally:
        real.flush()
        os.dup2(saved, 2)
        os.close(saved)

