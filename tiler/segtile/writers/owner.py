"""Folders a segtile process works in, and whether that process still runs.

A run marks a folder it works in (a work store, the temporary folder of an output) with an owner
file: a small JSON record of its process id, host and start time, which the process holds locked
(an advisory lock: ``flock``, ``msvcrt.locking`` on Windows) for as long as it works there. The
operating system drops the lock when the process ends, however it ends (SIGKILL, a crash), so
another process tells a live owner from a dead one by trying the lock: a second run for the same
outputs is refused while the first one runs, and what a dead run left can be cleaned up safely.
Where the file system has no locks, the owner's process id decides, on the owner's own host.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from segtile.writers.durable import temporary_name

_HELD = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK}  # "locked by someone else"
_WINDOWS_LOCK_OFFSET = 2**20  # Windows locks bytes for reading too: lock one far past the record

if os.name == "nt":
    import msvcrt

    def _try_lock(descriptor: int) -> None:
        os.lseek(descriptor, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
else:
    import fcntl

    def _try_lock(descriptor: int) -> None:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)


@dataclass(frozen=True)
class Owner:
    """The process an owner file names."""

    pid: int
    host: str
    started: float  # seconds since the epoch
    instance: str | None = None  # Linux: boot id and start time of the process (a pid is reused)

    def __str__(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"process {self.pid} on {self.host}, started {when}"

    @property
    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def runs(self) -> bool:
        """Whether the process still runs, as far as this host can tell: a process on another
        host, or one this system cannot look up (Windows), counts as running."""
        if not self.on_this_host or os.name == "nt":  # os.kill(pid, 0) would end a Windows process
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process
            pass
        return self.instance is None or self.instance == _instance(self.pid)


class Held(Exception):
    """The owner file is locked by a live process (``owner``: its record, if readable)."""

    def __init__(self, path: Path, owner: Owner | None) -> None:
        super().__init__(f"{path} is held by {owner or 'another process'}")
        self.owner = owner


class Claim:
    """An owner file this process holds locked (see the module docstring).

    Attributes:
        path: the owner file.
        previous: the owner the file named before this claim (``None``: a new file, or unreadable).
    """

    def __init__(self, path: Path, descriptor: int, previous: Owner | None) -> None:
        self.path = path
        self.previous = previous
        self._descriptor: int | None = descriptor

    @classmethod
    def take(cls, path: Path, record: bool = True) -> Claim:
        """Lock the owner file ``path`` (created if missing) for this process; with ``record``,
        write this process into it.

        Raises:
            Held: a live process holds it.
            OSError: the file cannot be created or written (a full disk).
        """
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            previous = read_owner(path)
            try:
                _try_lock(descriptor)
            except OSError as error:
                if error.errno in _HELD:
                    raise Held(path, previous) from None
                if previous is not None and previous.runs():  # no locks on this file system
                    raise Held(path, previous) from None
            if record:
                _write_record(descriptor, this_process())
        except BaseException:
            os.close(descriptor)
            raise
        return cls(path, descriptor, previous)

    @classmethod
    def create(cls, path: Path) -> Claim:
        """A new owner file at ``path`` (in a folder this process just made), locked and recorded
        before it appears under its name: another process never finds it unlocked or empty.

        Raises:
            OSError: it cannot be written (a full disk).
        """
        temporary = temporary_name(path)
        descriptor = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                _try_lock(descriptor)
            except OSError as error:
                if error.errno in _HELD:
                    raise
            _write_record(descriptor, this_process())
            os.replace(temporary, path)
        except BaseException:
            os.close(descriptor)
            temporary.unlink(missing_ok=True)
            raise
        return cls(path, descriptor, None)

    def is_current(self) -> bool:
        """Whether ``path`` still names the locked file (it may have been removed and made
        again by another process meanwhile)."""
        try:
            return os.path.samestat(os.stat(self.path), os.fstat(self._descriptor))
        except FileNotFoundError:
            return False

    def release(self, remove: bool = False) -> None:
        """Unlock the file (closing it); with ``remove``, delete it first, while still locked,
        so that no other process locks a file about to vanish."""
        if self._descriptor is None:
            return
        if remove:
            try:
                self.path.unlink(missing_ok=True)
            except PermissionError:  # Windows removes no open file: close it first
                os.close(self._descriptor)
                self._descriptor = None
                self.path.unlink(missing_ok=True)
                return
        os.close(self._descriptor)
        self._descriptor = None


def this_process() -> Owner:
    return Owner(os.getpid(), socket.gethostname(), time.time(), _instance(os.getpid()))


def read_owner(path: Path) -> Owner | None:
    """The owner ``path`` records, or ``None`` when it is missing, empty or unreadable."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        return Owner(int(record["pid"]), str(record["host"]), float(record["started"]), record.get("instance"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_record(descriptor: int, owner: Owner) -> None:
    record = {"segtile": "owner", "pid": owner.pid, "host": owner.host, "started": owner.started,
              "instance": owner.instance}
    os.ftruncate(descriptor, 0)
    os.lseek(descriptor, 0, os.SEEK_SET)
    os.write(descriptor, json.dumps(record).encode())
    os.fsync(descriptor)


def _instance(pid: int) -> str | None:
    """What tells a process from a later one given the same id (Linux: the boot's id and the
    process's start time); ``None`` where the system does not say."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    start = stat.rsplit(")", 1)[1].split()[19]  # field 22; the name before ")" may hold spaces
    return f"{boot}:{start}"
